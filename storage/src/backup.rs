//! Backups of a controller: the archive format, and applying `CreateBackup` and `RestoreBackup`.
//!
//! An archive file is `MAGIC`, a big-endian u32 `ARCHIVE_FORMAT_VERSION`, then a protobuf
//! `model.BackupArchive`: `BackupMetadata` (who, when, which version, the content's sha256) and
//! `content`, an encoded `raft.Snapshot` (without `last_applied`) of every replicated key a restore
//! brings back: controller config, models, users, blobs, and what migrations left beside the
//! models (records, locks, redirects, imports, activations, open log transfers; the target's
//! token stripped from each record) — never `sys/`, `req/`, `reqidx/`, `presence/`, uploads in
//! progress, nor the backups themselves. A backup so says exactly which models the controller
//! owns: an import or a redirect is held but not owned. A pre-copy's importing copy is an
//! import like any other (its records, and its feed position and seal in `import/<uuid>`); the
//! source's change feed (`mfeed/`, `mchg/`) is left out: it exists only while a migration is in
//! flight (and until its entries are trimmed), and a model whose migration was in flight in the
//! backup is never restored from it (below), so a restore has no use for it.
//!
//! A restore never moves ownership (`restore_backup`): it is refused while a migration is in
//! flight on the controller; a model whose migration memory is the same in the backup as now,
//! or that the controller knows nothing of now, comes back as the backup has it; a model some
//! migration touched since the backup stays as it is now; and a backup holding a migration in
//! flight that the controller no longer knows of is refused.
//!
//! Both commands do their work when they apply, so a backup is the state at exactly one point of
//! the log (consistent across keys) and every node writes the same archive bytes; a restore is one
//! atomic write set.

use starling_proto::limits::{BLOB_BYTES_MAX, BLOB_CHUNK_BYTES_MAX};
use std::cmp::Ordering;
use std::collections::BTreeSet;

use prost::Message;
use sha2::{Digest, Sha256};
use starling_proto::command::{self as cmd, command::Op, command_error::Code, CommandResult};
use starling_proto::migration::MigrationRecord;
use starling_proto::model::{BackupArchive, BackupMetadata, BackupRecord, Blob};

use crate::apply::{error_result, ok_result};
use crate::keys;
use crate::model::deployment::CONTROLLER_MODEL_NAME;
use crate::records;
use crate::state::{
    read_effective_config, AppliedState, KeyValues, Overlay, StateImage, StateRead,
};
use crate::{StorageError, WriteSet};

/// What every archive file starts with.
pub const MAGIC: &[u8] = b"STARLINGBACKUP\0";
/// The archive layout this build writes and reads.
pub const ARCHIVE_FORMAT_VERSION: u32 = 1;
/// Longest backup id.
const BACKUP_ID_CHARS_MAX: usize = 128;
/// The key prefixes of what belongs to the controller as a whole: its config, its users, blobs.
const CONTROLLER_PREFIXES: [&[u8]; 4] = [
    keys::CONFIG_PREFIX,
    keys::USER_PREFIX,
    keys::BLOB_PREFIX,
    b"blobdata/",
];

/// The key prefixes of a model's records and of the name index pointing at them.
const MODEL_PREFIXES: [&[u8]; 2] = [b"m/", keys::MODEL_NAME_PREFIX];

/// The prefixes of what migrations keep beside a model, each followed by the model's uuid.
const MIGRATION_MEMORY_PREFIXES: [&[u8]; 6] = [
    keys::MIGRATION_PREFIX,
    keys::MIGRATION_LOCK_PREFIX,
    keys::REDIRECT_PREFIX,
    keys::IMPORT_PREFIX,
    keys::ACTIVATED_PREFIX,
    keys::LOG_TRANSFER_PREFIX,
];

/// The key prefixes of everything a restore decides model by model.
fn per_model_prefixes() -> impl Iterator<Item = &'static [u8]> {
    MODEL_PREFIXES.into_iter().chain(MIGRATION_MEMORY_PREFIXES)
}

/// The key prefixes a backup holds and a restore writes.
fn restored_prefixes() -> impl Iterator<Item = &'static [u8]> {
    CONTROLLER_PREFIXES.into_iter().chain(per_model_prefixes())
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    /// The bytes do not start with `MAGIC`.
    #[error("not a Starling backup archive (no STARLINGBACKUP header)")]
    NotABackup,
    /// The archive ends early.
    #[error("the backup archive is truncated: {why}")]
    Truncated {
        /// What is missing.
        why: String,
    },
    /// The layout is one this build does not read.
    #[error("backup archive format {version} is not supported (this build reads {ARCHIVE_FORMAT_VERSION})")]
    UnsupportedFormat {
        /// The archive's format version.
        version: u32,
    },
    /// The bytes after the header are not an archive, or the content is damaged.
    #[error("the backup archive is corrupted: {why}")]
    Corrupted {
        /// What is wrong.
        why: String,
    },
    /// The backup was made by a newer controller than the one restoring it.
    #[error("the backup was made by controller version {backup}, newer than this controller's {controller}: restore it onto a controller of version {backup} or later")]
    NewerVersion {
        /// The backup's version.
        backup: String,
        /// The restoring controller's version.
        controller: String,
    },
    /// A version string is not `MAJOR.MINOR.PATCH[-PRE][+BUILD]`.
    #[error("invalid version {version:?}: expected MAJOR.MINOR.PATCH")]
    InvalidVersion {
        /// The string.
        version: String,
    },
}

fn corrupted(why: impl Into<String>) -> BackupError {
    BackupError::Corrupted { why: why.into() }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The archive file of `archive`.
pub fn encode_archive(archive: &BackupArchive) -> Vec<u8> {
    let body = archive.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&ARCHIVE_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes an archive file and checks it: magic, format version, metadata present, content
/// digest and length.
pub fn decode_archive(bytes: &[u8]) -> Result<BackupArchive, BackupError> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            return Err(BackupError::Truncated {
                why: "it ends inside the header".into(),
            });
        }
        return Err(BackupError::NotABackup);
    };
    let Some((version, body)) = rest.split_first_chunk::<4>() else {
        return Err(BackupError::Truncated {
            why: "it ends inside the header".into(),
        });
    };
    let version = u32::from_be_bytes(*version);
    if version != ARCHIVE_FORMAT_VERSION {
        return Err(BackupError::UnsupportedFormat { version });
    }
    let archive = BackupArchive::decode(body).map_err(|e| BackupError::Corrupted {
        why: format!("undecodable ({e}); the file may be truncated"),
    })?;
    let metadata = archive
        .metadata
        .as_ref()
        .ok_or_else(|| corrupted("no metadata"))?;
    if metadata.content_bytes != archive.content.len() as u64 {
        return Err(BackupError::Truncated {
            why: format!(
                "content is {} bytes, the metadata says {}",
                archive.content.len(),
                metadata.content_bytes
            ),
        });
    }
    let actual = sha256_hex(&archive.content);
    if actual != metadata.content_sha256 {
        return Err(corrupted(format!(
            "content hashes to {actual}, the metadata says {}",
            metadata.content_sha256
        )));
    }
    Ok(archive)
}

/// The keys and values an archive's content holds, checked: ordered, and only keys a backup
/// holds.
pub fn content_entries(archive: &BackupArchive) -> Result<KeyValues, BackupError> {
    let image = StateImage::decode(&archive.content).map_err(|e| corrupted(e.to_string()))?;
    if let Some((key, _)) = image.entries.iter().find(|(key, _)| !is_restored_key(key)) {
        return Err(corrupted(format!(
            "content holds key {} that no backup holds",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(image.entries)
}

/// `MAJOR.MINOR.PATCH` (a leading `v` allowed), pre-release (sorts before the release), build
/// metadata ignored.
fn parse_version(version: &str) -> Result<(u64, u64, u64, bool, String), BackupError> {
    let invalid = || BackupError::InvalidVersion {
        version: version.to_owned(),
    };
    let core = version.trim().trim_start_matches('v');
    let core = core.split_once('+').map_or(core, |(core, _build)| core);
    let (core, pre) = core.split_once('-').unwrap_or((core, ""));
    let numbers: Vec<u64> = core
        .split('.')
        .map(|n| n.parse::<u64>().map_err(|_| invalid()))
        .collect::<Result<_, _>>()?;
    let [major, minor, patch] = numbers[..] else {
        return Err(invalid());
    };
    Ok((major, minor, patch, pre.is_empty(), pre.to_owned()))
}

/// Orders two versions as semver does (pre-release identifiers compared as text).
pub fn compare_versions(a: &str, b: &str) -> Result<Ordering, BackupError> {
    Ok(parse_version(a)?.cmp(&parse_version(b)?))
}

/// Refuses a backup made by a newer version than `controller_version`.
pub fn check_restorable(
    metadata: &BackupMetadata,
    controller_version: &str,
) -> Result<(), BackupError> {
    match compare_versions(&metadata.version, controller_version)? {
        Ordering::Greater => Err(BackupError::NewerVersion {
            backup: metadata.version.clone(),
            controller: controller_version.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The owner of every controller's own model.
const CONTROLLER_MODEL_OWNER: &str = "admin";

fn is_controller_model(owner: &str, name: &str) -> bool {
    owner == CONTROLLER_MODEL_OWNER && name == CONTROLLER_MODEL_NAME
}

fn is_restored_key(key: &[u8]) -> bool {
    restored_prefixes().any(|prefix| key.starts_with(prefix))
}

/// The digest a `blob/<d>` or `blobdata/<d>/…` key names.
fn blob_digest_of(key: &[u8]) -> Option<&[u8]> {
    if let Some(digest) = key.strip_prefix(keys::BLOB_PREFIX) {
        return Some(digest);
    }
    let rest = key.strip_prefix(b"blobdata/".as_slice())?;
    rest.split(|b| *b == b'/').next()
}

/// What a backup of `state` holds, and how many models that is.
pub fn backup_content(state: &(impl StateRead + ?Sized)) -> Result<(KeyValues, u64), StorageError> {
    let backups: Vec<BackupRecord> = records::read_records(state, keys::BACKUP_PREFIX)?;
    let archives: BTreeSet<Vec<u8>> = backups
        .iter()
        .map(|b| b.archive_sha256.clone().into_bytes())
        .collect();
    let complete_blobs: BTreeSet<Vec<u8>> = state
        .scan_prefix(keys::BLOB_PREFIX, usize::MAX)?
        .into_iter()
        .map(|(key, _)| key[keys::BLOB_PREFIX.len()..].to_vec())
        .collect();
    let mut entries = Vec::new();
    let mut model_count = 0u64;
    for prefix in restored_prefixes() {
        for (key, value) in state.scan_prefix(prefix, usize::MAX)? {
            if let Some(digest) = blob_digest_of(&key) {
                // Only complete blobs, and never the archives of other backups.
                if !complete_blobs.contains(digest) || archives.contains(digest) {
                    continue;
                }
            }
            if key.starts_with(b"m/")
                && key.ends_with(b"/model")
                && !key[2..key.len() - b"/model".len()].contains(&b'/')
            {
                model_count += 1;
            }
            let value = if key.starts_with(keys::MIGRATION_PREFIX) {
                without_token(&key, &value)?
            } else {
                value
            };
            entries.push((key, value));
        }
    }
    // The prefixes are disjoint; a snapshot's entries are in key order.
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok((entries, model_count))
}

/// A migration record without the target's superuser token: a backup never carries it (a
/// record that has ended has none, and a record in flight is never restored).
fn without_token(key: &[u8], value: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut record =
        MigrationRecord::decode(value).map_err(|e| StorageError::corrupt("state", key, e))?;
    if let Some(target) = record.target.as_mut() {
        target.token.clear();
    }
    Ok(record.encode_to_vec())
}

/// The model uuid a key of the migration memory (`mig/<uuid>/…`, `redirect/<uuid>`, …) or of
/// a model's records (`m/<uuid>/…`) belongs to.
fn model_of(key: &[u8]) -> Option<&[u8]> {
    let rest = MIGRATION_MEMORY_PREFIXES
        .iter()
        .chain([&b"m/".as_slice()])
        .find_map(|prefix| key.strip_prefix(*prefix))?;
    Some(rest.split(|b| *b == b'/').next().unwrap_or(rest))
}

/// What one controller state (now, or a backup's) holds of one model.
#[derive(Default)]
struct Holding {
    /// `m/<uuid>/…` and the name index entry pointing at it.
    records: KeyValues,
    /// The migration memory, migration records without tokens.
    memory: KeyValues,
}

impl Holding {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.memory.is_empty()
    }

    /// The migrations this holding's records say are in flight: (id, phase).
    fn migrations_in_flight(&self) -> Result<Vec<(String, String)>, StorageError> {
        let mut running = Vec::new();
        for (key, value) in &self.memory {
            if key.starts_with(keys::MIGRATION_PREFIX) {
                let record = MigrationRecord::decode(value.as_slice())
                    .map_err(|e| StorageError::corrupt("state", key, e))?;
                if !crate::migration::is_terminal(&record) {
                    let id = crate::migration::record_id(&record).to_string();
                    running.push((id, record.phase));
                }
            }
        }
        Ok(running)
    }

    fn has_record(&self, id: &str) -> Result<bool, StorageError> {
        for (key, value) in &self.memory {
            if key.starts_with(keys::MIGRATION_PREFIX) {
                let record = MigrationRecord::decode(value.as_slice())
                    .map_err(|e| StorageError::corrupt("state", key, e))?;
                if crate::migration::record_id(&record).to_string() == id {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// Groups a state's model records and migration memory by model uuid (the controller's own
/// model excluded); name index entries go with the model they name.
fn holdings(
    entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    controller_model: Option<&[u8]>,
) -> Result<std::collections::BTreeMap<Vec<u8>, Holding>, StorageError> {
    let mut by_model: std::collections::BTreeMap<Vec<u8>, Holding> = Default::default();
    let mut names = Vec::new();
    for (key, value) in entries {
        if key.starts_with(keys::MODEL_NAME_PREFIX) {
            names.push((key, value));
            continue;
        }
        let Some(uuid) = model_of(&key) else { continue };
        if Some(uuid) == controller_model {
            continue;
        }
        let holding = by_model.entry(uuid.to_vec()).or_default();
        if key.starts_with(b"m/") {
            holding.records.push((key, value));
        } else {
            let value = if key.starts_with(keys::MIGRATION_PREFIX) {
                without_token(&key, &value)?
            } else {
                value
            };
            holding.memory.push((key, value));
        }
    }
    for (key, uuid) in names {
        if let Some(holding) = by_model.get_mut(&uuid) {
            holding.records.push((key, uuid));
        }
    }
    // In key order, so holdings read from the state and from an archive compare equal.
    for holding in by_model.values_mut() {
        holding.records.sort_unstable();
        holding.memory.sort_unstable();
    }
    Ok(by_model)
}

fn check_backup_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= BACKUP_ID_CHARS_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid backup id {id:?}: 1 to {BACKUP_ID_CHARS_MAX} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Applies a backup command over `base`; `None` for any other command.
pub(crate) fn apply_backup_op<R: StateRead + ?Sized>(
    base: &R,
    command: &cmd::Command,
    op: &Op,
) -> Option<Result<(CommandResult, WriteSet), StorageError>> {
    match op {
        Op::CreateBackup(create) => Some(create_backup(base, command.proposed_unix_ms, create)),
        Op::RestoreBackup(restore) => Some(restore_backup(base, restore)),
        _ => None,
    }
}

fn refused(
    code: Code,
    message: impl Into<String>,
) -> Result<(CommandResult, WriteSet), StorageError> {
    Ok((error_result(code, message), WriteSet::new()))
}

fn create_backup<R: StateRead + ?Sized>(
    base: &R,
    now_ms: i64,
    create: &cmd::CreateBackup,
) -> Result<(CommandResult, WriteSet), StorageError> {
    if let Err(why) = check_backup_id(&create.id) {
        return refused(Code::InvalidArgument, why);
    }
    let mut state = Overlay::new(base);
    if state.get(&keys::backup_key(&create.id))?.is_some() {
        return refused(
            Code::AlreadyExists,
            format!("backup {:?} already exists", create.id),
        );
    }
    let (entries, model_count) = backup_content(&state)?;
    let content = StateImage {
        applied: AppliedState::default(),
        entries,
    }
    .encode();
    let metadata = BackupMetadata {
        format_version: ARCHIVE_FORMAT_VERSION,
        id: create.id.clone(),
        controller_uuid: create.controller_uuid.clone(),
        controller_name: create.controller_name.clone(),
        version: create.version.clone(),
        created_unix_ms: now_ms,
        node_id: create.node_id,
        notes: create.notes.clone(),
        content_sha256: sha256_hex(&content),
        content_bytes: content.len() as u64,
        model_count,
    };
    let archive = encode_archive(&BackupArchive {
        metadata: Some(metadata.clone()),
        content,
    });
    if archive.len() as u64 > BLOB_BYTES_MAX {
        return refused(
            Code::FailedPrecondition,
            format!(
                "the backup would be {} bytes, more than the {BLOB_BYTES_MAX} a controller keeps",
                archive.len()
            ),
        );
    }
    let digest = sha256_hex(&archive);
    let mut chunk_offsets = Vec::new();
    for (idx, chunk) in archive.chunks(BLOB_CHUNK_BYTES_MAX).enumerate() {
        let offset = (idx * BLOB_CHUNK_BYTES_MAX) as u64;
        chunk_offsets.push(offset);
        state.put(keys::blob_data_key(&digest, offset), chunk.to_vec());
    }
    let blob = Blob {
        digest: digest.clone(),
        size: archive.len() as u64,
        created_unix_ms: now_ms,
        chunk_offsets,
    };
    state.put(keys::blob_key(&digest), blob.encode_to_vec());
    let record = BackupRecord {
        metadata: Some(metadata),
        archive_sha256: digest,
        archive_bytes: archive.len() as u64,
    };
    state.put(keys::backup_key(&create.id), record.encode_to_vec());
    prune_backups(&mut state)?;
    Ok((ok_result(), state.into_writes()))
}

/// Deletes the oldest backups beyond `backups-to-keep` (at least one, the newest, is kept).
fn prune_backups<R: StateRead + ?Sized>(state: &mut Overlay<'_, R>) -> Result<(), StorageError> {
    let keep = read_effective_config(state)?
        .get("backups-to-keep")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let mut backups: Vec<BackupRecord> = records::read_records(state, keys::BACKUP_PREFIX)?;
    if backups.len() <= keep {
        return Ok(());
    }
    backups.sort_by_key(|b| {
        let m = b.metadata.clone().unwrap_or_default();
        (m.created_unix_ms, m.id)
    });
    let (old, kept) = backups.split_at(backups.len() - keep);
    for backup in old {
        let id = backup
            .metadata
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        state.delete(keys::backup_key(&id));
        if !kept
            .iter()
            .any(|k| k.archive_sha256 == backup.archive_sha256)
        {
            delete_blob(state, &backup.archive_sha256)?;
        }
    }
    Ok(())
}

fn delete_blob<R: StateRead + ?Sized>(
    state: &mut Overlay<'_, R>,
    digest: &str,
) -> Result<(), StorageError> {
    for (key, _) in state.scan_prefix(&keys::blob_data_prefix(digest), usize::MAX)? {
        state.delete(key);
    }
    state.delete(keys::blob_key(digest));
    Ok(())
}

/// A whole stored blob.
fn read_whole_blob(
    state: &(impl StateRead + ?Sized),
    blob: &Blob,
) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
    while (bytes.len() as u64) < blob.size {
        let piece = records::read_blob_range(
            state,
            blob,
            bytes.len() as u64,
            records::BLOB_RANGE_BYTES_MAX,
        )?;
        if piece.is_empty() {
            return Err(StorageError::corrupt(
                "state",
                &keys::blob_key(&blob.digest),
                "blob shorter than its header says",
            ));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(bytes)
}

fn restore_backup<R: StateRead + ?Sized>(
    base: &R,
    restore: &cmd::RestoreBackup,
) -> Result<(CommandResult, WriteSet), StorageError> {
    let digest = restore.archive_sha256.as_str();
    let mut state = Overlay::new(base);
    let Some(blob) = records::read_blob(&state, digest)? else {
        return refused(
            Code::NotFound,
            format!("no uploaded backup archive with sha256 {digest}"),
        );
    };
    let bytes = read_whole_blob(&state, &blob)?;
    let actual = sha256_hex(&bytes);
    if actual != digest {
        return refused(
            Code::InvalidArgument,
            format!("the staged backup archive hashes to {actual}, not {digest}"),
        );
    }
    let checked = decode_archive(&bytes).and_then(|archive| {
        let metadata = archive.metadata.clone().unwrap_or_default();
        check_restorable(&metadata, &restore.controller_version)?;
        Ok((metadata, content_entries(&archive)?))
    });
    let (metadata, entries) = match checked {
        Ok(checked) => checked,
        Err(e @ BackupError::NewerVersion { .. }) => {
            return refused(Code::FailedPrecondition, e.to_string())
        }
        Err(e) => return refused(Code::InvalidArgument, e.to_string()),
    };
    // Every controller has its own controller model (its uuid is the controller's): the
    // target's stays, the archive's is not restored.
    let existing: Vec<_> = records::read_models(&state)?
        .into_iter()
        .filter(|m| !is_controller_model(&m.owner, &m.name))
        .collect();
    if !existing.is_empty() && !restore.force {
        return refused(
            Code::FailedPrecondition,
            format!(
                "the controller already holds {} model(s); restore onto a freshly initialized \
                 controller, or pass --force to replace them",
                existing.len()
            ),
        );
    }
    if let Some(why) = migration_in_flight(&state)? {
        return refused(
            Code::FailedPrecondition,
            format!(
                "{why} on this controller; restore once no migration is in flight (wait for it \
                 to end, or abort it)"
            ),
        );
    }
    let controller_name_key = keys::model_name_key(CONTROLLER_MODEL_OWNER, CONTROLLER_MODEL_NAME);
    let own_controller_model = state.get(&controller_name_key)?;
    let archived_controller_model = entries
        .iter()
        .find(|(key, _)| *key == controller_name_key)
        .map(|(_, uuid)| uuid.clone());
    let mut now_state = Vec::new();
    for prefix in per_model_prefixes() {
        now_state.extend(state.scan_prefix(prefix, usize::MAX)?);
    }
    let mut now = holdings(now_state, own_controller_model.as_deref())?;
    let (per_model, other): (KeyValues, KeyValues) = entries
        .into_iter()
        .partition(|(key, _)| per_model_prefixes().any(|p| key.starts_with(p)));
    let then = holdings(per_model, archived_controller_model.as_deref())?;
    // Decide model by model, before writing anything: the backup's copy, or the one now.
    let mut take = Vec::new();
    let mut kept = 0usize;
    let uuids: BTreeSet<Vec<u8>> = then.keys().chain(now.keys()).cloned().collect();
    for uuid in &uuids {
        let backup = then.get(uuid);
        let current = now.get(uuid);
        let same_memory = backup.map(|h| &h.memory) == current.map(|h| &h.memory)
            || (backup.is_none_or(|h| h.memory.is_empty())
                && current.is_none_or(|h| h.memory.is_empty()));
        let knows_nothing = current.is_none_or(Holding::is_empty);
        if same_memory || knows_nothing {
            if let Some(backup) = backup {
                if let Some((id, phase)) = backup.migrations_in_flight()?.into_iter().next() {
                    return refused(
                        Code::FailedPrecondition,
                        unknown_in_flight(&metadata.id, &id, &phase),
                    );
                }
            }
            take.push(uuid.clone());
            continue;
        }
        // Some migration touched the model since the backup: it stays as it is now.
        if let Some(backup) = backup {
            for (id, phase) in backup.migrations_in_flight()? {
                if !current.is_some_and(|h| h.has_record(&id).unwrap_or(false)) {
                    return refused(
                        Code::FailedPrecondition,
                        unknown_in_flight(&metadata.id, &id, &phase),
                    );
                }
            }
        }
        kept += 1;
    }
    // The models the result holds must have distinct names.
    let mut names = std::collections::BTreeMap::new();
    for uuid in &uuids {
        let holding = if take.contains(uuid) {
            then.get(uuid)
        } else {
            now.get(uuid)
        };
        for (key, _) in holding.into_iter().flat_map(|h| &h.records) {
            if key.starts_with(keys::MODEL_NAME_PREFIX) {
                if let Some(other) = names.insert(key.clone(), uuid.clone()) {
                    return refused(
                        Code::FailedPrecondition,
                        format!(
                            "restoring would give two models the name {}: model {} from the \
                             backup and model {} that migrated here since",
                            String::from_utf8_lossy(&key[keys::MODEL_NAME_PREFIX.len()..]),
                            String::from_utf8_lossy(&other),
                            String::from_utf8_lossy(uuid)
                        ),
                    );
                }
            }
        }
    }
    // Never a mix: each model taken from the backup is replaced whole, in this write set.
    for uuid in &take {
        if let Some(current) = now.remove(uuid) {
            for (key, _) in current.records.into_iter().chain(current.memory) {
                state.delete(key);
            }
        }
        if let Some(backup) = then.get(uuid) {
            for (key, value) in backup.records.iter().chain(&backup.memory) {
                state.put(key.clone(), value.clone());
            }
        }
    }
    delete_blob(&mut state, digest)?;
    for (key, value) in other {
        state.put(key, value);
    }
    tracing::info!(
        backup = metadata.id,
        models = metadata.model_count,
        kept_as_now = kept,
        "restored backup"
    );
    Ok((ok_result(), state.into_writes()))
}

/// Why a restore is refused now: a migration in flight on this controller (a record that has
/// not ended, an import, an inbound log transfer that has not ended).
fn migration_in_flight<R: StateRead + ?Sized>(state: &R) -> Result<Option<String>, StorageError> {
    for record in crate::migration::read_all_migrations(state)? {
        if !crate::migration::is_terminal(&record) {
            return Ok(Some(format!(
                "migration {} of model {:?} is in {}",
                crate::migration::record_id(&record),
                record.model_name,
                record.phase
            )));
        }
    }
    if let Some(import) = crate::migration::read_imports(state)?.into_iter().next() {
        return Ok(Some(format!(
            "model {} is being imported by migration {}",
            import.migration_id.split(':').next().unwrap_or_default(),
            import.migration_id
        )));
    }
    if let Some((uuid, transfer)) = crate::migration::read_log_transfers(state)?
        .into_iter()
        .next()
    {
        return Ok(Some(format!(
            "the log of model {uuid} is still arriving (migration {}); if its source is gone \
             for good, 'ctl end-log-transfer' ends it",
            transfer.migration_id
        )));
    }
    Ok(None)
}

fn unknown_in_flight(backup: &str, migration_id: &str, phase: &str) -> String {
    format!(
        "backup {backup:?} was taken while migration {migration_id} was in {phase}, and this \
         controller has no record of how it ended; restoring it could give the model two \
         owners: restore a backup taken before or after that migration"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(content: &[u8]) -> BackupArchive {
        BackupArchive {
            metadata: Some(BackupMetadata {
                format_version: ARCHIVE_FORMAT_VERSION,
                id: "b1".into(),
                version: "1.2.3".into(),
                content_sha256: sha256_hex(content),
                content_bytes: content.len() as u64,
                ..Default::default()
            }),
            content: content.to_vec(),
        }
    }

    #[test]
    fn archives_round_trip() {
        let original = archive(b"some content");
        let bytes = encode_archive(&original);
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(decode_archive(&bytes), Ok(original));
    }

    #[test]
    fn wrong_files_truncation_and_corruption_are_refused() {
        let bytes = encode_archive(&archive(b"some content that is long enough"));
        assert_eq!(
            decode_archive(b"PK\x03\x04zip"),
            Err(BackupError::NotABackup)
        );
        assert_eq!(decode_archive(b""), Err(BackupError::NotABackup));
        assert!(matches!(
            decode_archive(&bytes[..5]),
            Err(BackupError::Truncated { .. })
        ));
        assert!(matches!(
            decode_archive(&bytes[..MAGIC.len() + 2]),
            Err(BackupError::Truncated { .. })
        ));
        for cut in [MAGIC.len() + 6, bytes.len() - 1, bytes.len() - 10] {
            let err = decode_archive(&bytes[..cut]).expect_err("truncated");
            assert!(
                matches!(
                    err,
                    BackupError::Truncated { .. } | BackupError::Corrupted { .. }
                ),
                "{cut}: {err}"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(matches!(
            decode_archive(&flipped),
            Err(BackupError::Corrupted { .. })
        ));
        let mut future = bytes.clone();
        future[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decode_archive(&future),
            Err(BackupError::UnsupportedFormat { version: 9 })
        );
    }

    #[test]
    fn versions_compare_as_semver() {
        let cmp = |a, b| compare_versions(a, b).expect("valid");
        assert_eq!(cmp("1.2.3", "1.2.3"), Ordering::Equal);
        assert_eq!(cmp("1.10.0", "1.9.9"), Ordering::Greater);
        assert_eq!(cmp("v0.1.0", "0.2.0"), Ordering::Less);
        assert_eq!(cmp("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(cmp("1.0.0+build.5", "1.0.0"), Ordering::Equal);
        assert!(compare_versions("1.2", "1.2.3").is_err());
        assert!(compare_versions("x.y.z", "1.2.3").is_err());
        let metadata = BackupMetadata {
            version: "9.9.9".into(),
            ..Default::default()
        };
        let err = check_restorable(&metadata, "0.1.0").expect_err("newer");
        assert!(
            err.to_string()
                .contains("newer than this controller's 0.1.0"),
            "{err}"
        );
        assert!(check_restorable(&metadata, "9.9.9").is_ok());
        assert!(check_restorable(&metadata, "10.0.0").is_ok());
    }

    #[test]
    fn foreign_keys_in_the_content_are_refused() {
        let content = StateImage {
            applied: AppliedState::default(),
            entries: vec![(b"req/x".to_vec(), vec![])],
        }
        .encode();
        let err = content_entries(&archive(&content)).expect_err("foreign key");
        assert!(err.to_string().contains("req/x"), "{err}");
    }
}
