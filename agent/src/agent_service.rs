//! The `Agent` gRPC service: what machine agents (`agentd`) call. Every call is authenticated
//! from its metadata (`authorization: Bearer <credential>`, `x-model-uuid`, `x-machine-id`)
//! against the machine's stored credential hash; an agent may touch only its own machine and
//! the units on it. `Watch` streams the machine's desired state, `Heartbeat` feeds presence
//! (`presence.rs`), `Report` applies status reports and log records through one replicated
//! `AgentReport`, `DownloadCharm` streams the charms of the machine's units.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use starling_proto::agent as pb;
use starling_proto::agent::agent_server::Agent;
use starling_proto::command::{command, command_result, AgentReport, AgentStatusReport, Command};
use starling_proto::model::{ModelDescription, Role};
use starling_raft::{propose_error_status, RaftHandle};
use starling_storage::model::agent::{entity_ownership, Ownership};
use starling_storage::model::deployment::effective_config;
use starling_storage::model::names::{self, Entity};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use starling_storage::migration as stored;
use starling_storage::model::migration::{MigrationId, Phase};

use crate::auth::{self, hash_token};
use crate::controller_service::{command_result_status, now_unix_ms};
use crate::model_service::{blob_chunks, storage_error};
use crate::presence::{heartbeat_interval, PresenceTable};

/// The one answer to every credential failure: it does not say which part was wrong.
const BAD_CREDENTIAL: &str = "unknown machine or bad credential";
/// Updates a watch stream buffers for a slow agent before it waits.
const WATCH_CHANNEL_CAPACITY: usize = 2;
/// Longest a watch sleeps without re-checking that this node is still in its group.
const WATCH_WAKE_MAX: Duration = Duration::from_secs(2);
/// A node that has been without its group this long sends its agents elsewhere: it can serve
/// their watch from stale state but cannot commit their reports or migration acknowledgements.
/// Well above the election timeout, so an election alone never triggers it.
const CUT_OFF_AFTER: Duration = Duration::from_secs(5);
/// Most status reports, and most log records, one `Report` call carries.
pub const REPORT_ITEMS_MAX: usize = 1000;

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

/// The desired state of every machine of one model at one applied index, shared by all the
/// model's watchers on this node (computed once per index, not once per agent).
#[derive(Debug, Default)]
pub struct ModelDesired {
    /// Whether the model exists.
    pub model_exists: bool,
    /// The machines that exist.
    pub machines: HashSet<String>,
    /// Unit specs by machine id (machines without units are absent).
    pub units_by_machine: HashMap<String, Vec<pb::UnitSpec>>,
    /// The agents' heartbeat period.
    pub heartbeat_interval_ms: u64,
}

impl ModelDesired {
    /// Computes every machine's desired state from a model's description.
    pub fn compute(description: Option<&ModelDescription>, heartbeat_interval_ms: u64) -> Self {
        let Some(description) = description else {
            return ModelDesired {
                heartbeat_interval_ms,
                ..Default::default()
            };
        };
        let applications: BTreeMap<&str, _> = description
            .applications
            .iter()
            .map(|a| (a.name.as_str(), a))
            .collect();
        let mut units_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for unit in &description.units {
            units_of
                .entry(unit.application.as_str())
                .or_default()
                .push(unit.name.as_str());
        }
        let mut units_by_machine: HashMap<String, Vec<pb::UnitSpec>> = HashMap::new();
        for unit in &description.units {
            let application = applications.get(unit.application.as_str());
            let charm = application.and_then(|a| a.charm.clone());
            let defaults = charm
                .as_ref()
                .map(|c| c.config_defaults.clone())
                .unwrap_or_default();
            let stored = application.map(|a| a.config.clone()).unwrap_or_default();
            let relations = description
                .relations
                .iter()
                .filter_map(|relation| {
                    let ours = relation
                        .endpoints
                        .iter()
                        .position(|e| e.application == unit.application)?;
                    let endpoint = &relation.endpoints[ours];
                    let peer = relation.endpoints.len() == 1 || endpoint.role == Role::Peer as i32;
                    let remote_application = if peer {
                        unit.application.clone()
                    } else {
                        relation.endpoints[1 - ours.min(1)].application.clone()
                    };
                    let remote_units = units_of
                        .get(remote_application.as_str())
                        .map(|names| {
                            names
                                .iter()
                                .filter(|n| **n != unit.name)
                                .map(|n| n.to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(pb::RelationSpec {
                        id: relation.id,
                        endpoint: endpoint.endpoint.clone(),
                        interface: relation.interface.clone(),
                        remote_application,
                        remote_units,
                    })
                })
                .collect();
            units_by_machine
                .entry(unit.machine.clone())
                .or_default()
                .push(pb::UnitSpec {
                    name: unit.name.clone(),
                    application: unit.application.clone(),
                    charm_digest: application
                        .map(|a| a.charm_digest.clone())
                        .unwrap_or_default(),
                    charm,
                    config: effective_config(&defaults, &stored),
                    relations,
                    leader: unit.leader,
                });
        }
        ModelDesired {
            model_exists: true,
            machines: description.machines.iter().map(|m| m.id.clone()).collect(),
            units_by_machine,
            heartbeat_interval_ms,
        }
    }

    /// What machine `machine_id` should be, at `revision`.
    pub fn update_for(&self, machine_id: &str, revision: u64) -> pb::AgentUpdate {
        pb::AgentUpdate {
            revision,
            units: self
                .units_by_machine
                .get(machine_id)
                .cloned()
                .unwrap_or_default(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            redirect: None,
            migration: None,
            machine_removed: !self.model_exists || !self.machines.contains(machine_id),
        }
    }
}

/// One model's desired state at the newest index any watcher asked for.
type DesiredSlot = (u64, Arc<OnceCell<Arc<ModelDesired>>>);

/// Per-model cache of `ModelDesired`. std Mutex, not tokio's: it only guards the map lookup;
/// the computation runs outside it, once per index, in the slot's `OnceCell`.
#[derive(Default)]
struct DesiredCache {
    models: Mutex<HashMap<String, DesiredSlot>>,
}

impl DesiredCache {
    async fn get(
        &self,
        handle: &RaftHandle,
        model_uuid: &str,
    ) -> Result<Arc<ModelDesired>, Status> {
        let index = handle.state().applied_index();
        let cell = {
            let mut models = self.models.lock().expect("desired cache lock");
            match models.get(model_uuid) {
                // A slot at this index or a newer one serves (newer is only fresher).
                Some((at, cell)) if *at >= index => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    models.insert(model_uuid.to_owned(), (index, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async {
            let state = handle.state();
            let description = state.model_description(model_uuid).map_err(storage_error)?;
            let config = state.try_controller_config().map_err(storage_error)?;
            let interval_ms =
                u64::try_from(heartbeat_interval(&config).as_millis()).unwrap_or(u64::MAX);
            if description.is_none() {
                // Forget a destroyed model's slot, so the map stays bounded by live models.
                self.models
                    .lock()
                    .expect("desired cache lock")
                    .remove(model_uuid);
            }
            Ok(Arc::new(ModelDesired::compute(
                description.as_ref(),
                interval_ms,
            )))
        })
        .await
        .cloned()
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

/// Serves the agent API of one node.
#[derive(Clone)]
pub struct AgentService {
    handle: RaftHandle,
    presence: Arc<PresenceTable>,
    desired: Arc<DesiredCache>,
    stop: CancellationToken,
}

impl AgentService {
    /// The service of the node behind `handle`, recording heartbeats in `presence`; watch
    /// streams end when `stop` is cancelled.
    pub fn new(handle: RaftHandle, presence: Arc<PresenceTable>, stop: CancellationToken) -> Self {
        Self {
            handle,
            presence,
            desired: Arc::new(DesiredCache::default()),
            stop,
        }
    }

    /// The service as a tonic server.
    pub fn into_server(self) -> pb::agent_server::AgentServer<Self> {
        pb::agent_server::AgentServer::new(self)
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
                .map_err(|e| propose_error_status(&e))?;
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

    /// Where the agent should go instead of this controller: the model's redirect, from
    /// SUCCESS on.
    fn redirect_for(&self, model_uuid: &str) -> Result<Option<pb::Redirect>, Status> {
        Ok(
            stored::read_redirect(self.handle.state().reader(), model_uuid)
                .map_err(storage_error)?
                .map(|r| pb::Redirect {
                    controller_name: r.controller_name,
                    controller_uuid: r.controller_uuid,
                    api_endpoints: r.endpoints,
                    ca_cert: r.ca_cert,
                }),
        )
    }

    /// The migration the model is in before its point of no return (QUIESCE to VALIDATION),
    /// as the agents are told about it.
    fn migration_notice(&self, model_uuid: &str) -> Result<Option<pb::MigrationNotice>, Status> {
        let reader = self.handle.state().reader();
        let Some(lock) = stored::read_lock(reader, model_uuid).map_err(storage_error)? else {
            return Ok(None);
        };
        let Ok(id) = MigrationId::parse(&lock) else {
            return Ok(None);
        };
        let Some(record) = stored::read_migration(reader, &id).map_err(storage_error)? else {
            return Ok(None);
        };
        let phase = Phase::parse(&record.phase);
        if !matches!(
            phase,
            Some(Phase::Quiesce | Phase::Import | Phase::Validation)
        ) {
            return Ok(None);
        }
        let target = record.target.unwrap_or_default();
        Ok(Some(pb::MigrationNotice {
            migration_id: lock,
            phase: record.phase,
            target: Some(pb::Redirect {
                controller_name: target.name,
                controller_uuid: target.controller_uuid,
                api_endpoints: target.endpoints,
                ca_cert: target.ca_cert,
            }),
        }))
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

    /// Refuses an agent of a model that is an import here: it is not active yet.
    fn refuse_importing(&self, model_uuid: &str) -> Result<(), Status> {
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

    fn heartbeat_interval_ms(&self) -> Result<u64, Status> {
        let config = self
            .handle
            .state()
            .try_controller_config()
            .map_err(storage_error)?;
        Ok(u64::try_from(heartbeat_interval(&config).as_millis()).unwrap_or(u64::MAX))
    }

    /// The update to send now, or `None` when the agent already has it.
    async fn next_update(
        &self,
        agent: &AgentIdentity,
        last_sent: &mut Option<pb::AgentUpdate>,
    ) -> Result<Option<pb::AgentUpdate>, Status> {
        let revision = self.handle.state().applied_index();
        let desired = self.desired.get(&self.handle, &agent.model_uuid).await?;
        let mut update = desired.update_for(&agent.machine_id, revision);
        update.redirect = self.redirect_for(&agent.model_uuid)?;
        if update.redirect.is_some() {
            // A migrated model: the agent needs nothing but where to go.
            update.units.clear();
            update.machine_removed = false;
        } else {
            update.migration = self.migration_notice(&agent.model_uuid)?;
        }
        let same = last_sent.as_ref().is_some_and(|sent| {
            sent.units == update.units
                && sent.heartbeat_interval_ms == update.heartbeat_interval_ms
                && sent.redirect == update.redirect
                && sent.machine_removed == update.machine_removed
                && sent.migration == update.migration
        });
        if same {
            return Ok(None);
        }
        *last_sent = Some(update.clone());
        Ok(Some(update))
    }

    /// Sends the machine's desired state into `tx` until the machine is removed, the client
    /// goes away or the node stops.
    async fn watch_loop(
        self,
        agent: AgentIdentity,
        tx: tokio::sync::mpsc::Sender<Result<pb::AgentUpdate, Status>>,
    ) {
        let mut last_sent = None;
        let mut applied = self.handle.state().applied_index();
        // The desired state changes only with the applied state; a wake-up without a new
        // entry only re-checks that this node is still in its group.
        let mut changed = true;
        loop {
            if let Err(status) = self.refuse_if_cut_off() {
                debug!(machine = %agent.machine_id, "watch ended: this node is cut off");
                let _ = tx.send(Err(status)).await;
                return;
            }
            let next = if changed {
                self.next_update(&agent, &mut last_sent).await
            } else {
                Ok(None)
            };
            match next {
                Ok(Some(update)) => {
                    let ends = update.machine_removed || update.redirect.is_some();
                    tokio::select! {
                        sent = tx.send(Ok(update)) => if sent.is_err() { return },
                        _ = self.stop.cancelled() => return,
                    }
                    if ends {
                        debug!(machine = %agent.machine_id, "watch ended: machine removed or moved");
                        return;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            tokio::select! {
                now = self.handle.wait_applied_past(applied, WATCH_WAKE_MAX) => {
                    changed = now != applied;
                    applied = now;
                }
                _ = tx.closed() => return,
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// A request id that is the same for a re-sent report, so Raft applies it once even when
    /// only log records (which carry no `seq`) were in it.
    fn report_request_id(agent: &AgentIdentity, request: &pb::ReportRequest) -> String {
        let mut hasher = Sha256::new();
        hasher.update(agent.model_uuid.as_bytes());
        hasher.update([0]);
        hasher.update(agent.machine_id.as_bytes());
        hasher.update([0]);
        hasher.update(request.encode_to_vec());
        format!("agent-report-{}", hex::encode(hasher.finalize()))
    }
}

/// The stream type of `Watch`.
pub type WatchStream = futures::stream::BoxStream<'static, Result<pb::AgentUpdate, Status>>;
/// The stream type of `DownloadCharm`.
pub type AgentChunkStream = futures::stream::BoxStream<'static, Result<pb::AgentChunk, Status>>;

#[tonic::async_trait]
impl Agent for AgentService {
    type WatchStream = WatchStream;
    type DownloadCharmStream = AgentChunkStream;

    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.refuse_if_cut_off()?;
        let agent = self.authenticate(&request).await?;
        self.refuse_importing(&agent.model_uuid)?;
        self.presence
            .record(&agent.model_uuid, &agent.machine_id, now_unix_ms());
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_CHANNEL_CAPACITY);
        tokio::spawn(self.clone().watch_loop(agent, tx));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        self.presence
            .record(&agent.model_uuid, &agent.machine_id, now_unix_ms());
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: self.heartbeat_interval_ms()?,
        }))
    }

    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let agent = self.authenticate(&request).await?;
        self.refuse_importing(&agent.model_uuid)?;
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
        let command = Command {
            request_id: Self::report_request_id(&agent, &message),
            op: Some(command::Op::AgentReport(AgentReport {
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
            })),
            proposed_unix_ms: now_unix_ms(),
            caller: format!("machine-{}", agent.machine_id),
        };
        let proposed = self
            .handle
            .propose(command)
            .await
            .map_err(|e| propose_error_status(&e))?;
        command_result_status(&proposed.result)?;
        let applied_seq = match &proposed.result.result {
            Some(command_result::Result::Ok(ok)) => ok.applied_seq,
            _ => 0,
        };
        Ok(Response::new(pb::ReportResponse { applied_seq }))
    }

    async fn download_charm(
        &self,
        request: Request<pb::AgentDownloadRequest>,
    ) -> Result<Response<Self::DownloadCharmStream>, Status> {
        let agent = self.authenticate(&request).await?;
        let digest = request.into_inner().digest;
        let desired = self.desired.get(&self.handle, &agent.model_uuid).await?;
        let used = desired
            .units_by_machine
            .get(&agent.machine_id)
            .is_some_and(|units| units.iter().any(|u| u.charm_digest == digest));
        if !used {
            return Err(Status::permission_denied(format!(
                "no unit on machine {} uses charm {digest}",
                agent.machine_id
            )));
        }
        let chunks = blob_chunks(self.handle.clone(), digest).await?;
        Ok(Response::new(
            chunks
                .map(|chunk| {
                    chunk.map(|(digest, size, offset, data)| pb::AgentChunk {
                        digest,
                        size,
                        offset,
                        data,
                    })
                })
                .boxed(),
        ))
    }

    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    async fn migration_report(
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
            Some(Phase::Quiesce) => Fact::AgentAcked(agent.machine_id.clone()),
            Some(Phase::Validation) => Fact::AgentValidated(AgentValidation {
                machine_id: agent.machine_id.clone(),
                ok: message.ok,
                reason: message.reason.clone(),
            }),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "agents report QUIESCE or VALIDATION, not {:?}",
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
        };
        let proposed = self
            .handle
            .propose(command)
            .await
            .map_err(|e| propose_error_status(&e))?;
        command_result_status(&proposed.result)?;
        debug!(migration = %id, machine = %agent.machine_id, phase = %message.phase, ok = message.ok, "agent reported");
        Ok(Response::new(pb::MigrationReportResponse {}))
    }

    async fn validate_login(
        &self,
        request: Request<pb::ValidateLoginRequest>,
    ) -> Result<Response<pb::ValidateLoginResponse>, Status> {
        self.refuse_if_cut_off()?;
        let agent = self.authenticate(&request).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::model::{
        Application, CharmMeta, Endpoint, Machine, Relation, RelationEndpoint, Unit,
    };

    fn unit(name: &str, application: &str, machine: &str, leader: bool) -> Unit {
        Unit {
            name: name.into(),
            application: application.into(),
            machine: machine.into(),
            leader,
            ..Default::default()
        }
    }

    fn application(name: &str, endpoint: &str, role: Role) -> Application {
        Application {
            name: name.into(),
            charm_digest: format!("{name}-digest"),
            config: [("port".to_owned(), "81".to_owned())].into(),
            charm: Some(CharmMeta {
                name: name.into(),
                endpoints: vec![Endpoint {
                    name: endpoint.into(),
                    interface: "pg".into(),
                    role: role as i32,
                }],
                config_defaults: [
                    ("port".to_owned(), "80".to_owned()),
                    ("mode".to_owned(), "fast".to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn description() -> ModelDescription {
        ModelDescription {
            machines: ["0", "1"]
                .iter()
                .map(|id| Machine {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            applications: vec![
                application("web", "db", Role::Requires),
                application("pg", "db", Role::Provides),
            ],
            units: vec![
                unit("web/0", "web", "0", true),
                unit("web/1", "web", "1", false),
                unit("pg/0", "pg", "1", true),
            ],
            relations: vec![Relation {
                id: 4,
                endpoints: vec![
                    RelationEndpoint {
                        application: "web".into(),
                        endpoint: "db".into(),
                        role: Role::Requires as i32,
                    },
                    RelationEndpoint {
                        application: "pg".into(),
                        endpoint: "db".into(),
                        role: Role::Provides as i32,
                    },
                ],
                interface: "pg".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn desired_state_has_the_machines_units_with_config_and_relations() {
        let desired = ModelDesired::compute(Some(&description()), 200);
        let update = desired.update_for("0", 9);
        assert_eq!((update.revision, update.heartbeat_interval_ms), (9, 200));
        assert!(!update.machine_removed);
        assert_eq!(update.units.len(), 1);
        let web0 = &update.units[0];
        assert_eq!(web0.name, "web/0");
        assert!(web0.leader);
        assert_eq!(web0.charm_digest, "web-digest");
        assert_eq!(web0.config["port"], "81");
        assert_eq!(web0.config["mode"], "fast");
        assert_eq!(web0.relations.len(), 1);
        assert_eq!(web0.relations[0].remote_application, "pg");
        assert_eq!(web0.relations[0].remote_units, ["pg/0"]);
        let on_1: Vec<String> = desired
            .update_for("1", 9)
            .units
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(on_1, ["web/1", "pg/0"]);
        let pg0 = &desired.update_for("1", 9).units[1];
        assert_eq!(pg0.relations[0].remote_units, ["web/0", "web/1"]);
        assert!(desired.update_for("7", 9).machine_removed);
        assert!(
            ModelDesired::compute(None, 200)
                .update_for("0", 1)
                .machine_removed
        );
    }

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
