//! The staging area of a node: the files a migration's source streams to every node of the
//! target before the import (the model description and the charms the target lacks), kept
//! outside the Raft log and the replicated state. The import itself is one small log entry that
//! names the files by sha256; applying it reads them from here (`StagedFiles`).
//!
//! Layout, under `<data-dir>/state/staging/`, one directory per migration attempt
//! (`<model-uuid>.<attempt>`):
//!
//! | file | what |
//! |---|---|
//! | `<sha256>.part` | a file being received; its length is how far the sender got |
//! | `<sha256>` | a complete file whose bytes hash to its name, fdatasynced, renamed from `.part` |
//! | `source.pb` | who sent it (`SourceController`), for the sweeper's question to the source |
//! | `consumed` | the log index of the import entry applied from these files |
//!
//! A receiver appends at the end of the `.part` file only: a chunk that starts before the end
//! has its known prefix skipped (a resumed sender re-sending a little), one that starts after it
//! is refused (the sender must resume where the file ends). When the last byte arrives the whole
//! file is checked against its digest; a mismatch deletes it and is refused, so a corrupt file
//! is never complete. Nothing here knows tokio or the network.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::model::migration::MigrationId;
use crate::model::names;
use crate::StorageError;

const PART_SUFFIX: &str = ".part";
const SOURCE_FILE: &str = "source.pb";
const CONSUMED_FILE: &str = "consumed";
/// Bytes read at a time when hashing or copying a staged file.
const READ_BYTES: usize = 1024 * 1024;

/// Why a staged chunk or file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The file system failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A name that is not a sha256 or a migration id.
    #[error("{0}")]
    Invalid(String),
    /// The chunk starts after the end of what is staged: the sender must resume from there.
    #[error("chunk at offset {offset} of {digest} leaves a gap: {staged} bytes are staged")]
    Gap {
        /// The file.
        digest: String,
        /// Where the chunk starts.
        offset: u64,
        /// How many bytes are staged.
        staged: u64,
    },
    /// The chunk goes past the announced size.
    #[error("chunk of {digest} ends at {end}, past its size {size}")]
    TooLong {
        /// The file.
        digest: String,
        /// Where the chunk ends.
        end: u64,
        /// The announced size.
        size: u64,
    },
    /// Every byte arrived but they do not hash to the file's name; the file was deleted.
    #[error(
        "staged file {expected} is corrupt: its {size} bytes hash to {actual}; it was discarded"
    )]
    DigestMismatch {
        /// The name (the sha256 the sender announced).
        expected: String,
        /// The sha256 of what arrived.
        actual: String,
        /// The size.
        size: u64,
    },
    /// Another stream is writing this file on this node right now.
    #[error("staged file {digest} is being received by another stream")]
    Busy {
        /// The file.
        digest: String,
    },
}

/// How much of a staged file a node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Nothing.
    Absent,
    /// The first `n` bytes (a `.part` file).
    Partial(u64),
    /// The whole verified file, of this size.
    Complete(u64),
}

impl FileState {
    /// Bytes held.
    pub fn bytes(self) -> u64 {
        match self {
            FileState::Absent => 0,
            FileState::Partial(n) | FileState::Complete(n) => n,
        }
    }

    /// Whether the whole file is held.
    pub fn is_complete(self) -> bool {
        matches!(self, FileState::Complete(_))
    }
}

/// One migration's staging directory, as the sweeper sees it.
#[derive(Clone, Debug)]
pub struct StagedDir {
    /// The migration it belongs to.
    pub migration_id: MigrationId,
    /// The log index of the import applied from it, if one was.
    pub consumed_at: Option<u64>,
    /// The description that import read, if one was.
    pub description: Option<String>,
    /// Complete files (sha256 names).
    pub files: Vec<String>,
    /// How long ago anything in it last changed.
    pub idle: Duration,
}

/// What a node's staging area is asked when an import is applied or an import ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagingEvent {
    /// The import of `migration_id` was applied from its staged files at log `index`.
    Consumed {
        /// The migration.
        migration_id: String,
        /// The import entry's index.
        index: u64,
        /// The description's sha256: kept after the import ends, while a lagging peer may
        /// still apply the entry (charms it can get from the state).
        description_digest: String,
    },
    /// The import of `migration_id` ended here (activated, dropped, or replaced by a newer
    /// attempt): its charms are in the state or no longer needed.
    Ended {
        /// The migration.
        migration_id: String,
    },
}

/// Where applying an import reads its staged files from. The sled node's implementation reads
/// the local staging area and, when this node lacks a file (it was down while the files were
/// streamed, or joined later), fetches it from a peer. Every error is fatal for the node: an
/// import entry can only be applied from the exact bytes it names.
pub trait StagedFiles: Send + Sync {
    /// The bytes of staged file `digest` (`size` bytes) of migration `migration_id`, verified
    /// against the digest.
    fn read(&self, migration_id: &str, digest: &str, size: u64) -> Result<Vec<u8>, StorageError>;

    /// Called after the write set of an applied batch is durable, with what it did to imports.
    fn committed(&self, events: &[StagingEvent]);
}

/// The staging area under one directory.
#[derive(Debug)]
pub struct StagingArea {
    root: PathBuf,
    /// Files a receiver is writing, `(migration dir, digest)`.
    receiving: Mutex<HashSet<(String, String)>>,
}

/// The directory name of a migration: `<model-uuid>.<attempt>`.
fn dir_name(id: &MigrationId) -> String {
    format!("{}.{}", id.model_uuid, id.attempt)
}

fn parse_dir_name(name: &str) -> Option<MigrationId> {
    let (uuid, attempt) = name.rsplit_once('.')?;
    parse_id(&format!("{uuid}:{attempt}")).ok()
}

fn parse_id(migration_id: &str) -> Result<MigrationId, StagingError> {
    let id = MigrationId::parse(migration_id).map_err(|e| StagingError::Invalid(e.to_string()))?;
    // The uuid names a directory: nothing but a uuid may get there.
    names::check_uuid(&id.model_uuid).map_err(|e| StagingError::Invalid(e.to_string()))?;
    Ok(id)
}

fn check_digest(digest: &str) -> Result<(), StagingError> {
    names::check_digest(digest).map_err(|e| StagingError::Invalid(e.to_string()))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

fn sha256_of(file: &mut File, len: u64, path: &Path) -> Result<Sha256, StorageError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| StorageError::io("seek", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(READ_BYTES as u64)).expect("at most READ_BYTES");
        file.read_exact(&mut buf[..want])
            .map_err(|e| StorageError::io("read", path, e))?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hasher)
}

impl StagingArea {
    /// The staging area in `root`, created if needed.
    pub fn open(root: &Path) -> Result<Arc<StagingArea>, StorageError> {
        fs::create_dir_all(root).map_err(|e| StorageError::io("create dir", root, e))?;
        Ok(Arc::new(StagingArea {
            root: root.to_path_buf(),
            receiving: Mutex::new(HashSet::new()),
        }))
    }

    /// The directory of the staging area.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &MigrationId) -> PathBuf {
        self.root.join(dir_name(id))
    }

    /// How much of `digest` of `migration_id` this node holds.
    pub fn state(&self, migration_id: &str, digest: &str) -> Result<FileState, StagingError> {
        let id = parse_id(migration_id)?;
        check_digest(digest)?;
        let dir = self.dir(&id);
        let len = |path: PathBuf| match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("stat", path, e)),
        };
        if let Some(n) = len(dir.join(digest))? {
            return Ok(FileState::Complete(n));
        }
        Ok(match len(dir.join(format!("{digest}{PART_SUFFIX}")))? {
            Some(n) => FileState::Partial(n),
            None => FileState::Absent,
        })
    }

    /// Starts (or resumes) receiving `digest` (`size` bytes) of `migration_id`. Refused while
    /// another receiver writes the same file. A complete file gives a receiver that is done.
    pub fn receive(
        self: &Arc<Self>,
        migration_id: &str,
        digest: &str,
        size: u64,
    ) -> Result<Receiver, StagingError> {
        let id = parse_id(migration_id)?;
        check_digest(digest)?;
        let key = (dir_name(&id), digest.to_owned());
        if !self
            .receiving
            .lock()
            .expect("staging lock poisoned")
            .insert(key.clone())
        {
            return Err(StagingError::Busy {
                digest: digest.to_owned(),
            });
        }
        // From here on the key is released by the receiver's drop.
        let mut receiver = Receiver {
            area: self.clone(),
            key,
            digest: digest.to_owned(),
            size,
            dir: self.dir(&id),
            part: None,
            len: 0,
            hasher: Sha256::new(),
            complete: false,
        };
        let done = receiver.dir.join(digest);
        match fs::metadata(&done) {
            Ok(meta) if meta.len() == size => {
                receiver.complete = true;
                receiver.len = size;
                return Ok(receiver);
            }
            // A complete file of another size cannot have this name's hash: start over.
            Ok(_) => fs::remove_file(&done).map_err(|e| StorageError::io("remove", &done, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("stat", done, e).into()),
        }
        let created = !receiver.dir.exists();
        fs::create_dir_all(&receiver.dir)
            .map_err(|e| StorageError::io("create dir", &receiver.dir, e))?;
        if created {
            sync_dir(&self.root)?;
        }
        let path = receiver.part_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        let mut len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        if len > size {
            file.set_len(0)
                .map_err(|e| StorageError::io("truncate", &path, e))?;
            len = 0;
        }
        // Resuming: the hash covers what is there already.
        receiver.hasher = sha256_of(&mut file, len, &path)?;
        file.seek(SeekFrom::Start(len))
            .map_err(|e| StorageError::io("seek", &path, e))?;
        receiver.len = len;
        receiver.part = Some(file);
        if len == size {
            // Every byte arrived before, but the check did not run (the stream broke).
            receiver.finish()?;
        }
        Ok(receiver)
    }

    /// The complete file `digest` of `migration_id` opened for reading, with its size.
    pub fn open_complete(
        &self,
        migration_id: &str,
        digest: &str,
    ) -> Result<Option<(File, u64)>, StagingError> {
        let id = parse_id(migration_id)?;
        check_digest(digest)?;
        let path = self.dir(&id).join(digest);
        match File::open(&path) {
            Ok(file) => {
                let len = file
                    .metadata()
                    .map_err(|e| StorageError::io("stat", &path, e))?
                    .len();
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("open", path, e).into()),
        }
    }

    /// The bytes of the complete file `digest` (`size` bytes) of `migration_id`, if this node
    /// holds it and it still hashes to its name. A file that no longer does (the disk changed
    /// it) is deleted, so it is fetched again.
    pub fn read_verified(
        &self,
        migration_id: &str,
        digest: &str,
        size: u64,
    ) -> Result<Option<Vec<u8>>, StagingError> {
        let Some((mut file, len)) = self.open_complete(migration_id, digest)? else {
            return Ok(None);
        };
        let path = self.dir(&parse_id(migration_id)?).join(digest);
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| StorageError::io("read", &path, e))?;
        if len != size || hex::encode(Sha256::digest(&bytes)) != digest {
            tracing::warn!(path = %path.display(), "a staged file no longer matches its digest; discarding it");
            fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Records who sends the files of `migration_id` (an encoded `SourceController`).
    pub fn save_source(&self, migration_id: &str, source: &[u8]) -> Result<(), StagingError> {
        let dir = self.dir(&parse_id(migration_id)?);
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        let path = dir.join(SOURCE_FILE);
        fs::write(&path, source).map_err(|e| StorageError::io("write", &path, e))?;
        Ok(())
    }

    /// The sender of `migration_id`'s files, as `save_source` recorded it.
    pub fn source(&self, migration_id: &str) -> Result<Option<Vec<u8>>, StagingError> {
        let path = self.dir(&parse_id(migration_id)?).join(SOURCE_FILE);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("read", path, e).into()),
        }
    }

    /// Records that the import of `migration_id` was applied at log `index` from its files,
    /// `description` among them.
    pub fn mark_consumed(
        &self,
        migration_id: &str,
        index: u64,
        description: &str,
    ) -> Result<(), StagingError> {
        let dir = self.dir(&parse_id(migration_id)?);
        if !dir.exists() {
            return Ok(());
        }
        let path = dir.join(CONSUMED_FILE);
        fs::write(&path, format!("{index} {description}\n"))
            .map_err(|e| StorageError::io("write", &path, e))?;
        Ok(())
    }

    /// Every migration directory, with what the sweeper needs to judge it.
    pub fn dirs(&self) -> Result<Vec<StagedDir>, StorageError> {
        let mut dirs = Vec::new();
        let entries =
            fs::read_dir(&self.root).map_err(|e| StorageError::io("read dir", &self.root, e))?;
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read dir", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(migration_id) = parse_dir_name(&name) else {
                continue;
            };
            let path = entry.path();
            let mut newest = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut files = Vec::new();
            let (mut consumed_at, mut description) = (None, None);
            let Ok(inner) = fs::read_dir(&path) else {
                continue;
            };
            for file in inner.flatten() {
                let file_name = file.file_name().to_string_lossy().into_owned();
                if let Ok(modified) = file.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(modified);
                }
                if file_name == CONSUMED_FILE {
                    let text = fs::read_to_string(file.path()).unwrap_or_default();
                    let mut words = text.split_whitespace();
                    consumed_at = words.next().and_then(|w| w.parse().ok());
                    description = words.next().map(str::to_owned);
                } else if names::check_digest(&file_name).is_ok() {
                    files.push(file_name);
                }
            }
            files.sort();
            dirs.push(StagedDir {
                migration_id,
                consumed_at,
                description,
                files,
                idle: now.duration_since(newest).unwrap_or_default(),
            });
        }
        dirs.sort_by_key(|d| d.migration_id.to_string());
        Ok(dirs)
    }

    /// Deletes the whole directory of `id`, unless a receiver is writing in it.
    pub fn remove(&self, id: &MigrationId) -> Result<bool, StorageError> {
        let name = dir_name(id);
        let receiving = self.receiving.lock().expect("staging lock poisoned");
        if receiving.iter().any(|(dir, _)| *dir == name) {
            return Ok(false);
        }
        let dir = self.root.join(&name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("remove dir", dir, e)),
        }
    }

    /// Deletes the complete files of `id` other than `keep` (the files an applied import may
    /// still be asked for), and every partial one.
    pub fn remove_files_except(&self, id: &MigrationId, keep: &str) -> Result<(), StorageError> {
        let dir = self.dir(id);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let staged = names::check_digest(&name).is_ok()
                || name
                    .strip_suffix(PART_SUFFIX)
                    .is_some_and(|d| names::check_digest(d).is_ok());
            if staged && name != keep {
                match fs::remove_file(entry.path()) {
                    // The sweeper and an import's end may clean up the same directory at once.
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StorageError::io("remove", entry.path(), e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Staging reads only the local area: applying an import this node lacks a file of is a
/// storage failure (the sled node wraps this with a fetch from its peers).
impl StagedFiles for StagingArea {
    fn read(&self, migration_id: &str, digest: &str, size: u64) -> Result<Vec<u8>, StorageError> {
        match self.read_verified(migration_id, digest, size) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(StorageError::StagedFileMissing {
                migration_id: migration_id.to_owned(),
                digest: digest.to_owned(),
                why: "not staged on this node".into(),
            }),
            Err(StagingError::Storage(e)) => Err(e),
            Err(e) => Err(StorageError::StagedFileMissing {
                migration_id: migration_id.to_owned(),
                digest: digest.to_owned(),
                why: e.to_string(),
            }),
        }
    }

    fn committed(&self, events: &[StagingEvent]) {
        for event in events {
            if let StagingEvent::Consumed {
                migration_id,
                index,
                description_digest,
            } = event
            {
                if let Err(e) = self.mark_consumed(migration_id, *index, description_digest) {
                    tracing::warn!(error = %e, "cannot mark staged files consumed");
                }
            }
        }
    }
}

/// Receives one staged file; releases it for other receivers when dropped.
#[derive(Debug)]
pub struct Receiver {
    area: Arc<StagingArea>,
    key: (String, String),
    digest: String,
    size: u64,
    dir: PathBuf,
    part: Option<File>,
    len: u64,
    hasher: Sha256,
    complete: bool,
}

impl Receiver {
    fn part_path(&self) -> PathBuf {
        self.dir.join(format!("{}{PART_SUFFIX}", self.digest))
    }

    /// Bytes held so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The announced size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the whole file is held and verified.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Takes the chunk `data` at `offset`: appends what lies past the end of what is held and
    /// returns how many bytes were new. The last byte verifies and completes the file.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, StagingError> {
        let end = offset + data.len() as u64;
        if end > self.size {
            return Err(StagingError::TooLong {
                digest: self.digest.clone(),
                end,
                size: self.size,
            });
        }
        if offset > self.len {
            return Err(StagingError::Gap {
                digest: self.digest.clone(),
                offset,
                staged: self.len,
            });
        }
        if self.complete || end <= self.len {
            return Ok(0);
        }
        let skip = usize::try_from(self.len - offset).expect("less than the chunk");
        let new = &data[skip..];
        let path = self.part_path();
        let Some(file) = self.part.as_mut() else {
            return Err(StagingError::Invalid(format!(
                "staged file {} was discarded; start it again",
                self.digest
            )));
        };
        file.write_all(new)
            .map_err(|e| StorageError::io("write", &path, e))?;
        self.hasher.update(new);
        self.len = end;
        if self.len == self.size {
            self.finish()?;
        }
        Ok(new.len() as u64)
    }

    /// Checks the whole file against its digest, makes it durable and names it complete.
    fn finish(&mut self) -> Result<(), StagingError> {
        let path = self.part_path();
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let file = self.part.take().expect("an incomplete receiver has a file");
        if actual != self.digest {
            drop(file);
            fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            self.len = 0;
            return Err(StagingError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
                size: self.size,
            });
        }
        file.sync_data()
            .map_err(|e| StorageError::io("fdatasync", &path, e))?;
        drop(file);
        let done = self.dir.join(&self.digest);
        fs::rename(&path, &done).map_err(|e| StorageError::io("rename", &path, e))?;
        sync_dir(&self.dir)?;
        self.complete = true;
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(file) = self.part.take() {
            // What arrived survives a crash as far as the disk allows; the final check catches
            // anything it lost.
            let _ = file.sync_data();
        }
        self.area
            .receiving
            .lock()
            .expect("staging lock poisoned")
            .remove(&self.key);
    }
}

/// Reads `file` from `offset` in pieces of at most `chunk` bytes (the sender side of a stream).
pub fn read_piece(
    file: &mut File,
    offset: u64,
    chunk: usize,
    len: u64,
) -> Result<Vec<u8>, std::io::Error> {
    let want = usize::try_from(len.saturating_sub(offset).min(chunk as u64)).unwrap_or(chunk);
    let mut buf = vec![0u8; want];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATION: &str = "0b7f2f14-8a3e-4f43-9d6c-2c8f3c7e1a55:3";

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn area() -> (tempfile::TempDir, Arc<StagingArea>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let area = StagingArea::open(&dir.path().join("staging")).expect("opens");
        (dir, area)
    }

    #[test]
    fn a_file_received_in_chunks_is_complete_and_readable() {
        let (_dir, area) = area();
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_be_bytes()).collect();
        let d = digest(&data);
        let mut rx = area.receive(MIGRATION, &d, data.len() as u64).unwrap();
        for (i, chunk) in data.chunks(3000).enumerate() {
            assert_eq!(
                rx.write(i as u64 * 3000, chunk).unwrap(),
                chunk.len() as u64
            );
        }
        assert!(rx.is_complete());
        drop(rx);
        assert_eq!(
            area.state(MIGRATION, &d).unwrap(),
            FileState::Complete(data.len() as u64)
        );
        assert_eq!(
            area.read_verified(MIGRATION, &d, data.len() as u64)
                .unwrap()
                .unwrap(),
            data
        );
        assert_eq!(area.read(MIGRATION, &d, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn a_resumed_receiver_continues_where_the_file_ends_and_skips_what_it_has() {
        let (_dir, area) = area();
        let data = vec![7u8; 5000];
        let d = digest(&data);
        let mut rx = area.receive(MIGRATION, &d, 5000).unwrap();
        rx.write(0, &data[..2000]).unwrap();
        drop(rx);
        assert_eq!(area.state(MIGRATION, &d).unwrap(), FileState::Partial(2000));
        let mut rx = area.receive(MIGRATION, &d, 5000).unwrap();
        assert_eq!(rx.len(), 2000);
        // A gap is refused and names where to resume.
        match rx.write(3000, &data[3000..]) {
            Err(StagingError::Gap { staged: 2000, .. }) => {}
            other => panic!("expected a gap, got {other:?}"),
        }
        // An overlapping chunk only adds what was missing.
        assert_eq!(rx.write(1000, &data[1000..4000]).unwrap(), 2000);
        assert_eq!(rx.write(4000, &data[4000..]).unwrap(), 1000);
        assert!(rx.is_complete());
        // A chunk of a complete file adds nothing.
        assert_eq!(rx.write(0, &data[..10]).unwrap(), 0);
    }

    #[test]
    fn a_corrupt_file_is_refused_and_discarded() {
        let (_dir, area) = area();
        let data = vec![1u8; 4096];
        let d = digest(&data);
        let mut rx = area.receive(MIGRATION, &d, 4096).unwrap();
        rx.write(0, &data[..2048]).unwrap();
        let mut bad = data[2048..].to_vec();
        bad[17] ^= 0xff;
        match rx.write(2048, &bad) {
            Err(StagingError::DigestMismatch { expected, .. }) => assert_eq!(expected, d),
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
        drop(rx);
        assert_eq!(area.state(MIGRATION, &d).unwrap(), FileState::Absent);
        assert!(area.read(MIGRATION, &d, 4096).is_err());
    }

    #[test]
    fn one_receiver_per_file_at_a_time() {
        let (_dir, area) = area();
        let d = digest(b"abc");
        let rx = area.receive(MIGRATION, &d, 3).unwrap();
        assert!(matches!(
            area.receive(MIGRATION, &d, 3),
            Err(StagingError::Busy { .. })
        ));
        // A directory being written is not removed under the receiver.
        assert!(!area
            .remove(&MigrationId::parse(MIGRATION).unwrap())
            .unwrap());
        drop(rx);
        let mut rx = area.receive(MIGRATION, &d, 3).unwrap();
        rx.write(0, b"abc").unwrap();
        assert!(rx.is_complete());
    }

    #[test]
    fn a_complete_file_that_the_disk_changed_is_discarded_on_read() {
        let (dir, area) = area();
        let d = digest(b"hello");
        let mut rx = area.receive(MIGRATION, &d, 5).unwrap();
        rx.write(0, b"hello").unwrap();
        drop(rx);
        let path = dir
            .path()
            .join("staging")
            .join(MIGRATION.replace(':', "."))
            .join(&d);
        fs::write(&path, b"jello").unwrap();
        assert_eq!(area.read_verified(MIGRATION, &d, 5).unwrap(), None);
        assert_eq!(area.state(MIGRATION, &d).unwrap(), FileState::Absent);
    }

    #[test]
    fn dirs_report_consumption_and_files_and_cleanup_keeps_what_is_asked() {
        let (_dir, area) = area();
        let id = MigrationId::parse(MIGRATION).unwrap();
        let (description, charm) = (digest(b"description"), digest(b"charm"));
        for (d, bytes) in [(&description, &b"description"[..]), (&charm, &b"charm"[..])] {
            let mut rx = area.receive(MIGRATION, d, bytes.len() as u64).unwrap();
            rx.write(0, bytes).unwrap();
        }
        area.save_source(MIGRATION, b"who").unwrap();
        assert_eq!(
            area.source(MIGRATION).unwrap().as_deref(),
            Some(&b"who"[..])
        );
        area.committed(&[StagingEvent::Consumed {
            migration_id: MIGRATION.into(),
            index: 42,
            description_digest: description.clone(),
        }]);
        let dirs = area.dirs().unwrap();
        assert_eq!(dirs.len(), 1);
        assert_eq!(dirs[0].migration_id, id);
        assert_eq!(dirs[0].consumed_at, Some(42));
        assert_eq!(dirs[0].description.as_deref(), Some(description.as_str()));
        let mut both = vec![description.clone(), charm.clone()];
        both.sort();
        assert_eq!(dirs[0].files, both);
        area.remove_files_except(&id, &description).unwrap();
        assert_eq!(area.dirs().unwrap()[0].files, vec![description.clone()]);
        assert!(area.remove(&id).unwrap());
        assert!(area.dirs().unwrap().is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let (_dir, area) = area();
        assert!(matches!(
            area.receive("not-an-id", &digest(b"x"), 1),
            Err(StagingError::Invalid(_))
        ));
        assert!(matches!(
            area.receive(MIGRATION, "../../etc/passwd", 1),
            Err(StagingError::Invalid(_))
        ));
        assert!(matches!(
            area.receive("../x:1", &digest(b"x"), 1),
            Err(StagingError::Invalid(_))
        ));
    }
}
