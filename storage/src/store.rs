//! `Store`: the sled database of one controller node under `<data_dir>/sled`, with the trees
//! `meta` (which controller owns the dir), `log` (Raft log, big-endian index → encoded
//! `LogEntry`), `raft_meta` (vote, committed, last purged) and `state` (the replicated state).
//!
//! Durability: `sync` is sled's `flush` followed by `fdatasync` of sled's files, because on Linux
//! sled's flush uses `sync_file_range`, which does not flush the device's write cache.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{LogBackend, RaftMetaKey, StateBackend};
use crate::state::{self, KeyValues, StateImage, StateRead, WriteSet};
use crate::StorageError;

const META_TREE: &str = "meta";
const LOG_TREE: &str = "log";
const RAFT_META_TREE: &str = "raft_meta";
const STATE_TREE: &str = "state";
const CONTROLLER_UUID_KEY: &[u8] = b"controller_uuid";

/// The sled database of one node. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    data_dir: PathBuf,
    sled_dir: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    raft_meta: sled::Tree,
    state: sled::Tree,
    // std Mutex, not tokio's: held only on the blocking pool, around fdatasync calls.
    files: Mutex<SledFiles>,
}

/// sled's files we fdatasync; blobs and snapshot files are synced once, when first seen.
struct SledFiles {
    db_file: File,
    synced: HashSet<OsString>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`, which must belong to the controller
    /// `controller_uuid`; a fresh dir is claimed for it. Blocks; fails with
    /// `StorageError::Locked` if the dir is already open.
    pub fn open(data_dir: &Path, controller_uuid: &str) -> Result<Store, StorageError> {
        let sled_dir = data_dir.join("sled");
        std::fs::create_dir_all(&sled_dir)
            .map_err(|e| StorageError::io("create dir", &sled_dir, e))?;
        let db = sled::Config::new()
            .path(&sled_dir)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StorageError::Locked {
                        path: data_dir.to_path_buf(),
                    }
                }
                e => StorageError::sled("db", "open", e),
            })?;
        let open_tree = |name: &'static str| {
            db.open_tree(name)
                .map_err(|e| StorageError::sled(name, "open", e))
        };
        let meta = open_tree(META_TREE)?;
        let log = open_tree(LOG_TREE)?;
        let raft_meta = open_tree(RAFT_META_TREE)?;
        let state = open_tree(STATE_TREE)?;
        let db_path = sled_dir.join("db");
        let db_file = File::open(&db_path).map_err(|e| StorageError::io("open", &db_path, e))?;
        let store = Store {
            inner: Arc::new(StoreInner {
                data_dir: data_dir.to_path_buf(),
                sled_dir,
                db,
                log,
                raft_meta,
                state,
                files: Mutex::new(SledFiles {
                    db_file,
                    synced: HashSet::new(),
                }),
            }),
        };
        let found = meta
            .get(CONTROLLER_UUID_KEY)
            .map_err(|e| StorageError::sled(META_TREE, "get", e))?;
        match found {
            Some(found) if found.as_ref() != controller_uuid.as_bytes() => {
                return Err(StorageError::WrongController {
                    path: data_dir.to_path_buf(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: controller_uuid.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                meta.insert(CONTROLLER_UUID_KEY, controller_uuid.as_bytes())
                    .map_err(|e| StorageError::sled(META_TREE, "insert", e))?;
            }
        }
        // Make the files sled created at open (and the claim) durable, directories included.
        store.sync()?;
        sync_dir(&store.inner.sled_dir)?;
        sync_dir(data_dir)?;
        Ok(store)
    }

    /// The data dir this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Makes every write so far durable: sled's flush, then fdatasync of sled's data file, of
    /// any blob and snapshot file not yet synced, and of the directories that gained them.
    /// Blocks; returns how long it took.
    pub fn sync(&self) -> Result<Duration, StorageError> {
        let started = Instant::now();
        self.inner
            .db
            .flush()
            .map_err(|e| StorageError::sled("db", "flush", e))?;
        let mut files = self.inner.files.lock().expect("sled file lock poisoned");
        let db_path = || self.inner.sled_dir.join("db");
        if crate::planted::armed("unsynced-ack") {
            // Planted bug: acknowledge what is only in the page cache.
            return Ok(started.elapsed());
        }
        files
            .db_file
            .sync_data()
            .map_err(|e| StorageError::io("fdatasync", db_path(), e))?;
        // sled writes large values to `blobs/<lsn>` and its page-table snapshots to `snap.*`
        // without syncing the directory; a new name needs its file and its directory synced.
        let SledFiles { synced, .. } = &mut *files;
        if sync_new_files(&self.inner.sled_dir, synced, |name| {
            name.to_string_lossy().starts_with("snap.") || name == "conf"
        })? {
            sync_dir(&self.inner.sled_dir)?;
        }
        let blobs = self.inner.sled_dir.join("blobs");
        if blobs.is_dir() && sync_new_files(&blobs, synced, |_| true)? {
            sync_dir(&blobs)?;
        }
        Ok(started.elapsed())
    }

    fn synced(&self) -> Result<Option<Duration>, StorageError> {
        self.sync().map(Some)
    }
}

/// fdatasyncs each file in `dir` accepted by `wanted` whose name is not in `synced`; returns
/// whether any was new.
fn sync_new_files(
    dir: &Path,
    synced: &mut HashSet<OsString>,
    wanted: impl Fn(&std::ffi::OsStr) -> bool,
) -> Result<bool, StorageError> {
    let mut any_new = false;
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("read dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("read dir", dir, e))?;
        let name = entry.file_name();
        if !wanted(&name) || name.to_string_lossy().ends_with(".generating") {
            continue;
        }
        let key = if dir.ends_with("blobs") {
            let mut key = OsString::from("blobs/");
            key.push(&name);
            key
        } else {
            name
        };
        if synced.contains(&key) {
            continue;
        }
        match File::open(entry.path()) {
            Ok(file) => file
                .sync_data()
                .map_err(|e| StorageError::io("fdatasync", entry.path(), e))?,
            // sled removed it (an old snapshot, a collected blob) while we listed the dir.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io("open", entry.path(), e)),
        }
        synced.insert(key);
        any_new = true;
    }
    Ok(any_new)
}

/// fsyncs a directory so the names in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync dir", dir, e))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(key: &[u8]) -> Result<u64, StorageError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::corrupt(LOG_TREE, key, "log key is not a big-endian u64"))
}

fn index_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl LogBackend for Store {
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<Option<Duration>, StorageError> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index_key(index), bytes);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(LOG_TREE, "append", e))?;
        self.synced()
    }

    fn log_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if crate::backend::is_empty_range(&range) {
            return Ok(Vec::new());
        }
        let bounds = (
            index_bound(range.start_bound()),
            index_bound(range.end_bound()),
        );
        self.inner
            .log
            .range(bounds)
            .map(|row| {
                let (key, value) = row.map_err(|e| StorageError::sled(LOG_TREE, "range", e))?;
                Ok((decode_index(&key)?, value.to_vec()))
            })
            .collect()
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        match self
            .inner
            .log
            .last()
            .map_err(|e| StorageError::sled(LOG_TREE, "last", e))?
        {
            Some((key, value)) => Ok(Some((decode_index(&key)?, value.to_vec()))),
            None => Ok(None),
        }
    }

    fn log_truncate_from(&self, index: u64) -> Result<Option<Duration>, StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.inner.log.range(index_key(index)..).keys() {
            batch.remove(key.map_err(|e| StorageError::sled(LOG_TREE, "range", e))?);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(LOG_TREE, "truncate", e))?;
        self.synced()
    }

    fn log_purge_through(
        &self,
        index: u64,
        last_purged: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError> {
        // The record first: sled recovers a prefix of its writes, so a crash can leave purged
        // entries behind the record, never a hole in front of it.
        self.inner
            .raft_meta
            .insert(RaftMetaKey::LastPurged.as_bytes(), last_purged)
            .map_err(|e| StorageError::sled(RAFT_META_TREE, "insert last_purged", e))?;
        let mut batch = sled::Batch::default();
        for key in self.inner.log.range(..=index_key(index)).keys() {
            batch.remove(key.map_err(|e| StorageError::sled(LOG_TREE, "range", e))?);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(LOG_TREE, "purge", e))?;
        self.synced()
    }

    fn raft_meta_get(&self, key: RaftMetaKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .inner
            .raft_meta
            .get(key.as_bytes())
            .map_err(|e| StorageError::sled(RAFT_META_TREE, "get", e))?
            .map(|v| v.to_vec()))
    }

    fn raft_meta_put(
        &self,
        key: RaftMetaKey,
        value: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError> {
        self.inner
            .raft_meta
            .insert(key.as_bytes(), value)
            .map_err(|e| StorageError::sled(RAFT_META_TREE, "insert", e))?;
        if key.needs_sync() {
            self.synced()
        } else {
            Ok(None)
        }
    }
}

impl StateRead for Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .inner
            .state
            .get(key)
            .map_err(|e| StorageError::sled(STATE_TREE, "get", e))?
            .map(|v| v.to_vec()))
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.inner
            .state
            .range(start.max(prefix)..)
            .take_while(|row| row.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .take(limit)
            .map(|row| {
                let (k, v) = row.map_err(|e| StorageError::sled(STATE_TREE, "scan", e))?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

impl StateBackend for Store {
    fn state_commit(&self, writes: WriteSet) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.inner
            .state
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(STATE_TREE, "apply batch", e))
    }

    fn export_state(&self) -> Result<StateImage, StorageError> {
        let applied = self.applied_state()?;
        let mut entries = Vec::new();
        for row in self.inner.state.iter() {
            let (key, value) = row.map_err(|e| StorageError::sled(STATE_TREE, "export", e))?;
            if !state::is_applied_state_key(&key) {
                entries.push((key.to_vec(), value.to_vec()));
            }
        }
        Ok(StateImage { applied, entries })
    }

    fn replace_state(&self, image: &StateImage) -> Result<Option<Duration>, StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.inner.state.iter().keys() {
            batch.remove(key.map_err(|e| StorageError::sled(STATE_TREE, "replace", e))?);
        }
        // Later operations on a key win within a batch, so these inserts override the removes.
        for (key, value) in &image.entries {
            batch.insert(key.as_slice(), value.as_slice());
        }
        for (key, value) in state::applied_state_writes(&image.applied) {
            batch.insert(key, value);
        }
        self.inner
            .state
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(STATE_TREE, "replace", e))?;
        self.synced()
    }
}
