//! Backups in the client API: `CreateBackup`, `ListBackups`, `DownloadBackup`
//! and `RestoreBackup`, for superusers only.
//!
//! A backup is taken by proposing one `CreateBackup` command: the state machine exports the state
//! when it applies it (`storage::backup`), so the archive is the replicated state at exactly that
//! log index, identical on every node, and kept in the replicated state (it survives the loss of
//! the node that asked for it). A restore uploads the archive as a blob (`UploadCharm`), then
//! proposes one `RestoreBackup` command that verifies it again and replaces the models atomically.

use starling_proto::command::{self as cmd, command};
use starling_proto::controller as pb;
use starling_proto::model::{Access, BackupRecord};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::ClientApi;
use crate::auth::Caller;
use crate::plumbing::{
    charm_chunks, now_unix_ms, read_blob, request_id_or_new, storage_error, ChunkStream,
};

fn info_of(record: BackupRecord) -> pb::BackupInfo {
    pb::BackupInfo {
        metadata: record.metadata,
        archive_sha256: record.archive_sha256,
        archive_bytes: record.archive_bytes,
    }
}

/// What a backup call asks to do, for a refusal.
const BACKUP_WHAT: &str = "manage backups";

impl ClientApi {
    fn backup_admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.auth.authenticate_superuser(request, BACKUP_WHAT)
    }

    /// `CreateBackup`: the backup is made when its command applies; answers its record.
    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::BackupInfo>, Status> {
        let caller = self.backup_admin(&request)?;
        let message = request.into_inner();
        // The id is the request id when the client gave one (`ctl` sends a timestamped one), so
        // a retried call names the same backup and is answered with it.
        let (id, request_id) = if message.request_id.is_empty() {
            let id = format!(
                "{}-{}",
                now_unix_ms(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            (id.clone(), id)
        } else {
            (message.request_id.clone(), message.request_id)
        };
        let op = command::Op::CreateBackup(cmd::CreateBackup {
            id: id.clone(),
            controller_uuid: self.identity.controller_uuid.clone(),
            controller_name: self.identity.controller_name.clone(),
            version: self.identity.version.clone(),
            node_id: self.identity.node_id,
            notes: message.notes,
        });
        let authority = caller.authority("", Access::Unspecified, true, BACKUP_WHAT);
        self.propose(&caller, authority, format!("backup-{request_id}"), op)
            .await?;
        let record = self
            .handle
            .state()
            .backup(&id)
            .map_err(storage_error)?
            .ok_or_else(|| Status::not_found(format!("backup {id} was pruned right away")))?;
        info!(backup = id, bytes = record.archive_bytes, "created backup");
        Ok(Response::new(info_of(record)))
    }

    /// `ListBackups`, oldest first.
    pub(super) async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.backup_admin(&request)?;
        self.barrier().await?;
        let mut backups: Vec<pb::BackupInfo> = self
            .handle
            .state()
            .backups()
            .map_err(storage_error)?
            .into_iter()
            .map(info_of)
            .collect();
        backups.sort_by_key(|b| {
            let m = b.metadata.clone().unwrap_or_default();
            (m.created_unix_ms, m.id)
        });
        Ok(Response::new(pb::ListBackupsResponse { backups }))
    }

    /// `DownloadBackup`: the archive in chunks; the client verifies the digest.
    pub(super) async fn download_backup(
        &self,
        request: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.backup_admin(&request)?;
        self.barrier().await?;
        let id = request.into_inner().id;
        let record = self
            .handle
            .state()
            .backup(&id)
            .map_err(storage_error)?
            .ok_or_else(|| Status::not_found(format!("backup {id:?} not found")))?;
        Ok(Response::new(
            charm_chunks(self.handle.clone(), record.archive_sha256).await?,
        ))
    }

    /// `RestoreBackup`: one command verifies the uploaded archive and replaces the models.
    #[instrument(skip_all, fields(node_id = self.identity.node_id))]
    pub(super) async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        let caller = self.backup_admin(&request)?;
        let message = request.into_inner();
        let digest = message.archive_sha256;
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "archive digest {digest:?} is not a hex sha256"
            )));
        }
        // Read the metadata before the command consumes the staged archive.
        let bytes = read_blob(&self.handle, &digest, "backup archive")?;
        let metadata = starling_storage::backup::decode_archive(&bytes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .metadata;
        let op = command::Op::RestoreBackup(cmd::RestoreBackup {
            archive_sha256: digest,
            force: message.force,
            controller_version: self.identity.version.clone(),
        });
        let authority = caller.authority("", Access::Unspecified, true, BACKUP_WHAT);
        self.propose(
            &caller,
            authority,
            request_id_or_new(message.request_id),
            op,
        )
        .await?;
        let model_count = self
            .handle
            .state()
            .list_models()
            .map_err(storage_error)?
            .len() as u64;
        info!(models = model_count, "restored backup");
        Ok(Response::new(pb::RestoreBackupResponse {
            metadata,
            model_count,
        }))
    }
}
