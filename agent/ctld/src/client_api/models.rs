//! Models in the client API: add, list, show and destroy a model, its config, and who may
//! access it.

use starling_proto::command::command;
use starling_proto::controller as pb;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{non_empty_or, ClientApi};
use crate::auth;
use crate::load::GroupLoad;
use crate::plumbing::storage_error;
use starling_proto::model::Access;

impl ClientApi {
    /// `AddModel`.
    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn add_model(
        &self,
        request: Request<pb::AddModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let caller = self.auth.authenticate(&request)?;
        if caller.access != auth::SUPERUSER {
            return Err(Status::permission_denied(format!(
                "user {:?} may not add models (superuser access needed)",
                caller.user
            )));
        }
        let message = request.into_inner();
        let uuid = uuid::Uuid::new_v4().to_string();
        let cloud = non_empty_or(message.cloud, &self.identity.cloud);
        let region = non_empty_or(message.region, &self.identity.region);
        let op = command::Op::AddModel(starling_proto::command::AddModel {
            uuid: uuid.clone(),
            name: message.name.clone(),
            owner: caller.user.clone(),
            cloud,
            region,
            config: message.config,
            agent_version: self.identity.version.clone(),
        });
        let request_id = message.request_id;
        let authority = caller.authority("", Access::Unspecified, true, "add models");
        self.propose(&caller, authority, request_id, op).await?;
        // A retried request applied the first time returns that model, whatever uuid we picked.
        let model = self
            .handle
            .state()
            .model_by_name(&caller.user, &message.name)
            .map_err(storage_error)?
            .ok_or_else(|| Status::internal("the model vanished right after it was added"))?;
        info!(model = %model.name, uuid = %model.uuid, "model added");
        Ok(Response::new(
            self.model_info(model, &GroupLoad::default())?,
        ))
    }

    /// `ListModels`: the models the caller can see.
    pub(super) async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let group = self.ctx.load.group_load(&self.handle).await;
        let models = self.handle.state().consistent(|state| {
            state
                .list_models()
                .map_err(storage_error)?
                .into_iter()
                .filter(|model| Self::access_of(&caller, model) != Access::Unspecified)
                .filter(|model| self.listed(model).unwrap_or(false))
                .map(|model| self.model_info(model, &group))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    /// `ShowModel`.
    pub(super) async fn show_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let group = self.ctx.load.group_load(&self.handle).await;
        // One applied state: the model, whether it is an import or redirected, its migration.
        let info = self.handle.state().consistent(|_| {
            let model = self.resolve(&caller, Some(request.get_ref()))?;
            Self::require(&caller, &model, Access::Read, "read it")?;
            self.model_info(model, &group)
        })?;
        if let Some(model) = &info.model {
            self.ctx.load.read(&model.uuid);
        }
        Ok(Response::new(info))
    }

    /// `DestroyModel`.
    pub(super) async fn destroy_model(
        &self,
        request: Request<pb::DestroyModelRequest>,
    ) -> Result<Response<pb::DestroyModelResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(&caller, message.model.as_ref(), Access::Admin, "destroy it")
            .await?;
        let op = command::Op::DestroyModel(starling_proto::command::DestroyModel {
            model_uuid: model.uuid.clone(),
            force: message.force,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        info!(model = %model.name, "model destroyed");
        Ok(Response::new(pb::DestroyModelResponse {}))
    }

    /// `GetModelConfig`.
    pub(super) async fn get_model_config(
        &self,
        request: Request<pb::GetModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfig>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        self.hold_for_activation(&caller, message.model.as_ref())
            .await?;
        let model = self.handle.state().consistent(|_| {
            let model = self.resolve(&caller, message.model.as_ref())?;
            Self::require(&caller, &model, Access::Read, "read its config")?;
            Ok::<_, Status>(model)
        })?;
        Ok(Response::new(pb::ModelConfig {
            values: model.config,
        }))
    }

    /// `SetModelConfig`.
    pub(super) async fn set_model_config(
        &self,
        request: Request<pb::SetModelConfigRequest>,
    ) -> Result<Response<pb::SetModelConfigResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "change its config",
            )
            .await?;
        let op = command::Op::SetModelConfig(starling_proto::command::SetModelConfig {
            model_uuid: model.uuid.clone(),
            values: message.values,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::SetModelConfigResponse {}))
    }

    /// `SetModelAccess`: grant or revoke.
    pub(super) async fn set_model_access(
        &self,
        request: Request<pb::SetModelAccessRequest>,
    ) -> Result<Response<pb::SetModelAccessResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Admin,
                "change who can access it",
            )
            .await?;
        let op = command::Op::SetModelAccess(starling_proto::command::SetModelAccess {
            model_uuid: model.uuid.clone(),
            user: message.user,
            access: message.access,
            revoke: message.revoke,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::SetModelAccessResponse {}))
    }
}
