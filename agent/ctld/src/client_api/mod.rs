//! The client API (the `Controller` gRPC service, what `ctl` calls), one file per topic:
//! `controller` (nodes, controller config, users), `models`, `deployment` (machines,
//! applications, units, relations), `charms`, `status` (status, status history, the model log),
//! `backups` and `migrations`; `overview` builds what the side port's status page shows. Every
//! call is authenticated by bearer token; a handler checks the caller's access (`storage::model::access`), turns the request into one replicated command,
//! proposes it (forwarded to the leader) and answers from this node's state once it applied it.
//! Reads are linearizable unless the caller asks for this node's local view.

mod backups;
mod charms;
mod controller;
mod deployment;
mod migrations;
mod models;
mod overview;
mod status;

pub use overview::Overview;

use starling_proto::command::{command, command_result, Authority, CommandResult};
use starling_proto::controller as pb;
use starling_proto::controller::controller_server::{Controller, ControllerServer};
use starling_proto::limits::MESSAGE_BYTES_MAX;
use starling_proto::model::{self as m, Access};
use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use starling_storage::model::access;
use tonic::{Request, Response, Status};

use crate::auth::{self, Authenticator, Caller};
use crate::context::NodeContext;
use crate::identity::{AuthFile, NodeIdentity};
use crate::load::GroupLoad;
use crate::pki::CertKeyPem;
use crate::plumbing::status::importing;
use crate::plumbing::{
    proposal, propose_and_wait, propose_model_write, redirect_status, refusal, storage_error,
    wait_for_activation, ChunkStream,
};

/// Serves the client API of one node.
#[derive(Clone)]
pub struct ClientApi {
    handle: RaftHandle,
    identity: NodeIdentity,
    ctx: NodeContext,
    auth: Authenticator,
    auth_file: AuthFile,
    ca: CertKeyPem,
}

impl ClientApi {
    /// The client API of the node `ctx` describes, with its bootstrap users and CA.
    pub fn new(ctx: NodeContext, auth_file: AuthFile, ca: CertKeyPem) -> Self {
        let auth = Authenticator::new(auth_file.clone(), Some(ctx.handle.state().clone()));
        Self {
            handle: ctx.handle.clone(),
            identity: ctx.identity.clone(),
            ctx,
            auth,
            auth_file,
            ca,
        }
    }

    /// As a tonic server, accepting messages up to the shared limit.
    pub fn into_server(self) -> ControllerServer<Self> {
        ControllerServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Refuses a model that is an import here (inactive until the migration activates it) or
    /// has migrated away (the redirect message `ctl` shows). A caller with access to an import
    /// learns that it is one, so a client that followed the source's redirect before the
    /// target activated knows to try again; anyone else gets NOT_FOUND.
    fn visible(&self, caller: &Caller, model: m::Model) -> Result<m::Model, Status> {
        let reader = self.handle.state().reader();
        if let Some(import) = stored::read_import(reader, &model.uuid).map_err(storage_error)? {
            if Self::access_of(caller, &model) == Access::Unspecified {
                return Err(Status::not_found(format!(
                    "model {:?} not found",
                    model.name
                )));
            }
            return Err(importing(&model.name, &import));
        }
        if let Some(redirect) = stored::read_redirect(reader, &model.uuid).map_err(storage_error)? {
            return Err(redirect_status(reader, &redirect, false));
        }
        Ok(model)
    }

    /// Whether `model` is listed: not an import, not migrated away.
    fn listed(&self, model: &m::Model) -> Result<bool, Status> {
        let reader = self.handle.state().reader();
        Ok(stored::read_import(reader, &model.uuid)
            .map_err(storage_error)?
            .is_none()
            && stored::read_redirect(reader, &model.uuid)
                .map_err(storage_error)?
                .is_none())
    }

    /// The caller's access to `model`: superusers are admins of every model.
    fn access_of(caller: &Caller, model: &m::Model) -> Access {
        access::access_of(model, &caller.user, caller.access == auth::SUPERUSER)
    }

    /// Refuses unless the caller has `needed` access to `model` (to do `what`).
    fn require(
        caller: &Caller,
        model: &m::Model,
        needed: Access,
        what: &str,
    ) -> Result<(), Status> {
        let superuser = caller.access == auth::SUPERUSER;
        access::require_access(model, &caller.user, superuser, needed, what)
            .map_err(|e| refusal(&e))
    }

    /// Finds the model `model_ref` names, as the caller sees it.
    fn resolve(
        &self,
        caller: &Caller,
        model_ref: Option<&pb::ModelRef>,
    ) -> Result<m::Model, Status> {
        let model_ref = model_ref.ok_or_else(|| Status::invalid_argument("no model given"))?;
        let state = self.handle.state();
        if !model_ref.uuid.is_empty() {
            if let Some(redirect) =
                stored::read_redirect(state.reader(), &model_ref.uuid).map_err(storage_error)?
            {
                return Err(redirect_status(state.reader(), &redirect, false));
            }
            return state
                .model(&model_ref.uuid)
                .map_err(storage_error)?
                .ok_or_else(|| Status::not_found(format!("model {} not found", model_ref.uuid)))
                .and_then(|model| self.visible(caller, model));
        }
        let name = model_ref.name.as_str();
        if name.is_empty() {
            return Err(Status::invalid_argument("no model name or uuid given"));
        }
        let (owner, short) = match name.split_once('/') {
            Some((owner, short)) => (owner.to_string(), short),
            None => (caller.user.clone(), name),
        };
        if let Some(model) = state.model_by_name(&owner, short).map_err(storage_error)? {
            return self.visible(caller, model);
        }
        // A model reaped after migrating away is known only by its redirect.
        if let Some(redirect) =
            stored::redirect_by_name(state.reader(), &owner, short, !name.contains('/'))
                .map_err(storage_error)?
        {
            return Err(redirect_status(state.reader(), &redirect, false));
        }
        if !name.contains('/') {
            // A bare name the caller does not own: accept it when exactly one visible model has it.
            let visible: Vec<m::Model> = state
                .list_models()
                .map_err(storage_error)?
                .into_iter()
                .filter(|mdl| {
                    mdl.name == short && Self::access_of(caller, mdl) != Access::Unspecified
                })
                .filter(|mdl| self.listed(mdl).unwrap_or(false))
                .collect();
            if visible.len() == 1 {
                return Ok(visible.into_iter().next().expect("one model"));
            }
            if visible.len() > 1 {
                return Err(Status::invalid_argument(format!(
                    "model name {short:?} is ambiguous: qualify it with its owner (e.g. {}/{short})",
                    visible[0].owner
                )));
            }
        }
        Err(Status::not_found(format!("model {name:?} not found")))
    }

    async fn barrier(&self) -> Result<(), Status> {
        self.handle
            .linearizable_barrier()
            .await
            .map_err(|e| proposal(&e))
    }

    /// The model `model_ref` names, when the caller has `needed` access to it (to do `what`).
    /// A call that needs read access reads the model: it counts in the model's read rate. A
    /// model this controller holds as a sealed import (its source is in the fence) is waited
    /// for until it is activated here, at most `migration-fence-hold`.
    async fn model_for(
        &self,
        caller: &Caller,
        model_ref: Option<&pb::ModelRef>,
        needed: Access,
        what: &str,
    ) -> Result<m::Model, Status> {
        self.hold_for_activation(caller, model_ref).await?;
        let model = self.resolve(caller, model_ref)?;
        Self::require(caller, &model, needed, what)?;
        if needed == Access::Read {
            self.ctx.load.read(&model.uuid);
        }
        Ok(model)
    }

    /// The model `model_ref` names, when the caller has `needed` access to it (to do `what`),
    /// with the authority its command carries, so applying checks the access again.
    async fn model_to_change(
        &self,
        caller: &Caller,
        model_ref: Option<&pb::ModelRef>,
        needed: Access,
        what: &str,
    ) -> Result<(m::Model, Authority), Status> {
        let model = self.model_for(caller, model_ref, needed, what).await?;
        let authority = caller.authority(&model.uuid, needed, false, what);
        Ok((model, authority))
    }

    /// Waits while the model `model_ref` names is a sealed import here (see `model_for`).
    async fn hold_for_activation(
        &self,
        caller: &Caller,
        model_ref: Option<&pb::ModelRef>,
    ) -> Result<(), Status> {
        let Some(model_ref) = model_ref else {
            return Ok(());
        };
        let uuid = if model_ref.uuid.is_empty() {
            let (owner, name) = model_ref
                .name
                .split_once('/')
                .unwrap_or((caller.user.as_str(), model_ref.name.as_str()));
            match self
                .handle
                .state()
                .model_by_name(owner, name)
                .map_err(storage_error)?
            {
                Some(model) => model.uuid,
                None => return Ok(()),
            }
        } else {
            model_ref.uuid.clone()
        };
        wait_for_activation(&self.handle, &uuid).await
    }

    /// Proposes `op` for `caller` with `authority` and waits until this node has applied it.
    async fn propose(
        &self,
        caller: &Caller,
        authority: Authority,
        request_id: String,
        op: command::Op,
    ) -> Result<CommandResult, Status> {
        propose_and_wait(&self.handle, &caller.user, authority, request_id, op).await
    }

    /// Proposes `op`, a write to `model`, for `caller` and waits until this node has applied
    /// it with `authority`; a write that meets the model's migration fence is held
    /// (`plumbing::hold`).
    async fn propose_write(
        &self,
        caller: &Caller,
        model: &m::Model,
        authority: Authority,
        request_id: String,
        op: command::Op,
    ) -> Result<CommandResult, Status> {
        propose_model_write(
            &self.handle,
            &caller.user,
            authority,
            request_id,
            &model.uuid,
            op,
        )
        .await
    }

    fn ok_fields(result: &CommandResult) -> Option<&starling_proto::command::Ok> {
        match &result.result {
            Some(command_result::Result::Ok(ok)) => Some(ok),
            _ => None,
        }
    }

    /// How `model` is listed and shown, with its load (`group` sums what the group's nodes
    /// measured).
    fn model_info(&self, model: m::Model, group: &GroupLoad) -> Result<pb::ModelInfo, Status> {
        let load = self
            .ctx
            .load
            .model_load(self.handle.state(), &model.uuid, group);
        let description = self
            .handle
            .state()
            .model_description(&model.uuid)
            .map_err(storage_error)?;
        let (machine_count, unit_count, description_digest) = description
            .map(|d| {
                (
                    d.machines.len() as u64,
                    d.units.len() as u64,
                    starling_storage::export::description_digest(&d),
                )
            })
            .unwrap_or_default();
        let (migration, migration_start_unix_ms, migration_end_unix_ms, _) = migrations::summary(
            self.handle.state().reader(),
            &self.ctx.progress,
            &model.uuid,
        )?;
        Ok(pb::ModelInfo {
            model: Some(model),
            controller_uuid: self.identity.controller_uuid.clone(),
            controller_name: self.identity.controller_name.clone(),
            machine_count,
            unit_count,
            migration,
            migration_start_unix_ms,
            migration_end_unix_ms,
            description_digest,
            load: Some(load),
        })
    }
}

#[tonic::async_trait]
impl Controller for ClientApi {
    async fn show_controller(
        &self,
        request: Request<pb::ShowControllerRequest>,
    ) -> Result<Response<pb::ControllerInfo>, Status> {
        self.show_controller(request).await
    }

    async fn get_controller_config(
        &self,
        request: Request<pb::GetControllerConfigRequest>,
    ) -> Result<Response<pb::ControllerConfigResponse>, Status> {
        self.get_controller_config(request).await
    }

    async fn set_controller_config(
        &self,
        request: Request<pb::SetControllerConfigRequest>,
    ) -> Result<Response<pb::SetControllerConfigResponse>, Status> {
        self.set_controller_config(request).await
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        self.add_node(request).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.remove_node(request).await
    }

    async fn add_model(
        &self,
        request: Request<pb::AddModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.add_model(request).await
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.list_models(request).await
    }

    async fn show_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.show_model(request).await
    }

    async fn destroy_model(
        &self,
        request: Request<pb::DestroyModelRequest>,
    ) -> Result<Response<pb::DestroyModelResponse>, Status> {
        self.destroy_model(request).await
    }

    async fn add_machine(
        &self,
        request: Request<pb::AddMachineRequest>,
    ) -> Result<Response<pb::AddMachineResponse>, Status> {
        self.add_machine(request).await
    }

    async fn remove_machine(
        &self,
        request: Request<pb::RemoveMachineRequest>,
    ) -> Result<Response<pb::RemoveMachineResponse>, Status> {
        self.remove_machine(request).await
    }

    async fn upload_charm(
        &self,
        request: Request<tonic::Streaming<pb::CharmChunk>>,
    ) -> Result<Response<pb::UploadCharmResponse>, Status> {
        self.upload_charm(request).await
    }

    type DownloadCharmStream = ChunkStream;

    async fn download_charm(
        &self,
        request: Request<pb::DownloadCharmRequest>,
    ) -> Result<Response<Self::DownloadCharmStream>, Status> {
        self.download_charm(request).await
    }

    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        self.deploy(request).await
    }

    async fn add_unit(
        &self,
        request: Request<pb::AddUnitRequest>,
    ) -> Result<Response<pb::AddUnitResponse>, Status> {
        self.add_unit(request).await
    }

    async fn remove_unit(
        &self,
        request: Request<pb::RemoveUnitRequest>,
    ) -> Result<Response<pb::RemoveUnitResponse>, Status> {
        self.remove_unit(request).await
    }

    async fn remove_application(
        &self,
        request: Request<pb::RemoveApplicationRequest>,
    ) -> Result<Response<pb::RemoveApplicationResponse>, Status> {
        self.remove_application(request).await
    }

    async fn integrate(
        &self,
        request: Request<pb::IntegrateRequest>,
    ) -> Result<Response<pb::IntegrateResponse>, Status> {
        self.integrate(request).await
    }

    async fn remove_relation(
        &self,
        request: Request<pb::RemoveRelationRequest>,
    ) -> Result<Response<pb::RemoveRelationResponse>, Status> {
        self.remove_relation(request).await
    }

    async fn get_application_config(
        &self,
        request: Request<pb::GetApplicationConfigRequest>,
    ) -> Result<Response<pb::ApplicationConfig>, Status> {
        self.get_application_config(request).await
    }

    async fn set_application_config(
        &self,
        request: Request<pb::SetApplicationConfigRequest>,
    ) -> Result<Response<pb::SetApplicationConfigResponse>, Status> {
        self.set_application_config(request).await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::FullStatus>, Status> {
        self.status(request).await
    }

    async fn status_log(
        &self,
        request: Request<pb::StatusLogRequest>,
    ) -> Result<Response<pb::StatusLogResponse>, Status> {
        self.status_log(request).await
    }

    type DebugLogStream = status::LogStream;

    async fn debug_log(
        &self,
        request: Request<pb::DebugLogRequest>,
    ) -> Result<Response<Self::DebugLogStream>, Status> {
        self.debug_log(request).await
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        self.add_user(request).await
    }

    async fn set_model_access(
        &self,
        request: Request<pb::SetModelAccessRequest>,
    ) -> Result<Response<pb::SetModelAccessResponse>, Status> {
        self.set_model_access(request).await
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        self.who_am_i(request).await
    }

    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::BackupInfo>, Status> {
        self.create_backup(request).await
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.list_backups(request).await
    }

    type DownloadBackupStream = ChunkStream;

    async fn download_backup(
        &self,
        request: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        self.download_backup(request).await
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        self.restore_backup(request).await
    }

    async fn get_model_config(
        &self,
        request: Request<pb::GetModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfig>, Status> {
        self.get_model_config(request).await
    }

    async fn set_model_config(
        &self,
        request: Request<pb::SetModelConfigRequest>,
    ) -> Result<Response<pb::SetModelConfigResponse>, Status> {
        self.set_model_config(request).await
    }

    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<pb::MigrateResponse>, Status> {
        self.migrate(request).await
    }

    async fn abort_migration(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        self.abort_migration(request).await
    }

    async fn migration_status(
        &self,
        request: Request<pb::MigrationStatusRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        self.migration_status(request).await
    }

    async fn end_log_transfer(
        &self,
        request: Request<pb::EndLogTransferRequest>,
    ) -> Result<Response<pb::EndLogTransferResponse>, Status> {
        self.end_log_transfer(request).await
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}
