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
//!
//! What `ctl` sees of migrations (`Migrate`, `AbortMigration`, `MigrationStatus`, the migration
//! fields of `show-model`, `models` and `status`) is the client API's (`client_api::migrations`).

pub mod leftovers;
pub mod master;
pub mod peer;
pub mod prechecks;
pub mod service;

/// Evaluates failpoint `name` (built with the `failpoints` feature; configured with the
/// `FAILPOINTS` environment variable, e.g. `migration.source.import=return`). Returns a reason
/// naming the failpoint when it is set to `return`, so the caller fails the step.
pub fn failpoint(name: &str) -> Option<String> {
    failpoint_value(name).map(|value| format!("failpoint {name}: {value}"))
}

/// The value of failpoint `name` when it is set to `return(VALUE)` ("failpoint" for a bare
/// `return`); `None` when it is off or the build has no failpoints. Only `return` is meant to
/// be used: `sleep` and `pause` would block an async worker thread.
pub fn failpoint_value(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        (|| {
            fail::fail_point!(name, |value| Some(
                value.unwrap_or_else(|| "failpoint".into())
            ));
            None
        })()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}
