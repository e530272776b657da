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

use std::future::Future;

use starling_proto::command::{command, Command, DropImport};
use starling_storage::migration as stored;
use tokio::sync::watch;

/// Drops the import of migration `id` chunk after chunk: each chunk is its own short commit of
/// at most `REMOVAL_RECORDS_MAX` records (`DropImport.max_records`) under its own request id
/// (`{request_prefix}-{id}/{chunk}/{uuid}`; a repeated chunk only deletes what is still there),
/// for at most `DROP_CALL_BUDGET`; what is left stays an invisible import, dropped by the next
/// call or the leftover rule. `propose` proposes one chunk and gives its result. Returns the
/// last chunk's result and how many chunks were proposed.
pub async fn drop_import_in_chunks<F, Fut, E>(
    id: &str,
    reason: &str,
    request_prefix: &str,
    mut propose: F,
) -> Result<(starling_proto::command::Ok, u32), E>
where
    F: FnMut(String, command::Op) -> Fut,
    Fut: Future<Output = Result<starling_proto::command::Ok, E>>,
{
    let started = std::time::Instant::now();
    let mut chunks = 0u32;
    loop {
        let op = command::Op::DropImport(DropImport {
            migration_id: id.to_owned(),
            reason: reason.to_owned(),
            max_records: stored::REMOVAL_RECORDS_MAX,
        });
        let request_id = format!("{request_prefix}-{id}/{chunks}/{}", uuid::Uuid::new_v4());
        let ok = propose(request_id, op).await?;
        chunks += 1;
        if !ok.more || started.elapsed() >= stored::DROP_CALL_BUDGET {
            return Ok((ok, chunks));
        }
    }
}

/// Counts the applied commands that can change what a migration master decides: a migration
/// started, moved on or asked to abort, and facts reported (an agent validated against the
/// target). The masters wait on it instead of polling, so an agent's report or a new
/// migration is acted on when it applies, not up to a poll interval later.
#[derive(Clone, Debug)]
pub struct MigrationChanges(std::sync::Arc<watch::Sender<u64>>);

impl Default for MigrationChanges {
    fn default() -> Self {
        MigrationChanges(std::sync::Arc::new(watch::Sender::new(0)))
    }
}

impl MigrationChanges {
    /// Notes `command`, just applied on this node (the state machine's apply observer: quick,
    /// never blocks).
    pub fn applied(&self, command: &Command) {
        if matches!(
            command.op,
            Some(
                command::Op::StartMigration(_)
                    | command::Op::MigrationTransition(_)
                    | command::Op::MigrationProgress(_)
                    | command::Op::RequestMigrationAbort(_)
            )
        ) {
            self.0.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::command::{MigrationProgress, SetControllerConfig};

    fn with(op: command::Op) -> Command {
        Command {
            op: Some(op),
            ..Default::default()
        }
    }

    #[test]
    fn only_migration_commands_wake_the_masters() {
        let changes = MigrationChanges::default();
        let mut seen = changes.subscribe();
        changes.applied(&with(command::Op::SetControllerConfig(
            SetControllerConfig::default(),
        )));
        assert!(!seen.has_changed().unwrap());
        changes.applied(&with(command::Op::MigrationProgress(
            MigrationProgress::default(),
        )));
        assert!(seen.has_changed().unwrap());
        seen.borrow_and_update();
        assert!(!seen.has_changed().unwrap());
    }
}
