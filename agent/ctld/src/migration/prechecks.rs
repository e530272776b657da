//! The migration prechecks (`docs/migration.md`), each failure one sentence an operator can act on. They run on
//! `ctl migrate` (all of them, reported together), on `--dry-run`, and again by the master in
//! PRECHECK and in CATCHUP before the fence (there without the agent-presence check, see
//! `AgentPresence`). The source checks its side and asks the target for its own
//! (`Migration.Precheck`), which covers version, cloud and region, name and uuid, and users.

use std::time::Duration;

use starling_proto::migration as pb;
use starling_proto::model::{Life, Model};
use starling_storage::migration as stored;
use starling_storage::model::agent::presence_status;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use tonic::{Code, Status};

use super::peer::Peer;
use crate::context::NodeContext;
use crate::plumbing::{now_unix_ms, storage_error};

/// `a` and `b` as numeric versions ("1.2.3"; missing or non-numeric parts count as 0).
fn version_parts(version: &str) -> Vec<u64> {
    version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .take(3)
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// Whether `target` is at least `source`.
pub fn version_at_least(target: &str, source: &str) -> bool {
    let (mut t, mut s) = (version_parts(target), version_parts(source));
    t.resize(3, 0);
    s.resize(3, 0);
    t >= s
}

/// Whether the source's checks include "every machine's agent is connected".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentPresence {
    /// `ctl migrate` and its dry run: an operator learns at once that an agent is missing.
    Required,
    /// The master's checks: agent presence is read from replicated heartbeat records that show
    /// a connected agent `down` for a moment after a controller restart or a leader change, so
    /// the master does not abort on it. What proves an agent is there is its validation against
    /// the target, which CATCHUP waits for (bounded by its deadline) before the fence.
    LeftToValidation,
}

/// The source's own checks of `model`. `migrating` is the id of the migration running the
/// check (the model is already marked as migrating by it, which is expected).
pub fn source_checks(
    ctx: &NodeContext,
    model: &Model,
    migrating: Option<&str>,
    presence: AgentPresence,
) -> Result<Vec<String>, Status> {
    let mut failures = Vec::new();
    let state = ctx.handle.state();
    if model.uuid == ctx.identity.controller_uuid {
        failures.push(format!(
            "model \"{}\" is the controller model, which never migrates",
            model.name
        ));
        return Ok(failures);
    }
    if model.life != Life::Alive as i32 {
        failures.push(format!(
            "model \"{}\" is not alive (it is being destroyed)",
            model.name
        ));
    }
    let reader = state.reader();
    if let Some(lock) = stored::read_lock(reader, &model.uuid).map_err(storage_error)? {
        if Some(lock.as_str()) != migrating {
            failures.push(format!(
                "model \"{}\" is already migrating (migration {lock}); wait for it or run 'ctl abort-migration {}'",
                model.name, model.name
            ));
        }
    } else if let Some(running) = stored::latest_migration(reader, &model.uuid)
        .map_err(storage_error)?
        .filter(|m| !stored::is_terminal(m))
    {
        let id = stored::record_id(&running).to_string();
        if Some(id.as_str()) != migrating {
            failures.push(format!(
                "model \"{}\" is already migrating (migration {id} is in {})",
                model.name, running.phase
            ));
        }
    }
    // A model that arrived here may not move on before its log has: the records still coming
    // would land in a copy that is leaving.
    if let Some(inbound) = stored::read_log_transfer(reader, &model.uuid).map_err(storage_error)? {
        let from = inbound
            .source
            .as_ref()
            .map_or("its previous controller".to_owned(), |s| {
                format!("controller \"{}\"", s.name)
            });
        failures.push(format!(
            "the log of model \"{}\" is still arriving from {from} (migration {}); migrate it \
             on once that transfer has ended ('ctl end-log-transfer' ends it if that controller \
             is gone for good)",
            model.name, inbound.migration_id
        ));
    }
    if presence == AgentPresence::LeftToValidation {
        return Ok(failures);
    }
    // Every machine's agent must be present: a missing one could not validate or follow.
    let description = state
        .model_description(&model.uuid)
        .map_err(storage_error)?
        .unwrap_or_default();
    let seen = state.model_presence(&model.uuid).map_err(storage_error)?;
    let interval = agent_heartbeat_interval(&state.try_controller_config().map_err(storage_error)?);
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let now = now_unix_ms();
    let missing: Vec<String> = description
        .machines
        .iter()
        .filter(|m| m.life == Life::Alive as i32)
        .filter(|m| presence_status(seen.get(&m.id).copied(), now, interval_ms) != "started")
        .map(|m| m.id.clone())
        .collect();
    if !missing.is_empty() {
        failures.push(format!(
            "the agents of machine(s) {} of model \"{}\" are not connected; start them (agentd) or remove the machines",
            missing.join(", "),
            model.name
        ));
    }
    Ok(failures)
}

/// The question the source asks the target about `model`.
pub fn precheck_request(
    ctx: &NodeContext,
    model: &Model,
    migration_id: &str,
) -> pb::PrecheckRequest {
    pb::PrecheckRequest {
        model_uuid: model.uuid.clone(),
        model_name: model.name.clone(),
        model_owner: model.owner.clone(),
        cloud: model.cloud.clone(),
        region: model.region.clone(),
        source_version: ctx.identity.version.clone(),
        users: model.users.iter().map(|u| u.name.clone()).collect(),
        migration_id: migration_id.to_owned(),
        source_controller_uuid: ctx.identity.controller_uuid.clone(),
    }
}

/// The target's answer, or the failure that stands for it (unreachable, not a superuser).
pub async fn ask_target(
    peer: &Peer,
    target_name: &str,
    request: pb::PrecheckRequest,
) -> Vec<String> {
    match peer
        .call(|mut client| {
            let request = request.clone();
            async move { client.precheck(request).await }
        })
        .await
    {
        Ok(answer) => answer.failures,
        Err(status) => vec![match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => format!(
                "controller \"{target_name}\" did not accept the credential as a superuser: {}; log in to it as a superuser ('ctl login') and try again",
                status.message()
            ),
            _ => format!(
                "controller \"{target_name}\" is unreachable: {}",
                status.message()
            ),
        }],
    }
}

/// The hex sha256 of a PEM certificate, as `ctl` records a controller's CA fingerprint.
pub fn ca_fingerprint(ca_pem: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ca_pem.as_bytes()))
}

/// Refuses a target whose CA certificate is not the one its recorded fingerprint names: the
/// source would otherwise trust, and hand the model to, whatever that certificate signs.
pub fn verify_target_ca(target: &pb::TargetController) -> Result<(), Status> {
    if target.ca_fingerprint.is_empty() {
        return Ok(());
    }
    let dialed = ca_fingerprint(&target.ca_cert);
    if !dialed.eq_ignore_ascii_case(&target.ca_fingerprint) {
        return Err(Status::failed_precondition(format!(
            "the CA certificate given for controller \"{}\" has fingerprint {dialed}, not the \
             recorded {}; refusing to dial it (re-register the controller if its CA changed)",
            target.name, target.ca_fingerprint
        )));
    }
    Ok(())
}

/// A peer for the target with the precheck's short deadline.
pub fn target_peer(target: &pb::TargetController) -> Result<Peer, Status> {
    verify_target_ca(target)?;
    Peer::new(
        &target.endpoints,
        &target.ca_cert,
        &target.token,
        Duration::from_secs(10),
    )
}

/// The target's side of the checks (run on the target, for `Migration.Precheck`).
pub fn target_checks(
    ctx: &NodeContext,
    request: &pb::PrecheckRequest,
) -> Result<Vec<String>, Status> {
    let mut failures = Vec::new();
    let me = &ctx.identity;
    if request.source_controller_uuid == me.controller_uuid {
        failures.push("the target is the same controller as the source".to_owned());
    }
    if !version_at_least(&me.version, &request.source_version) {
        failures.push(format!(
            "controller \"{}\" runs version {}, older than the source's {}; upgrade it first",
            me.controller_name, me.version, request.source_version
        ));
    }
    if request.cloud != me.cloud || request.region != me.region {
        failures.push(format!(
            "model \"{}\" is in {}/{} but controller \"{}\" is in {}/{}; a model only migrates within its cloud and region",
            request.model_name, request.cloud, request.region, me.controller_name, me.cloud, me.region
        ));
    }
    let state = ctx.handle.state();
    let reader = state.reader();
    let incoming =
        starling_storage::model::migration::MigrationId::parse(&request.migration_id).ok();
    // An import of an older attempt is a leftover the new attempt replaces; an import of this
    // very migration is its own copy (the prechecks run again in CATCHUP, before the fence).
    let import = stored::read_import(reader, &request.model_uuid).map_err(storage_error)?;
    let leftover = import.as_ref().is_some_and(|import| {
        match (
            starling_storage::model::migration::MigrationId::parse(&import.migration_id),
            &incoming,
        ) {
            (Ok(held), Some(incoming)) => held.attempt <= incoming.attempt,
            (Ok(_), None) => true,
            _ => false,
        }
    });
    if let Some(import) = &import {
        if !leftover {
            failures.push(format!(
                "controller \"{}\" holds an import of migration {} of this model",
                me.controller_name, import.migration_id
            ));
        }
    } else if state
        .model(&request.model_uuid)
        .map_err(storage_error)?
        .is_some()
    {
        failures.push(format!(
            "controller \"{}\" already has a model with uuid {}",
            me.controller_name, request.model_uuid
        ));
    }
    if let Some(existing) = state
        .model_by_name(&request.model_owner, &request.model_name)
        .map_err(storage_error)?
    {
        if existing.uuid != request.model_uuid {
            failures.push(format!(
                "controller \"{}\" already has a model named \"{}/{}\"; rename or destroy one of them",
                me.controller_name, request.model_owner, request.model_name
            ));
        }
    }
    let users = state.users().map_err(storage_error)?;
    let mut unknown: Vec<&str> = request
        .users
        .iter()
        .map(String::as_str)
        .filter(|name| {
            !users.iter().any(|u| u.name == *name) && !ctx.bootstrap_users.iter().any(|u| u == name)
        })
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        failures.push(format!(
            "user(s) {} of model \"{}\" are unknown on controller \"{}\"; add them there first ('ctl add-user')",
            unknown.join(", "),
            request.model_name,
            me.controller_name
        ));
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_ca_must_match_its_recorded_fingerprint() {
        let mut target = pb::TargetController {
            name: "beta".into(),
            ca_cert: "-----BEGIN CERTIFICATE-----\nbeta\n-----END CERTIFICATE-----\n".into(),
            ..Default::default()
        };
        // Nothing recorded: nothing to compare.
        assert!(verify_target_ca(&target).is_ok());
        target.ca_fingerprint = ca_fingerprint(&target.ca_cert).to_uppercase();
        assert!(verify_target_ca(&target).is_ok());
        target.ca_cert = "-----BEGIN CERTIFICATE-----\nmallory\n-----END CERTIFICATE-----\n".into();
        let refused = verify_target_ca(&target).expect_err("another CA");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused
                .message()
                .contains("for controller \"beta\" has fingerprint"),
            "{}",
            refused.message()
        );
        assert!(
            target_peer(&target).is_err(),
            "the precheck peer dials it anyway"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("0.1.0", "0.1.0"));
        assert!(version_at_least("0.10.0", "0.9.9"));
        assert!(version_at_least("1.0", "0.99.99"));
        assert!(!version_at_least("0.0.9", "0.1.0"));
        assert!(!version_at_least("1.2.3", "1.2.4"));
    }
}
