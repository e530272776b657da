//! `StateMachine`: openraft's `RaftStateMachine` over a `StateBackend`. Each `apply` call is one
//! atomic write set (commands, idempotency records, last applied, membership); snapshots are
//! protobuf `raft::Snapshot` images of the whole state.
// openraft's `StorageError` is large, but it is the error type the storage traits prescribe.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use starling_storage::staging::StagedFiles;
use starling_storage::{
    ApplyBatch, ApplyLimits, StateBackend, StateImage, StorageError as BackendError,
};

use super::snapshot_store::{check_snapshot_id, meta_of, SnapshotStore};
use super::state_view::{AppliedIndex, ApplyObservers, CommitGate};
use super::{blocking, record_sync};
use crate::codec;
use crate::stages::{Mark, WriteTimeline};
use crate::type_config::{
    Entry, LogId, Request, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What openraft streams a snapshot as (`TypeConfig::SnapshotData`).
type SnapshotData = Cursor<Vec<u8>>;

/// The replicated state machine of a node over a backend.
pub struct StateMachine<B> {
    backend: B,
    snapshots: SnapshotStore,
    applied_index: Arc<AppliedIndex>,
    gate: Arc<CommitGate>,
    observers: Arc<ApplyObservers>,
    limits: ApplyLimits,
    timeline: Arc<WriteTimeline>,
    staged: Option<Arc<dyn StagedFiles>>,
}

/// Builds a snapshot from a copy of the state taken while no apply could run.
pub struct SnapshotBuilder {
    image: Result<StateImage, AnyError>,
    snapshots: SnapshotStore,
}

impl<B: StateBackend> StateMachine<B> {
    pub(super) fn new(
        backend: B,
        snapshots: SnapshotStore,
        applied_index: Arc<AppliedIndex>,
        gate: Arc<CommitGate>,
        timeline: Arc<WriteTimeline>,
        observers: Arc<ApplyObservers>,
    ) -> Self {
        StateMachine {
            backend,
            snapshots,
            applied_index,
            gate,
            observers,
            limits: ApplyLimits::default(),
            timeline,
            staged: None,
        }
    }

    /// Reads the files of bulk imports from `staged` (the node's staging area).
    pub fn with_staged_files(mut self, staged: Arc<dyn StagedFiles>) -> Self {
        self.staged = Some(staged);
        self
    }

    /// Overrides the apply bounds (tests use small ones).
    pub fn with_limits(mut self, limits: ApplyLimits) -> Self {
        self.limits = limits;
        self
    }
}

fn sm_read_err(e: AnyError) -> StorageError {
    StorageIOError::read_state_machine(e).into()
}

fn applies(
    backend: &impl StateBackend,
    gate: &CommitGate,
    observers: &ApplyObservers,
    limits: ApplyLimits,
    staged: Option<&dyn StagedFiles>,
    entries: &[Entry],
) -> Result<Vec<Response>, BackendError> {
    let mut batch = ApplyBatch::new(backend, limits);
    if let Some(staged) = staged {
        batch = batch.with_staged_files(staged);
    }
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Normal(Request::Command(command)) => {
                Response(batch.apply_command(entry.log_id.index, &command.0)?)
            }
            EntryPayload::Normal(Request::Batch(commands)) => {
                Response(batch.apply_command_batch(entry.log_id.index, &commands.0)?)
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                batch.set_last_membership(&codec::stored_membership_to_pb(&stored));
                Response::default()
            }
        };
        responses.push(response);
    }
    if let Some(last) = entries.last() {
        batch.set_last_applied(&codec::log_id_to_pb(&last.log_id));
    }
    let events = batch.staging_events().to_vec();
    let writes = batch.into_writes();
    if let Some(last) = entries.last() {
        observers.desired.record(last.log_id.index, &writes);
    }
    gate.commit(|| backend.state_commit(writes))?;
    for (entry, response) in entries.iter().zip(&responses) {
        match &entry.payload {
            EntryPayload::Normal(Request::Command(command)) => {
                observers.applied(&command.0, &response.0);
            }
            EntryPayload::Normal(Request::Batch(commands)) => {
                for (command, result) in commands.0.commands.iter().zip(&response.0.batch_results) {
                    observers.applied(command, result);
                }
            }
            _ => {}
        }
    }
    if let Some(staged) = staged.filter(|_| !events.is_empty()) {
        staged.committed(&events);
    }
    Ok(responses)
}

fn new_snapshot_id(last_applied: Option<&LogId>) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    match last_applied {
        Some(l) => format!(
            "{}-{}-{}-{millis}-{sequence}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("empty-{millis}-{sequence}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let image = self
            .image
            .as_ref()
            .map_err(|e| StorageIOError::read_state_machine(e.clone()))?
            .clone();
        let snapshots = self.snapshots.clone();
        // Encoding and writing happen here, off the state machine task.
        let (meta, bytes) = blocking(move || {
            let meta = meta_of(&image, String::new())?;
            let meta = SnapshotMeta {
                snapshot_id: new_snapshot_id(meta.last_log_id.as_ref()),
                ..meta
            };
            let bytes = image.encode();
            snapshots.save(&meta, &bytes)?;
            Ok((meta, bytes))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl<B: StateBackend> RaftStateMachine<TypeConfig> for StateMachine<B> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self
            .backend
            .applied_state()
            .map_err(|e| sm_read_err(AnyError::new(&e)))?;
        let membership = codec::stored_membership_from_pb(applied.last_membership.as_ref())
            .map_err(|e| sm_read_err(AnyError::new(&e)))?;
        Ok((
            codec::opt_log_id_from_pb(applied.last_applied.as_ref()),
            membership,
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (Some(first), Some(last)) = (
            entries.first().map(|e| e.log_id.index),
            entries.last().map(|e| e.log_id),
        ) else {
            return Ok(Vec::new());
        };
        self.timeline.mark(first, last.index, Mark::ApplyStart);
        let backend = self.backend.clone();
        let gate = self.gate.clone();
        let observers = self.observers.clone();
        let limits = self.limits;
        let staged = self.staged.clone();
        let responses = blocking(move || {
            applies(
                &backend,
                &gate,
                &observers,
                limits,
                staged.as_deref(),
                &entries,
            )
        })
        .await
        .map_err(|e| StorageIOError::apply(last, e))?;
        self.timeline.mark(first, last.index, Mark::ApplyEnd);
        self.applied_index.store(last.index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // `&mut self` keeps apply out while the state is copied: sled has no point-in-time reads.
        let backend = self.backend.clone();
        SnapshotBuilder {
            image: blocking(move || backend.export_state()).await,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let backend = self.backend.clone();
        let gate = self.gate.clone();
        let observers = self.observers.clone();
        let snapshots = self.snapshots.clone();
        let meta_given = meta.clone();
        let took = blocking(move || {
            check_snapshot_id(&meta_given.snapshot_id)?;
            let image = StateImage::decode(&bytes)?;
            let implied = meta_of(&image, meta_given.snapshot_id.clone())?;
            if implied != meta_given {
                return Err(BackendError::MalformedSnapshot {
                    why: format!("content is at {implied:?}, metadata says {meta_given:?}"),
                });
            }
            // The file first: once the state is replaced, its snapshot is already durable.
            snapshots.save(&meta_given, &bytes)?;
            observers
                .desired
                .reset(meta_given.last_log_id.map_or(0, |l| l.index));
            gate.commit(|| backend.replace_state(&image))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        record_sync("install_snapshot", took);
        self.applied_index
            .store(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
