//! Where the current snapshot lives: `<data_dir>/snapshots/<snapshot_id>.snap` for the sled
//! backend (written as tmp file + fdatasync + rename + directory fsync; only the latest kept,
//! found again on open), or memory for the in-memory backend.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use starling_storage::{StateImage, StorageError as BackendError};

use crate::codec;
use crate::type_config::SnapshotMeta;

const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

/// A snapshot's metadata and bytes.
pub(super) type StoredSnapshot = (SnapshotMeta, Vec<u8>);

/// The current snapshot's home. Cheap to clone; clones share it.
#[derive(Clone)]
pub(super) enum SnapshotStore {
    Dir(Arc<DirSnapshots>),
    // std Mutex, not tokio's: nothing awaits while it is held.
    Memory(Arc<Mutex<Option<StoredSnapshot>>>),
}

pub(super) struct DirSnapshots {
    dir: PathBuf,
    // Held while a snapshot file is written or read (on the blocking pool), so the file named
    // by `current` is always complete.
    current: Mutex<Option<SnapshotMeta>>,
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> BackendError {
    BackendError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync dir", dir, e))
}

/// Snapshot ids become file names, so only plain characters are accepted.
pub(super) fn check_snapshot_id(id: &str) -> Result<(), BackendError> {
    let plain = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(BackendError::MalformedSnapshot {
            why: format!("snapshot id {id:?} is not a plain file name"),
        })
    }
}

/// The metadata a snapshot's own content implies, under `snapshot_id`.
pub(super) fn meta_of(
    image: &StateImage,
    snapshot_id: String,
) -> Result<SnapshotMeta, BackendError> {
    let last_membership = codec::stored_membership_from_pb(image.applied.last_membership.as_ref())
        .map_err(|e| BackendError::MalformedSnapshot { why: e.to_string() })?;
    Ok(SnapshotMeta {
        last_log_id: codec::opt_log_id_from_pb(image.applied.last_applied.as_ref()),
        last_membership,
        snapshot_id,
    })
}

impl SnapshotStore {
    pub(super) fn memory() -> Self {
        SnapshotStore::Memory(Arc::default())
    }

    /// Opens the snapshot dir, keeping the newest complete snapshot and removing the rest.
    pub(super) fn open_dir(dir: &Path) -> Result<Self, BackendError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create dir", dir, e))?;
        let mut found: Vec<(SnapshotMeta, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| io("read dir", dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io("read dir", dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            if name.ends_with(TMP_SUFFIX) {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                continue;
            }
            let Some(id) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
            let image = StateImage::decode(&bytes)?;
            found.push((meta_of(&image, id.to_owned())?, path));
        }
        found.sort_by_key(|(meta, _)| meta.last_log_id);
        let newest = found.pop();
        for (_, stale) in found {
            std::fs::remove_file(&stale).map_err(|e| io("remove", &stale, e))?;
        }
        sync_dir(dir)?;
        Ok(SnapshotStore::Dir(Arc::new(DirSnapshots {
            dir: dir.to_path_buf(),
            current: Mutex::new(newest.map(|(meta, _)| meta)),
        })))
    }

    /// Makes `bytes` the current snapshot unless a newer one already is; durable before it
    /// returns. Blocks.
    pub(super) fn save(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), BackendError> {
        check_snapshot_id(&meta.snapshot_id)?;
        match self {
            SnapshotStore::Memory(slot) => {
                let mut slot = slot.lock().expect("snapshot lock poisoned");
                if slot
                    .as_ref()
                    .is_none_or(|(cur, _)| cur.last_log_id <= meta.last_log_id)
                {
                    *slot = Some((meta.clone(), bytes.to_vec()));
                }
                Ok(())
            }
            SnapshotStore::Dir(dir) => dir.save(meta, bytes),
        }
    }

    /// The current snapshot and its bytes. Blocks.
    pub(super) fn current(&self) -> Result<Option<StoredSnapshot>, BackendError> {
        match self {
            SnapshotStore::Memory(slot) => Ok(slot.lock().expect("snapshot lock poisoned").clone()),
            SnapshotStore::Dir(dir) => {
                let current = dir.current.lock().expect("snapshot lock poisoned");
                let Some(meta) = current.as_ref() else {
                    return Ok(None);
                };
                let path = dir.path_of(&meta.snapshot_id);
                let bytes = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
                Ok(Some((meta.clone(), bytes)))
            }
        }
    }
}

impl DirSnapshots {
    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    fn save(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), BackendError> {
        let mut current = self.current.lock().expect("snapshot lock poisoned");
        if current
            .as_ref()
            .is_some_and(|cur| cur.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{}{TMP_SUFFIX}", meta.snapshot_id));
        let path = self.path_of(&meta.snapshot_id);
        let mut file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        file.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        file.sync_data().map_err(|e| io("fdatasync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
        sync_dir(&self.dir)?;
        if let Some(previous) = current.take() {
            if previous.snapshot_id != meta.snapshot_id {
                let old = self.path_of(&previous.snapshot_id);
                std::fs::remove_file(&old).map_err(|e| io("remove", &old, e))?;
                sync_dir(&self.dir)?;
            }
        }
        *current = Some(meta.clone());
        Ok(())
    }
}
