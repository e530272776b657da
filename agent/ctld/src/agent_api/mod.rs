//! The agent API (the `Agent` gRPC service, what `agentd` calls), one file per topic: `watch`
//! (the desired state stream and charm downloads), `reports` (status reports, log records and
//! heartbeats) and `validation` (the agents' part in a migration). Every call is authenticated
//! from its metadata (`authorization: Bearer <credential>`, `x-model-uuid`, `x-machine-id`)
//! against the machine's stored credential hash; an agent may touch only its own machine and
//! the units on it. `Watch` streams the machine's desired state, `Heartbeat` feeds presence
//! (`presence`; an agent's arrival, by watch, heartbeat or a migration's login check, is
//! replicated before the call answers), `Report` applies status reports and log records through one replicated
//! `AgentReport`, `DownloadCharm` streams the charms of the machine's units.

mod reports;
mod validation;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use starling_proto::agent as pb;
use starling_proto::agent::agent_server::{Agent, AgentServer};
use starling_proto::command::{authority, Authority};
use starling_proto::limits::MESSAGE_BYTES_MAX;
use starling_storage::migration as stored;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use starling_storage::model::names;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::auth::{self, hash_token};
use crate::context::NodeContext;
use crate::load::LoadBoard;
use crate::plumbing::{now_unix_ms, proposal, storage_error, wait_for_activation};
use crate::presence::PresenceTable;
use starling_raft::RaftHandle;

pub use reports::check_report_entities;
use watch::DesiredCache;
pub use watch::{AgentChunkStream, WatchStream};

/// The one answer to every credential failure: it does not say which part was wrong.
const BAD_CREDENTIAL: &str = "unknown machine or bad credential";
/// A node that has been without its group this long sends its agents elsewhere: it can serve
/// their watch from stale state but cannot commit their reports or migration acknowledgements.
/// Well above the election timeout, so an election alone never triggers it.
const CUT_OFF_AFTER: Duration = Duration::from_secs(5);
/// Longest an arriving agent's call waits for the renewal that shows it present. One
/// replicated write; past this the call goes on and a later renewal carries the agent.
const PRESENCE_WAIT_MAX: Duration = Duration::from_secs(5);

/// An authenticated machine agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The model the machine belongs to.
    pub model_uuid: String,
    /// The machine id ("0", "1", ...).
    pub machine_id: String,
    /// The machine id as a number.
    pub machine_number: u64,
}

impl AgentIdentity {
    /// What applying checks again for a command this agent asks for: its machine still exists.
    pub fn authority(&self, what: &str) -> Authority {
        Authority {
            kind: authority::Kind::Agent as i32,
            model_uuid: self.model_uuid.clone(),
            machine_id: self.machine_id.clone(),
            what: what.to_owned(),
            ..Default::default()
        }
    }
}

/// The credential, model uuid and machine id an agent call carries.
fn agent_metadata<T>(request: &Request<T>) -> Result<(String, String, String), Status> {
    let metadata = request.metadata();
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let missing = || {
        Status::unauthenticated(
            "agent calls carry `authorization: Bearer <credential>`, `x-model-uuid` and `x-machine-id`",
        )
    };
    let credential = text("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(|c| c.trim().to_owned()))
        .ok_or_else(missing)?;
    let model_uuid = text("x-model-uuid").ok_or_else(missing)?;
    let machine_id = text("x-machine-id").ok_or_else(missing)?;
    Ok((credential, model_uuid, machine_id))
}

/// Serves the agent API of one node.
#[derive(Clone)]
pub struct AgentService {
    handle: RaftHandle,
    load: LoadBoard,
    presence: Arc<PresenceTable>,
    desired: Arc<DesiredCache>,
    stop: CancellationToken,
}

impl AgentService {
    /// The service of the node `ctx` describes, recording heartbeats in `presence`; watch
    /// streams end when `stop` is cancelled.
    pub fn new(ctx: &NodeContext, presence: Arc<PresenceTable>, stop: CancellationToken) -> Self {
        Self {
            handle: ctx.handle.clone(),
            load: ctx.load.clone(),
            presence,
            desired: Arc::new(DesiredCache::default()),
            stop,
        }
    }

    /// The service as a tonic server.
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// The agent making `request`: `Unauthenticated` (without saying what was wrong) unless the
    /// machine exists in the model and the credential hashes to its stored hash;
    /// `PermissionDenied` for a machine that was removed.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<AgentIdentity, Status> {
        let (credential, model_uuid, machine_id) = agent_metadata(request)?;
        let machine_number = names::parse_machine_id(&machine_id)
            .map_err(|_| Status::unauthenticated(BAD_CREDENTIAL))?;
        let state = self.handle.state();
        let mut machine = state
            .machine(&model_uuid, machine_number)
            .map_err(storage_error)?;
        if machine.is_none() {
            // A machine added a moment ago may not be applied here yet: catch up once.
            self.handle
                .linearizable_barrier()
                .await
                .map_err(|e| proposal(&e))?;
            machine = state
                .machine(&model_uuid, machine_number)
                .map_err(storage_error)?;
        }
        let Some(machine) = machine else {
            // A model reaped after migrating away keeps its agents' credential hashes in the
            // redirect, so an agent that missed the switch is still told where to go.
            if let Some(redirect) =
                stored::read_redirect(state.reader(), &model_uuid).map_err(storage_error)?
            {
                let presented = hash_token(&credential);
                if let Some(expected) = redirect.machine_credentials.get(&machine_id) {
                    if !expected.is_empty()
                        && auth::constant_time_eq(presented.as_bytes(), expected.as_bytes())
                    {
                        return Ok(AgentIdentity {
                            model_uuid,
                            machine_id,
                            machine_number,
                        });
                    }
                }
                return Err(Status::unauthenticated(BAD_CREDENTIAL));
            }
            let removed = state
                .model(&model_uuid)
                .map_err(storage_error)?
                .is_some_and(|m| machine_number < m.next_machine_id);
            if removed {
                return Err(Status::permission_denied(format!(
                    "machine {machine_id} was removed from model {model_uuid}"
                )));
            }
            return Err(Status::unauthenticated(BAD_CREDENTIAL));
        };
        let presented = hash_token(&credential);
        if machine.credential_sha256.is_empty()
            || !auth::constant_time_eq(presented.as_bytes(), machine.credential_sha256.as_bytes())
        {
            return Err(Status::unauthenticated(BAD_CREDENTIAL));
        }
        Ok(AgentIdentity {
            model_uuid,
            machine_id,
            machine_number,
        })
    }

    /// Refuses agents while this node is cut off from its group, so they move to another
    /// endpoint.
    fn refuse_if_cut_off(&self) -> Result<(), Status> {
        match self.handle.cut_off_for(CUT_OFF_AFTER) {
            Some(age) => Err(Status::unavailable(format!(
                "controller node {} has been without its group for {}s; try another endpoint",
                self.handle.node_id(),
                age.as_secs()
            ))),
            None => Ok(()),
        }
    }

    /// Refuses an agent of a model that is an import here: it is not active yet. An import the
    /// source has sealed (it is in the fence) is waited for first, at most
    /// `migration-fence-hold`: it becomes active moments later.
    async fn refuse_importing(&self, model_uuid: &str) -> Result<(), Status> {
        wait_for_activation(&self.handle, model_uuid).await?;
        if let Some(import) =
            stored::read_import(self.handle.state().reader(), model_uuid).map_err(storage_error)?
        {
            return Err(Status::unavailable(format!(
                "model {model_uuid} is being imported (migration {}); not active yet",
                import.migration_id
            )));
        }
        Ok(())
    }

    /// Records that `agent` is here now; when it just arrived, waits (at most
    /// `PRESENCE_WAIT_MAX`) until the replicated presence says so, so whatever the agent does
    /// next is applied after its presence.
    async fn mark_present(&self, agent: &AgentIdentity) -> Result<(), Status> {
        let interval = agent_heartbeat_interval(
            &self
                .handle
                .state()
                .try_controller_config()
                .map_err(storage_error)?,
        );
        let fresh = self.presence.record(
            &agent.model_uuid,
            &agent.machine_id,
            now_unix_ms(),
            interval,
        );
        if let Some(fresh) = fresh {
            if !self.presence.wait_renewed(fresh, PRESENCE_WAIT_MAX).await {
                // Not an error for the agent: the next renewal carries it.
                debug!(machine = %agent.machine_id, "presence not renewed yet");
            }
        }
        Ok(())
    }

    fn heartbeat_interval_ms(&self) -> Result<u64, Status> {
        let config = self
            .handle
            .state()
            .try_controller_config()
            .map_err(storage_error)?;
        Ok(u64::try_from(agent_heartbeat_interval(&config).as_millis()).unwrap_or(u64::MAX))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type WatchStream = WatchStream;
    type DownloadCharmStream = AgentChunkStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.watch_call(request).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.heartbeat_call(request).await
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        self.report_call(request).await
    }

    async fn download_charm(
        &self,
        request: Request<pb::AgentDownloadRequest>,
    ) -> Result<Response<Self::DownloadCharmStream>, Status> {
        self.download_charm_call(request).await
    }

    async fn migration_report(
        &self,
        request: Request<pb::MigrationReportRequest>,
    ) -> Result<Response<pb::MigrationReportResponse>, Status> {
        self.migration_report_call(request).await
    }

    async fn validate_login(
        &self,
        request: Request<pb::ValidateLoginRequest>,
    ) -> Result<Response<pb::ValidateLoginResponse>, Status> {
        self.validate_login_call(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_metadata_needs_all_three_parts() {
        let mut request = Request::new(());
        assert_eq!(
            agent_metadata(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let metadata = request.metadata_mut();
        metadata.insert("authorization", "Bearer abc".parse().unwrap());
        metadata.insert("x-model-uuid", "u".parse().unwrap());
        assert!(agent_metadata(&request).is_err());
        request
            .metadata_mut()
            .insert("x-machine-id", "3".parse().unwrap());
        assert_eq!(
            agent_metadata(&request).unwrap(),
            ("abc".to_owned(), "u".to_owned(), "3".to_owned())
        );
    }
}
