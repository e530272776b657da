//! The overview the status page polls (`/status.json` on the side port): this node's view of
//! its group (members, leader, term, recent leader changes), the models the caller can read
//! with their load, and the migrations from here, in flight or recently ended. It is built from
//! this node's state without a round trip to the leader, so a follower cut off from its group
//! still shows what it knows; the page's polls are not counted as reads of the models.

use std::collections::BTreeMap;

use serde::Serialize;
use starling_proto::migration::MigrationRecord;
use starling_proto::model::{self as m, Access, Life};
use starling_storage::migration as stored;
use starling_storage::model::access;
use starling_storage::model::migration::Phase;
use tonic::Status;

use super::{migrations, ClientApi};
use crate::auth::{self, Caller};
use crate::plumbing::storage_error;

/// Ended migrations listed besides those in flight (the most recent).
const ENDED_MIGRATIONS_SHOWN: usize = 10;

/// What the status page shows.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The answering node and its controller.
    pub node: NodeView,
    /// Who asked.
    pub user: String,
    /// Whether they are a controller superuser.
    pub superuser: bool,
    /// When the overview was made (wall clock, ms since the Unix epoch).
    pub generated_unix_ms: i64,
    /// The group's members as this node's membership lists them, each with its own view of
    /// itself (state, term, applied index) as it answered this node's last load request.
    pub members: Vec<MemberView>,
    /// The models the caller can read, by `owner/name`.
    pub models: Vec<ModelView>,
    /// Migrations from this controller in flight, then the most recently ended.
    pub migrations: Vec<MigrationView>,
    /// Leaders this node saw take over, newest first.
    pub leader_changes: Vec<LeaderChangeView>,
}

/// The answering node.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Its node id.
    pub id: u64,
    /// Its gRPC address.
    pub address: String,
    /// Its controller's name.
    pub controller_name: String,
    /// Its controller's uuid.
    pub controller_uuid: String,
    /// The version it runs.
    pub version: String,
    /// Its Raft state ("Leader", "Follower", ...).
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// The last log index it applied.
    pub applied_index: u64,
}

/// A member of the group.
#[derive(Debug, Serialize)]
pub struct MemberView {
    /// Its node id.
    pub id: u64,
    /// Its gRPC address.
    pub address: String,
    /// "voter" or "learner".
    pub role: String,
    /// Whether it is the leader this node knows of.
    pub leader: bool,
    /// Whether it answered this node's last load request (this node always does).
    pub reachable: bool,
    /// Its Raft state as it reported it ("leader", "follower", ...; `None` when unreachable).
    pub state: Option<String>,
    /// Its term as it reported it.
    pub term: Option<u64>,
    /// The last log index it reported applying.
    pub applied_index: Option<u64>,
    /// The last log index the leader knows it holds (only when the answering node leads).
    pub matched_index: Option<u64>,
}

/// A model and its load.
#[derive(Debug, Serialize)]
pub struct ModelView {
    /// Its uuid.
    pub uuid: String,
    /// `owner/name`.
    pub name: String,
    /// "alive", "dying" or "dead".
    pub life: &'static str,
    /// Its status value ("available", ...), empty when none was set.
    pub status: String,
    /// Its machines.
    pub machines: u64,
    /// Its units.
    pub units: u64,
    /// Commands applied to it per second, agent reports included.
    pub writes_per_second: f64,
    /// Agent reports applied per second.
    pub reports_per_second: f64,
    /// Reads served per second over the group.
    pub reads_per_second: f64,
    /// Machine agents with a watch open over the group.
    pub agents: u64,
    /// The bytes of its records, its log excluded.
    pub size_bytes: u64,
    /// The bytes of its log.
    pub log_bytes: u64,
    /// The phase of a migration in flight, empty when none.
    pub migration: String,
}

/// A migration from this controller.
#[derive(Debug, Serialize)]
pub struct MigrationView {
    /// `<model-uuid>:<attempt>`.
    pub id: String,
    /// `owner/name`.
    pub model: String,
    /// The target controller's name.
    pub target: String,
    /// Its phase ("CATCHUP", "DONE", ...).
    pub phase: String,
    /// Whether it has not ended.
    pub in_flight: bool,
    /// What is happening now (empty once ended).
    pub activity: String,
    /// Bytes of the model staged on the target (known on the node driving it).
    pub bytes_sent: u64,
    /// The model's size as sent.
    pub bytes_total: u64,
    /// Machine agents that must follow.
    pub agents_total: u64,
    /// Agents that acknowledged the move.
    pub agents_acked: u64,
    /// Agents that logged in to the target.
    pub agents_validated: u64,
    /// CATCHUP and the fence: changes the target has not applied yet, as the master last
    /// counted them (`None` in other phases or when this node does not drive it).
    pub catchup_lag: Option<u64>,
    /// Changes sent to the target so far.
    pub changes_sent: u64,
    /// When it started (ms since the Unix epoch).
    pub started_unix_ms: i64,
    /// When it ended.
    pub ended_unix_ms: Option<i64>,
    /// Why it aborted.
    pub abort_reason: Option<String>,
}

/// A leader taking over, as this node learnt of it.
#[derive(Debug, Serialize)]
pub struct LeaderChangeView {
    /// When (ms since the Unix epoch).
    pub unix_ms: i64,
    /// The term it leads.
    pub term: u64,
    /// The new leader's node id.
    pub leader: u64,
}

/// Phases in which the master streams the model's changes, so a catch-up lag means something.
fn streams_changes(phase: &str) -> bool {
    matches!(Phase::parse(phase), Some(Phase::Catchup | Phase::Quiesce))
}

fn life_name(life: Life) -> &'static str {
    match life {
        Life::Alive => "alive",
        Life::Dying => "dying",
        Life::Dead => "dead",
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ClientApi {
    /// The overview for the caller sending `authorization` (an HTTP `Authorization` header's
    /// value): `Unauthenticated` without a valid bearer token.
    pub async fn overview(&self, authorization: Option<&str>) -> Result<Overview, Status> {
        let caller = self.auth.authenticate_header(authorization)?;
        let group = self.ctx.load.group_load(&self.handle).await;
        let status = self.handle.node_status();
        let (voters, nodes) = self.handle.membership();
        let matched = self.handle.matched_indexes();
        let members = nodes
            .iter()
            .map(|(id, address)| {
                let view = group.views.get(id);
                MemberView {
                    id: *id,
                    address: address.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    leader: status.leader_id == Some(*id),
                    reachable: group.nodes.contains_key(id),
                    state: view.map(|v| v.state.clone()),
                    term: view.map(|v| v.term),
                    applied_index: view.map(|v| v.applied_index),
                    matched_index: matched.get(id).copied(),
                }
            })
            .collect();
        let (models, migrations) = self.handle.state().consistent(|state| {
            let mut models = Vec::new();
            for model in state.list_models().map_err(storage_error)? {
                if !Self::can_read(&caller, &model) || !self.listed(&model)? {
                    continue;
                }
                let load = self.ctx.load.model_load(state, &model.uuid, &group);
                let footprint = self.ctx.load.footprint(state, &model.uuid);
                let migration = stored::latest_migration(state.reader(), &model.uuid)
                    .map_err(storage_error)?
                    .filter(|record| !stored::is_terminal(record))
                    .map(|record| record.phase)
                    .unwrap_or_default();
                models.push(ModelView {
                    name: format!("{}/{}", model.owner, model.name),
                    life: life_name(model.life()),
                    status: model
                        .status
                        .as_ref()
                        .map(|s| s.current.clone())
                        .unwrap_or_default(),
                    uuid: model.uuid,
                    machines: footprint.machines,
                    units: footprint.units,
                    writes_per_second: load.writes_per_second,
                    reports_per_second: load.reports_per_second,
                    reads_per_second: load.reads_per_second,
                    agents: load.agents_connected,
                    size_bytes: load.size_bytes,
                    log_bytes: load.log_bytes,
                    migration,
                });
            }
            models.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, Status>((models, self.migration_views(&caller)?))
        })?;
        let mut leader_changes: Vec<LeaderChangeView> = self
            .handle
            .leader_changes()
            .into_iter()
            .map(|change| LeaderChangeView {
                unix_ms: change.unix_ms,
                term: change.term,
                leader: change.leader,
            })
            .collect();
        leader_changes.reverse();
        Ok(Overview {
            node: NodeView {
                id: self.identity.node_id,
                address: self.identity.address.clone(),
                controller_name: self.identity.controller_name.clone(),
                controller_uuid: self.identity.controller_uuid.clone(),
                version: self.identity.version.clone(),
                state: status.state,
                term: status.term,
                leader_id: status.leader_id,
                applied_index: status.applied_index,
            },
            superuser: caller.access == auth::SUPERUSER,
            user: caller.user,
            generated_unix_ms: now_unix_ms(),
            members,
            models,
            migrations,
            leader_changes,
        })
    }

    /// Whether the caller may read `model` (and so see it listed).
    fn can_read(caller: &Caller, model: &m::Model) -> bool {
        let superuser = caller.access == auth::SUPERUSER;
        access::require_access(model, &caller.user, superuser, Access::Read, "read it").is_ok()
    }

    /// The latest migration of each model from here that the caller may read (as
    /// `MigrationStatus` decides: read access while the model is here, superusers after it
    /// left): those in flight, then the most recently ended.
    fn migration_views(&self, caller: &Caller) -> Result<Vec<MigrationView>, Status> {
        let state = self.handle.state();
        let mut latest: BTreeMap<String, MigrationRecord> = BTreeMap::new();
        for record in stored::read_all_migrations(state.reader()).map_err(storage_error)? {
            match latest.get(&record.model_uuid) {
                Some(known) if known.attempt >= record.attempt => {}
                _ => {
                    latest.insert(record.model_uuid.clone(), record);
                }
            }
        }
        let mut in_flight = Vec::new();
        let mut ended = Vec::new();
        for (uuid, record) in latest {
            let name = match state.model(&uuid).map_err(storage_error)? {
                Some(model) if Self::can_read(caller, &model) => {
                    format!("{}/{}", model.owner, model.name)
                }
                Some(_) => continue,
                None if caller.access == auth::SUPERUSER => {
                    format!("{}/{}", record.model_owner, record.model_name)
                }
                None => continue,
            };
            let info = migrations::status(&self.ctx, &uuid, &record.model_name)?;
            let catchup_lag = streams_changes(&record.phase)
                .then(|| self.ctx.progress.get(&info.migration_id)?.lag)
                .flatten();
            let view = MigrationView {
                id: info.migration_id,
                model: name,
                target: info.target_name,
                in_flight: !stored::is_terminal(&record),
                phase: info.phase,
                activity: info.activity,
                bytes_sent: info.bytes_sent,
                bytes_total: info.bytes_total,
                agents_total: info.agents_total,
                agents_acked: info.agents_acked,
                agents_validated: info.agents_validated,
                catchup_lag,
                changes_sent: info.changes_sent,
                started_unix_ms: info.started_unix_ms,
                ended_unix_ms: info.ended_unix_ms,
                abort_reason: info.abort_reason,
            };
            if view.in_flight {
                in_flight.push(view);
            } else {
                ended.push(view);
            }
        }
        in_flight.sort_by_key(|v| v.started_unix_ms);
        ended.sort_by_key(|v| std::cmp::Reverse(v.ended_unix_ms.unwrap_or(v.started_unix_ms)));
        ended.truncate(ENDED_MIGRATIONS_SHOWN);
        in_flight.extend(ended);
        Ok(in_flight)
    }
}
