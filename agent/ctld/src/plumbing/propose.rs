//! Proposing a command for a caller and waiting until this node has applied it, so the caller
//! reads its own write; request ids make a retried call apply once.

use starling_proto::command::{command, Authority, Command, CommandResult};
use starling_raft::{Proposed, RaftHandle};
use tonic::Status;

use super::now_unix_ms;
use super::status::{command_result_status, proposal};

/// An internal command (no caller, no authority: applying does not check it again), proposed
/// now.
pub fn internal_command(request_id: String, op: command::Op) -> Command {
    Command {
        request_id,
        op: Some(op),
        proposed_unix_ms: now_unix_ms(),
        caller: String::new(),
        authority: None,
    }
}

/// The client's request id, or a new random one.
pub fn request_id_or_new(request_id: String) -> String {
    if request_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        request_id
    }
}

/// Proposes `op` for user `caller` (under the client's request id, or a new one), maps a refusal to
/// its status, and waits until this node has applied it, so the caller reads its own write.
/// `authority` is what applying checks again (the caller's access as this node authorized it).
pub async fn propose_and_wait(
    handle: &RaftHandle,
    caller: &str,
    authority: Authority,
    request_id: String,
    op: command::Op,
) -> Result<CommandResult, Status> {
    let command = Command {
        request_id: request_id_or_new(request_id),
        op: Some(op),
        proposed_unix_ms: now_unix_ms(),
        caller: caller.to_owned(),
        authority: Some(authority),
    };
    let proposed = propose(handle, command).await?;
    handle
        .wait_applied(proposed.log_index)
        .await
        .map_err(|e| proposal(&e))?;
    Ok(proposed.result)
}

/// Proposes `command` and maps a refusal (not leader, or a rule the state machine applied) to
/// its status, without waiting for this node to apply it.
pub async fn propose(handle: &RaftHandle, command: Command) -> Result<Proposed, Status> {
    let proposed = handle.propose(command).await.map_err(|e| proposal(&e))?;
    command_result_status(&proposed.result)?;
    Ok(proposed)
}
