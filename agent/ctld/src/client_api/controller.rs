//! Controller operations of the client API: `show-controller`, controller config, adding and
//! removing nodes (a learner promoted once it caught up), controller users and `whoami`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use starling_proto::command::{command, Command};
use starling_proto::controller as pb;
use starling_proto::model::Access;
use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use super::ClientApi;
use crate::auth::{self, Caller};
use crate::identity::NodeIdentity;
use crate::init::node_files;
use crate::load::GroupLoad;
use crate::pki;
use crate::plumbing::{now_unix_ms, proposal, propose, storage_error};

/// How long `ShowController` waits for each member's own status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a controller-management call asks to do, for a refusal.
const CONTROLLER_WHAT: &str = "manage the controller";

impl ClientApi {
    fn controller_admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth.authenticate_superuser(request, CONTROLLER_WHAT)
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn show_controller(
        &self,
        request: Request<pb::ShowControllerRequest>,
    ) -> Result<Response<pb::ControllerInfo>, Status> {
        self.auth.authenticate(&request)?;
        let (voters, nodes) = self.handle.membership();
        let matched = self.handle.matched_indexes();
        let statuses = futures::future::join_all(nodes.iter().map(|(id, address)| {
            let handle = self.handle.clone();
            async move {
                (
                    *id,
                    handle
                        .peer_status(*id, address, MEMBER_STATUS_TIMEOUT, true)
                        .await,
                )
            }
        }))
        .await;
        let mut group = GroupLoad::default();
        for (id, status) in &statuses {
            if let Ok(load) = status.as_ref().map(|s| s.load.clone().unwrap_or_default()) {
                group.add(*id, load);
            }
        }
        let members = statuses
            .into_iter()
            .map(|(id, status)| {
                let role = if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                let address = nodes.get(&id).cloned().unwrap_or_default();
                let (reads, agents, disk) = group.node_totals(id).unwrap_or_default();
                match status {
                    Ok(s) => pb::Member {
                        disk_bytes: Some(disk),
                        reads_per_second: reads,
                        agents_connected: agents,
                        id,
                        address,
                        role: role.into(),
                        state: s.state,
                        term: s.term,
                        applied_index: s.applied_index,
                        matched_index: matched.get(&id).copied(),
                        version: s.version,
                        snapshot_index: s.snapshot_index,
                        purged_index: s.purged_index,
                    },
                    Err(e) => {
                        warn!(node = id, error = %e, "member status unavailable");
                        pb::Member {
                            id,
                            address,
                            role: role.into(),
                            state: "unreachable".into(),
                            matched_index: matched.get(&id).copied(),
                            ..Default::default()
                        }
                    }
                }
            })
            .collect();
        let status = self.handle.node_status();
        let load = self.controller_load(&group)?;
        Ok(Response::new(pb::ControllerInfo {
            name: self.identity.controller_name.clone(),
            uuid: self.identity.controller_uuid.clone(),
            version: self.identity.version.clone(),
            cloud: self.identity.cloud.clone(),
            region: self.identity.region.clone(),
            api_endpoints: nodes.values().cloned().collect(),
            leader_id: status.leader_id,
            members,
            term: status.term,
            ca_cert: self.ca.cert.clone(),
            load: Some(load),
        }))
    }

    /// The controller's totals: its active models (imports and redirects left out) and what
    /// they hold and do, the members' reads, agents and largest data dir (`group`), and the
    /// migrations from here in flight.
    fn controller_load(&self, group: &GroupLoad) -> Result<pb::ControllerLoad, Status> {
        let state = self.handle.state();
        let mut total = pb::ControllerLoad {
            disk_bytes: group
                .nodes
                .values()
                .map(|n| n.disk_bytes)
                .max()
                .unwrap_or(0),
            ..Default::default()
        };
        for model in state.list_models().map_err(storage_error)? {
            if !self.listed(&model)? {
                continue;
            }
            let load = self.ctx.load.model_load(state, &model.uuid, group);
            let footprint = self.ctx.load.footprint(state, &model.uuid);
            total.models += 1;
            total.machines += footprint.machines;
            total.units += footprint.units;
            total.agents_connected += load.agents_connected;
            total.writes_per_second += load.writes_per_second;
            total.reports_per_second += load.reports_per_second;
            total.reads_per_second += load.reads_per_second;
            total.models_bytes += load.size_bytes;
            total.logs_bytes += load.log_bytes;
            let migrating = stored::latest_migration(state.reader(), &model.uuid)
                .map_err(storage_error)?
                .is_some_and(|record| !stored::is_terminal(&record));
            total.migrations += u64::from(migrating);
        }
        Ok(total)
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn get_controller_config(
        &self,
        request: Request<pb::GetControllerConfigRequest>,
    ) -> Result<Response<pb::ControllerConfigResponse>, Status> {
        self.auth.authenticate(&request)?;
        if !request.get_ref().local {
            self.handle
                .linearizable_barrier()
                .await
                .map_err(|e| proposal(&e))?;
        }
        let state = self.handle.state();
        Ok(Response::new(pb::ControllerConfigResponse {
            values: state.controller_config().into_iter().collect(),
            applied_index: state.applied_index(),
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn set_controller_config(
        &self,
        request: Request<pb::SetControllerConfigRequest>,
    ) -> Result<Response<pb::SetControllerConfigResponse>, Status> {
        let caller = self.controller_admin(&request)?;
        let message = request.into_inner();
        if message.values.is_empty() {
            return Err(Status::invalid_argument("no KEY=VALUE given"));
        }
        let command = Command {
            request_id: message.request_id,
            op: Some(command::Op::SetControllerConfig(
                starling_proto::command::SetControllerConfig {
                    values: message.values,
                },
            )),
            proposed_unix_ms: now_unix_ms(),
            authority: Some(caller.authority("", Access::Unspecified, true, CONTROLLER_WHAT)),
            caller: caller.user,
        };
        let proposed = propose(&self.handle, command).await?;
        Ok(Response::new(pb::SetControllerConfigResponse {
            log_index: proposed.log_index,
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.controller_admin(&request)?;
        let message = request.into_inner();
        for address in [&message.address, &message.http_address] {
            if address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(Status::invalid_argument(format!(
                    "{address:?} is not host:port"
                )));
            }
        }
        if self.handle.current_leader() != Some(self.handle.node_id()) {
            let mut status = Status::unavailable("membership changes are made on the leader");
            if let Some(Ok(hint)) = self.handle.current_leader().map(|l| l.to_string().parse()) {
                status.metadata_mut().insert("leader-hint", hint);
            }
            return Err(status);
        }
        let (_, nodes) = self.handle.membership();
        if nodes.values().any(|a| *a == message.address) {
            return Err(Status::already_exists(format!(
                "a node already listens on {}",
                message.address
            )));
        }
        let node_id = nodes.keys().max().copied().unwrap_or(0) + 1;
        let identity = NodeIdentity {
            node_id,
            address: message.address.clone(),
            http_address: message.http_address.clone(),
            bootstrap: false,
            initial_members: Vec::new(),
            ..self.identity.clone()
        };
        let hosts = [
            pki::host_of(&message.address),
            pki::host_of(&message.http_address),
        ];
        let node_cert = pki::new_node_cert(&self.ca, node_id, &hosts)
            .map_err(|e| Status::internal(format!("cannot sign the node certificate: {e:#}")))?;
        let files = node_files(&identity, &self.auth_file, &self.ca, &node_cert)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        self.handle
            .add_learner(node_id, &message.address)
            .await
            .map_err(|e| proposal(&e))?;
        info!(node_id, address = %message.address, "added learner");
        tokio::spawn(promote_when_caught_up(self.handle.clone(), node_id));
        Ok(Response::new(pb::AddNodeResponse {
            node_id,
            files: files.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.controller_admin(&request)?;
        let node_id = request.into_inner().node_id;
        let (voters, nodes) = self.handle.membership();
        if !nodes.contains_key(&node_id) {
            return Err(Status::not_found(format!("node {node_id} is not a member")));
        }
        if voters.len() == 1 && voters.contains(&node_id) {
            return Err(Status::failed_precondition(
                "cannot remove the last voter of a controller",
            ));
        }
        let removed = if node_id == self.handle.node_id() {
            // The leader leaving hands its leadership over first: no election timeout.
            self.handle
                .remove_self_handing_over(starling_raft::LEADER_HANDOFF_LIMIT)
                .await
        } else {
            self.handle
                .change_voters(BTreeSet::new(), BTreeSet::from([node_id]))
                .await
        };
        removed.map_err(|e| proposal(&e))?;
        info!(removed = node_id, "removed node");
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    /// `AddUser`: creates a controller user and answers with its token, shown once.
    pub(super) async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        if caller.access != auth::SUPERUSER {
            return Err(Status::permission_denied(format!(
                "user {:?} may not add users (superuser access needed)",
                caller.user
            )));
        }
        let message = request.into_inner();
        let controller_access = match message.controller_access.as_str() {
            "" | "login" => "login",
            auth::SUPERUSER => auth::SUPERUSER,
            other => {
                return Err(Status::invalid_argument(format!(
                    "controller access {other:?} is not one of login, superuser"
                )))
            }
        };
        if self.auth.is_bootstrap_user(&message.name) {
            return Err(Status::already_exists(format!(
                "user {:?} already exists",
                message.name
            )));
        }
        let token = auth::new_token();
        let op = command::Op::AddUser(starling_proto::command::AddUser {
            name: message.name,
            token_sha256: auth::hash_token(&token),
            controller_access: controller_access.to_string(),
        });
        let authority = caller.authority("", Access::Unspecified, true, "add users");
        self.propose(&caller, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::AddUserResponse { token }))
    }

    /// `WhoAmI`.
    pub(super) async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        Ok(Response::new(pb::WhoAmIResponse {
            user: caller.user,
            controller_access: caller.access,
        }))
    }
}

/// Promotes learner `node_id` to voter once it has replicated close to the leader's log; gives
/// up after an hour or when this node stops leading (the operator then re-runs the promotion by
/// adding the node again).
async fn promote_when_caught_up(handle: RaftHandle, node_id: u64) {
    const LAG_ENTRIES_MAX: u64 = 100;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while tokio::time::Instant::now() < deadline {
        if handle.current_leader() != Some(handle.node_id()) {
            warn!(node_id, "lost leadership before promoting the learner");
            return;
        }
        let last = handle.node_status().last_log_index;
        let matched: BTreeMap<u64, u64> = handle.matched_indexes();
        if let Some(m) = matched.get(&node_id) {
            if *m + LAG_ENTRIES_MAX >= last && *m > 0 {
                match handle
                    .change_voters(BTreeSet::from([node_id]), BTreeSet::new())
                    .await
                {
                    Ok(()) => {
                        info!(node_id, "learner caught up: promoted to voter");
                        return;
                    }
                    Err(e) => warn!(node_id, error = %e, "promotion failed; will retry"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
