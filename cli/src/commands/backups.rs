//! `ctl create-backup`, `backups`, `download-backup` and `restore-backup`: backups of a whole
//! controller. Archives are verified (magic, format, content digest, version) before anything is
//! sent to a controller, and again by the controller before it restores.
//!
//! The archive checks mirror `storage::backup` (this crate does not depend on the storage crate).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};
use starling_proto::controller::{
    BackupInfo, CharmChunk, CreateBackupRequest, DownloadBackupRequest, ListBackupsRequest,
    RestoreBackupRequest, ShowControllerRequest,
};
use starling_proto::limits::BLOB_CHUNK_BYTES_MAX;
use starling_proto::model::{BackupArchive, BackupMetadata};

use super::{Context, ControllerArg};
use crate::client::ControllerClient;
use crate::format::rfc3339;
use crate::render::{structured, table, Format};
use crate::{Output, UsageError};

/// What every archive file starts with (`storage::backup::MAGIC`).
pub const MAGIC: &[u8] = b"STARLINGBACKUP\0";
/// The archive layout this build reads (`storage::backup::ARCHIVE_FORMAT_VERSION`).
pub const ARCHIVE_FORMAT_VERSION: u32 = 1;

/// Picks the controller of a backup command: `-c NAME`, or `-m NAME:controller` (the controller
/// model, as Juju spells it).
#[derive(Debug, Clone, Args, Default)]
pub struct BackupTarget {
    #[command(flatten)]
    controller: ControllerArg,
    /// The controller model: `CONTROLLER:controller` (or `CONTROLLER:admin/controller`).
    #[arg(short = 'm', long = "model", value_name = "CONTROLLER:controller")]
    pub model: Option<String>,
}

impl BackupTarget {
    fn connect(&self, ctx: &Context) -> Result<ControllerClient> {
        let controller = match (&self.controller.controller, &self.model) {
            (Some(_), Some(_)) => {
                return Err(UsageError("give -c or -m, not both".into()).into());
            }
            (Some(c), None) => Some(c.clone()),
            (None, Some(model)) => {
                let (controller, model) = match model.split_once(':') {
                    Some((c, m)) => (Some(c.to_string()), m),
                    None => (None, model.as_str()),
                };
                if model != "controller" && model != "admin/controller" {
                    return Err(UsageError(format!(
                        "backups are made of the controller model, not \"{model}\": use -m \
                         CONTROLLER:controller or -c CONTROLLER"
                    ))
                    .into());
                }
                controller
            }
            (None, None) => None,
        };
        ctx.connect(controller.as_deref(), None, None)
    }
}

/// Arguments of `ctl create-backup`.
#[derive(Debug, Args)]
pub struct CreateBackupArgs {
    #[command(flatten)]
    target: BackupTarget,
    /// Notes kept with the backup.
    pub notes: Option<String>,
    /// Where to write the archive (default: starling-backup-<controller>-<timestamp>.bin).
    #[arg(long, value_name = "FILE")]
    pub filename: Option<PathBuf>,
    /// Keep the backup on the controller only.
    #[arg(long)]
    pub no_download: bool,
}

/// Arguments of `ctl backups`.
#[derive(Debug, Args)]
pub struct BackupsArgs {
    #[command(flatten)]
    target: BackupTarget,
}

/// Arguments of `ctl download-backup`.
#[derive(Debug, Args)]
pub struct DownloadBackupArgs {
    #[command(flatten)]
    target: BackupTarget,
    /// The backup's id (see `ctl backups`).
    pub id: String,
    /// Where to write the archive (default: starling-backup-<controller>-<id>.bin).
    #[arg(long, value_name = "FILE")]
    pub filename: Option<PathBuf>,
}

/// Arguments of `ctl restore-backup`.
#[derive(Debug, Args)]
pub struct RestoreBackupArgs {
    #[command(flatten)]
    target: BackupTarget,
    /// The archive file.
    pub file: PathBuf,
    /// Replace the models the controller already holds.
    #[arg(long)]
    pub force: bool,
}

/// One backup as `ctl backups` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct BackupItem {
    id: String,
    created: Option<String>,
    size: u64,
    notes: String,
    controller: String,
    version: String,
    models: u64,
    node_id: u64,
    sha256: String,
}

impl BackupItem {
    fn new(info: &BackupInfo) -> Self {
        let m = info.metadata.clone().unwrap_or_default();
        Self {
            id: m.id,
            created: rfc3339(m.created_unix_ms),
            size: info.archive_bytes,
            notes: m.notes,
            controller: m.controller_name,
            version: m.version,
            models: m.model_count,
            node_id: m.node_id,
            sha256: info.archive_sha256.clone(),
        }
    }
}

/// `MAJOR.MINOR.PATCH` with pre-release sorting first (`storage::backup::compare_versions`).
fn parse_version(version: &str) -> Result<(u64, u64, u64, bool, String)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split_once('+').map_or(core, |(core, _)| core);
    let (core, pre) = core.split_once('-').unwrap_or((core, ""));
    let numbers: Vec<u64> = core
        .split('.')
        .map(|n| n.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("invalid version \"{version}\""))?;
    let [major, minor, patch] = numbers[..] else {
        bail!("invalid version \"{version}\"");
    };
    Ok((major, minor, patch, pre.is_empty(), pre.to_owned()))
}

/// Checks an archive file: magic, format, content digest and length. Returns its metadata.
pub fn verify_archive(bytes: &[u8]) -> Result<BackupMetadata> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            bail!("the backup archive is truncated: it ends inside the header");
        }
        bail!("not a Starling backup archive (no STARLINGBACKUP header)");
    };
    let Some((version, body)) = rest.split_first_chunk::<4>() else {
        bail!("the backup archive is truncated: it ends inside the header");
    };
    let version = u32::from_be_bytes(*version);
    if version != ARCHIVE_FORMAT_VERSION {
        bail!(
            "backup archive format {version} is not supported (this ctl reads \
             {ARCHIVE_FORMAT_VERSION})"
        );
    }
    let archive = BackupArchive::decode(body).map_err(|e| {
        anyhow!("the backup archive is corrupted: undecodable ({e}); the file may be truncated")
    })?;
    let metadata = archive
        .metadata
        .ok_or_else(|| anyhow!("the backup archive is corrupted: no metadata"))?;
    if metadata.content_bytes != archive.content.len() as u64 {
        bail!(
            "the backup archive is truncated: content is {} bytes, the metadata says {}",
            archive.content.len(),
            metadata.content_bytes
        );
    }
    let actual = hex::encode(Sha256::digest(&archive.content));
    if actual != metadata.content_sha256 {
        bail!(
            "the backup archive is corrupted: content hashes to {actual}, the metadata says {}",
            metadata.content_sha256
        );
    }
    Ok(metadata)
}

/// Refuses a backup from a newer version than `controller_version`.
pub fn check_version(metadata: &BackupMetadata, controller_version: &str) -> Result<()> {
    if parse_version(&metadata.version)? > parse_version(controller_version)? {
        bail!(
            "the backup was made by controller version {}, newer than this controller's {}: \
             restore it onto a controller of version {} or later",
            metadata.version,
            controller_version,
            metadata.version
        );
    }
    Ok(())
}

/// A byte progress bar on stderr when it is a terminal (`indicatif` hides it otherwise: the
/// summary line says it all).
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}",
            )
            .expect("a valid progress template")
            .progress_chars("#>-"),
        );
        bar.set_message(what);
        Self { bar }
    }

    fn update(&self, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        self.bar.set_length(total);
        self.bar.set_position(done.min(total));
        if done >= total {
            self.bar.finish();
        }
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file in the same dir, renamed).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // NamedTempFile is created 0600.
    file.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Downloads backup `info` and writes it to `path`, verifying the digest.
async fn download(client: &ControllerClient, info: &BackupInfo, path: &Path) -> Result<()> {
    let id = info
        .metadata
        .as_ref()
        .map(|m| m.id.clone())
        .unwrap_or_default();
    let progress = Progress::new("downloading");
    let bytes = client
        .call(|mut c| {
            let id = id.clone();
            let progress = &progress;
            async move {
                let mut stream = c
                    .download_backup(DownloadBackupRequest { id })
                    .await?
                    .into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    if chunk.offset != bytes.len() as u64 {
                        return Err(tonic::Status::data_loss("backup chunks out of order"));
                    }
                    bytes.extend_from_slice(&chunk.data);
                    progress.update(bytes.len() as u64, chunk.size);
                }
                Ok(tonic::Response::new(bytes))
            }
        })
        .await?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != info.archive_sha256 {
        bail!(
            "the downloaded backup hashes to {actual}, not the controller's {}",
            info.archive_sha256
        );
    }
    verify_archive(&bytes)?;
    write_private(path, &bytes)
}

fn default_filename(controller: &str, stamp: &str) -> PathBuf {
    PathBuf::from(format!("starling-backup-{controller}-{stamp}.bin"))
}

/// A request id that is also a readable, sortable backup id.
fn backup_request_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = now.format(&format).unwrap_or_default();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{stamp}-{}", &random[..8])
}

/// Runs `ctl create-backup`.
pub async fn create_backup(ctx: &Context, args: CreateBackupArgs) -> Result<Output> {
    let client = args.target.connect(ctx)?;
    let request = CreateBackupRequest {
        notes: args.notes.unwrap_or_default(),
        request_id: backup_request_id(),
    };
    let info = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.create_backup(request).await }
        })
        .await?;
    let id = info
        .metadata
        .as_ref()
        .map(|m| m.id.clone())
        .unwrap_or_default();
    let mut stdout = format!(
        "Backup {id} created and kept on controller \"{}\".\n",
        client.controller()
    );
    if !args.no_download {
        let path = args
            .filename
            .unwrap_or_else(|| default_filename(client.controller(), &id));
        download(&client, &info, &path).await?;
        stdout.push_str(&format!("Downloaded to {}\n", path.display()));
    }
    Ok(Output::stdout(stdout))
}

async fn list(client: &ControllerClient) -> Result<Vec<BackupInfo>> {
    Ok(client
        .call(|mut c| async move { c.list_backups(ListBackupsRequest {}).await })
        .await?
        .backups)
}

/// Runs `ctl backups`.
pub async fn backups(ctx: &Context, args: BackupsArgs) -> Result<Output> {
    let client = args.target.connect(ctx)?;
    let items: Vec<BackupItem> = list(&client).await?.iter().map(BackupItem::new).collect();
    #[derive(Serialize)]
    struct Backups<'a> {
        backups: &'a [BackupItem],
    }
    let format = ctx.format_or(Format::Tabular);
    if let Some(text) = structured(format, &Backups { backups: &items })? {
        return Ok(Output::stdout(text));
    }
    if items.is_empty() {
        return Ok(Output::stderr("No backups to display.\n"));
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.created.clone().unwrap_or_else(|| "-".into()),
                b.size.to_string(),
                b.notes.clone(),
            ]
        })
        .collect();
    Ok(Output::stdout(table(
        &["ID", "Created", "Size", "Notes"],
        &rows,
        &[2],
    )))
}

/// Runs `ctl download-backup`.
pub async fn download_backup(ctx: &Context, args: DownloadBackupArgs) -> Result<Output> {
    let client = args.target.connect(ctx)?;
    let info = list(&client)
        .await?
        .into_iter()
        .find(|b| b.metadata.as_ref().is_some_and(|m| m.id == args.id))
        .ok_or_else(|| anyhow!("backup \"{}\" not found", args.id))?;
    let path = args
        .filename
        .unwrap_or_else(|| default_filename(client.controller(), &args.id));
    download(&client, &info, &path).await?;
    Ok(Output::stdout(format!(
        "Downloaded to {}\n",
        path.display()
    )))
}

/// Runs `ctl restore-backup`.
pub async fn restore_backup(ctx: &Context, args: RestoreBackupArgs) -> Result<Output> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let metadata = verify_archive(&bytes)?;
    let client = args.target.connect(ctx)?;
    let controller = client
        .call(|mut c| async move { c.show_controller(ShowControllerRequest {}).await })
        .await?;
    check_version(&metadata, &controller.version)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let bytes = Arc::new(bytes);
    let progress = Arc::new(Progress::new("uploading"));
    client
        .call(|mut c| {
            let bytes = bytes.clone();
            let digest = digest.clone();
            let progress = progress.clone();
            async move {
                let n_chunks = bytes.len().div_ceil(BLOB_CHUNK_BYTES_MAX);
                let chunks = (0..n_chunks).map(move |idx| {
                    let start = idx * BLOB_CHUNK_BYTES_MAX;
                    let end = (start + BLOB_CHUNK_BYTES_MAX).min(bytes.len());
                    progress.update(end as u64, size);
                    CharmChunk {
                        digest: digest.clone(),
                        size,
                        offset: start as u64,
                        data: bytes[start..end].to_vec(),
                    }
                });
                c.upload_charm(tokio_stream::iter(chunks)).await
            }
        })
        .await?;
    let request = RestoreBackupRequest {
        archive_sha256: digest,
        force: args.force,
        request_id: super::request_id(),
    };
    let restored = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.restore_backup(request).await }
        })
        .await?;
    Ok(Output::stdout(format!(
        "Restored backup {} of controller \"{}\" onto \"{}\": {} model(s).\n",
        metadata.id,
        metadata.controller_name,
        client.controller(),
        restored.model_count
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_bytes(version: &str, content: &[u8]) -> Vec<u8> {
        let archive = BackupArchive {
            metadata: Some(BackupMetadata {
                version: version.into(),
                content_sha256: hex::encode(Sha256::digest(content)),
                content_bytes: content.len() as u64,
                ..Default::default()
            }),
            content: content.to_vec(),
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&ARCHIVE_FORMAT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&archive.encode_to_vec());
        bytes
    }

    #[test]
    fn archives_are_verified() {
        let bytes = archive_bytes("1.0.0", b"content");
        assert_eq!(verify_archive(&bytes).expect("valid").version, "1.0.0");
        let err = verify_archive(b"hello").expect_err("wrong file");
        assert!(err.to_string().contains("not a Starling backup"), "{err}");
        let err = verify_archive(&bytes[..bytes.len() - 3]).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(verify_archive(&bad)
            .expect_err("corrupt")
            .to_string()
            .contains("corrupted"));
    }

    #[test]
    fn newer_versions_are_refused() {
        let metadata = BackupMetadata {
            version: "1.10.0".into(),
            ..Default::default()
        };
        assert!(check_version(&metadata, "1.10.0").is_ok());
        assert!(check_version(&metadata, "2.0.0").is_ok());
        let err = check_version(&metadata, "1.9.3").expect_err("newer");
        assert!(
            err.to_string()
                .contains("newer than this controller's 1.9.3"),
            "{err}"
        );
    }
}
