//! Agents' status reports, log records and heartbeats: a report names only the agent's machine
//! and its units and is applied through one replicated `AgentReport`, deduplicated on the
//! agent's `seq`; heartbeats feed this node's presence table.

use prost::Message;
use sha2::{Digest, Sha256};
use starling_proto::agent as pb;
use starling_proto::command::{command, command_result, AgentReport, AgentStatusReport};
use starling_proto::limits::REPORT_ITEMS_MAX;
use starling_storage::model::agent::{entity_ownership, Ownership};
use starling_storage::model::names::{self, Entity};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{AgentIdentity, AgentService};
use crate::plumbing::{propose_model_write, storage_error};

/// Checks each entity an agent report names: `PermissionDenied` for one that is not the
/// machine or a unit on it (a unit that no longer exists passes; applying skips it).
/// `unit_machine` looks up where a unit is placed.
pub fn check_report_entities<'e>(
    machine_number: u64,
    machine_id: &str,
    entities: impl IntoIterator<Item = &'e str>,
    mut unit_machine: impl FnMut(&str, u64) -> Result<Option<String>, Status>,
) -> Result<(), Status> {
    for entity in entities {
        let parsed =
            names::parse_entity(entity).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let placed = match &parsed {
            Entity::Unit {
                application,
                number,
            } => unit_machine(application, *number)?,
            _ => None,
        };
        if entity_ownership(&parsed, machine_number, placed.as_deref()) == Ownership::Foreign {
            return Err(Status::permission_denied(format!(
                "the agent of machine {machine_id} may not report about {entity}"
            )));
        }
    }
    Ok(())
}

impl AgentService {
    /// A request id that is the same for a re-sent report, so Raft applies it once even when
    /// only log records (which carry no `seq`) were in it.
    pub(super) fn report_request_id(agent: &AgentIdentity, request: &pb::ReportRequest) -> String {
        let mut hasher = Sha256::new();
        hasher.update(agent.model_uuid.as_bytes());
        hasher.update([0]);
        hasher.update(agent.machine_id.as_bytes());
        hasher.update([0]);
        hasher.update(request.encode_to_vec());
        format!("agent-report-{}", hex::encode(hasher.finalize()))
    }

    pub(super) async fn heartbeat_call(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        self.mark_present(&agent).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: self.heartbeat_interval_ms()?,
        }))
    }

    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    pub(super) async fn report_call(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        self.refuse_importing(&agent.model_uuid).await?;
        let message = request.into_inner();
        if message.reports.len() > REPORT_ITEMS_MAX || message.logs.len() > REPORT_ITEMS_MAX {
            return Err(Status::invalid_argument(format!(
                "a report carries at most {REPORT_ITEMS_MAX} status reports and {REPORT_ITEMS_MAX} log records"
            )));
        }
        let state = self.handle.state();
        check_report_entities(
            agent.machine_number,
            &agent.machine_id,
            message
                .reports
                .iter()
                .map(|r| r.entity.as_str())
                .chain(message.logs.iter().map(|l| l.entity.as_str())),
            |application, number| {
                Ok(state
                    .unit(&agent.model_uuid, application, number)
                    .map_err(storage_error)?
                    .map(|u| u.machine))
            },
        )?;
        if message.reports.is_empty() && message.logs.is_empty() {
            let applied_seq = state
                .agent_seq(&agent.model_uuid, agent.machine_number)
                .map_err(storage_error)?;
            return Ok(Response::new(pb::ReportResponse { applied_seq }));
        }
        let request_id = Self::report_request_id(&agent, &message);
        let op = command::Op::AgentReport(AgentReport {
            model_uuid: agent.model_uuid.clone(),
            machine_id: agent.machine_id.clone(),
            reports: message
                .reports
                .into_iter()
                .map(|r| AgentStatusReport {
                    seq: r.seq,
                    entity: r.entity,
                    kind: r.kind,
                    status: r.status,
                })
                .collect(),
            logs: message.logs,
        });
        // A report that meets the model's migration fence is held like any write: applied
        // here after an abort, or answered with the redirect (the agent follows it and sends
        // the report again to the target) after SUCCESS.
        let result = propose_model_write(
            &self.handle,
            &format!("machine-{}", agent.machine_id),
            agent.authority("report"),
            request_id,
            &agent.model_uuid,
            op,
        )
        .await?;
        let applied_seq = match &result.result {
            Some(command_result::Result::Ok(ok)) => ok.applied_seq,
            _ => 0,
        };
        Ok(Response::new(pb::ReportResponse { applied_seq }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_may_name_only_the_machine_and_its_units() {
        let placed = |application: &str, number: u64| -> Result<Option<String>, Status> {
            Ok(match (application, number) {
                ("web", 0) => Some("0".into()),
                ("web", 1) => Some("1".into()),
                _ => None,
            })
        };
        let check = |entities: &[&str]| {
            check_report_entities(0, "0", entities.iter().copied(), placed).map_err(|s| s.code())
        };
        assert_eq!(check(&["machine-0", "unit-web-0", "unit-web-5"]), Ok(()));
        assert_eq!(
            check(&["unit-web-0", "unit-web-1"]),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(check(&["machine-1"]), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&["model"]), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&["nonsense"]), Err(tonic::Code::InvalidArgument));
    }
}
