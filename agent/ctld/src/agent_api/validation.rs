//! The agents' part in a migration: acknowledgements of the quiesce and validation results
//! (persisted as the migration's progress), and the target's check that an agent's login is
//! for a migration it holds.

use starling_proto::agent as pb;
use starling_proto::command::{command, Command};
use starling_storage::migration as stored;
use starling_storage::model::migration::{MigrationId, Phase};
use tonic::{Code, Request, Response, Status};
use tracing::{debug, instrument};

use super::{agent_metadata, AgentService};
use crate::plumbing::{now_unix_ms, propose, storage_error};

impl AgentService {
    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    pub(super) async fn migration_report_call(
        &self,
        request: Request<pb::MigrationReportRequest>,
    ) -> Result<Response<pb::MigrationReportResponse>, Status> {
        use starling_proto::command::{
            migration_progress::Fact, AgentValidation, MigrationProgress,
        };
        self.refuse_if_cut_off()?;
        let agent = self.authenticate(&request).await?;
        let message = request.into_inner();
        let id = MigrationId::parse(&message.migration_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if id.model_uuid != agent.model_uuid {
            return Err(Status::permission_denied(
                "an agent reports only about its own model's migration",
            ));
        }
        let fact = match Phase::parse(&message.phase) {
            Some(phase) if phase.agents_validate() => Fact::AgentValidated(AgentValidation {
                machine_id: agent.machine_id.clone(),
                ok: message.ok,
                reason: message.reason.clone(),
            }),
            Some(Phase::Quiesce) => Fact::AgentAcked(agent.machine_id.clone()),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "agents report their validation in CATCHUP, not {:?}",
                    message.phase
                )))
            }
        };
        let command = Command {
            request_id: format!(
                "{id}/agent/{}/{}/{}",
                agent.machine_id, message.phase, message.ok
            ),
            op: Some(command::Op::MigrationProgress(MigrationProgress {
                migration_id: id.to_string(),
                fact: Some(fact),
            })),
            proposed_unix_ms: now_unix_ms(),
            caller: format!("machine-{}", agent.machine_id),
            authority: Some(agent.authority("report on a migration")),
        };
        propose(&self.handle, command).await?;
        debug!(migration = %id, machine = %agent.machine_id, phase = %message.phase, ok = message.ok, "agent reported");
        Ok(Response::new(pb::MigrationReportResponse {}))
    }

    pub(super) async fn validate_login_call(
        &self,
        request: Request<pb::ValidateLoginRequest>,
    ) -> Result<Response<pb::ValidateLoginResponse>, Status> {
        self.refuse_if_cut_off()?;
        let agent = match self.authenticate(&request).await {
            Ok(agent) => agent,
            Err(status) if status.code() == Code::Unauthenticated => {
                // A machine added on the source while the model catches up reaches this
                // import with a later batch of changes: not known yet is not a refusal.
                let (_, model_uuid, machine_id) = agent_metadata(&request)?;
                let importing = stored::read_import(self.handle.state().reader(), &model_uuid)
                    .map_err(storage_error)?
                    .is_some();
                return Err(if importing {
                    Status::unavailable(format!(
                        "the import of model {model_uuid} does not hold machine {machine_id} \
                         yet; try again"
                    ))
                } else {
                    status
                });
            }
            Err(status) => return Err(status),
        };
        let migration_id = request.into_inner().migration_id;
        let reader = self.handle.state().reader();
        let import = stored::read_import(reader, &agent.model_uuid).map_err(storage_error)?;
        let activated =
            stored::read_activated_by(reader, &agent.model_uuid).map_err(storage_error)?;
        let ours = import.is_some_and(|i| i.migration_id == migration_id)
            || activated.is_some_and(|a| a == migration_id);
        if !ours {
            return Err(Status::failed_precondition(format!(
                "this controller holds no import of migration {migration_id}"
            )));
        }
        // The agent reached this controller: once the import is activated, it is `started`
        // here without waiting for its first heartbeat.
        self.mark_present(&agent).await?;
        let model = self
            .handle
            .state()
            .model(&agent.model_uuid)
            .map_err(storage_error)?
            .map(|m| m.name)
            .unwrap_or_default();
        Ok(Response::new(pb::ValidateLoginResponse {
            model_name: model,
        }))
    }
}
