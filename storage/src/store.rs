//! `Store`: one controller node's persistent state. The Raft log is the segment files under
//! `<data_dir>/wal` (`crate::wal`); everything else is the sled database under `<data_dir>/sled`,
//! with the trees `meta` (which controller owns the dir), `raft_meta` (vote, committed, last
//! purged, and the log's first live index) and `state` (the replicated state). Older versions
//! kept the log in sled's `log` tree; the first open moves it to `wal/`.
//!
//! Durability: a log append is one `pwrite` and one `fdatasync` of its segment. `sync` (for the
//! vote, a purge, a snapshot) is sled's `flush` followed by `fdatasync` of sled's files, because
//! on Linux sled's flush uses `sync_file_range`, which does not flush the device's write cache.
//! The state tree is never synced on its own account: what a crash loses of it the log re-applies,
//! and the log keeps every entry past the last sled sync (a purge syncs sled before it deletes).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{LogBackend, RaftMetaKey, StateBackend};
use crate::state::{self, KeyValues, StateImage, StateRead, WriteSet};
use crate::wal::Wal;
use crate::StorageError;

const META_TREE: &str = "meta";
const LOG_TREE: &str = "log";
const RAFT_META_TREE: &str = "raft_meta";
const STATE_TREE: &str = "state";
const CONTROLLER_UUID_KEY: &[u8] = b"controller_uuid";
/// In `raft_meta`: the highest purged log index (big-endian u64), which the log's files cannot
/// tell (they are purged by whole segments).
const WAL_PURGED_THROUGH_KEY: &[u8] = b"wal_purged_through";
const WAL_DIR: &str = "wal";

/// The sled database of one node. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    data_dir: PathBuf,
    sled_dir: PathBuf,
    db: sled::Db,
    wal: Wal,
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
        // The claim first: a dir of another controller is refused before anything in it moves.
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
        let mut files = SledFiles {
            db_file,
            synced: HashSet::new(),
        };
        let wal = open_wal(data_dir, &sled_dir, &db, &log, &raft_meta, &mut files)?;
        drop(log);
        let store = Store {
            inner: Arc::new(StoreInner {
                data_dir: data_dir.to_path_buf(),
                sled_dir,
                db,
                wal,
                raft_meta,
                state,
                files: Mutex::new(files),
            }),
        };
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
        let mut files = self.inner.files.lock().expect("sled file lock poisoned");
        sync_sled(&self.inner.db, &self.inner.sled_dir, &mut files)
    }

    fn synced(&self) -> Result<Option<Duration>, StorageError> {
        self.sync().map(Some)
    }
}

/// sled's flush, then fdatasync of sled's data file, of any blob and snapshot file not yet
/// synced, and of the directories that gained them; returns how long it took.
fn sync_sled(
    db: &sled::Db,
    sled_dir: &Path,
    files: &mut SledFiles,
) -> Result<Duration, StorageError> {
    let started = Instant::now();
    db.flush()
        .map_err(|e| StorageError::sled("db", "flush", e))?;
    if crate::planted::armed("unsynced-ack") {
        // Planted bug: acknowledge what is only in the page cache.
        return Ok(started.elapsed());
    }
    files
        .db_file
        .sync_data()
        .map_err(|e| StorageError::io("fdatasync", sled_dir.join("db"), e))?;
    // sled writes large values to `blobs/<lsn>` and its page-table snapshots to `snap.*`
    // without syncing the directory; a new name needs its file and its directory synced.
    let SledFiles { synced, .. } = files;
    if sync_new_files(sled_dir, synced, |name| {
        name.to_string_lossy().starts_with("snap.") || name == "conf"
    })? {
        sync_dir(sled_dir)?;
    }
    let blobs = sled_dir.join("blobs");
    if blobs.is_dir() && sync_new_files(&blobs, synced, |_| true)? {
        sync_dir(&blobs)?;
    }
    Ok(started.elapsed())
}

/// Opens the log's segment files. A data dir without them (fresh, or written by a version that
/// kept the log in sled's `log` tree) gets them built aside from that tree and moved in whole;
/// the tree is emptied once the files hold the log.
fn open_wal(
    data_dir: &Path,
    sled_dir: &Path,
    db: &sled::Db,
    log: &sled::Tree,
    raft_meta: &sled::Tree,
    files: &mut SledFiles,
) -> Result<Wal, StorageError> {
    let purged_through = raft_meta
        .get(WAL_PURGED_THROUGH_KEY)
        .map_err(|e| StorageError::sled(RAFT_META_TREE, "get", e))?
        .map(|bytes| decode_index(&bytes))
        .transpose()?;
    let first_live = purged_through.map_or(0, |index| index + 1);
    let dir = data_dir.join(WAL_DIR);
    if !dir.is_dir() {
        let staging = data_dir.join("wal.new");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| StorageError::io("remove dir", &staging, e))?;
        }
        let rows = log
            .iter()
            .map(|row| {
                let (key, value) = row.map_err(|e| StorageError::sled(LOG_TREE, "iter", e))?;
                Ok((decode_index(&key)?, value.to_vec()))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let wal = Wal::open(&staging, first_live)?;
        if !rows.is_empty() {
            tracing::info!(
                entries = rows.len(),
                "moving the Raft log from sled into {}",
                dir.display()
            );
            wal.append(rows)?;
        }
        drop(wal);
        std::fs::rename(&staging, &dir).map_err(|e| StorageError::io("rename", &staging, e))?;
        sync_dir(data_dir)?;
    }
    if !log.is_empty() {
        log.clear()
            .map_err(|e| StorageError::sled(LOG_TREE, "clear", e))?;
        sync_sled(db, sled_dir, files)?;
    }
    Wal::open(&dir, first_live)
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

impl LogBackend for Store {
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<Option<Duration>, StorageError> {
        self.inner.wal.append(entries)
    }

    fn log_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if crate::backend::is_empty_range(&range) {
            return Ok(Vec::new());
        }
        self.inner.wal.range(range)
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        self.inner.wal.last()
    }

    fn log_truncate_from(&self, index: u64) -> Result<Option<Duration>, StorageError> {
        self.inner.wal.truncate_from(index).map(Some)
    }

    fn log_purge_through(
        &self,
        index: u64,
        last_purged: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError> {
        // The records first, and sled synced (the state applied so far with them), then the
        // files: a crash can leave purged entries behind the records, never a hole in front.
        let mut batch = sled::Batch::default();
        batch.insert(RaftMetaKey::LastPurged.as_bytes(), last_purged);
        batch.insert(WAL_PURGED_THROUGH_KEY, &index_key(index));
        self.inner
            .raft_meta
            .apply_batch(batch)
            .map_err(|e| StorageError::sled(RAFT_META_TREE, "insert last_purged", e))?;
        let took = self.sync()?;
        self.inner.wal.purge_through(index)?;
        Ok(Some(took))
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
            .map(owned_row)
            .collect()
    }

    fn scan_prefix_last(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError> {
        self.inner
            .state
            .scan_prefix(prefix)
            .rev()
            .take(limit)
            .map(owned_row)
            .collect()
    }
}

/// A row of a scan of the state tree, as owned bytes.
fn owned_row(
    row: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<(Vec<u8>, Vec<u8>), StorageError> {
    let (k, v) = row.map_err(|e| StorageError::sled(STATE_TREE, "scan", e))?;
    Ok((k.to_vec(), v.to_vec()))
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
