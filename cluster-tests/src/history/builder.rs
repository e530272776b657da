//! Assembling histories: [`HistoryBuilder`] with explicit times, [`Recorder`] with a clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{History, MigrationResult, Op, OpId, OpKind, Outcome, Ownership};

/// Builds a [`History`] one invocation and one completion at a time, with times given by the
/// caller. Ids are handed out in order starting at 0.
///
/// Misuse — completing an id that was never invoked or is already complete, or completing a
/// read as an ownership question — is a bug in the test or the harness, and panics.
#[derive(Clone, Debug, Default)]
pub struct HistoryBuilder {
    ops: Vec<Op>,
    positions: HashMap<OpId, usize>,
    next_id: OpId,
}

impl HistoryBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `process` invoked `kind` at `time`; the operation stays pending (no
    /// completion, outcome [`Outcome::Unknown`]) until completed.
    pub fn invoke(&mut self, process: u64, time: u64, kind: OpKind) -> OpId {
        self.op(process, kind, time, None, Outcome::Unknown)
    }

    /// Records a whole operation at once: invoked at `invoke`, completed at `complete` (or
    /// never) with `outcome`.
    pub fn op(
        &mut self,
        process: u64,
        kind: OpKind,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> OpId {
        let id = self.next_id;
        self.next_id += 1;
        self.positions.insert(id, self.ops.len());
        self.ops.push(Op {
            id,
            process,
            invoke,
            complete,
            outcome,
            kind,
        });
        id
    }

    /// Records that operation `id` completed at `time` with `outcome`.
    ///
    /// # Panics
    ///
    /// If `id` is unknown or already complete.
    pub fn complete(&mut self, id: OpId, time: u64, outcome: Outcome) {
        let op = self.pending(id);
        op.complete = Some(time);
        op.outcome = outcome;
    }

    /// Records that read `id` (a list, set or log read) completed at `time`, successfully,
    /// returning `values`.
    ///
    /// # Panics
    ///
    /// If `id` is unknown, already complete, or not a read.
    pub fn complete_read<S: Into<String>>(
        &mut self,
        id: OpId,
        time: u64,
        values: impl IntoIterator<Item = S>,
    ) {
        let op = self.pending(id);
        let (OpKind::Read { values: slot, .. }
        | OpKind::ReadSet { values: slot, .. }
        | OpKind::ReadLog { records: slot, .. }) = &mut op.kind
        else {
            panic!("op {id} is not a read: {}", op.kind);
        };
        *slot = values.into_iter().map(Into::into).collect();
        op.complete = Some(time);
        op.outcome = Outcome::Ok;
    }

    /// Records that ownership question `id` completed at `time`, successfully, with the answer
    /// `observed`.
    ///
    /// # Panics
    ///
    /// If `id` is unknown, already complete, or not an ownership question.
    pub fn complete_ownership(&mut self, id: OpId, time: u64, observed: Ownership) {
        let op = self.pending(id);
        let OpKind::Ownership { observed: slot, .. } = &mut op.kind else {
            panic!("op {id} is not an ownership question: {}", op.kind);
        };
        *slot = observed;
        op.complete = Some(time);
        op.outcome = Outcome::Ok;
    }

    /// Records that migration `id` ended at `time` with `result`; the outcome is Ok for
    /// [`Done`](MigrationResult::Done) and [`AbortDone`](MigrationResult::AbortDone) and
    /// Unknown for [`Unknown`](MigrationResult::Unknown).
    ///
    /// # Panics
    ///
    /// If `id` is unknown, already complete, or not a migration.
    pub fn complete_migration(&mut self, id: OpId, time: u64, result: MigrationResult) {
        let op = self.pending(id);
        let OpKind::Migration { result: slot, .. } = &mut op.kind else {
            panic!("op {id} is not a migration: {}", op.kind);
        };
        *slot = result;
        op.complete = Some(time);
        op.outcome = match result {
            MigrationResult::Done | MigrationResult::AbortDone => Outcome::Ok,
            MigrationResult::Unknown => Outcome::Unknown,
        };
    }

    /// The history so far (pending operations included, as never completed).
    pub fn history(&self) -> History {
        History::new(self.ops.clone())
    }

    /// The finished history (pending operations included, as never completed).
    pub fn build(self) -> History {
        History::new(self.ops)
    }

    fn pending(&mut self, id: OpId) -> &mut Op {
        let Some(&position) = self.positions.get(&id) else {
            panic!("op {id} was never invoked");
        };
        let op = &mut self.ops[position];
        assert!(op.complete.is_none(), "op {id} is already complete: {op}");
        op
    }
}

/// A thread-safe recorder for a live harness: clones share one history, and every call stamps
/// its operation with the microseconds elapsed since the recorder was created, read from a
/// monotonic clock ([`Instant`]).
///
/// Call [`invoke`](Recorder::invoke) just before sending a request and one of the `complete`
/// methods just after its answer (or failure) arrives; the clock is read under the recorder's
/// lock, so the recorded interval always contains the real one. Misuse panics, as with
/// [`HistoryBuilder`].
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    builder: Arc<Mutex<HistoryBuilder>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            builder: Arc::default(),
        }
    }

    /// Microseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records that `process` is about to perform `kind`.
    pub fn invoke(&self, process: u64, kind: OpKind) -> OpId {
        let mut builder = self.lock();
        let time = self.now();
        builder.invoke(process, time, kind)
    }

    /// Records that operation `id` just ended with `outcome`.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut builder = self.lock();
        let time = self.now();
        builder.complete(id, time, outcome);
    }

    /// Records that read `id` just succeeded, returning `values`.
    pub fn complete_read<S: Into<String>>(&self, id: OpId, values: impl IntoIterator<Item = S>) {
        let mut builder = self.lock();
        let time = self.now();
        builder.complete_read(id, time, values);
    }

    /// Records that ownership question `id` was just answered `observed`.
    pub fn complete_ownership(&self, id: OpId, observed: Ownership) {
        let mut builder = self.lock();
        let time = self.now();
        builder.complete_ownership(id, time, observed);
    }

    /// Records that migration `id` just ended with `result`.
    pub fn complete_migration(&self, id: OpId, result: MigrationResult) {
        let mut builder = self.lock();
        let time = self.now();
        builder.complete_migration(id, time, result);
    }

    /// A copy of the history so far; operations still pending appear as never completed.
    pub fn history(&self) -> History {
        self.lock().history()
    }

    fn lock(&self) -> MutexGuard<'_, HistoryBuilder> {
        // A panic elsewhere while recording leaves the data intact; keep recording.
        self.builder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
