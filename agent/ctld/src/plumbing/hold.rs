//! Writes held through a migration's fence. On the source, a write the state machine refused
//! because the model is locked (`CommandError.transient` with `locked_by`; such a refusal is
//! never kept as the request's result) waits on this node's applied state, bounded by
//! controller config `migration-fence-hold`: when the lock goes away without a redirect (the
//! migration aborted) it is proposed again under the same request id and applies here; when the
//! redirect appears (SUCCESS) it is answered with the redirect and `retry_on_target`, and the
//! client sends it once to the target under the same id; only a write that outlives the hold
//! gets the "locked by migration" refusal. A node that applies behind the leader does not see
//! the end in time: every 100 ms without it, the write is proposed again and the leader's state
//! machine answers.
//!
//! A write this node checked before it knew of the migration's SUCCESS reaches the log after it
//! and is refused there because the model is a redirect (`CommandError.migrated`, with the
//! redirect): nothing applied, so it is answered like a held write, with `retry_on_target`, at
//! once (this node may apply the log behind the leader). On the target, a call for a model that
//! is still an import but sealed (the source holds the fence) waits the same way until Activate
//! applies.

use std::time::Duration;

use starling_proto::command::{command, command_result, Authority, Command, CommandResult};
use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use tokio::time::Instant;
use tonic::Status;

use super::propose::request_id_or_new;
use super::status::{command_result_status, proposal, redirect_status, storage_error};
use super::{failpoint_value, now_unix_ms};

/// How long a write may wait in a fence (controller config `migration-fence-hold`; its
/// default when no operator set it or the config cannot be read now).
pub fn fence_hold(handle: &RaftHandle) -> Duration {
    let config = handle.state().try_controller_config().unwrap_or_default();
    starling_storage::model::controller_config::duration(&config, "migration-fence-hold")
        .expect("migration-fence-hold has a valid default")
}

/// The migration whose lock refused `result`, if that is what refused it.
fn locked_by(result: &CommandResult) -> Option<&str> {
    match &result.result {
        Some(command_result::Result::Error(e)) if e.transient && !e.locked_by.is_empty() => {
            Some(e.locked_by.as_str())
        }
        _ => None,
    }
}

/// Whether the state machine refused `result` because the model had migrated away.
fn refused_as_migrated(result: &CommandResult) -> bool {
    matches!(&result.result, Some(command_result::Result::Error(e)) if e.migrated)
}

/// The redirect a refusal because the model migrated away carries (entries of older versions
/// carry none).
fn refusal_redirect(result: &CommandResult) -> Option<&starling_proto::migration::Redirect> {
    match &result.result {
        Some(command_result::Result::Error(e)) if e.migrated => e.redirect.as_ref(),
        _ => None,
    }
}

/// How a fence ended for a held write.
enum FenceEnd {
    /// The lock is gone and the model is still here: the migration aborted.
    Released,
    /// The model is a redirect now: the migration reached SUCCESS.
    Redirected(Status),
    /// The hold ran out first.
    StillLocked,
}

/// Waits on this node's applied state until model `uuid`'s lock goes or its redirect appears,
/// or `deadline`.
async fn wait_for_fence(
    handle: &RaftHandle,
    uuid: &str,
    deadline: Instant,
) -> Result<FenceEnd, Status> {
    let mut applied = handle.state().applied_index();
    loop {
        let (lock, redirect) = handle.state().consistent(|view| {
            (
                stored::read_lock(view.reader(), uuid),
                stored::read_redirect(view.reader(), uuid),
            )
        });
        if let Some(redirect) = redirect.map_err(storage_error)? {
            return Ok(FenceEnd::Redirected(redirect_status(
                handle.state().reader(),
                &redirect,
                true,
            )));
        }
        if lock.map_err(storage_error)?.is_none() {
            return Ok(FenceEnd::Released);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(FenceEnd::StillLocked);
        }
        applied = handle.wait_applied_past(applied, left).await;
    }
}

/// Proposes `op`, a write to model `uuid` for user `caller`, and waits until this node applied
/// it, holding it through a migration's fence (see the module's comment). The request id is
/// the client's (or a new one), the same for every proposal of this write; every proposal
/// carries the caller's `authority`, which applying checks again.
pub async fn propose_model_write(
    handle: &RaftHandle,
    caller: &str,
    authority: Authority,
    request_id: String,
    uuid: &str,
    op: command::Op,
) -> Result<CommandResult, Status> {
    let request_id = request_id_or_new(request_id);
    // Failpoint for the tests: `client.write.before-propose=return(MS)` delays the write
    // between this node's checks and its proposal, so it meets what the log commits meanwhile.
    if let Some(ms) = failpoint_value("client.write.before-propose").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut deadline = None;
    loop {
        let command = Command {
            request_id: request_id.clone(),
            op: Some(op.clone()),
            proposed_unix_ms: now_unix_ms(),
            caller: caller.to_owned(),
            authority: Some(authority.clone()),
        };
        let proposed = handle.propose(command).await.map_err(|e| proposal(&e))?;
        if refused_as_migrated(&proposed.result) {
            // SUCCESS came first in the log: the client sends the write to the target, once,
            // under the same request id (it applied nowhere yet). The refusal names the target,
            // so a follower that applies behind the leader need not catch up to answer.
            if let Some(redirect) = refusal_redirect(&proposed.result) {
                return Err(redirect_status(handle.state().reader(), redirect, true));
            }
            handle
                .wait_applied(proposed.log_index)
                .await
                .map_err(|e| proposal(&e))?;
            let state = handle.state();
            if let Some(redirect) =
                stored::read_redirect(state.reader(), uuid).map_err(storage_error)?
            {
                return Err(redirect_status(state.reader(), &redirect, true));
            }
        }
        if locked_by(&proposed.result).is_none() {
            command_result_status(&proposed.result)?;
            handle
                .wait_applied(proposed.log_index)
                .await
                .map_err(|e| proposal(&e))?;
            return Ok(proposed.result);
        }
        // This node watches for the fence's end in its applied state once it has applied the
        // lock, a slice of the hold at a time; after a slice without the end it asks the
        // leader's state machine again by proposing the write once more (a node that applies
        // far behind the leader would otherwise hold the write past its bound, or miss the
        // end altogether).
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + fence_hold(handle));
        let slice_end = (Instant::now() + FENCE_RECHECK).min(deadline);
        if applied_by(handle, proposed.log_index, slice_end).await {
            match wait_for_fence(handle, uuid, slice_end).await? {
                FenceEnd::Released => continue,
                FenceEnd::Redirected(status) => return Err(status),
                FenceEnd::StillLocked => {}
            }
        }
        if Instant::now() >= deadline {
            command_result_status(&proposed.result)?;
            unreachable!("a lock refusal is an error");
        }
    }
}

/// How long a held write watches this node's applied state before it asks the leader again.
const FENCE_RECHECK: Duration = Duration::from_millis(100);

/// Whether this node has applied `index` by `until` (it waits until then at most).
async fn applied_by(handle: &RaftHandle, index: u64, until: Instant) -> bool {
    let mut applied = handle.state().applied_index();
    while applied < index {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        applied = handle.wait_applied_past(applied, left).await;
    }
    true
}

/// On the target: when model `uuid` is an import that is sealed (its source is in the fence and
/// sent the last changes), waits until it is activated here, at most `migration-fence-hold`.
/// Returns at once for anything else; the caller then answers as usual.
pub async fn wait_for_activation(handle: &RaftHandle, uuid: &str) -> Result<(), Status> {
    let sealed = |handle: &RaftHandle| -> Result<bool, Status> {
        Ok(stored::read_import(handle.state().reader(), uuid)
            .map_err(storage_error)?
            .is_some_and(|import| import.sealed_index > 0))
    };
    if !sealed(handle)? {
        return Ok(());
    }
    let deadline = Instant::now() + fence_hold(handle);
    let mut applied = handle.state().applied_index();
    while sealed(handle)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        applied = handle.wait_applied_past(applied, left).await;
    }
    Ok(())
}
