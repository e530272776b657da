//! Deployment in the client API: machines (and their agents' credentials), applications,
//! units, relations and application config.

use std::collections::BTreeMap;

use starling_proto::command::command;
use starling_proto::controller as pb;
use starling_proto::model::Access;
use starling_storage::model::charm::parse_metadata;
use tonic::{Request, Response, Status};

use super::charms::charm_metadata_from_archive;
use super::{non_empty_or, ClientApi};
use crate::auth;
use crate::plumbing::{read_blob, storage_error};

impl ClientApi {
    /// `AddMachine`: creates the machine and its agent's credential; answers with the agent
    /// config (the only place the credential ever appears in clear).
    pub(super) async fn add_machine(
        &self,
        request: Request<pb::AddMachineRequest>,
    ) -> Result<Response<pb::AddMachineResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "add machines",
            )
            .await?;
        let credential = auth::new_token();
        let op = command::Op::AddMachine(starling_proto::command::AddMachine {
            model_uuid: model.uuid.clone(),
            credential_sha256: auth::hash_token(&credential),
        });
        let result = self
            .propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        let machine_id = Self::ok_fields(&result)
            .map(|ok| ok.machine_id.clone())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Status::internal("the state machine did not name the new machine"))?;
        let (_, nodes) = self.handle.membership();
        let config = starling_daemon::agent_config::AgentConfig {
            controller_name: self.identity.controller_name.clone(),
            controller_uuid: self.identity.controller_uuid.clone(),
            api_endpoints: nodes.into_values().collect(),
            ca_cert: self.ctx.ca_cert.clone(),
            model_uuid: model.uuid.clone(),
            model_name: model.name.clone(),
            machine_id: machine_id.clone(),
            credential,
        };
        let yaml = serde_saphyr::to_string(&config)
            .map_err(|e| Status::internal(format!("cannot encode the agent config: {e}")))?;
        Ok(Response::new(pb::AddMachineResponse {
            machine_id,
            agent_config_yaml: yaml.into_bytes(),
        }))
    }

    /// `RemoveMachine`.
    pub(super) async fn remove_machine(
        &self,
        request: Request<pb::RemoveMachineRequest>,
    ) -> Result<Response<pb::RemoveMachineResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "remove machines",
            )
            .await?;
        let op = command::Op::RemoveMachine(starling_proto::command::RemoveMachine {
            model_uuid: model.uuid.clone(),
            machine_id: message.machine_id,
            force: message.force,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::RemoveMachineResponse {}))
    }

    /// `Deploy`: reads the charm's metadata.yaml from the uploaded archive.
    pub(super) async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(&caller, message.model.as_ref(), Access::Write, "deploy")
            .await?;
        let archive = read_blob(&self.handle, &message.charm_digest, "charm")?;
        let metadata = charm_metadata_from_archive(&archive)?;
        let charm = parse_metadata(&metadata)
            .map_err(|e| Status::invalid_argument(format!("invalid charm: {e}")))?;
        let application = non_empty_or(message.application, &charm.name);
        let op = command::Op::Deploy(starling_proto::command::Deploy {
            model_uuid: model.uuid.clone(),
            application,
            charm: Some(charm),
            charm_digest: message.charm_digest,
            config: message.config,
            machines: message.to,
            spread_units: message.num_units,
        });
        let result = self
            .propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::DeployResponse { units }))
    }

    /// `AddUnit`.
    pub(super) async fn add_unit(
        &self,
        request: Request<pb::AddUnitRequest>,
    ) -> Result<Response<pb::AddUnitResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(&caller, message.model.as_ref(), Access::Write, "add units")
            .await?;
        let op = command::Op::AddUnits(starling_proto::command::AddUnits {
            model_uuid: model.uuid.clone(),
            application: message.application,
            machines: message.to,
            spread_units: message.num_units,
        });
        let result = self
            .propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::AddUnitResponse { units }))
    }

    /// `RemoveUnit`.
    pub(super) async fn remove_unit(
        &self,
        request: Request<pb::RemoveUnitRequest>,
    ) -> Result<Response<pb::RemoveUnitResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "remove units",
            )
            .await?;
        let op = command::Op::RemoveUnits(starling_proto::command::RemoveUnits {
            model_uuid: model.uuid.clone(),
            units: message.units,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::RemoveUnitResponse {}))
    }

    /// `RemoveApplication`.
    pub(super) async fn remove_application(
        &self,
        request: Request<pb::RemoveApplicationRequest>,
    ) -> Result<Response<pb::RemoveApplicationResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "remove applications",
            )
            .await?;
        let op = command::Op::RemoveApplication(starling_proto::command::RemoveApplication {
            model_uuid: model.uuid.clone(),
            application: message.application,
        });
        let result = self
            .propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::RemoveApplicationResponse { units }))
    }

    /// `Integrate`.
    pub(super) async fn integrate(
        &self,
        request: Request<pb::IntegrateRequest>,
    ) -> Result<Response<pb::IntegrateResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "relate applications",
            )
            .await?;
        let model_uuid = model.uuid.clone();
        let op = command::Op::Integrate(starling_proto::command::Integrate {
            model_uuid: model.uuid.clone(),
            endpoint_a: message.endpoint_a,
            endpoint_b: message.endpoint_b,
        });
        let result = self
            .propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        let relation_id = Self::ok_fields(&result).and_then(|ok| ok.relation_id);
        let relation = self
            .handle
            .state()
            .model_description(&model_uuid)
            .map_err(storage_error)?
            .and_then(|d| d.relations.into_iter().find(|r| Some(r.id) == relation_id));
        Ok(Response::new(pb::IntegrateResponse { relation }))
    }

    /// `RemoveRelation`.
    pub(super) async fn remove_relation(
        &self,
        request: Request<pb::RemoveRelationRequest>,
    ) -> Result<Response<pb::RemoveRelationResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "remove relations",
            )
            .await?;
        let op = command::Op::RemoveRelation(starling_proto::command::RemoveRelation {
            model_uuid: model.uuid.clone(),
            endpoint_a: message.endpoint_a,
            endpoint_b: message.endpoint_b,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::RemoveRelationResponse {}))
    }

    /// `GetApplicationConfig`: set values over the charm's defaults.
    pub(super) async fn get_application_config(
        &self,
        request: Request<pb::GetApplicationConfigRequest>,
    ) -> Result<Response<pb::ApplicationConfig>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self
            .model_for(
                &caller,
                message.model.as_ref(),
                Access::Read,
                "read application config",
            )
            .await?;
        let application = self
            .handle
            .state()
            .model_description(&model.uuid)
            .map_err(storage_error)?
            .and_then(|d| {
                d.applications
                    .into_iter()
                    .find(|a| a.name == message.application)
            })
            .ok_or_else(|| {
                Status::not_found(format!("application {:?} not found", message.application))
            })?;
        let defaults: BTreeMap<String, String> = application
            .charm
            .as_ref()
            .map(|c| c.config_defaults.clone().into_iter().collect())
            .unwrap_or_default();
        let mut values = defaults.clone();
        let mut default_keys: Vec<String> = defaults.keys().cloned().collect();
        for (key, value) in application.config {
            default_keys.retain(|k| *k != key);
            values.insert(key, value);
        }
        Ok(Response::new(pb::ApplicationConfig {
            values: values.into_iter().collect(),
            defaults: default_keys,
        }))
    }

    /// `SetApplicationConfig`.
    pub(super) async fn set_application_config(
        &self,
        request: Request<pb::SetApplicationConfigRequest>,
    ) -> Result<Response<pb::SetApplicationConfigResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let (model, authority) = self
            .model_to_change(
                &caller,
                message.model.as_ref(),
                Access::Write,
                "change application config",
            )
            .await?;
        let op = command::Op::SetApplicationConfig(starling_proto::command::SetApplicationConfig {
            model_uuid: model.uuid.clone(),
            application: message.application,
            values: message.values,
        });
        self.propose_write(&caller, &model, authority, message.request_id, op)
            .await?;
        Ok(Response::new(pb::SetApplicationConfigResponse {}))
    }
}
