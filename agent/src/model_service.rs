//! The model half of the `Controller` service: models, machines, applications, units,
//! relations, charms, status, the model log and model access. Handlers check access, turn the
//! request into one replicated command, propose it (forwarded to the leader), and read back what
//! they answer from this node's state once it has applied the command.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use starling_proto::command::{command, command_result, Command, CommandResult};
use starling_proto::controller as pb;
use starling_proto::model::StatusHistory;
use starling_proto::model::{self as m, Access};
use starling_raft::{propose_error_status, RaftHandle};
use starling_storage::model::charm::parse_metadata;
use starling_storage::model::deployment::{self, derived_application_status};
use starling_storage::model::names::Entity;
use starling_storage::{keys, records};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument};

use crate::auth::{self, Authenticator, Caller};
use crate::controller_service::{command_result_status, now_unix_ms};
use crate::identity::NodeIdentity;
use crate::migration::MigrationContext;
use starling_storage::migration as stored;

/// The status a client gets for a model that migrated away.
pub(crate) fn migrated(redirect: &starling_proto::migration::Redirect) -> Status {
    Status::failed_precondition(format!(
        "model \"{}\" has been migrated to controller \"{}\". To access it run 'ctl switch {}:{}'.",
        redirect.model_name,
        redirect.controller_name,
        redirect.controller_name,
        redirect.model_name
    ))
}

/// The status a client gets for a model this controller holds as an import: it becomes active
/// here when the migration reaches SUCCESS and the source activates it, moments later.
fn importing(model_name: &str, import: &starling_proto::migration::ImportRecord) -> Status {
    let source = import
        .source
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    Status::failed_precondition(format!(
        "model \"{model_name}\" is being imported from controller \"{source}\" by migration \
         {}; it is not active on this controller yet: try again shortly",
        import.migration_id
    ))
}

/// Largest charm archive accepted.
pub const CHARM_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest chunk of a charm upload or download.
pub const CHARM_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// How many records `debug-log` shows before following when no `--tail` is given.
const DEBUG_LOG_TAIL_DEFAULT: u64 = 10;
/// How many log records one read of the state returns.
const DEBUG_LOG_PAGE: usize = 500;

/// Serves model operations for one node.
#[derive(Clone)]
pub struct ModelService {
    handle: RaftHandle,
    identity: NodeIdentity,
    auth: Authenticator,
    ca_cert: String,
    migration: MigrationContext,
}

/// A failed read of the replicated state, as a status.
pub(crate) fn storage_error(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("cannot read the controller state: {e}"))
}

fn access_rank(access: Access) -> u8 {
    match access {
        Access::Unspecified => 0,
        Access::Read => 1,
        Access::Write => 2,
        Access::Admin => 3,
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Unspecified => "no",
        Access::Read => "read",
        Access::Write => "write",
        Access::Admin => "admin",
    }
}

impl ModelService {
    /// The service of node `identity`.
    pub fn new(migration: MigrationContext, auth: Authenticator) -> Self {
        Self {
            handle: migration.handle.clone(),
            identity: migration.identity.clone(),
            auth,
            ca_cert: migration.ca_cert.clone(),
            migration,
        }
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
            return Err(migrated(&redirect));
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
        if caller.access == auth::SUPERUSER {
            return Access::Admin;
        }
        if model.owner == caller.user {
            return Access::Admin;
        }
        model
            .users
            .iter()
            .find(|u| u.name == caller.user)
            .map(|u| Access::try_from(u.access).unwrap_or(Access::Unspecified))
            .unwrap_or(Access::Unspecified)
    }

    fn require(
        caller: &Caller,
        model: &m::Model,
        needed: Access,
        what: &str,
    ) -> Result<(), Status> {
        let has = Self::access_of(caller, model);
        if access_rank(has) < access_rank(needed) {
            return Err(Status::permission_denied(format!(
                "user {:?} has {} access to model {:?} and may not {what} ({} access needed)",
                caller.user,
                access_name(has),
                model.name,
                access_name(needed),
            )));
        }
        Ok(())
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
                return Err(migrated(&redirect));
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
        if let Some(redirect) = stored::read_redirects(state.reader())
            .map_err(storage_error)?
            .into_iter()
            .find(|r| r.model_name == short && (r.model_owner == owner || !name.contains('/')))
        {
            return Err(migrated(&redirect));
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
            .map_err(|e| propose_error_status(&e))
    }

    /// The model `model_ref` names, when the caller has `needed` access to it (to do `what`).
    fn model_for(
        &self,
        caller: &Caller,
        model_ref: Option<&pb::ModelRef>,
        needed: Access,
        what: &str,
    ) -> Result<m::Model, Status> {
        let model = self.resolve(caller, model_ref)?;
        Self::require(caller, &model, needed, what)?;
        Ok(model)
    }

    /// Proposes `op` for `caller` and waits until this node has applied it.
    async fn propose(
        &self,
        caller: &Caller,
        request_id: String,
        op: command::Op,
    ) -> Result<CommandResult, Status> {
        propose_and_wait(&self.handle, caller, request_id, op).await
    }

    fn ok_fields(result: &CommandResult) -> Option<&starling_proto::command::Ok> {
        match &result.result {
            Some(command_result::Result::Ok(ok)) => Some(ok),
            _ => None,
        }
    }

    fn model_info(&self, model: m::Model) -> Result<pb::ModelInfo, Status> {
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
        let (migration, migration_start_unix_ms, migration_end_unix_ms, _) =
            crate::migration::client_api::summary(
                self.handle.state().reader(),
                &self.migration.progress,
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
        })
    }

    /// `AddModel`.
    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub async fn add_model(
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
        self.propose(&caller, request_id, op).await?;
        // A retried request applied the first time returns that model, whatever uuid we picked.
        let model = self
            .handle
            .state()
            .model_by_name(&caller.user, &message.name)
            .map_err(storage_error)?
            .ok_or_else(|| Status::internal("the model vanished right after it was added"))?;
        info!(model = %model.name, uuid = %model.uuid, "model added");
        Ok(Response::new(self.model_info(model)?))
    }

    /// `ListModels`: the models the caller can see.
    pub async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let models = self.handle.state().consistent(|state| {
            state
                .list_models()
                .map_err(storage_error)?
                .into_iter()
                .filter(|model| Self::access_of(&caller, model) != Access::Unspecified)
                .filter(|model| self.listed(model).unwrap_or(false))
                .map(|model| self.model_info(model))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    /// `ShowModel`.
    pub async fn show_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        // One applied state: the model, whether it is an import or redirected, its migration.
        let info = self.handle.state().consistent(|_| {
            let model = self.resolve(&caller, Some(request.get_ref()))?;
            Self::require(&caller, &model, Access::Read, "read it")?;
            self.model_info(model)
        })?;
        Ok(Response::new(info))
    }

    /// `Migrate` (superuser only: it hands the model to another controller).
    pub async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<pb::MigrateResponse>, Status> {
        let caller = self
            .auth
            .authenticate_superuser(&request, "migrate models")?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.resolve(&caller, message.model.as_ref())?;
        let response =
            crate::migration::client_api::migrate(&self.migration, &caller, model, message).await?;
        Ok(Response::new(response))
    }

    /// `AbortMigration`.
    pub async fn abort_migration(
        &self,
        request: Request<pb::AbortMigrationRequest>,
    ) -> Result<Response<pb::AbortMigrationResponse>, Status> {
        let caller = self
            .auth
            .authenticate_superuser(&request, "abort migrations")?;
        self.barrier().await?;
        let message = request.into_inner();
        let (uuid, name) = crate::migration::client_api::find_model(
            &self.migration,
            &caller,
            message.model.as_ref(),
        )?;
        let response = crate::migration::client_api::abort(
            &self.migration,
            &caller,
            &uuid,
            &name,
            message.reason,
        )
        .await?;
        Ok(Response::new(response))
    }

    /// `MigrationStatus`: readable by anyone with read access to the model while it is here,
    /// and by superusers after it left.
    pub async fn migration_status(
        &self,
        request: Request<pb::MigrationStatusRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let (uuid, name) = crate::migration::client_api::find_model(
            &self.migration,
            &caller,
            message.model.as_ref(),
        )?;
        match self.handle.state().model(&uuid).map_err(storage_error)? {
            Some(model) => Self::require(&caller, &model, Access::Read, "read its migrations")?,
            None if caller.access != auth::SUPERUSER => {
                return Err(Status::permission_denied(format!(
                    "model \"{name}\" has left this controller; only a superuser may read its migration"
                )))
            }
            None => {}
        }
        Ok(Response::new(crate::migration::client_api::status(
            &self.migration,
            &uuid,
            &name,
        )?))
    }

    /// `DestroyModel`.
    pub async fn destroy_model(
        &self,
        request: Request<pb::DestroyModelRequest>,
    ) -> Result<Response<pb::DestroyModelResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(&caller, message.model.as_ref(), Access::Admin, "destroy it")?;
        let op = command::Op::DestroyModel(starling_proto::command::DestroyModel {
            model_uuid: model.uuid.clone(),
            force: message.force,
        });
        self.propose(&caller, message.request_id, op).await?;
        info!(model = %model.name, "model destroyed");
        Ok(Response::new(pb::DestroyModelResponse {}))
    }

    /// `AddMachine`: creates the machine and its agent's credential; answers with the agent
    /// config (the only place the credential ever appears in clear).
    pub async fn add_machine(
        &self,
        request: Request<pb::AddMachineRequest>,
    ) -> Result<Response<pb::AddMachineResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "add machines",
        )?;
        let credential = auth::new_token();
        let op = command::Op::AddMachine(starling_proto::command::AddMachine {
            model_uuid: model.uuid.clone(),
            credential_sha256: auth::hash_token(&credential),
        });
        let result = self.propose(&caller, message.request_id, op).await?;
        let machine_id = Self::ok_fields(&result)
            .map(|ok| ok.machine_id.clone())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Status::internal("the state machine did not name the new machine"))?;
        let (_, nodes) = self.handle.membership();
        let config = crate::agent_config::AgentConfig {
            controller_name: self.identity.controller_name.clone(),
            controller_uuid: self.identity.controller_uuid.clone(),
            api_endpoints: nodes.into_values().collect(),
            ca_cert: self.ca_cert.clone(),
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
    pub async fn remove_machine(
        &self,
        request: Request<pb::RemoveMachineRequest>,
    ) -> Result<Response<pb::RemoveMachineResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "remove machines",
        )?;
        let op = command::Op::RemoveMachine(starling_proto::command::RemoveMachine {
            model_uuid: model.uuid,
            machine_id: message.machine_id,
            force: message.force,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::RemoveMachineResponse {}))
    }

    /// `UploadCharm`: stages the streamed archive through Raft chunk by chunk and commits it
    /// once the digest checks out. Any logged-in user may upload (blobs are content-addressed
    /// and only used by a deploy, which needs write access).
    pub async fn upload_charm(
        &self,
        request: Request<Streaming<pb::CharmChunk>>,
    ) -> Result<Response<pb::UploadCharmResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty charm upload"))?;
        let digest = first.digest.clone();
        let size = first.size;
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "charm digest {digest:?} is not a hex sha256"
            )));
        }
        if size == 0 || size > CHARM_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "charm size {size} is outside 1..={CHARM_BYTES_MAX} bytes"
            )));
        }
        if self
            .handle
            .state()
            .blob(&digest)
            .map_err(storage_error)?
            .is_some()
        {
            return Ok(Response::new(pb::UploadCharmResponse {
                digest,
                already_present: true,
            }));
        }
        // Each upload gets its own request ids, so a retried upload re-stages from offset 0.
        let session = uuid::Uuid::new_v4();
        let mut hasher = Sha256::new();
        let mut expected_offset = 0u64;
        let mut next = Some(first);
        while let Some(chunk) = next {
            if chunk.offset != expected_offset {
                return Err(Status::invalid_argument(format!(
                    "charm chunk at offset {} where {expected_offset} was expected",
                    chunk.offset
                )));
            }
            if chunk.data.len() > CHARM_CHUNK_BYTES_MAX {
                return Err(Status::invalid_argument(format!(
                    "charm chunk of {} bytes exceeds {CHARM_CHUNK_BYTES_MAX}",
                    chunk.data.len()
                )));
            }
            if chunk.offset + chunk.data.len() as u64 > size {
                return Err(Status::invalid_argument(
                    "charm chunks exceed the announced size",
                ));
            }
            hasher.update(&chunk.data);
            expected_offset += chunk.data.len() as u64;
            let op = command::Op::PutBlobChunk(starling_proto::command::PutBlobChunk {
                digest: digest.clone(),
                offset: chunk.offset,
                data: chunk.data,
            });
            self.propose(&caller, format!("upload-{session}-{}", chunk.offset), op)
                .await?;
            next = stream.message().await?;
        }
        if expected_offset != size {
            return Err(Status::invalid_argument(format!(
                "charm upload ended after {expected_offset} of {size} bytes"
            )));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return Err(Status::invalid_argument(format!(
                "charm archive hashes to {actual}, not the announced {digest}"
            )));
        }
        let op = command::Op::CommitBlob(starling_proto::command::CommitBlob {
            digest: digest.clone(),
            size,
        });
        self.propose(&caller, format!("upload-{session}-commit"), op)
            .await?;
        Ok(Response::new(pb::UploadCharmResponse {
            digest,
            already_present: false,
        }))
    }

    /// `DownloadCharm`: the blob in chunks read from the state one at a time; the client
    /// verifies the digest.
    pub async fn download_charm(
        &self,
        request: Request<pb::DownloadCharmRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.auth.authenticate(&request)?;
        let digest = request.into_inner().digest;
        Ok(Response::new(
            charm_chunks(self.handle.clone(), digest).await?,
        ))
    }

    /// `Deploy`: reads the charm's metadata.yaml from the uploaded archive.
    pub async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(&caller, message.model.as_ref(), Access::Write, "deploy")?;
        let archive = read_blob(&self.handle, &message.charm_digest, "charm")?;
        let metadata = charm_metadata_from_archive(&archive)?;
        let charm = parse_metadata(&metadata)
            .map_err(|e| Status::invalid_argument(format!("invalid charm: {e}")))?;
        let application = non_empty_or(message.application, &charm.name);
        let op = command::Op::Deploy(starling_proto::command::Deploy {
            model_uuid: model.uuid,
            application,
            charm: Some(charm),
            charm_digest: message.charm_digest,
            config: message.config,
            machines: message.to,
        });
        let result = self.propose(&caller, message.request_id, op).await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::DeployResponse { units }))
    }

    /// `AddUnit`.
    pub async fn add_unit(
        &self,
        request: Request<pb::AddUnitRequest>,
    ) -> Result<Response<pb::AddUnitResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(&caller, message.model.as_ref(), Access::Write, "add units")?;
        let op = command::Op::AddUnits(starling_proto::command::AddUnits {
            model_uuid: model.uuid,
            application: message.application,
            machines: message.to,
        });
        let result = self.propose(&caller, message.request_id, op).await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::AddUnitResponse { units }))
    }

    /// `RemoveUnit`.
    pub async fn remove_unit(
        &self,
        request: Request<pb::RemoveUnitRequest>,
    ) -> Result<Response<pb::RemoveUnitResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "remove units",
        )?;
        let op = command::Op::RemoveUnits(starling_proto::command::RemoveUnits {
            model_uuid: model.uuid,
            units: message.units,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::RemoveUnitResponse {}))
    }

    /// `StatusLog`: the kept status history of a unit (workload and agent), an application, a
    /// machine or the model, oldest first.
    pub async fn status_log(
        &self,
        request: Request<pb::StatusLogRequest>,
    ) -> Result<Response<pb::StatusLogResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Read,
            "read its status log",
        )?;
        // Only a malformed name is refused here.
        let source = deployment::status_log_source(&message.entity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.handle.state();
        let reader = state.reader();
        let uuid = &model.uuid;
        let exists = match &source.entity {
            Entity::Model => true,
            Entity::Machine(number) => state
                .machine(uuid, *number)
                .map_err(storage_error)?
                .is_some(),
            Entity::Application(name) => records::read_application(reader, uuid, name)
                .map_err(storage_error)?
                .is_some(),
            Entity::Unit {
                application,
                number,
            } => records::read_unit(reader, uuid, application, *number)
                .map_err(storage_error)?
                .is_some(),
        };
        if !exists {
            return Err(Status::not_found(format!("{} not found", message.entity)));
        }
        let mut histories = Vec::new();
        for (entity, kind) in &source.histories {
            let history: Option<StatusHistory> =
                records::read_record(reader, &keys::history_key(uuid, entity))
                    .map_err(storage_error)?;
            histories.push((*kind, history.unwrap_or_default()));
        }
        let entries = deployment::merge_status_log(&histories, message.limit as usize)
            .into_iter()
            .map(|(kind, status)| pb::StatusLogEntry {
                kind: kind.to_owned(),
                status: Some(status.clone()),
            })
            .collect();
        Ok(Response::new(pb::StatusLogResponse { entries }))
    }

    /// `RemoveApplication`.
    pub async fn remove_application(
        &self,
        request: Request<pb::RemoveApplicationRequest>,
    ) -> Result<Response<pb::RemoveApplicationResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "remove applications",
        )?;
        let op = command::Op::RemoveApplication(starling_proto::command::RemoveApplication {
            model_uuid: model.uuid,
            application: message.application,
        });
        let result = self.propose(&caller, message.request_id, op).await?;
        let units = Self::ok_fields(&result)
            .map(|ok| ok.units.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::RemoveApplicationResponse { units }))
    }

    /// `Integrate`.
    pub async fn integrate(
        &self,
        request: Request<pb::IntegrateRequest>,
    ) -> Result<Response<pb::IntegrateResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "relate applications",
        )?;
        let model_uuid = model.uuid.clone();
        let op = command::Op::Integrate(starling_proto::command::Integrate {
            model_uuid: model.uuid,
            endpoint_a: message.endpoint_a,
            endpoint_b: message.endpoint_b,
        });
        let result = self.propose(&caller, message.request_id, op).await?;
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
    pub async fn remove_relation(
        &self,
        request: Request<pb::RemoveRelationRequest>,
    ) -> Result<Response<pb::RemoveRelationResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "remove relations",
        )?;
        let op = command::Op::RemoveRelation(starling_proto::command::RemoveRelation {
            model_uuid: model.uuid,
            endpoint_a: message.endpoint_a,
            endpoint_b: message.endpoint_b,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::RemoveRelationResponse {}))
    }

    /// `GetApplicationConfig`: set values over the charm's defaults.
    pub async fn get_application_config(
        &self,
        request: Request<pb::GetApplicationConfigRequest>,
    ) -> Result<Response<pb::ApplicationConfig>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Read,
            "read application config",
        )?;
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
    pub async fn set_application_config(
        &self,
        request: Request<pb::SetApplicationConfigRequest>,
    ) -> Result<Response<pb::SetApplicationConfigResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "change application config",
        )?;
        let op = command::Op::SetApplicationConfig(starling_proto::command::SetApplicationConfig {
            model_uuid: model.uuid,
            application: message.application,
            values: message.values,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::SetApplicationConfigResponse {}))
    }

    /// `GetModelConfig`.
    pub async fn get_model_config(
        &self,
        request: Request<pb::GetModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfig>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.handle.state().consistent(|_| {
            self.model_for(
                &caller,
                message.model.as_ref(),
                Access::Read,
                "read its config",
            )
        })?;
        Ok(Response::new(pb::ModelConfig {
            values: model.config,
        }))
    }

    /// `SetModelConfig`.
    pub async fn set_model_config(
        &self,
        request: Request<pb::SetModelConfigRequest>,
    ) -> Result<Response<pb::SetModelConfigResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Write,
            "change its config",
        )?;
        let op = command::Op::SetModelConfig(starling_proto::command::SetModelConfig {
            model_uuid: model.uuid,
            values: message.values,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::SetModelConfigResponse {}))
    }

    /// `Status`.
    pub async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::FullStatus>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Read,
            "read its status",
        )?;
        let state = self.handle.state();
        let mut description = state
            .model_description(&model.uuid)
            .map_err(storage_error)?
            .unwrap_or_default();
        // Machine agent status comes from presence, computed now from every node's record.
        let seen = state.model_presence(&model.uuid).map_err(storage_error)?;
        let interval = crate::presence::heartbeat_interval(
            &state.try_controller_config().map_err(storage_error)?,
        );
        let now = now_unix_ms();
        for machine in &mut description.machines {
            machine.agent_status = Some(crate::presence::machine_agent_status(
                machine.agent_status.as_ref(),
                seen.get(&machine.id).copied(),
                now,
                interval,
            ));
        }
        // An application shows the most severe status of its units, as in Juju.
        for application in &mut description.applications {
            let units: Vec<&m::Unit> = description
                .units
                .iter()
                .filter(|u| u.application == application.name)
                .collect();
            application.status = derived_application_status(application.status.as_ref(), &units);
        }
        let (_, _, _, notes) = crate::migration::client_api::summary(
            state.reader(),
            &self.migration.progress,
            &model.uuid,
        )?;
        Ok(Response::new(pb::FullStatus {
            notes,
            model: Some(self.model_info(model)?),
            machines: description.machines,
            applications: description.applications,
            units: description.units,
            relations: description.relations,
            now_unix_ms: now,
        }))
    }

    /// `DebugLog`: the last records, then (with `follow`) new ones as this node applies them.
    pub async fn debug_log(
        &self,
        request: Request<pb::DebugLogRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Read,
            "read its log",
        )?;
        let state = self.handle.state().clone();
        let last = state
            .last_log_seq(&model.uuid)
            .map_err(storage_error)?
            .unwrap_or(0);
        let tail = if message.tail == 0 {
            DEBUG_LOG_TAIL_DEFAULT
        } else {
            message.tail
        };
        let start_after = if message.replay {
            0
        } else {
            last.saturating_sub(tail)
        };
        let filter = LogFilter::new(&message);
        let handle = self.handle.clone();
        let model_uuid = model.uuid;
        let follow = message.follow;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut after = start_after;
            let mut applied = handle.state().applied_index();
            loop {
                let records = match state.model_log(&model_uuid, after, DEBUG_LOG_PAGE) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(storage_error(e))).await;
                        return;
                    }
                };
                let full_page = records.len() == DEBUG_LOG_PAGE;
                for record in records {
                    after = record.seq;
                    if filter.admits(&record) && tx.send(Ok(record)).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !follow {
                    return;
                }
                // Wake on the next applied entry, or every few seconds to notice a gone client.
                applied = handle
                    .wait_applied_past(applied, Duration::from_secs(5))
                    .await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    /// `AddUser`: creates a controller user and answers with its token, shown once.
    pub async fn add_user(
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
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::AddUserResponse { token }))
    }

    /// `SetModelAccess`: grant or revoke.
    pub async fn set_model_access(
        &self,
        request: Request<pb::SetModelAccessRequest>,
    ) -> Result<Response<pb::SetModelAccessResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let message = request.into_inner();
        let model = self.model_for(
            &caller,
            message.model.as_ref(),
            Access::Admin,
            "change who can access it",
        )?;
        let op = command::Op::SetModelAccess(starling_proto::command::SetModelAccess {
            model_uuid: model.uuid,
            user: message.user,
            access: message.access,
            revoke: message.revoke,
        });
        self.propose(&caller, message.request_id, op).await?;
        Ok(Response::new(pb::SetModelAccessResponse {}))
    }

    /// `WhoAmI`.
    pub async fn who_am_i(
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

/// The stream type of `DownloadCharm`.
pub type ChunkStream = futures::stream::BoxStream<'static, Result<pb::CharmChunk, Status>>;
/// The stream type of `DebugLog`.
pub type LogStream = futures::stream::BoxStream<'static, Result<m::LogRecord, Status>>;

struct LogFilter {
    level: i32,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl LogFilter {
    fn new(request: &pb::DebugLogRequest) -> Self {
        Self {
            level: level_rank(request.level),
            include: request.include.clone(),
            exclude: request.exclude.clone(),
        }
    }

    fn admits(&self, record: &m::LogRecord) -> bool {
        level_rank(record.level) >= self.level
            && (self.include.is_empty() || self.include.contains(&record.entity))
            && !self.exclude.contains(&record.entity)
    }
}

/// Orders levels by severity (the proto numbers them for compatibility, not by severity).
fn level_rank(level: i32) -> i32 {
    match m::LogLevel::try_from(level).unwrap_or(m::LogLevel::Info) {
        m::LogLevel::Trace => 0,
        m::LogLevel::Debug => 1,
        m::LogLevel::Info => 2,
        m::LogLevel::Warning => 3,
        m::LogLevel::Error => 4,
    }
}

fn non_empty_or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

/// The client's request id, or a new random one.
pub(crate) fn request_id_or_new(request_id: String) -> String {
    if request_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        request_id
    }
}

/// Proposes `op` for `caller` (under the client's request id, or a new one), maps a refusal to
/// its status, and waits until this node has applied it, so the caller reads its own write.
pub(crate) async fn propose_and_wait(
    handle: &RaftHandle,
    caller: &Caller,
    request_id: String,
    op: command::Op,
) -> Result<CommandResult, Status> {
    let command = Command {
        request_id: request_id_or_new(request_id),
        op: Some(op),
        proposed_unix_ms: now_unix_ms(),
        caller: caller.user.clone(),
    };
    let proposed = handle
        .propose(command)
        .await
        .map_err(|e| propose_error_status(&e))?;
    command_result_status(&proposed.result)?;
    handle
        .wait_applied(proposed.log_index)
        .await
        .map_err(|e| propose_error_status(&e))?;
    Ok(proposed.result)
}

/// How much of a blob one state read returns.
const BLOB_READ_BYTES: u64 = 1024 * 1024;

/// A whole blob (`what` names it in errors: "charm", "backup archive"), read from the state in
/// pieces.
pub(crate) fn read_blob(handle: &RaftHandle, digest: &str, what: &str) -> Result<Vec<u8>, Status> {
    let state = handle.state();
    let header = state.blob(digest).map_err(storage_error)?.ok_or_else(|| {
        Status::failed_precondition(format!("{what} {digest} has not been uploaded"))
    })?;
    let mut bytes = Vec::with_capacity(usize::try_from(header.size).unwrap_or(0));
    while (bytes.len() as u64) < header.size {
        let piece = state
            .blob_range(digest, bytes.len() as u64, BLOB_READ_BYTES)
            .map_err(storage_error)?
            .ok_or_else(|| {
                Status::not_found(format!("{what} {digest} vanished while being read"))
            })?;
        if piece.is_empty() {
            return Err(Status::internal(format!(
                "{what} {digest} is shorter than its header says"
            )));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(bytes)
}

/// A blob as the client API streams it (`DownloadCharm`, `DownloadBackup`).
pub(crate) async fn charm_chunks(
    handle: RaftHandle,
    digest: String,
) -> Result<ChunkStream, Status> {
    let stream = blob_chunks(handle, digest).await?.map(|chunk| {
        chunk.map(|(digest, size, offset, data)| pb::CharmChunk {
            digest,
            size,
            offset,
            data,
        })
    });
    Ok(stream.boxed())
}

/// One chunk of a blob: digest, total size, offset and bytes.
pub type BlobChunk = (String, u64, u64, Vec<u8>);

/// Streams a blob in chunks of at most `CHARM_CHUNK_BYTES_MAX`, reading each from the state only
/// when the client is ready for it. Shared by the client and agent download calls.
pub async fn blob_chunks(
    handle: RaftHandle,
    digest: String,
) -> Result<impl futures::Stream<Item = Result<BlobChunk, Status>> + Send + 'static, Status> {
    let header = handle
        .state()
        .blob(&digest)
        .map_err(storage_error)?
        .ok_or_else(|| Status::not_found(format!("no charm with digest {digest}")))?;
    let size = header.size;
    Ok(futures::stream::unfold(0u64, move |offset| {
        let handle = handle.clone();
        let digest = digest.clone();
        async move {
            if offset >= size {
                return None;
            }
            let piece = handle
                .state()
                .blob_range(&digest, offset, CHARM_CHUNK_BYTES_MAX as u64)
                .map_err(storage_error)
                .and_then(|p| {
                    p.filter(|p| !p.is_empty())
                        .ok_or_else(|| Status::not_found(format!("charm {digest} vanished")))
                });
            match piece {
                Ok(data) => {
                    let next = offset + data.len() as u64;
                    Some((Ok((digest, size, offset, data)), next))
                }
                // Ending the stream after an error: the next poll sees offset == size.
                Err(e) => Some((Err(e), size)),
            }
        }
    }))
}

/// Reads `metadata.yaml` from a charm archive (a tar.gz of the charm directory).
fn charm_metadata_from_archive(archive: &[u8]) -> Result<String, Status> {
    let invalid = |what: String| Status::invalid_argument(format!("invalid charm archive: {what}"));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar.entries().map_err(|e| invalid(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?;
        let name = path.to_string_lossy().trim_start_matches("./").to_string();
        if name == "metadata.yaml" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(1024 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| invalid(format!("metadata.yaml: {e}")))?;
            return Ok(text);
        }
    }
    Err(invalid("no metadata.yaml at its top level".into()))
}
