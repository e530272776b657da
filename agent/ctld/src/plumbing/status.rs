//! The one place where a node's errors become gRPC statuses: rule violations of the state
//! machine (`CommandResult` errors and `ModelError`s), failed reads of the replicated state,
//! refused proposals (not leader, with its hint), and the answers for a model that migrated away
//! or is still being imported. Handlers return these; they build only their own input checks.

use prost::Message;
use starling_proto::command::{command_error, command_result, CommandResult};
use starling_proto::controller::{ErrorDetail, ModelRedirect};
use starling_raft::ProposeError;
use starling_storage::migration as stored;
use starling_storage::model::migration::MigrationId;
use starling_storage::model::{ErrorKind, ModelError};
use starling_storage::StateRead;
use tonic::{Code, Status};

/// A failed read of the replicated state, as a status.
pub fn storage_error(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("cannot read the controller state: {e}"))
}

/// A refused or failed proposal or barrier (`Unavailable` with a `leader-hint` when this node
/// is not the leader).
pub fn proposal(e: &ProposeError) -> Status {
    starling_raft::propose_error_status(e)
}

/// A rule of `storage::model` refused the request.
pub fn refusal(e: &ModelError) -> Status {
    let code = match e.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
    };
    Status::new(code, e.to_string())
}

/// Maps a state-machine rule violation to a status; `Ok` results pass.
pub fn command_result_status(result: &CommandResult) -> Result<(), Status> {
    match &result.result {
        Some(command_result::Result::Ok(_)) => Ok(()),
        Some(command_result::Result::Error(e)) => {
            let code = match command_error::Code::try_from(e.code)
                .unwrap_or(command_error::Code::Unspecified)
            {
                command_error::Code::InvalidArgument => Code::InvalidArgument,
                command_error::Code::NotFound => Code::NotFound,
                command_error::Code::AlreadyExists => Code::AlreadyExists,
                command_error::Code::FailedPrecondition => Code::FailedPrecondition,
                command_error::Code::PermissionDenied => Code::PermissionDenied,
                command_error::Code::Unspecified => Code::Internal,
            };
            Err(Status::new(code, e.message.clone()))
        }
        None => Err(Status::internal("the state machine returned no result")),
    }
}

/// The status a client gets for a model that migrated away: the message `ctl` prints, and as
/// its details an `ErrorDetail` naming the target. `retry_on_target` when the request was held
/// in the fence or reached the log after SUCCESS (`held`), or when the migration is still
/// finishing (SUCCESS, LOGTRANSFER, REAP): the client sends the request once to the target,
/// under the same request id, and the user sees no error. After DONE a request that this node
/// turned away before proposing it gets the redirect error itself.
pub fn redirect_status(
    state: &(impl StateRead + ?Sized),
    redirect: &starling_proto::migration::Redirect,
    held: bool,
) -> Status {
    let finishing = || {
        MigrationId::parse(&redirect.migration_id)
            .ok()
            .and_then(|id| stored::read_migration(state, &id).ok().flatten())
            .is_some_and(|record| !stored::is_terminal(&record))
    };
    let detail = ErrorDetail {
        redirect: Some(ModelRedirect {
            model_uuid: redirect.model_uuid.clone(),
            model_name: redirect.model_name.clone(),
            model_owner: redirect.model_owner.clone(),
            controller_name: redirect.controller_name.clone(),
            controller_uuid: redirect.controller_uuid.clone(),
            endpoints: redirect.endpoints.clone(),
            ca_cert: redirect.ca_cert.clone(),
            retry_on_target: held || finishing(),
        }),
    };
    Status::with_details(
        Code::FailedPrecondition,
        format!(
            "model \"{}\" has been migrated to controller \"{}\". To access it run 'ctl switch \
             {}:{}'.",
            redirect.model_name,
            redirect.controller_name,
            redirect.controller_name,
            redirect.model_name
        ),
        detail.encode_to_vec().into(),
    )
}

/// The status a client gets for a model this controller holds as an import: it becomes active
/// here when the migration reaches SUCCESS and the source activates it, moments later.
pub fn importing(model_name: &str, import: &starling_proto::migration::ImportRecord) -> Status {
    let source = import
        .source
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    Status::failed_precondition(format!(
        "model \"{model_name}\" is being imported from controller \"{source}\" by migration \
         {}; it is not active on this controller yet: try again shortly",
        import.migration_id
    ))
}
