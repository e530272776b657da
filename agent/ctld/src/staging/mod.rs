//! The node's side of a migration's bulk import (`docs/migration.md`, "The bulk import").
//!
//! The source streams each file (the model description, the charms this controller lacks) to
//! one node of the target (`Migration.StageFile`). That node writes it to its staging area
//! (`storage::staging`, fdatasynced and checked against its sha256) and forwards every chunk
//! to the other nodes of its group as it arrives (`Staging.Push`), the way a leader streams a
//! snapshot. Before the import commits, the node that is asked makes sure a majority of the
//! voters hold every file, pushing what a peer lacks from its own copy. The import is then one
//! small log entry naming the files; each node applies it from its own staging area.
//!
//! A node that lacks a file when it applies that entry (it was down during the stream, or
//! joined later) fetches it from a peer before applying (`Staging.Fetch`), retrying for up
//! to [`FETCH_DEADLINE`]; the apply waits, since an entry can only be applied from the exact
//! bytes it names. If no peer can give it, the node stops with an error naming the file
//! rather than apply anything else. Peers keep what a lagging node may ask for: a consumed
//! description until their own log no longer holds the import entry, and charms until the
//! import ends (after that a peer serves a charm from its state, where every charm stays).
//!
//! - [`service`]: the `Staging` peer service (push, status, fetch).
//! - [`transfer`]: receiving streams, pushing to and fetching from peers.

pub mod service;
pub mod transfer;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use starling_storage::model::migration::MigrationId;
use starling_storage::staging::{StagedDir, StagedFiles, StagingArea, StagingEvent};
use starling_storage::StorageError;
use tracing::{error, info, warn};

/// How long applying an import waits for a staged file this node lacks before the node stops.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(120);
/// The longest pause between two fetch attempts.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The staging area of a node, with its peers to fetch from. Cheap to clone.
#[derive(Clone)]
pub struct NodeStaging {
    inner: Arc<Inner>,
}

struct Inner {
    area: Arc<StagingArea>,
    /// Set once Raft runs: the membership to fetch from and the peer channels.
    handle: OnceLock<RaftHandle>,
    runtime: tokio::runtime::Handle,
}

impl NodeStaging {
    /// The staging area in `area`, fetching through the current runtime.
    pub fn new(area: Arc<StagingArea>) -> Self {
        NodeStaging {
            inner: Arc::new(Inner {
                area,
                handle: OnceLock::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Gives the staging area its node, once Raft runs.
    pub fn set_handle(&self, handle: RaftHandle) {
        let _ = self.inner.handle.set(handle);
    }

    /// The node, once Raft runs.
    pub fn handle(&self) -> Option<&RaftHandle> {
        self.inner.handle.get()
    }

    /// The files.
    pub fn area(&self) -> &Arc<StagingArea> {
        &self.inner.area
    }

    /// The staged files as `storage`'s apply reads them.
    pub fn as_staged_files(&self) -> Arc<dyn StagedFiles> {
        Arc::new(self.clone())
    }

    /// Whether the import of `id` has ended in this node's applied state: activated by it or
    /// by a later attempt, or replaced by a later attempt's import.
    fn import_ended(handle: &RaftHandle, id: &MigrationId) -> Result<bool, StorageError> {
        let state = handle.state().reader();
        let newer = |by: Option<String>| {
            by.and_then(|by| MigrationId::parse(&by).ok())
                .is_some_and(|by| by.attempt >= id.attempt)
        };
        if newer(stored::read_activated_by(state, &id.model_uuid)?) {
            return Ok(true);
        }
        Ok(stored::read_import(state, &id.model_uuid)?
            .and_then(|i| MigrationId::parse(&i.migration_id).ok())
            .is_some_and(|held| held.attempt > id.attempt))
    }

    /// Whether this node's state holds an import of exactly `id`.
    fn importing(handle: &RaftHandle, id: &MigrationId) -> Result<bool, StorageError> {
        Ok(
            stored::read_import(handle.state().reader(), &id.model_uuid)?
                .is_some_and(|i| i.migration_id == id.to_string()),
        )
    }

    /// One look at the staging area: deletes what no node can need any more, and returns the
    /// directories idle for `idle` whose import this node neither holds nor has seen end (the
    /// caller asks their source). Run on every node, at start and periodically.
    pub fn sweep(&self, idle: Duration) -> Vec<StagedDir> {
        let Some(handle) = self.handle() else {
            return Vec::new();
        };
        let dirs = match self.area().dirs() {
            Ok(dirs) => dirs,
            Err(e) => {
                warn!(error = %e, "cannot list the staging area");
                return Vec::new();
            }
        };
        let purged = handle.node_status().purged_index;
        let mut undecided = Vec::new();
        for dir in dirs {
            let id = &dir.migration_id.clone();
            let ended = match Self::import_ended(handle, id) {
                Ok(ended) => ended,
                Err(e) => {
                    warn!(error = %e, "cannot read the imports");
                    return Vec::new();
                }
            };
            let outcome = match dir.consumed_at {
                // The log no longer holds the import entry: no peer gets it from this node.
                Some(index) if purged.is_some_and(|p| p >= index) => {
                    self.remove(id, "its import entry left the log")
                }
                Some(_) if ended => self.keep_description(&dir),
                Some(_) => Ok(()),
                None if ended => self.remove(id, "its import ended"),
                None => {
                    if dir.idle >= idle && !Self::importing(handle, id).unwrap_or(true) {
                        undecided.push(dir);
                    }
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                warn!(migration = %id, error = %e, "cannot clean up staged files");
            }
        }
        undecided
    }

    /// Deletes the staged files of `id`.
    pub fn remove(&self, id: &MigrationId, why: &str) -> Result<(), StorageError> {
        if self.area().remove(id)? {
            info!(migration = %id, why, "staged files deleted");
        }
        Ok(())
    }

    /// Deletes every file of a consumed directory but its description.
    fn keep_description(&self, dir: &StagedDir) -> Result<(), StorageError> {
        let keep = dir.description.as_deref().unwrap_or_default();
        if dir.files.iter().any(|f| f != keep) {
            self.area().remove_files_except(&dir.migration_id, keep)?;
            info!(migration = %dir.migration_id, "staged charms deleted (the import ended; the state holds them)");
        }
        Ok(())
    }

    fn import_ended_event(&self, migration_id: &str) {
        let Ok(id) = MigrationId::parse(migration_id) else {
            return;
        };
        let dirs = match self.area().dirs() {
            Ok(dirs) => dirs,
            Err(e) => {
                warn!(error = %e, "cannot list the staging area");
                return;
            }
        };
        let Some(dir) = dirs.into_iter().find(|d| d.migration_id == id) else {
            return;
        };
        let outcome = if dir.consumed_at.is_some() {
            self.keep_description(&dir)
        } else {
            self.remove(&id, "its import ended")
        };
        if let Err(e) = outcome {
            warn!(migration = %id, error = %e, "cannot clean up staged files");
        }
    }
}

impl StagedFiles for NodeStaging {
    fn read(&self, migration_id: &str, digest: &str, size: u64) -> Result<Vec<u8>, StorageError> {
        let missing = |why: String| StorageError::StagedFileMissing {
            migration_id: migration_id.to_owned(),
            digest: digest.to_owned(),
            why,
        };
        let local = |area: &StagingArea| {
            area.read_verified(migration_id, digest, size)
                .map_err(|e| missing(e.to_string()))
        };
        if let Some(bytes) = local(self.area())? {
            return Ok(bytes);
        }
        warn!(
            migration = migration_id,
            digest, "applying an import whose staged file this node lacks; fetching it from a peer"
        );
        let deadline = Instant::now() + FETCH_DEADLINE;
        let mut pause = Duration::from_millis(100);
        loop {
            let attempt = self.inner.runtime.block_on(transfer::fetch_from_peers(
                self,
                migration_id,
                digest,
                size,
            ));
            let last = match attempt {
                Ok(from) => match local(self.area())? {
                    Some(bytes) => {
                        info!(
                            migration = migration_id,
                            digest, from, "fetched a staged file from a peer"
                        );
                        return Ok(bytes);
                    }
                    None => "the fetched file did not verify".to_owned(),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                error!(
                    migration = migration_id,
                    digest,
                    last,
                    "no peer could give a staged file this node needs to apply an import"
                );
                return Err(missing(format!(
                    "this node lacks it and no peer gave it within {}s (last attempt: {last}); \
                     the node cannot apply the import. Once a peer holding it is reachable, \
                     restart the node; if none holds it any more, remove the node from the \
                     controller and add it again (it then receives a snapshot)",
                    FETCH_DEADLINE.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(FETCH_RETRY_MAX);
        }
    }

    fn committed(&self, events: &[StagingEvent]) {
        for event in events {
            match event {
                StagingEvent::Consumed {
                    migration_id,
                    index,
                    description_digest,
                } => {
                    if let Err(e) =
                        self.area()
                            .mark_consumed(migration_id, *index, description_digest)
                    {
                        warn!(error = %e, "cannot mark staged files consumed");
                    }
                }
                // Deleting the staged charms (tens of MiB) is left to a blocking task: it is
                // called from the apply, and the apply of Activate is on the path of the
                // model's first writes on this controller. A crash before it runs leaves the
                // files to the sweeper, which deletes what an ended import left.
                StagingEvent::Ended { migration_id } => {
                    let staging = self.clone();
                    let migration_id = migration_id.clone();
                    self.inner
                        .runtime
                        .spawn_blocking(move || staging.import_ended_event(&migration_id));
                }
            }
        }
    }
}
