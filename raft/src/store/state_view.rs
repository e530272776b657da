//! `StateView`: the daemon's cheap, cloneable, read-only view of the applied state, the same
//! for both backends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use starling_proto::command::{Command, CommandResult};
use starling_proto::model::{
    BackupRecord, Blob, LogRecord, Machine, Model, ModelDescription, Unit, User,
};
use starling_storage::state::read_effective_config;
use starling_storage::{keys, records, StateRead, StorageError as BackendError};

use crate::stages::WriteTimeline;

/// Orders state commits against readers that need several reads of one applied state. A commit
/// holds the lock exclusively and moves the generation to odd while it runs and to the next even
/// number after; [`StateView::consistent`] reads optimistically and checks the generation, and
/// only when a commit ran meanwhile reads again holding the lock shared.
#[derive(Debug, Default)]
pub(crate) struct CommitGate {
    lock: RwLock<()>,
    generation: AtomicU64,
}

impl CommitGate {
    /// Runs `commit` (one atomic change of the state) while no locked read runs.
    pub(crate) fn commit<T>(&self, commit: impl FnOnce() -> T) -> T {
        let _exclusive = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        let result = commit();
        self.generation.fetch_add(1, Ordering::SeqCst);
        result
    }
}

/// Called with every command a node applied and its result, after the write set that holds
/// it was committed (on the blocking pool: it must be quick and must not block).
pub type ApplyObserver = Arc<dyn Fn(&Command, &CommandResult) + Send + Sync>;

/// The observer of applied commands a node's state machine calls, set once the daemon has
/// built it (the state machine exists first).
#[derive(Default)]
pub(crate) struct ApplyObservers {
    observer: RwLock<Option<ApplyObserver>>,
}

impl ApplyObservers {
    /// Tells the observer about `command`, applied with `result`.
    pub(crate) fn applied(&self, command: &Command, result: &CommandResult) {
        let observer = self.observer.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(observer) = observer.as_ref() {
            observer(command, result);
        }
    }
}

/// Read-only access to the applied state. Each read sees whole applied batches, never half of
/// one; [`StateView::consistent`] makes several reads see the same applied state.
#[derive(Clone)]
pub struct StateView {
    reader: Arc<dyn StateRead + Send + Sync>,
    applied_index: Arc<AtomicU64>,
    gate: Arc<CommitGate>,
    timeline: Arc<WriteTimeline>,
    observers: Arc<ApplyObservers>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView")
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl StateView {
    pub(super) fn new(
        reader: Arc<dyn StateRead + Send + Sync>,
        applied_index: Arc<AtomicU64>,
        gate: Arc<CommitGate>,
        timeline: Arc<WriteTimeline>,
        observers: Arc<ApplyObservers>,
    ) -> Self {
        StateView {
            reader,
            applied_index,
            gate,
            timeline,
            observers,
        }
    }

    /// The node's write timeline (shared with its log store and state machine).
    pub(crate) fn timeline(&self) -> Arc<WriteTimeline> {
        self.timeline.clone()
    }

    /// Calls `observer` with every command applied from now on (replacing an earlier one), e.g.
    /// to measure each model's write rate where the writes happen.
    pub fn observe_applies(&self, observer: ApplyObserver) {
        *self
            .observers
            .observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Runs `reads` so that they all see one applied state (a model and its import, lock or
    /// redirect, read one after the other): first without holding anything back, and again
    /// with applies held back if one committed meanwhile. `reads` may run twice, must only
    /// read, must not wait for an apply and must not call `consistent` (the lock is not
    /// reentrant).
    pub fn consistent<T>(&self, reads: impl Fn(&StateView) -> T) -> T {
        let before = self.gate.generation.load(Ordering::SeqCst);
        if before.is_multiple_of(2) {
            let result = reads(self);
            if self.gate.generation.load(Ordering::SeqCst) == before {
                return result;
            }
        }
        let _shared = self
            .gate
            .lock
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        reads(self)
    }

    /// The effective controller config (defaults merged), or the storage failure.
    pub fn try_controller_config(&self) -> Result<BTreeMap<String, String>, BackendError> {
        read_effective_config(self.reader.as_ref())
    }

    /// The effective controller config (defaults merged).
    ///
    /// # Panics
    /// If the state cannot be read: a storage failure is fatal for the node.
    pub fn controller_config(&self) -> BTreeMap<String, String> {
        self.try_controller_config()
            .unwrap_or_else(|e| panic!("cannot read the controller config from storage: {e}"))
    }

    /// The raw applied state, for the readers in `starling_storage` that have no method here
    /// (migration records, redirects, imports).
    pub fn reader(&self) -> &(dyn StateRead + Send + Sync) {
        self.reader.as_ref()
    }

    /// The index of the last applied log entry (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// Every model, ordered by owner then name.
    pub fn list_models(&self) -> Result<Vec<Model>, BackendError> {
        records::read_models(self.reader.as_ref())
    }

    /// The model with this uuid.
    pub fn model(&self, uuid: &str) -> Result<Option<Model>, BackendError> {
        records::read_model(self.reader.as_ref(), uuid)
    }

    /// `owner`'s model called `name`.
    pub fn model_by_name(&self, owner: &str, name: &str) -> Result<Option<Model>, BackendError> {
        match records::read_model_uuid(self.reader.as_ref(), owner, name)? {
            Some(uuid) => self.model(&uuid),
            None => Ok(None),
        }
    }

    /// The whole model (machines, applications, units, relations, status history), as
    /// migration exports it: for `status` and `show-model`.
    pub fn model_description(&self, uuid: &str) -> Result<Option<ModelDescription>, BackendError> {
        starling_storage::export_model(self.reader.as_ref(), uuid)
    }

    /// A complete blob's header (size, chunk offsets); `None` while uploading or unknown.
    pub fn blob(&self, digest: &str) -> Result<Option<Blob>, BackendError> {
        records::read_blob(self.reader.as_ref(), digest)
    }

    /// Up to `len` bytes (at most `records::BLOB_RANGE_BYTES_MAX`) of a complete blob from
    /// `offset`; `None` if there is no such complete blob, empty past its end.
    pub fn blob_range(
        &self,
        digest: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        let reader = self.reader.as_ref();
        match records::read_blob(reader, digest)? {
            Some(blob) => records::read_blob_range(reader, &blob, offset, len).map(Some),
            None => Ok(None),
        }
    }

    /// A controller user.
    pub fn user(&self, name: &str) -> Result<Option<User>, BackendError> {
        records::read_user(self.reader.as_ref(), name)
    }

    /// Every controller user, by name.
    pub fn users(&self) -> Result<Vec<User>, BackendError> {
        records::read_users(self.reader.as_ref())
    }

    /// Up to `limit` records of the model's log after sequence number `after_seq` (0: from the
    /// oldest kept), oldest first.
    pub fn model_log(
        &self,
        uuid: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogRecord>, BackendError> {
        records::read_log(self.reader.as_ref(), uuid, after_seq, limit)
    }

    /// The sequence number of the model's last log record (0 when none was ever appended),
    /// `None` if there is no such model.
    pub fn last_log_seq(&self, uuid: &str) -> Result<Option<u64>, BackendError> {
        Ok(self
            .model(uuid)?
            .map(|model| model.next_log_seq.saturating_sub(1)))
    }

    /// One machine of a model (`id` is its number).
    pub fn machine(&self, uuid: &str, id: u64) -> Result<Option<Machine>, BackendError> {
        records::read_machine(self.reader.as_ref(), uuid, id)
    }

    /// The newest heartbeat any node recorded for each machine of the model, by machine id
    /// (machines never seen are absent).
    pub fn model_presence(&self, uuid: &str) -> Result<BTreeMap<String, i64>, BackendError> {
        records::read_model_presence(self.reader.as_ref(), uuid)
    }

    /// The last agent-report sequence number applied for a machine (0 when none was).
    pub fn agent_seq(&self, uuid: &str, machine: u64) -> Result<u64, BackendError> {
        records::read_agent_seq(self.reader.as_ref(), uuid, machine)
    }

    /// One unit of a model (`web/3` is application `web`, number 3).
    pub fn unit(
        &self,
        uuid: &str,
        application: &str,
        number: u64,
    ) -> Result<Option<Unit>, BackendError> {
        records::read_unit(self.reader.as_ref(), uuid, application, number)
    }

    /// A backup kept on the controller.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, BackendError> {
        records::read_record(self.reader.as_ref(), &keys::backup_key(id))
    }

    /// Every backup kept on the controller, in id order.
    pub fn backups(&self) -> Result<Vec<BackupRecord>, BackendError> {
        records::read_records(self.reader.as_ref(), keys::BACKUP_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use starling_storage::{MemStore, StateBackend, WriteSet};

    use super::*;

    /// A writer commits `a` and `b` together, always equal; readers read them one after the
    /// other. Consistent reads never see them differ.
    #[test]
    fn consistent_reads_see_one_commit() {
        let store = MemStore::new();
        let gate = Arc::new(CommitGate::default());
        let view = StateView::new(
            Arc::new(store.clone()),
            Arc::new(AtomicU64::new(0)),
            gate.clone(),
            Arc::default(),
            Arc::default(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = std::thread::spawn({
            let (store, gate, stop, written) =
                (store.clone(), gate.clone(), stop.clone(), written.clone());
            move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    n += 1;
                    let value = n.to_be_bytes().to_vec();
                    let writes: WriteSet = [
                        (b"a".to_vec(), Some(value.clone())),
                        (b"b".to_vec(), Some(value)),
                    ]
                    .into();
                    gate.commit(|| store.state_commit(writes)).expect("commit");
                    written.store(n, Ordering::Relaxed);
                }
            }
        });
        // Read until the writer has committed a good number of times while we read (the
        // thread may start late on a loaded machine), bounded in time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut reads = 0u64;
        let mut written_while_reading = 0;
        while reads < 20_000 || written_while_reading < 1_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer committed {written_while_reading} times in 60 s"
            );
            let (a, b) = view.consistent(|v| {
                (
                    v.reader().get(b"a").expect("read"),
                    v.reader().get(b"b").expect("read"),
                )
            });
            assert_eq!(a, b, "two reads saw different commits");
            reads += 1;
            written_while_reading = written.load(Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer");
    }
}
