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
use prost::Message;
use starling_proto::command::command::Op;
use starling_proto::command::Command;
use starling_storage::staging::{StagedFiles, StagingEvent};
use starling_storage::{
    ApplyBatch, ApplyLimits, StateBackend, StateImage, StorageError as BackendError, WriteSet,
};

use super::snapshot_store::{check_snapshot_id, meta_of, SnapshotStore};
use super::state_view::{AppliedIndex, ApplyObservers, CommitGate, Exclusive};
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

    /// Records that entries `first..=last` were applied, with `responses`.
    fn applied(&self, first: u64, last: u64, responses: Vec<Response>) -> Vec<Response> {
        self.timeline.mark(first, last, Mark::ApplyEnd);
        self.applied_index.store(last);
        responses
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

/// What applying a run of entries decided, before it is committed: the responses, the write
/// set, and the staged files it consumed.
struct Prepared {
    responses: Vec<Response>,
    writes: WriteSet,
    events: Vec<StagingEvent>,
}

/// Applies `entries` to a batch over the current state: reads only, nothing is committed.
fn prepare(
    backend: &impl StateBackend,
    limits: ApplyLimits,
    staged: Option<&dyn StagedFiles>,
    entries: &[Entry],
) -> Result<Prepared, BackendError> {
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
    Ok(Prepared {
        responses,
        writes: batch.into_writes(),
        events,
    })
}

/// Commits what `prepare` decided for `entries` as one atomic write set while `exclusive` holds
/// the state, then tells the observers.
fn finish(
    backend: &impl StateBackend,
    exclusive: Exclusive<'_>,
    observers: &ApplyObservers,
    staged: Option<&dyn StagedFiles>,
    entries: &[Entry],
    prepared: Prepared,
) -> Result<Vec<Response>, BackendError> {
    let Prepared {
        responses,
        writes,
        events,
    } = prepared;
    if let Some(last) = entries.last() {
        observers.desired.record(last.log_id.index, &writes);
    }
    let committed = backend.state_commit(writes);
    drop(exclusive);
    committed?;
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

/// At most this many commands are applied on the state machine's task; more go to the
/// blocking pool.
const INLINE_COMMANDS_MAX: usize = 16;
/// At most this many bytes of commands are applied on the state machine's task.
const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Whether applying `entries` is quick enough to run on the state machine's task: a few
/// commands that each write a bounded handful of records (configuration, status, reports,
/// presence, log lines, users). Such an apply takes tens of microseconds, less than the hop to
/// the blocking pool and back (two thread wake-ups); a command whose apply grows with a model
/// (removals, imports, digests, backups) always takes the hop.
fn applies_inline(entries: &[Entry]) -> bool {
    let mut commands = 0;
    let mut bytes = 0;
    let mut take = |command: &Command| {
        commands += 1;
        bytes += command.encoded_len();
        commands <= INLINE_COMMANDS_MAX && bytes <= INLINE_BYTES_MAX && is_light(command)
    };
    entries.iter().all(|entry| match &entry.payload {
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
        EntryPayload::Normal(Request::Command(command)) => take(&command.0),
        EntryPayload::Normal(Request::Batch(batch)) => batch.0.commands.iter().all(&mut take),
    })
}

/// Whether `command`'s apply writes a bounded handful of records, whatever the model's size.
fn is_light(command: &Command) -> bool {
    matches!(
        command.op,
        Some(
            Op::SetControllerConfig(_)
                | Op::SetModelConfig(_)
                | Op::SetApplicationConfig(_)
                | Op::SetStatus(_)
                | Op::AgentReport(_)
                | Op::RenewPresence(_)
                | Op::AppendLog(_)
                | Op::AddUser(_)
                | Op::SetModelAccess(_)
        )
    )
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
        let staged = self.staged.clone();
        let apply_err = |e: BackendError| StorageIOError::apply(last, AnyError::new(&e));
        let mut prepared = None;
        if applies_inline(&entries) {
            let here = prepare(&self.backend, self.limits, staged.as_deref(), &entries)
                .map_err(apply_err)?;
            if let Some(exclusive) = self.gate.try_exclusive() {
                let responses = finish(
                    &self.backend,
                    exclusive,
                    &self.observers,
                    staged.as_deref(),
                    &entries,
                    here,
                )
                .map_err(apply_err)?;
                return Ok(self.applied(first, last.index, responses));
            }
            // A locked read runs: wait for its end on the blocking pool, not on this task.
            prepared = Some(here);
        }
        let backend = self.backend.clone();
        let gate = self.gate.clone();
        let observers = self.observers.clone();
        let limits = self.limits;
        let responses = blocking(move || {
            let prepared = match prepared {
                Some(prepared) => prepared,
                None => prepare(&backend, limits, staged.as_deref(), &entries)?,
            };
            finish(
                &backend,
                gate.exclusive(),
                &observers,
                staged.as_deref(),
                &entries,
                prepared,
            )
        })
        .await
        .map_err(|e| StorageIOError::apply(last, e))?;
        Ok(self.applied(first, last.index, responses))
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use openraft::{LeaderId, Membership};
    use starling_proto::command::{command_result, CommandBatch, ReapModel, SetControllerConfig};

    use super::*;
    use crate::store::open_memory;
    use crate::type_config::Proto;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: openraft::LogId::new(LeaderId::new(1, 1), index),
            payload,
        }
    }

    fn set_config(request_id: &str, value: &str) -> Command {
        Command {
            request_id: request_id.into(),
            op: Some(Op::SetControllerConfig(SetControllerConfig {
                values: [("custom.k".to_owned(), value.to_owned())].into(),
            })),
            ..Default::default()
        }
    }

    fn one(command: Command) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Request::command(command))
    }

    fn batch(commands: Vec<Command>) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Request::Batch(Proto(CommandBatch { commands })))
    }

    /// A few light commands apply on the task; a command whose apply grows with a model, too
    /// many commands or too many bytes take the hop to the blocking pool.
    #[test]
    fn only_a_few_light_commands_apply_on_the_task() {
        let light = |n: usize| (0..n).map(|i| set_config(&format!("r{i}"), "v")).collect();
        let reap = Command {
            op: Some(Op::ReapModel(ReapModel::default())),
            ..Default::default()
        };
        assert!(applies_inline(&[entry(1, one(set_config("r", "v")))]));
        assert!(applies_inline(&[
            entry(1, EntryPayload::Blank),
            entry(
                2,
                EntryPayload::Membership(Membership::new(vec![[1].into()], ()))
            ),
            entry(3, batch(light(INLINE_COMMANDS_MAX))),
        ]));
        assert!(!applies_inline(&[entry(
            1,
            batch(light(INLINE_COMMANDS_MAX + 1))
        )]));
        assert!(!applies_inline(&[
            entry(1, batch(light(INLINE_COMMANDS_MAX / 2))),
            entry(2, batch(light(INLINE_COMMANDS_MAX / 2 + 1))),
        ]));
        assert!(!applies_inline(&[entry(1, one(reap.clone()))]));
        assert!(!applies_inline(&[entry(
            1,
            batch(vec![set_config("r", "v"), reap])
        )]));
        let big = "x".repeat(INLINE_BYTES_MAX);
        assert!(!applies_inline(&[entry(1, one(set_config("r", &big)))]));
    }

    /// A light apply that meets a locked read neither blocks the runtime's thread nor commits
    /// under the reader: it waits on the blocking pool and commits once the read ends.
    #[tokio::test]
    async fn a_light_apply_waits_for_a_locked_read_off_the_task() {
        let (_log, mut sm, view) = open_memory();
        let gate = sm.gate.clone();
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // The reader lets go by itself after 5 s, so a runtime blocked by the apply fails the
        // assertions below instead of hanging.
        let reader = std::thread::spawn(move || {
            let _shared = gate.locked_read();
            held_tx.send(()).expect("test waits");
            let _ = release_rx.recv_timeout(Duration::from_secs(5));
        });
        held_rx.recv().expect("reader holds the lock");
        let apply =
            tokio::spawn(async move { sm.apply([entry(1, one(set_config("r1", "1")))]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !apply.is_finished(),
            "the apply committed under a locked read"
        );
        assert_eq!(view.applied_index(), 0);
        release_tx.send(()).expect("reader waits");
        let responses = apply.await.expect("joins").expect("applies");
        reader.join().expect("reader ends");
        assert!(matches!(
            responses[0].0.result,
            Some(command_result::Result::Ok(_))
        ));
        assert_eq!(view.controller_config()["custom.k"], "1");
        assert_eq!(view.applied_index(), 1);
    }
}
