//! openraft's storage traits over `starling-storage`: `LogStore` (`RaftLogStorage`) and
//! `StateMachine` (`RaftStateMachine`), generic over the byte-level backends, so the sled pair
//! (`SledLogStore`, `SledStateMachine`) and the in-memory pair (`MemLogStore`,
//! `MemStateMachine`) share every line of Raft logic and both pass openraft's `testing::Suite`.
//! `StateView` is the daemon's read-only view of the applied state.
//!
//! Blocking storage calls (sled I/O, fdatasync) run on tokio's blocking pool, never on an async
//! worker; every sync's latency is recorded in the `starling_storage_sync_seconds` histogram.

mod log_store;
mod snapshot_store;
mod state_machine;
mod state_view;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::AnyError;
use starling_storage::{MemStore, StorageError as BackendError, Store};

use crate::stages::WriteTimeline;

pub use log_store::{LogReader, LogStore};
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use state_view::{ApplyObserver, StateView};

use snapshot_store::SnapshotStore;
use state_view::{ApplyObservers, CommitGate};

/// The durable log store of a node.
pub type SledLogStore = LogStore<Store>;
/// The durable state machine of a node.
pub type SledStateMachine = StateMachine<Store>;
/// The in-memory log store (tests).
pub type MemLogStore = LogStore<MemStore>;
/// The in-memory state machine (tests).
pub type MemStateMachine = StateMachine<MemStore>;

/// Opens the node's durable stores under `data_dir` (sled in `sled/`, snapshot files in
/// `snapshots/`), refusing a dir that belongs to another controller or is already open.
/// Blocks (disk I/O): call it before serving, or on the blocking pool.
pub fn open_sled(
    data_dir: &Path,
    controller_uuid: &str,
) -> Result<(SledLogStore, SledStateMachine, StateView), BackendError> {
    let store = Store::open(data_dir, controller_uuid)?;
    let snapshots = SnapshotStore::open_dir(&data_dir.join("snapshots"))?;
    assemble(store, snapshots)
}

/// In-memory stores with the same rules as the sled pair, nothing durable.
pub fn open_memory() -> (MemLogStore, MemStateMachine, StateView) {
    assemble(MemStore::new(), SnapshotStore::memory()).expect("the memory backend does not fail")
}

fn assemble<B>(
    backend: B,
    snapshots: SnapshotStore,
) -> Result<(LogStore<B>, StateMachine<B>, StateView), BackendError>
where
    B: starling_storage::LogBackend + starling_storage::StateBackend,
{
    let applied = backend
        .applied_state()?
        .last_applied
        .map_or(0, |log_id| log_id.index);
    let applied_index = Arc::new(state_view::AppliedIndex::new(applied));
    let gate = Arc::new(CommitGate::default());
    let timeline = Arc::new(WriteTimeline::default());
    let observers = Arc::new(ApplyObservers::new(applied));
    let view = StateView::new(
        Arc::new(backend.clone()),
        applied_index.clone(),
        gate.clone(),
        timeline.clone(),
        observers.clone(),
    );
    Ok((
        LogStore::new(backend.clone(), timeline.clone()),
        StateMachine::new(backend, snapshots, applied_index, gate, timeline, observers),
        view,
    ))
}

/// Runs blocking storage work on the blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, AnyError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BackendError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| AnyError::new(&e)),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(AnyError::new(&join)),
    }
}

/// Records the latency of a sync, if one was done.
fn record_sync(op: &'static str, took: Option<Duration>) {
    if let Some(took) = took {
        metrics::histogram!("starling_storage_sync_seconds", "op" => op).record(took.as_secs_f64());
    }
}
