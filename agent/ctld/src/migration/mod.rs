//! Live model migration on a controller node (`docs/migration.md`).
//!
//! - [`service`]: the `Migration` peer service: what a source's master calls on this node when
//!   it is the target (prechecks, staging, import, activate, drop, log transfer), and what a
//!   target asks this node when it is the source (`SourceStatus`).
//! - [`master`]: the migration master: on the leader, one driver per migration that has not
//!   ended, deciding with `storage::model::migration::next_action` and acting.
//! - [`prechecks`]: the checks run on `ctl migrate`, on a dry run and again after QUIESCE.
//! - [`leftovers`]: the target's sweeper for imports nobody finishes.
//! - [`peer`]: dialing the other controller.
//! - [`stager`]: the source's side of the bulk import (staging the description and charms).
//!
//! What `ctl` sees of migrations (`Migrate`, `AbortMigration`, `MigrationStatus`, the migration
//! fields of `show-model`, `models` and `status`) is the client API's (`client_api::migrations`).

pub mod leftovers;
pub mod master;
pub mod peer;
pub mod prechecks;
pub mod service;
pub mod stager;
pub mod staging;

pub use crate::plumbing::{failpoint, failpoint_value};
