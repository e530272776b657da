//! `StateView`: the daemon's cheap, cloneable, read-only view of the applied state, the same
//! for both backends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use starling_proto::command::{Command, CommandResult};
use starling_proto::model::{
    BackupRecord, Blob, LogRecord, Machine, Model, ModelDescription, Unit, User,
};
use starling_storage::keys::DesiredInput;
use starling_storage::state::{read_effective_config, WriteSet};
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
/// built it (the state machine exists first), and the record of where each model's
/// desired-state inputs last changed.
pub(crate) struct ApplyObservers {
    observer: RwLock<Option<ApplyObserver>>,
    pub(crate) desired: DesiredChanges,
}

impl ApplyObservers {
    /// Observers of a state machine whose state was loaded at applied index `applied`.
    pub(crate) fn new(applied: u64) -> Self {
        ApplyObservers {
            observer: RwLock::new(None),
            desired: DesiredChanges::new(applied),
        }
    }

    /// Tells the observer about `command`, applied with `result`.
    pub(crate) fn applied(&self, command: &Command, result: &CommandResult) {
        let observer = self.observer.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(observer) = observer.as_ref() {
            observer(command, result);
        }
    }
}

/// The applied index at which each model's desired-state inputs (the records
/// `keys::desired_input` names) last changed, so the agents' watch recomputes a model's desired
/// state only when one of them did, not at every applied index: a model written to hundreds of
/// times a second (its config, its status history) would otherwise have its whole description
/// read and recomputed for every commit on every node its agents watch from.
///
/// Recorded from each applied batch's writes *before* they are committed, so a change is known
/// here before `applied_index` can reach it: a desired state computed from a read that started
/// at applied index `i` (which sees every commit up to `i`) is current exactly when `i` is at
/// least `changed_at`. Kept in memory only: a node starts with everything changed at its loaded
/// index, and an installed snapshot resets it the same way.
#[derive(Debug)]
pub(crate) struct DesiredChanges {
    /// Every model's inputs changed at most here (the index the state was loaded or replaced
    /// at, or the last controller-config change); `models` holds only later changes.
    floor: AtomicU64,
    models: Mutex<HashMap<String, u64>>,
}

impl DesiredChanges {
    fn new(floor: u64) -> Self {
        DesiredChanges {
            floor: AtomicU64::new(floor),
            models: Mutex::new(HashMap::new()),
        }
    }

    /// Notes `writes`, which the apply of entries up to `index` is about to commit.
    pub(crate) fn record(&self, index: u64, writes: &WriteSet) {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        for key in writes.keys() {
            match keys::desired_input(key) {
                Some(DesiredInput::Model(uuid)) => match models.get_mut(uuid) {
                    Some(at) => *at = index,
                    None => {
                        models.insert(uuid.to_owned(), index);
                    }
                },
                Some(DesiredInput::AllModels) => {
                    self.floor.fetch_max(index, Ordering::SeqCst);
                    models.retain(|_, at| *at > index);
                }
                None => {}
            }
        }
    }

    /// The whole state was replaced at `index` (an installed snapshot).
    pub(crate) fn reset(&self, index: u64) {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        self.floor.store(index, Ordering::SeqCst);
        models.clear();
    }

    fn changed_at(&self, uuid: &str) -> u64 {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = self.floor.load(Ordering::SeqCst);
        models.get(uuid).map_or(floor, |at| (*at).max(floor))
    }
}

/// This node's applied index, and a signal to wait on it. Waiters wake when the applied index
/// moves, and for nothing else: openraft's metrics wait, which the watches used before, woke
/// every waiter (and cloned the metrics for it) at every change of any Raft metric; with ten
/// thousand agents' watches on a node, those wake-ups topped its profile.
#[derive(Debug)]
pub(crate) struct AppliedIndex {
    value: AtomicU64,
    changed: tokio::sync::watch::Sender<u64>,
}

impl AppliedIndex {
    pub(crate) fn new(applied: u64) -> Self {
        AppliedIndex {
            value: AtomicU64::new(applied),
            changed: tokio::sync::watch::Sender::new(applied),
        }
    }

    pub(crate) fn load(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Publishes `index` (after the state it names is readable) and wakes the waiters.
    pub(crate) fn store(&self, index: u64) {
        self.value.store(index, Ordering::Release);
        self.changed.send_replace(index);
    }
}

/// Read-only access to the applied state. Each read sees whole applied batches, never half of
/// one; [`StateView::consistent`] makes several reads see the same applied state.
#[derive(Clone)]
pub struct StateView {
    reader: Arc<dyn StateRead + Send + Sync>,
    applied_index: Arc<AppliedIndex>,
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
        applied_index: Arc<AppliedIndex>,
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
        self.applied_index.load()
    }

    /// Waits until the applied index is past `index`, at most `timeout`; returns the applied
    /// index then.
    pub async fn wait_applied_past(&self, index: u64, timeout: std::time::Duration) -> u64 {
        let mut changed = self.applied_index.changed.subscribe();
        let _ = tokio::time::timeout(timeout, changed.wait_for(|now| *now > index)).await;
        self.applied_index()
    }

    /// The applied index at which model `uuid`'s desired-state inputs (its machines,
    /// applications, units and relations, and the controller config; `keys::desired_input`)
    /// last changed, or an earlier one this node cannot tell apart from it (its start, an
    /// installed snapshot). A desired state computed from reads that began at applied index `i`
    /// is current while `i` is at least this.
    pub fn desired_inputs_changed_at(&self, uuid: &str) -> u64 {
        self.observers.desired.changed_at(uuid)
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

    /// A waiter wakes when the applied index moves past its index, not before; without a move
    /// it returns at its timeout with the index unchanged.
    #[tokio::test]
    async fn waiting_for_the_applied_index_wakes_on_a_move_past_it() {
        let applied = Arc::new(AppliedIndex::new(5));
        let view = StateView::new(
            Arc::new(MemStore::new()),
            applied.clone(),
            Arc::new(CommitGate::default()),
            Arc::new(WriteTimeline::default()),
            Arc::new(ApplyObservers::new(5)),
        );
        let short = std::time::Duration::from_millis(20);
        assert_eq!(
            view.wait_applied_past(5, short).await,
            5,
            "nothing applied: timeout"
        );
        assert_eq!(
            view.wait_applied_past(4, short).await,
            5,
            "already past: at once"
        );
        let waiter = {
            let view = view.clone();
            tokio::spawn(async move {
                view.wait_applied_past(6, std::time::Duration::from_secs(30))
                    .await
            })
        };
        applied.store(6);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "6 is not past 6");
        applied.store(7);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woke well before its own timeout")
            .expect("joins");
        assert_eq!(woke, 7);
    }

    /// A writer commits `a` and `b` together, always equal; readers read them one after the
    /// other. Consistent reads never see them differ.
    #[test]
    fn consistent_reads_see_one_commit() {
        let store = MemStore::new();
        let gate = Arc::new(CommitGate::default());
        let view = StateView::new(
            Arc::new(store.clone()),
            Arc::new(AppliedIndex::new(0)),
            gate.clone(),
            Arc::default(),
            Arc::new(ApplyObservers::new(0)),
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

    fn writes(keys: &[Vec<u8>]) -> WriteSet {
        keys.iter()
            .map(|k| (k.clone(), Some(b"v".to_vec())))
            .collect()
    }

    /// A model's desired-state inputs count as changed at the last apply that wrote one of
    /// them (or changed the controller config), never at one that wrote only other keys; a
    /// node knows nothing before its loaded index or an installed snapshot.
    #[test]
    fn desired_inputs_change_only_with_their_records() {
        let changes = DesiredChanges::new(10);
        assert_eq!(changes.changed_at("a"), 10, "unknown before the load");
        changes.record(11, &writes(&[keys::unit_key("a", "web", 0)]));
        changes.record(12, &writes(&[keys::model_record_key("a")]));
        changes.record(13, &writes(&[keys::history_key("a", "unit-web-0")]));
        changes.record(14, &writes(&[keys::machine_key("b", 0)]));
        assert_eq!(
            changes.changed_at("a"),
            11,
            "config and status writes change nothing"
        );
        assert_eq!(changes.changed_at("b"), 14);
        assert_eq!(changes.changed_at("c"), 10);

        changes.record(15, &writes(&[keys::config_key("agent-heartbeat-interval")]));
        for model in ["a", "b", "c"] {
            assert_eq!(
                changes.changed_at(model),
                15,
                "the heartbeat is in every model's"
            );
        }
        changes.record(16, &writes(&[keys::relation_key("b", 1)]));
        assert_eq!(changes.changed_at("b"), 16);

        changes.reset(40);
        for model in ["a", "b", "c"] {
            assert_eq!(
                changes.changed_at(model),
                40,
                "a snapshot replaced everything"
            );
        }
    }
}
