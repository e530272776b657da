//! Migrations in the client API: `Migrate` (prechecks, dry run, start), `AbortMigration`,
//! `MigrationStatus`, and the summary `show-model`, `models` and `status` show.

use rand::RngCore;
use starling_proto::command::{command, EndLogTransfer, RequestMigrationAbort, StartMigration};
use starling_proto::controller as pb;
use starling_proto::migration as mpb;
use starling_proto::model::Access;
use starling_proto::model::Model;
use starling_storage::migration as stored;
use starling_storage::model::migration::{operator_log_transfer_decision, Phase, SourceAnswer};
use starling_storage::StateRead;
use tonic::{Request, Response, Status};
use tracing::info;

use super::ClientApi;
use crate::auth::{self, Caller};
use crate::context::{LiveProgress, NodeContext, ProgressBoard};
use crate::migration::{leftovers, prechecks};
use crate::plumbing::{propose_and_wait, storage_error};

/// The `migration`, `migration-start`, `migration-end` fields and the status note of model
/// `uuid`, from its latest migration here (empty when it never migrated from here).
pub fn summary(
    state: &(dyn StateRead + Send + Sync),
    progress: &ProgressBoard,
    uuid: &str,
) -> Result<(String, i64, i64, String), Status> {
    let Some(record) = stored::latest_migration(state, uuid).map_err(storage_error)? else {
        return Ok(Default::default());
    };
    // A model that left and came back: its last migration is the one that brought it here, of
    // which this controller was the target, so the old outbound record is history only.
    let came_back = stored::read_activated_by(state, uuid)
        .map_err(storage_error)?
        .and_then(|by| starling_storage::model::migration::MigrationId::parse(&by).ok())
        .is_some_and(|by| by.attempt > record.attempt);
    if came_back {
        return Ok(Default::default());
    }
    let id = stored::record_id(&record).to_string();
    let phase = Phase::parse(&record.phase);
    let target = record
        .target
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let migration = match phase {
        Some(Phase::AbortDone) => format!(
            "ABORTDONE: {}",
            record.abort_reason.clone().unwrap_or_default()
        ),
        Some(Phase::Done) => format!("DONE: migrated to controller \"{target}\""),
        _ => record.phase.clone(),
    };
    let notes = if phase.is_some_and(Phase::is_terminal) {
        String::new()
    } else {
        let live = progress.get(&id).unwrap_or_default();
        format!("migrating: {}", activity(&live, &record.phase, &target))
    };
    Ok((
        migration,
        record.started_unix_ms,
        record.ended_unix_ms.unwrap_or(0),
        notes,
    ))
}

/// What a migration in phase `phase` (as persisted) is doing: the master's live words when this
/// node drives it and said them in that phase, else what the phase means.
fn activity(live: &LiveProgress, phase: &str, target: &str) -> String {
    live.activity_in(phase).map_or_else(
        || phase_activity(Phase::parse(phase), target),
        str::to_owned,
    )
}

/// What a phase means, when no live progress is known on the answering node.
fn phase_activity(phase: Option<Phase>, target: &str) -> String {
    match phase {
        Some(Phase::Precheck) => "running prechecks".into(),
        Some(Phase::Precopy) => {
            format!("PRECOPY: copying the model to controller \"{target}\" while it stays writable")
        }
        Some(Phase::Catchup) => {
            format!("CATCHUP: streaming the model's changes to controller \"{target}\"")
        }
        Some(Phase::Quiesce) => "FENCE: model locked, writes held".into(),
        Some(Phase::Import) => format!("importing model on controller \"{target}\""),
        Some(Phase::Validation) => "validating agents against the target".into(),
        Some(Phase::Success) => format!("activating the model on controller \"{target}\""),
        Some(Phase::LogTransfer) => "transferring the model's log".into(),
        Some(Phase::Reap) => "removing the model's data from this controller".into(),
        Some(Phase::Abort) => "aborting".into(),
        _ => "in progress".into(),
    }
}

/// The uuid and name of the model `model_ref` names, here or migrated away from here.
pub fn find_model(
    ctx: &NodeContext,
    caller: &Caller,
    model_ref: Option<&pb::ModelRef>,
) -> Result<(String, String), Status> {
    let model_ref = model_ref.ok_or_else(|| Status::invalid_argument("no model given"))?;
    let state = ctx.handle.state();
    if !model_ref.uuid.is_empty() {
        return Ok((model_ref.uuid.clone(), model_ref.uuid.clone()));
    }
    let (owner, name) = match model_ref.name.split_once('/') {
        Some((owner, name)) => (owner.to_owned(), name.to_owned()),
        None => (caller.user.clone(), model_ref.name.clone()),
    };
    if let Some(model) = state.model_by_name(&owner, &name).map_err(storage_error)? {
        return Ok((model.uuid, model.name));
    }
    match stored::redirect_by_name(state.reader(), &owner, &name, !model_ref.name.contains('/'))
        .map_err(storage_error)?
    {
        Some(r) => Ok((r.model_uuid, r.model_name)),
        None => Err(Status::not_found(format!(
            "model {:?} not found",
            model_ref.name
        ))),
    }
}

/// `Migrate`: every precheck, then (unless a dry run) the migration record in PRECHECK; the
/// master takes it from there.
pub async fn migrate(
    ctx: &NodeContext,
    caller: &Caller,
    model: Model,
    request: pb::MigrateRequest,
) -> Result<pb::MigrateResponse, Status> {
    let mut target = request
        .target
        .ok_or_else(|| Status::invalid_argument("no target controller given"))?;
    if target.endpoints.is_empty() || target.ca_cert.is_empty() {
        return Err(Status::invalid_argument(
            "the target controller needs endpoints and a CA certificate",
        ));
    }
    let mut failures =
        prechecks::source_checks(ctx, &model, None, prechecks::AgentPresence::Required)?;
    if target.controller_uuid == ctx.identity.controller_uuid
        || target.name == ctx.identity.controller_name
    {
        failures.push(format!(
            "controller \"{}\" is the model's own controller; migrate to another one",
            target.name
        ));
    }
    let next_attempt = stored::latest_migration(ctx.handle.state().reader(), &model.uuid)
        .map_err(storage_error)?
        .map_or(1, |m| m.attempt + 1);
    let probe_id = format!("{}:{next_attempt}", model.uuid);
    let peer = prechecks::target_peer(&target)?;
    let question = prechecks::precheck_request(ctx, &model, &probe_id);
    // Ask the target even for a model that fails here, so every failure shows at once.
    let answer = peer
        .call(|mut client| {
            let question = question.clone();
            async move { client.precheck(question).await }
        })
        .await;
    match answer {
        Ok(answer) => {
            failures.extend(answer.failures);
            if target.controller_uuid.is_empty() {
                target.controller_uuid = answer.controller_uuid;
            } else if target.controller_uuid != answer.controller_uuid {
                failures.push(format!(
                    "controller \"{}\" answers with uuid {}, not the {} the client store has",
                    target.name, answer.controller_uuid, target.controller_uuid
                ));
            }
        }
        Err(_) => {
            failures.extend(prechecks::ask_target(&peer, &target.name, question).await);
        }
    }
    if request.dry_run {
        return Ok(pb::MigrateResponse {
            migration_id: String::new(),
            precheck_failures: failures,
        });
    }
    if !failures.is_empty() {
        return Err(Status::failed_precondition(format!(
            "migration prechecks failed:\n  - {}",
            failures.join("\n  - ")
        )));
    }
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let result = propose_and_wait(
        &ctx.handle,
        &caller.user,
        caller.authority(&model.uuid, Access::Unspecified, true, "migrate models"),
        String::new(),
        command::Op::StartMigration(StartMigration {
            model_uuid: model.uuid.clone(),
            target: Some(mpb::TargetController {
                ca_fingerprint: if target.ca_fingerprint.is_empty() {
                    prechecks::ca_fingerprint(&target.ca_cert)
                } else {
                    target.ca_fingerprint.clone()
                },
                ..target.clone()
            }),
            source_secret: hex::encode(secret),
        }),
    )
    .await?;
    let migration_id = match result.result {
        Some(starling_proto::command::command_result::Result::Ok(ok)) => ok.migration_id,
        _ => return Err(Status::internal("the migration started without an id")),
    };
    info!(migration = %migration_id, model = %model.name, target = %target.name, "migration started");
    Ok(pb::MigrateResponse {
        migration_id,
        precheck_failures: Vec::new(),
    })
}

/// The latest migration of model `uuid` (called `name`) from this controller, or NOT_FOUND.
fn latest(
    ctx: &NodeContext,
    uuid: &str,
    name: &str,
) -> Result<starling_proto::migration::MigrationRecord, Status> {
    stored::latest_migration(ctx.handle.state().reader(), uuid)
        .map_err(storage_error)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "model \"{name}\" has never migrated from this controller"
            ))
        })
}

/// `AbortMigration`: persists the operator's request; the master aborts (or the rules refuse
/// after SUCCESS, with the reason).
pub async fn abort(
    ctx: &NodeContext,
    caller: &Caller,
    uuid: &str,
    name: &str,
    reason: String,
) -> Result<pb::AbortMigrationResponse, Status> {
    let record = latest(ctx, uuid, name)?;
    let id = stored::record_id(&record).to_string();
    if stored::is_terminal(&record) {
        return Err(Status::failed_precondition(format!(
            "migration {id} of model \"{name}\" has already ended in {}",
            record.phase
        )));
    }
    let reason = if reason.is_empty() {
        format!("requested by {}", caller.user)
    } else {
        format!("{reason} (requested by {})", caller.user)
    };
    propose_and_wait(
        &ctx.handle,
        &caller.user,
        caller.authority(uuid, Access::Unspecified, true, "abort migrations"),
        String::new(),
        command::Op::RequestMigrationAbort(RequestMigrationAbort {
            migration_id: id.clone(),
            reason,
        }),
    )
    .await?;
    info!(migration = %id, "abort requested");
    Ok(pb::AbortMigrationResponse {
        migration_id: id,
        phase: record.phase,
    })
}

/// How long `EndLogTransfer` waits for the source's answer before taking it as silence (well
/// inside ctl's 30 s request deadline).
const OPERATOR_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `EndLogTransfer`: the operator ends the inbound log transfer of `model`, which arrived here,
/// once the source answered (or did not) as `operator_log_transfer_decision` allows.
pub async fn end_log_transfer(
    ctx: &NodeContext,
    caller: &Caller,
    model: &Model,
    reason: String,
    force: bool,
) -> Result<pb::EndLogTransferResponse, Status> {
    let name = &model.name;
    let transfer = stored::read_log_transfer(ctx.handle.state().reader(), &model.uuid)
        .map_err(storage_error)?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "no log transfer into model \"{name}\" is open: its log has arrived, or it did \
                 not migrate here"
            ))
        })?;
    let id = transfer.migration_id.clone();
    let (source, said) = match transfer.source {
        Some(source) => {
            let source_name = source.name.clone();
            // Within the client's deadline: a source that does not answer in time is silent.
            let answer =
                tokio::time::timeout(OPERATOR_ASK_TIMEOUT, leftovers::ask_source(&id, source))
                    .await
                    .unwrap_or(SourceAnswer::Unreachable);
            let said = operator_log_transfer_decision(&answer, &source_name, force).map_err(
                |refusal| {
                    Status::failed_precondition(format!(
                        "the log transfer of model \"{name}\" (migration {id}) was not ended: \
                         {refusal}"
                    ))
                },
            )?;
            (source_name, said)
        }
        // Recorded by an older version: there is nobody to ask.
        None => (
            String::new(),
            "the transfer was recorded without its source, which cannot be asked".to_owned(),
        ),
    };
    let mut why = format!("ended by {} ({said})", caller.user);
    if !reason.is_empty() {
        why = format!("{reason}; {why}");
    }
    info!(migration = %id, reason = %why, "ending an inbound log transfer");
    propose_and_wait(
        &ctx.handle,
        &caller.user,
        caller.authority(&model.uuid, Access::Unspecified, true, "end log transfers"),
        String::new(),
        command::Op::EndLogTransfer(EndLogTransfer {
            migration_id: id.clone(),
            reason: why,
        }),
    )
    .await?;
    Ok(pb::EndLogTransferResponse {
        migration_id: id,
        source,
        source_answer: said,
    })
}

/// `MigrationStatus`: the latest migration of model `uuid`, with live progress when this node
/// drives it.
pub fn status(ctx: &NodeContext, uuid: &str, name: &str) -> Result<pb::MigrationInfo, Status> {
    let record = latest(ctx, uuid, name)?;
    let id = stored::record_id(&record).to_string();
    let live = ctx.progress.get(&id).unwrap_or_default();
    let phase = Phase::parse(&record.phase);
    let target = record
        .target
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let activity = if phase.is_some_and(Phase::is_terminal) {
        String::new()
    } else {
        activity(&live, &record.phase, &target)
    };
    let machines = ctx
        .handle
        .state()
        .model_description(uuid)
        .map_err(storage_error)?
        .map_or(0, |d| d.machines.len() as u64);
    Ok(pb::MigrationInfo {
        migration_id: id,
        model_uuid: record.model_uuid.clone(),
        model_name: record.model_name.clone(),
        target_name: target,
        phase: record.phase.clone(),
        started_unix_ms: record.started_unix_ms,
        ended_unix_ms: record.ended_unix_ms,
        abort_reason: record.abort_reason.clone(),
        abort_requested: record.abort_requested.clone(),
        history: record.history.clone(),
        activity,
        bytes_sent: live.bytes_sent,
        bytes_total: live.bytes_total,
        records_total: live.records_total,
        import_ms: live.import_ms,
        import_bytes: live.import_bytes,
        import_records: if live.import_ms > 0 {
            live.records_total
        } else {
            0
        },
        agents_total: live.agents_total.max(machines),
        agents_acked: record.agents_acked.len() as u64,
        agents_validated: record.agents_validated.len() as u64,
        initiated_by: record.initiated_by.clone(),
        catchup_lag: live.lag.unwrap_or(0),
        changes_sent: live.changes_sent,
    })
}

impl ClientApi {
    /// `Migrate` (superuser only: it hands the model to another controller).
    pub(super) async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<pb::MigrateResponse>, Status> {
        let caller = self
            .auth
            .authenticate_superuser(&request, "migrate models")?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.resolve(&caller, message.model.as_ref())?;
        let response = migrate(&self.ctx, &caller, model, message).await?;
        Ok(Response::new(response))
    }

    /// `AbortMigration`.
    pub(super) async fn abort_migration(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        let caller = self
            .auth
            .authenticate_superuser(&request, "abort migrations")?;
        self.barrier().await?;
        let message = request.into_inner();
        let (uuid, name) = find_model(&self.ctx, &caller, message.model.as_ref())?;
        let response = abort(&self.ctx, &caller, &uuid, &name, message.reason).await?;
        Ok(Response::new(response))
    }

    /// `EndLogTransfer` (superuser only: records the source has not sent are given up).
    pub(super) async fn end_log_transfer(
        &self,
        request: Request<pb::EndLogTransferRequest>,
    ) -> Result<Response<pb::EndLogTransferResponse>, Status> {
        let caller = self
            .auth
            .authenticate_superuser(&request, "end log transfers")?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.resolve(&caller, message.model.as_ref())?;
        let response =
            end_log_transfer(&self.ctx, &caller, &model, message.reason, message.force).await?;
        Ok(Response::new(response))
    }

    /// `MigrationStatus`: readable by anyone with read access to the model while it is here,
    /// and by superusers after it left.
    pub(super) async fn migration_status(
        &self,
        request: Request<pb::MigrationStatusRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let (uuid, name) = find_model(&self.ctx, &caller, message.model.as_ref())?;
        match self.handle.state().model(&uuid).map_err(storage_error)? {
            Some(model) => {
                Self::require(&caller, &model, Access::Read, "read its migrations")?;
                self.ctx.load.read(&uuid);
            }
            None if caller.access != auth::SUPERUSER => {
                return Err(Status::permission_denied(format!(
                    "model \"{name}\" has left this controller; only a superuser may read its migration"
                )))
            }
            None => {}
        }
        Ok(Response::new(status(&self.ctx, &uuid, &name)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(phase: &str, text: &str) -> LiveProgress {
        let mut live = LiveProgress::default();
        live.set_activity(phase, text.into());
        live
    }

    #[test]
    fn the_masters_words_are_shown_in_the_phase_they_were_said_in() {
        let progress = live("PRECOPY", "PRECOPY 1.0 MB of 64.0 MB");
        assert_eq!(
            activity(&progress, "PRECOPY", "beta"),
            "PRECOPY 1.0 MB of 64.0 MB"
        );
    }

    #[test]
    fn words_said_in_an_earlier_phase_give_way_to_the_current_phase() {
        // The record reached CATCHUP; the master has not started its first CATCHUP action yet.
        let progress = live("PRECOPY", "PRECOPY 64.0 MB of 64.0 MB");
        assert_eq!(
            activity(&progress, "CATCHUP", "beta"),
            "CATCHUP: streaming the model's changes to controller \"beta\""
        );
        let progress = live("CATCHUP", "CATCHUP lag 0 change(s)");
        assert_eq!(
            activity(&progress, "QUIESCE", "beta"),
            "FENCE: model locked, writes held"
        );
    }

    #[test]
    fn a_node_that_does_not_drive_the_migration_says_what_the_phase_means() {
        let nothing = LiveProgress::default();
        assert_eq!(
            activity(&nothing, "SUCCESS", "beta"),
            "activating the model on controller \"beta\""
        );
        assert_eq!(activity(&nothing, "NOT-A-PHASE", "beta"), "in progress");
    }
}
