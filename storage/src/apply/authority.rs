//! Who may ask for a command, checked again when it applies. A service checks its caller
//! against its node's local state, which may lag the revocation of the caller's access or the
//! removal of an agent's machine (a follower that has not applied them yet). So the command
//! carries its `Authority` (how the caller was authenticated, what access it needed) and
//! applying checks it against the state the command applies to: whichever applies first wins,
//! on every node alike.

use starling_proto::command::{authority::Kind, Authority, Command};

use crate::model::{access, names, ModelError};
use crate::records;
use crate::state::StateRead;
use crate::StorageError;

/// The controller access of a user who may do everything.
const SUPERUSER: &str = "superuser";

/// Refuses `command` (`Ok(Err(..))`) if its caller may no longer ask for it; storage failures
/// are `Err`.
pub(super) fn check<R: StateRead + ?Sized>(
    state: &R,
    command: &Command,
) -> Result<Result<(), ModelError>, StorageError> {
    let Some(authority) = &command.authority else {
        return Ok(Ok(()));
    };
    match authority.kind() {
        Kind::Unspecified | Kind::Bootstrap => Ok(Ok(())),
        Kind::User => check_user(state, &command.caller, authority),
        Kind::Agent => check_agent(state, authority),
    }
}

fn check_user<R: StateRead + ?Sized>(
    state: &R,
    user_name: &str,
    authority: &Authority,
) -> Result<Result<(), ModelError>, StorageError> {
    let revoked = |reason: &str| ModelError::AuthorityRevoked {
        caller: format!("user {user_name:?}"),
        what: authority.what.clone(),
        reason: reason.to_owned(),
    };
    let Some(user) = records::read_user(state, user_name)? else {
        return Ok(Err(revoked("the user no longer exists")));
    };
    let superuser = user.controller_access == SUPERUSER;
    if authority.superuser && !superuser {
        return Ok(Err(revoked("the user is no longer a controller superuser")));
    }
    if authority.model_uuid.is_empty() {
        return Ok(Ok(()));
    }
    // A model gone since is the command's own business: it refuses with NOT_FOUND.
    let Some(model) = records::read_model(state, &authority.model_uuid)? else {
        return Ok(Ok(()));
    };
    Ok(access::require_access(
        &model,
        &user.name,
        superuser,
        authority.model_access(),
        &authority.what,
    ))
}

fn check_agent<R: StateRead + ?Sized>(
    state: &R,
    authority: &Authority,
) -> Result<Result<(), ModelError>, StorageError> {
    let revoked = || ModelError::AuthorityRevoked {
        caller: format!("the agent of machine {}", authority.machine_id),
        what: authority.what.clone(),
        reason: format!(
            "the machine was removed from model {}",
            authority.model_uuid
        ),
    };
    let Ok(number) = names::parse_machine_id(&authority.machine_id) else {
        return Ok(Err(revoked()));
    };
    Ok(
        match records::read_machine(state, &authority.model_uuid, number)? {
            Some(_) => Ok(()),
            None => Err(revoked()),
        },
    )
}
