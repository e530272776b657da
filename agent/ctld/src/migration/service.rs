//! The `Migration` peer service. As a target, a node answers prechecks, receives the staged
//! files of a bulk import (resumably, fanned out to its group: `staging`), imports them with one
//! entry of its Raft group, activates or drops the import and stores the transferred log; every
//! step is a proposal under a request id derived from the migration id, so a repeat is answered
//! with the first result. As a source, it tells a target what became of a migration it holds an
//! import of (`SourceStatus`).

use futures::StreamExt;
use starling_proto::command::{command, ActivateModel, ApplyModelChanges, ImportLog, ImportModel};
use starling_proto::limits::MESSAGE_BYTES_MAX;
use starling_proto::migration as pb;
use starling_proto::migration::migration_server::{Migration, MigrationServer};
use starling_proto::model::Access;
use starling_storage::migration as stored;
use starling_storage::model::migration::{source_answer, MigrationId, SourceAnswer};
use starling_storage::model::names;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument};

use super::{drop_import_in_chunks, failpoint};
use crate::auth::{self, constant_time_eq, Authenticator, Caller};
use crate::context::NodeContext;
use crate::plumbing::{proposal, propose_and_wait, storage_error};
use crate::staging::transfer::From;

/// What the source asks a target to do, for a refusal.
const IMPORT_WHAT: &str = "migrate models to this controller";

/// The peer service of one node.
#[derive(Clone)]
pub struct MigrationService {
    ctx: NodeContext,
    auth: Authenticator,
}

fn parse_id(id: &str) -> Result<MigrationId, Status> {
    MigrationId::parse(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn failed(point: &str) -> Result<(), Status> {
    match failpoint(point) {
        Some(reason) => Err(Status::unavailable(reason)),
        None => Ok(()),
    }
}

impl MigrationService {
    /// The service of the node `ctx` describes.
    pub fn new(ctx: NodeContext, auth: Authenticator) -> Self {
        MigrationService { ctx, auth }
    }

    /// As a tonic server.
    pub fn into_server(self) -> MigrationServer<Self> {
        MigrationServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn superuser<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth.authenticate_superuser(request, IMPORT_WHAT)
    }

    async fn barrier(&self) -> Result<(), Status> {
        self.ctx
            .handle
            .linearizable_barrier()
            .await
            .map_err(|e| proposal(&e))
    }

    async fn propose(
        &self,
        caller: &Caller,
        request_id: String,
        op: command::Op,
    ) -> Result<starling_proto::command::Ok, Status> {
        let authority = caller.authority("", Access::Unspecified, true, IMPORT_WHAT);
        let result =
            propose_and_wait(&self.ctx.handle, &caller.user, authority, request_id, op).await?;
        match result.result {
            Some(starling_proto::command::command_result::Result::Ok(ok)) => Ok(ok),
            _ => Err(Status::internal("a proposal succeeded without a result")),
        }
    }

    fn import_status(&self, id: &MigrationId) -> Result<pb::ImportStatusResponse, Status> {
        use pb::import_status_response::State;
        let state = self.ctx.handle.state().reader();
        let uuid = &id.model_uuid;
        if let Some(import) = stored::read_import(state, uuid).map_err(storage_error)? {
            if import.migration_id == id.to_string() {
                return Ok(pb::ImportStatusResponse {
                    state: State::Imported as i32,
                    digest: import.digest,
                    description_bytes: import.description_bytes,
                    record_count: import.record_count,
                    copy_digest: import.copy_digest,
                    position: import.position,
                    sealed_index: import.sealed_index,
                });
            }
        }
        if stored::read_activated_by(state, uuid)
            .map_err(storage_error)?
            .as_deref()
            == Some(id.to_string().as_str())
        {
            return Ok(pb::ImportStatusResponse {
                state: State::Active as i32,
                ..Default::default()
            });
        }
        Ok(pb::ImportStatusResponse::default())
    }
}

#[tonic::async_trait]
impl Migration for MigrationService {
    #[instrument(skip_all, fields(node_id = self.ctx.identity.node_id))]
    async fn precheck(
        &self,
        request: Request<pb::PrecheckRequest>,
    ) -> Result<Response<pb::PrecheckResponse>, Status> {
        self.superuser(&request)?;
        self.barrier().await?;
        let failures = super::prechecks::target_checks(&self.ctx, request.get_ref())?;
        Ok(Response::new(pb::PrecheckResponse {
            failures,
            target_version: self.ctx.identity.version.clone(),
            controller_uuid: self.ctx.identity.controller_uuid.clone(),
            controller_name: self.ctx.identity.controller_name.clone(),
        }))
    }

    async fn stage_status(
        &self,
        request: Request<pb::StageStatusRequest>,
    ) -> Result<Response<pb::StageStatusResponse>, Status> {
        self.superuser(&request)?;
        let message = request.into_inner();
        parse_id(&message.migration_id)?;
        Ok(Response::new(
            self.ctx
                .staging
                .status(&message.migration_id, &message.files)?,
        ))
    }

    async fn stage_file(
        &self,
        request: Request<Streaming<pb::StageFileChunk>>,
    ) -> Result<Response<pb::StageFileResponse>, Status> {
        self.superuser(&request)?;
        failed("migration.target.stage")?;
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await.transpose()? else {
            return Err(Status::invalid_argument("an empty staging stream"));
        };
        parse_id(&first.migration_id)?;
        names::check_digest(&first.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let answer = self
            .ctx
            .staging
            .receive(first, stream, From::Source)
            .await?;
        Ok(Response::new(answer))
    }

    #[instrument(skip_all, fields(node_id = self.ctx.identity.node_id, migration = %request.get_ref().migration_id))]
    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportStatusResponse>, Status> {
        let caller = self.superuser(&request)?;
        failed("migration.target.import")?;
        let message = request.into_inner();
        let id = parse_id(&message.migration_id)?;
        if !message
            .staged
            .iter()
            .any(|f| f.digest == message.description_digest)
        {
            return Err(Status::invalid_argument(
                "the import names no staged description (a source of an earlier version?); \
                 stage the description and the charms first",
            ));
        }
        let already =
            self.import_status(&id)?.state != pb::import_status_response::State::NotStarted as i32;
        if !already {
            // The files must be where the entry can be applied before it is committed.
            self.ctx
                .staging
                .ensure_held(&id.to_string(), &message.staged)
                .await?;
        }
        // The copy is part of the request id: a master that exported again after a refused
        // import gets an answer about its own copy.
        self.propose(
            &caller,
            format!(
                "import-{id}-{}-{}",
                message.description_digest, message.copy_digest
            ),
            command::Op::ImportModel(ImportModel {
                migration_id: id.to_string(),
                description_digest: message.description_digest,
                source: message.source,
                staged: message.staged,
                feed_from_index: message.feed_from_index,
                copy_digest: message.copy_digest,
            }),
        )
        .await?;
        if starling_storage::planted::armed("activate-before-decision") {
            // Planted bug: make the import live before the source has decided anything.
            self.propose(
                &caller,
                format!("activate-{id}"),
                command::Op::ActivateModel(ActivateModel {
                    migration_id: id.to_string(),
                }),
            )
            .await?;
            let description = self
                .ctx
                .handle
                .state()
                .model_description(&id.model_uuid)
                .map_err(storage_error)?
                .unwrap_or_default();
            return Ok(Response::new(pb::ImportStatusResponse {
                state: pb::import_status_response::State::Imported as i32,
                digest: starling_storage::export::description_digest(&description),
                ..Default::default()
            }));
        }
        let status = self.import_status(&id)?;
        info!(digest = %status.digest, records = status.record_count, "model imported");
        Ok(Response::new(status))
    }

    async fn import_status(
        &self,
        request: Request<pb::ImportStatusRequest>,
    ) -> Result<Response<pb::ImportStatusResponse>, Status> {
        self.superuser(&request)?;
        self.barrier().await?;
        let id = parse_id(&request.get_ref().migration_id)?;
        Ok(Response::new(self.import_status(&id)?))
    }

    #[instrument(skip_all, fields(node_id = self.ctx.identity.node_id, migration = %request.get_ref().migration_id))]
    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let caller = self.superuser(&request)?;
        failed("migration.target.activate")?;
        let id = parse_id(&request.get_ref().migration_id)?;
        let already =
            self.import_status(&id)?.state == pb::import_status_response::State::Active as i32;
        let ok = self
            .propose(
                &caller,
                format!("activate-{id}"),
                command::Op::ActivateModel(ActivateModel {
                    migration_id: id.to_string(),
                }),
            )
            .await?;
        info!(epoch = ok.ownership_epoch, "model activated");
        Ok(Response::new(pb::ActivateResponse {
            ownership_epoch: ok.ownership_epoch,
            already_active: already,
        }))
    }

    #[instrument(skip_all, fields(node_id = self.ctx.identity.node_id, migration = %request.get_ref().migration_id))]
    async fn drop_import(
        &self,
        request: Request<pb::DropImportRequest>,
    ) -> Result<Response<pb::DropImportResponse>, Status> {
        let caller = self.superuser(&request)?;
        failed("migration.target.drop")?;
        let message = request.into_inner();
        let id = parse_id(&message.migration_id)?;
        let (ok, chunks) = drop_import_in_chunks(
            &id.to_string(),
            &message.reason,
            "drop",
            |request_id, op| self.propose(&caller, request_id, op),
        )
        .await?;
        let dropped = ok.dropped;
        info!(dropped, chunks, "drop import");
        Ok(Response::new(pb::DropImportResponse { dropped }))
    }

    async fn transfer_log(
        &self,
        request: Request<pb::TransferLogRequest>,
    ) -> Result<Response<pb::TransferLogResponse>, Status> {
        let caller = self.superuser(&request)?;
        let message = request.into_inner();
        let id = parse_id(&message.migration_id)?;
        let first = message.records.first().map_or(0, |r| r.seq);
        let result = self
            .propose(
                &caller,
                format!("log-{id}-{first}-{}", message.records.len()),
                command::Op::ImportLog(ImportLog {
                    migration_id: id.to_string(),
                    records: message.records,
                    complete: message.complete,
                }),
            )
            .await;
        match result {
            Ok(ok) => Ok(Response::new(pb::TransferLogResponse {
                position: ok.log_position,
                ended: message.complete,
            })),
            // Refused because the transfer has ended here (its end arrived before, or the
            // sweeper ended it): the source goes on as if it were complete.
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && stored::read_activated_by(
                        self.ctx.handle.state().reader(),
                        &id.model_uuid,
                    )
                    .map_err(storage_error)?
                    .is_some_and(|by| by == id.to_string())
                    && stored::read_log_transfer(
                        self.ctx.handle.state().reader(),
                        &id.model_uuid,
                    )
                    .map_err(storage_error)?
                    .is_none_or(|open| open.migration_id != id.to_string()) =>
            {
                Ok(Response::new(pb::TransferLogResponse {
                    position: 0,
                    ended: true,
                }))
            }
            Err(status) => Err(status),
        }
    }

    #[instrument(skip_all, fields(node_id = self.ctx.identity.node_id, migration = %request.get_ref().migration_id))]
    async fn apply_changes(
        &self,
        request: Request<pb::ApplyChangesRequest>,
    ) -> Result<Response<pb::ImportStatusResponse>, Status> {
        let caller = self.superuser(&request)?;
        let message = request.into_inner();
        failed(if message.seal_index > 0 {
            "migration.target.seal"
        } else {
            "migration.target.apply-changes"
        })?;
        let id = parse_id(&message.migration_id)?;
        let entries = message.changes.len();
        // Applying is idempotent on the feed position, so every call may have its own id.
        self.propose(
            &caller,
            format!("changes-{id}-{}", uuid::Uuid::new_v4()),
            command::Op::ApplyModelChanges(ApplyModelChanges {
                migration_id: id.to_string(),
                after: message.after,
                changes: message.changes,
                seal_index: message.seal_index,
            }),
        )
        .await?;
        let status = self.import_status(&id)?;
        if message.seal_index > 0 {
            info!(entries, sealed_index = status.sealed_index, digest = %status.digest, "import sealed");
        }
        Ok(Response::new(status))
    }

    async fn source_status(
        &self,
        request: Request<pb::SourceStatusRequest>,
    ) -> Result<Response<pb::SourceStatusResponse>, Status> {
        use pb::source_status_response::Answer;
        let id = parse_id(&request.get_ref().migration_id)?;
        self.barrier().await?;
        let record =
            stored::read_migration(self.ctx.handle.state().reader(), &id).map_err(storage_error)?;
        if record.is_none() {
            // "No such migration" tells nobody anything secret, and it is what lets a target
            // drop an import its source forgot (e.g. restored from an older backup).
            return Ok(Response::new(pb::SourceStatusResponse {
                answer: Answer::Unknown as i32,
                phase: String::new(),
            }));
        }
        // The target presents the secret it was handed with the import; a superuser may ask too.
        let secret_ok = record.as_ref().is_some_and(|record| {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            !record.source_secret.is_empty()
                && constant_time_eq(presented.as_bytes(), record.source_secret.as_bytes())
        });
        if !secret_ok {
            let caller = self.auth.authenticate(&request)?;
            if caller.access != auth::SUPERUSER {
                return Err(Status::permission_denied(
                    "only the migration's target or a superuser may ask about it",
                ));
            }
        }
        let logic = record
            .as_ref()
            .map(stored::to_logic)
            .transpose()
            .map_err(storage_error)?;
        let (answer, phase) = match source_answer(logic.as_ref()) {
            SourceAnswer::Unknown | SourceAnswer::Unreachable => (Answer::Unknown, String::new()),
            SourceAnswer::InProgress { phase } => (Answer::InProgress, phase.to_string()),
            SourceAnswer::Aborted { phase } => (Answer::Aborted, phase.to_string()),
            SourceAnswer::Committed { phase } => (Answer::Committed, phase.to_string()),
        };
        Ok(Response::new(pb::SourceStatusResponse {
            answer: answer as i32,
            phase,
        }))
    }
}
