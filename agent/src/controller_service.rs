//! The `Controller` gRPC service: what `ctl` calls. Every call is authenticated by bearer token;
//! writes go through Raft (forwarded to the leader), reads are linearizable unless the caller
//! asks for this node's local view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use starling_proto::command::{command, command_error, command_result, Command, CommandResult};
use starling_proto::controller as pb;
use starling_proto::controller::controller_server::Controller;
use starling_raft::{propose_error_status, RaftHandle};
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::auth::{Authenticator, Caller};
use crate::backup_service::BackupService;
use crate::identity::{AuthFile, NodeIdentity};
use crate::init::node_files;
use crate::migration::MigrationContext;
use crate::model_service::ModelService;
use crate::pki::{self, CertKeyPem};

/// How long `ShowController` waits for each member's own status.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the client API of one node.
#[derive(Clone)]
pub struct ControllerService {
    handle: RaftHandle,
    identity: NodeIdentity,
    auth: Authenticator,
    auth_file: AuthFile,
    ca: CertKeyPem,
    models: ModelService,
    backups: BackupService,
}

impl ControllerService {
    /// The service of the node `identity`, with its credentials and CA.
    pub fn new(migration: MigrationContext, auth_file: AuthFile, ca: CertKeyPem) -> Self {
        let handle = migration.handle.clone();
        let identity = migration.identity.clone();
        let auth = Authenticator::new(auth_file.clone(), Some(handle.state().clone()));
        let models = ModelService::new(migration, auth.clone());
        let backups = BackupService::new(handle.clone(), identity.clone(), auth.clone());
        Self {
            handle,
            identity,
            auth,
            auth_file,
            ca,
            models,
            backups,
        }
    }

    fn require_superuser<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth
            .authenticate_superuser(request, "manage the controller")
    }
}

/// Milliseconds since the Unix epoch, for commands' `proposed_unix_ms`.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Maps a state-machine rule violation to a status; `Ok` results pass.
pub fn command_result_status(result: &CommandResult) -> Result<(), Status> {
    match &result.result {
        Some(command_result::Result::Ok(_)) => Ok(()),
        Some(command_result::Result::Error(e)) => {
            use command_error::Code;
            let code = match Code::try_from(e.code).unwrap_or(Code::Unspecified) {
                Code::InvalidArgument => tonic::Code::InvalidArgument,
                Code::NotFound => tonic::Code::NotFound,
                Code::AlreadyExists => tonic::Code::AlreadyExists,
                Code::FailedPrecondition => tonic::Code::FailedPrecondition,
                Code::PermissionDenied => tonic::Code::PermissionDenied,
                Code::Unspecified => tonic::Code::Internal,
            };
            Err(Status::new(code, e.message.clone()))
        }
        None => Err(Status::internal("the state machine returned no result")),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    async fn show_controller(
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
                        .peer_status(*id, address, MEMBER_STATUS_TIMEOUT)
                        .await,
                )
            }
        }))
        .await;
        let members = statuses
            .into_iter()
            .map(|(id, status)| {
                let role = if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                let address = nodes.get(&id).cloned().unwrap_or_default();
                match status {
                    Ok(s) => pb::Member {
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
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    async fn get_controller_config(
        &self,
        request: Request<pb::GetControllerConfigRequest>,
    ) -> Result<Response<pb::ControllerConfigResponse>, Status> {
        self.auth.authenticate(&request)?;
        if !request.get_ref().local {
            self.handle
                .linearizable_barrier()
                .await
                .map_err(|e| propose_error_status(&e))?;
        }
        let state = self.handle.state();
        Ok(Response::new(pb::ControllerConfigResponse {
            values: state.controller_config().into_iter().collect(),
            applied_index: state.applied_index(),
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    async fn set_controller_config(
        &self,
        request: Request<pb::SetControllerConfigRequest>,
    ) -> Result<Response<pb::SetControllerConfigResponse>, Status> {
        let caller = self.require_superuser(&request)?;
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
            caller: caller.user,
        };
        let proposed = self
            .handle
            .propose(command)
            .await
            .map_err(|e| propose_error_status(&e))?;
        command_result_status(&proposed.result)?;
        Ok(Response::new(pb::SetControllerConfigResponse {
            log_index: proposed.log_index,
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.require_superuser(&request)?;
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
            .map_err(|e| propose_error_status(&e))?;
        info!(node_id, address = %message.address, "added learner");
        tokio::spawn(promote_when_caught_up(self.handle.clone(), node_id));
        Ok(Response::new(pb::AddNodeResponse {
            node_id,
            files: files.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        }))
    }

    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.require_superuser(&request)?;
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
        self.handle
            .change_voters(BTreeSet::new(), BTreeSet::from([node_id]))
            .await
            .map_err(|e| propose_error_status(&e))?;
        info!(removed = node_id, "removed node");
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn add_model(
        &self,
        request: Request<pb::AddModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.models.add_model(request).await
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.models.list_models(request).await
    }

    async fn show_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.models.show_model(request).await
    }

    async fn destroy_model(
        &self,
        request: Request<pb::DestroyModelRequest>,
    ) -> Result<Response<pb::DestroyModelResponse>, Status> {
        self.models.destroy_model(request).await
    }

    async fn add_machine(
        &self,
        request: Request<pb::AddMachineRequest>,
    ) -> Result<Response<pb::AddMachineResponse>, Status> {
        self.models.add_machine(request).await
    }

    async fn remove_machine(
        &self,
        request: Request<pb::RemoveMachineRequest>,
    ) -> Result<Response<pb::RemoveMachineResponse>, Status> {
        self.models.remove_machine(request).await
    }

    async fn upload_charm(
        &self,
        request: Request<tonic::Streaming<pb::CharmChunk>>,
    ) -> Result<Response<pb::UploadCharmResponse>, Status> {
        self.models.upload_charm(request).await
    }

    type DownloadCharmStream = crate::model_service::ChunkStream;

    async fn download_charm(
        &self,
        request: Request<pb::DownloadCharmRequest>,
    ) -> Result<Response<Self::DownloadCharmStream>, Status> {
        self.models.download_charm(request).await
    }

    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        self.models.deploy(request).await
    }

    async fn add_unit(
        &self,
        request: Request<pb::AddUnitRequest>,
    ) -> Result<Response<pb::AddUnitResponse>, Status> {
        self.models.add_unit(request).await
    }

    async fn remove_unit(
        &self,
        request: Request<pb::RemoveUnitRequest>,
    ) -> Result<Response<pb::RemoveUnitResponse>, Status> {
        self.models.remove_unit(request).await
    }

    async fn remove_application(
        &self,
        request: Request<pb::RemoveApplicationRequest>,
    ) -> Result<Response<pb::RemoveApplicationResponse>, Status> {
        self.models.remove_application(request).await
    }

    async fn integrate(
        &self,
        request: Request<pb::IntegrateRequest>,
    ) -> Result<Response<pb::IntegrateResponse>, Status> {
        self.models.integrate(request).await
    }

    async fn remove_relation(
        &self,
        request: Request<pb::RemoveRelationRequest>,
    ) -> Result<Response<pb::RemoveRelationResponse>, Status> {
        self.models.remove_relation(request).await
    }

    async fn get_application_config(
        &self,
        request: Request<pb::GetApplicationConfigRequest>,
    ) -> Result<Response<pb::ApplicationConfig>, Status> {
        self.models.get_application_config(request).await
    }

    async fn set_application_config(
        &self,
        request: Request<pb::SetApplicationConfigRequest>,
    ) -> Result<Response<pb::SetApplicationConfigResponse>, Status> {
        self.models.set_application_config(request).await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::FullStatus>, Status> {
        self.models.status(request).await
    }

    async fn status_log(
        &self,
        request: Request<pb::StatusLogRequest>,
    ) -> Result<Response<pb::StatusLogResponse>, Status> {
        self.models.status_log(request).await
    }

    type DebugLogStream = crate::model_service::LogStream;

    async fn debug_log(
        &self,
        request: Request<pb::DebugLogRequest>,
    ) -> Result<Response<Self::DebugLogStream>, Status> {
        self.models.debug_log(request).await
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        self.models.add_user(request).await
    }

    async fn set_model_access(
        &self,
        request: Request<pb::SetModelAccessRequest>,
    ) -> Result<Response<pb::SetModelAccessResponse>, Status> {
        self.models.set_model_access(request).await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        self.models.who_am_i(request).await
    }

    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::BackupInfo>, Status> {
        self.backups.create_backup(request).await
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.backups.list_backups(request).await
    }

    type DownloadBackupStream = crate::model_service::ChunkStream;

    async fn download_backup(
        &self,
        request: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        self.backups.download_backup(request).await
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        self.backups.restore_backup(request).await
    }

    async fn get_model_config(
        &self,
        request: Request<pb::GetModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfig>, Status> {
        self.models.get_model_config(request).await
    }

    async fn set_model_config(
        &self,
        request: Request<pb::SetModelConfigRequest>,
    ) -> Result<Response<pb::SetModelConfigResponse>, Status> {
        self.models.set_model_config(request).await
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<pb::MigrateResponse>, Status> {
        self.models.migrate(request).await
    }

    async fn abort_migration(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        self.models.abort_migration(request).await
    }

    async fn migration_status(
        &self,
        request: Request<pb::MigrationStatusRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        self.models.migration_status(request).await
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
