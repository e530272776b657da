//! The checker: validation of the history, then the per-model rules.
//!
//! Cost: with `n` operations and `L` the total length of all Ok reads, the checker runs in
//! `O(n log n + L)` time, plus `O(c * (k + a))` per model for the deposed-owner rule, where `k`
//! and `a` are the model's ownership claims and acknowledged appends and `c` the number of
//! distinct controllers claiming it (a handful). No rule compares every pair of operations:
//! pairwise real-time questions are answered by sweeping operations in invocation order against
//! those sorted by completion time, and the prefix rules compare each read with one other read.

use std::collections::btree_map::Entry as BTreeEntry;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::{History, Op, OpKind, Outcome};

/// A rule of Starling's model semantics that a history can break. All rules apply per model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Two different controllers claimed the model (Ok observation of `Active` or `Locked`) at
    /// the same epoch. The brief's rule is about two `Active` controllers; `Locked` counts too
    /// because a frozen source still holds its epoch, and a migration's target activates at a
    /// new epoch.
    TwoOwnersOneEpoch,
    /// An ownership claim (`Active` or `Locked`) at epoch `e2` was invoked after another claim at
    /// epoch `e1 > e2` had completed: epochs went backwards in real time. (When both claims are
    /// `Active` by different controllers the more specific [`Rule::StaleOwner`] is reported.)
    EpochRegression,
    /// Controller X was observed `Active` at epoch `e` by an observation invoked after an
    /// observation of a different controller `Active` at epoch `e' > e` had completed: a stale
    /// owner was still serving.
    StaleOwner,
    /// A write acknowledged by a deposed owner. For controller C let `max(C)` be the largest
    /// epoch at which C was ever claimed (Ok `Active` or `Locked` observation, at any time in
    /// the history). The rule is broken when an Ok observation O shows a controller D != C
    /// `Active` at an epoch greater than `max(C)`, and O completed before an append that C
    /// acknowledged (outcome Ok, served by C) was invoked.
    ///
    /// Controllers never claimed for the model are exempt (the history has no epoch to compare
    /// with). A hand-off counts as a claim too: an Ok observation of D `MigratedTo` C shows that
    /// C was activated above every epoch D had been claimed at before that observation was
    /// invoked (a target activates at its source's epoch plus one, and D's redirect is its
    /// latest state), so `max(C)` is at least that epoch plus one even when no observation of C
    /// at its new epoch succeeded (its node may have been cut off for the whole time it owned
    /// the model).
    DeposedOwnerAck,
    /// An acknowledged write is missing from an Ok read that must contain it. The read must
    /// contain every Ok append that completed before the read was invoked, and also every Ok
    /// append that completed before the invocation of an append whose value the read contains
    /// (that value was applied after the missing one).
    LostWrite,
    /// An Ok read contains the same value twice.
    DuplicateInRead,
    /// An Ok read contains a value that no append of that model wrote.
    InventedValue,
    /// An Ok read contains the value of an append whose outcome was Fail.
    FailedWriteVisible,
    /// An Ok read contains a value whose append was invoked after the read completed.
    FutureValue,
    /// Two Ok reads of which neither is a prefix of the other: the list is append-only, so any
    /// two reads, concurrent or not, must agree on their common length.
    ReadsDiverge,
    /// An Ok read R1 completed before an Ok read R2 was invoked, yet R2 is shorter than R1 (a
    /// strict prefix of it): values seen by R1 disappeared.
    ReadRegressed,
    /// An Ok read lists value b before value a although the append of a completed before the
    /// append of b was invoked.
    ReadOrder,
    /// Two Ok set reads ([`OpKind::ReadSet`]) of which neither contains the other: the set only
    /// grows, so any two set reads, concurrent or not, must be ordered by inclusion.
    SetsDiverge,
    /// A write of user U ([`OpKind::Append`] with `user` U) acknowledged although it was invoked
    /// after a revocation of U's write access ([`OpKind::Access`], Ok) had returned and
    /// completed before the next grant to U on the model was invoked: it was authorized on
    /// state older than the revocation.
    WriteAfterRevoke,
    /// A model-log record that was acknowledged ([`OpKind::AppendLog`] Ok) or listed by an Ok
    /// log read is missing from an Ok log read invoked after that completed.
    LogRecordLost,
    /// An Ok log read ([`OpKind::ReadLog`]) lists the same record twice: a re-sent record was
    /// applied again (on the source, or on the target after a migration).
    LogRecordDuplicated,
}

impl Rule {
    /// A short kebab-case name for the rule.
    pub fn name(self) -> &'static str {
        match self {
            Rule::TwoOwnersOneEpoch => "two-owners-one-epoch",
            Rule::EpochRegression => "epoch-regression",
            Rule::StaleOwner => "stale-owner",
            Rule::DeposedOwnerAck => "deposed-owner-ack",
            Rule::LostWrite => "lost-write",
            Rule::DuplicateInRead => "duplicate-in-read",
            Rule::InventedValue => "invented-value",
            Rule::FailedWriteVisible => "failed-write-visible",
            Rule::FutureValue => "future-value",
            Rule::ReadsDiverge => "reads-diverge",
            Rule::ReadRegressed => "read-regressed",
            Rule::ReadOrder => "read-order",
            Rule::SetsDiverge => "sets-diverge",
            Rule::WriteAfterRevoke => "write-after-revoke",
            Rule::LogRecordLost => "log-record-lost",
            Rule::LogRecordDuplicated => "log-record-duplicated",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken rule, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule broken.
    pub rule: Rule,
    /// The model it was broken on.
    pub model: String,
    /// What went wrong, in words.
    pub message: String,
    /// A minimal set of operations (one to three) that together show the conflict, ordered by
    /// invocation time.
    pub witness: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on model {:?}: {}",
            self.rule, self.model, self.message
        )?;
        for op in &self.witness {
            write!(f, "\n  {op}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// Why a history is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MalformedKind {
    /// An operation completed before it was invoked.
    CompleteBeforeInvoke,
    /// An operation with outcome Ok or Fail has no completion time.
    MissingCompletion,
    /// Two operations share an id.
    DuplicateOpId,
    /// Two appends wrote the same value (a client bug: values must be unique).
    DuplicateValue,
}

/// A history that cannot be checked because it is not well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong.
    pub kind: MalformedKind,
    /// What is wrong, in words.
    pub message: String,
    /// The offending operations.
    pub ops: Vec<Op>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed history ({:?}): {}", self.kind, self.message)?;
        for op in &self.ops {
            write!(f, "\n  {op}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Malformed {}

/// Why [`check`] rejected a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// The history itself is not well formed.
    Malformed(Malformed),
    /// The history is well formed but breaks a rule.
    Violation(Violation),
}

impl CheckError {
    /// The violation, if the history was well formed.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckError::Violation(violation) => Some(violation),
            CheckError::Malformed(_) => None,
        }
    }

    /// The malformation, if the history was not well formed.
    pub fn malformed(&self) -> Option<&Malformed> {
        match self {
            CheckError::Malformed(malformed) => Some(malformed),
            CheckError::Violation(_) => None,
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Malformed(malformed) => malformed.fmt(f),
            CheckError::Violation(violation) => violation.fmt(f),
        }
    }
}

impl std::error::Error for CheckError {}

/// What a successful [`check`] looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Operations in the history.
    pub ops: usize,
    /// Distinct models.
    pub models: usize,
    /// Appends, whatever their outcome.
    pub appends: usize,
    /// Ok reads, list and set (the only ones with evidence).
    pub reads: usize,
    /// Ok ownership observations.
    pub ownership_observations: usize,
    /// Migrations, whatever their outcome.
    pub migrations: usize,
    /// Access changes, whatever their outcome.
    pub access_changes: usize,
    /// Ok log reads.
    pub log_reads: usize,
}

/// Checks `history`: first that it is well formed ([`CheckError::Malformed`]), then every rule
/// of [`Rule`] on every model, in model-name order. Returns the first broken rule found, with a
/// witness of one to three operations.
///
/// Per model the rules run in this order: [`Rule::TwoOwnersOneEpoch`], then
/// [`Rule::StaleOwner`] / [`Rule::EpochRegression`], [`Rule::DeposedOwnerAck`]; then, read by
/// read, [`Rule::DuplicateInRead`], [`Rule::InventedValue`], [`Rule::FailedWriteVisible`],
/// [`Rule::FutureValue`] and [`Rule::ReadOrder`]; then [`Rule::LostWrite`],
/// [`Rule::ReadsDiverge`] and [`Rule::ReadRegressed`]. Set reads ([`OpKind::ReadSet`]) come
/// last: the content rules, [`Rule::LostWrite`], [`Rule::SetsDiverge`] and
/// [`Rule::ReadRegressed`]. Then [`Rule::WriteAfterRevoke`], and the log rules
/// ([`Rule::LogRecordDuplicated`], [`Rule::LogRecordLost`]).
pub fn check(history: &History) -> Result<Summary, CheckError> {
    let index = Index::build(&history.ops).map_err(CheckError::Malformed)?;
    for (model, ops) in &index.models {
        let checker = ModelChecker {
            all: &history.ops,
            values: &index.values,
            model,
            ops,
        };
        checker.run().map_err(CheckError::Violation)?;
    }
    Ok(index.summary)
}

/// An Ok observation of `Active` or `Locked`.
#[derive(Clone, Copy, Debug)]
struct Claim<'h> {
    op: usize,
    controller: &'h str,
    epoch: u64,
    active: bool,
}

/// An append of one model.
#[derive(Clone, Copy, Debug)]
struct Append<'h> {
    op: usize,
    controller: &'h str,
}

/// An Ok read of one model.
#[derive(Clone, Copy, Debug)]
struct Read<'h> {
    op: usize,
    values: &'h [String],
}

/// An Ok observation of controller `from` redirecting the model to controller `to`.
#[derive(Clone, Copy, Debug)]
struct Handoff<'h> {
    op: usize,
    from: &'h str,
    to: &'h str,
}

/// The operations of one model that the rules look at, as positions in the history.
#[derive(Debug, Default)]
struct ModelOps<'h> {
    claims: Vec<Claim<'h>>,
    handoffs: Vec<Handoff<'h>>,
    appends: Vec<Append<'h>>,
    reads: Vec<Read<'h>>,
    set_reads: Vec<Read<'h>>,
    /// Access changes, whatever their outcome.
    access: Vec<usize>,
    /// Ok log appends, with their record.
    log_appends: Vec<(usize, &'h str)>,
    /// Ok log reads.
    log_reads: Vec<Read<'h>>,
}

struct Index<'h> {
    /// Every appended value, to the position of its append.
    values: HashMap<&'h str, usize>,
    models: BTreeMap<&'h str, ModelOps<'h>>,
    summary: Summary,
}

impl<'h> Index<'h> {
    fn build(ops: &'h [Op]) -> Result<Self, Malformed> {
        let malformed = |kind, message: String, positions: &[usize]| Malformed {
            kind,
            message,
            ops: positions.iter().map(|&i| ops[i].clone()).collect(),
        };
        let mut ids = HashMap::with_capacity(ops.len());
        let mut values = HashMap::new();
        let mut models: BTreeMap<&str, ModelOps> = BTreeMap::new();
        let mut summary = Summary {
            ops: ops.len(),
            ..Summary::default()
        };
        for (i, op) in ops.iter().enumerate() {
            if let Some(&first) = ids.get(&op.id) {
                return Err(malformed(
                    MalformedKind::DuplicateOpId,
                    format!("two operations have id {}", op.id),
                    &[first, i],
                ));
            }
            ids.insert(op.id, i);
            match op.complete {
                Some(done) if done < op.invoke => {
                    return Err(malformed(
                        MalformedKind::CompleteBeforeInvoke,
                        format!(
                            "op {} completed at {done}, before its invocation at {}",
                            op.id, op.invoke
                        ),
                        &[i],
                    ))
                }
                None if op.outcome != Outcome::Unknown => {
                    return Err(malformed(
                        MalformedKind::MissingCompletion,
                        format!(
                            "op {} has outcome {:?} but never completed",
                            op.id, op.outcome
                        ),
                        &[i],
                    ))
                }
                _ => {}
            }
            let entry = match models.entry(op.kind.model()) {
                BTreeEntry::Vacant(vacant) => vacant.insert(ModelOps::default()),
                BTreeEntry::Occupied(occupied) => occupied.into_mut(),
            };
            match &op.kind {
                OpKind::Append {
                    value, controller, ..
                } => {
                    summary.appends += 1;
                    match values.entry(value.as_str()) {
                        Entry::Occupied(first) => {
                            return Err(malformed(
                                MalformedKind::DuplicateValue,
                                format!("value {value:?} was appended twice"),
                                &[*first.get(), i],
                            ))
                        }
                        Entry::Vacant(vacant) => {
                            vacant.insert(i);
                        }
                    }
                    entry.appends.push(Append { op: i, controller });
                }
                OpKind::Read { values, .. } if op.outcome == Outcome::Ok => {
                    summary.reads += 1;
                    entry.reads.push(Read { op: i, values });
                }
                OpKind::ReadSet { values, .. } if op.outcome == Outcome::Ok => {
                    summary.reads += 1;
                    entry.set_reads.push(Read { op: i, values });
                }
                OpKind::Ownership {
                    controller,
                    observed,
                    ..
                } if op.outcome == Outcome::Ok => {
                    summary.ownership_observations += 1;
                    if let super::Ownership::MigratedTo { controller: to } = observed {
                        entry.handoffs.push(Handoff {
                            op: i,
                            from: controller,
                            to,
                        });
                    }
                    if let Some(epoch) = observed.claimed_epoch() {
                        entry.claims.push(Claim {
                            op: i,
                            controller,
                            epoch,
                            active: matches!(observed, super::Ownership::Active { .. }),
                        });
                    }
                }
                OpKind::Migration { .. } => summary.migrations += 1,
                OpKind::Access { .. } => {
                    summary.access_changes += 1;
                    entry.access.push(i);
                }
                OpKind::AppendLog { record, .. } if op.outcome == Outcome::Ok => {
                    entry.log_appends.push((i, record));
                }
                OpKind::ReadLog { records, .. } if op.outcome == Outcome::Ok => {
                    summary.log_reads += 1;
                    entry.log_reads.push(Read {
                        op: i,
                        values: records,
                    });
                }
                OpKind::Read { .. }
                | OpKind::ReadSet { .. }
                | OpKind::Ownership { .. }
                | OpKind::AppendLog { .. }
                | OpKind::ReadLog { .. } => {}
            }
        }
        summary.models = models.len();
        Ok(Index {
            values,
            models,
            summary,
        })
    }
}

/// The best `Active` claims seen so far, kept for two distinct controllers so that "the best
/// claim by a controller other than X" is always at hand.
#[derive(Default)]
struct TopActive<'h> {
    best: Option<Claim<'h>>,
    runner_up: Option<Claim<'h>>,
}

impl<'h> TopActive<'h> {
    fn add(&mut self, claim: Claim<'h>) {
        match self.best {
            Some(best) if claim.epoch <= best.epoch => {
                let better = self.runner_up.is_none_or(|r| claim.epoch > r.epoch);
                if claim.controller != best.controller && better {
                    self.runner_up = Some(claim);
                }
            }
            Some(best) => {
                if best.controller != claim.controller {
                    self.runner_up = Some(best);
                }
                self.best = Some(claim);
            }
            None => self.best = Some(claim),
        }
    }

    fn best_other_than(&self, controller: &str) -> Option<Claim<'h>> {
        match self.best {
            Some(best) if best.controller != controller => Some(best),
            _ => self.runner_up,
        }
    }
}

struct ModelChecker<'a, 'h> {
    all: &'h [Op],
    values: &'a HashMap<&'h str, usize>,
    model: &'h str,
    ops: &'a ModelOps<'h>,
}

impl<'h> ModelChecker<'_, 'h> {
    fn run(&self) -> Result<(), Violation> {
        self.one_owner_per_epoch()?;
        self.epochs_move_forward()?;
        self.no_ack_from_deposed_owner()?;
        let mut reads = self.ops.reads.clone();
        reads.sort_by_key(|read| self.order_key(read.op));
        for read in &reads {
            self.read_contents(read)?;
            self.read_order(read)?;
        }
        self.no_lost_writes(&reads)?;
        self.reads_form_a_chain(&reads)?;
        self.reads_never_shrink(&reads)?;
        let mut sets = self.ops.set_reads.clone();
        sets.sort_by_key(|read| self.order_key(read.op));
        for read in &sets {
            self.read_contents(read)?;
        }
        self.no_lost_writes(&sets)?;
        self.sets_form_a_chain(&sets)?;
        self.sets_never_shrink(&sets)?;
        self.no_write_after_revoke()?;
        self.log_kept_once()
    }

    /// For each Ok revocation, the window from its return to the invocation of the next grant
    /// to the same user (by invocation time; open when there is none); an acknowledged write of
    /// that user inside the window breaks [`Rule::WriteAfterRevoke`].
    fn no_write_after_revoke(&self) -> Result<(), Violation> {
        let mut changes = self.ops.access.clone();
        changes.sort_by_key(|&c| self.order_key(c));
        for (n, &revoke) in changes.iter().enumerate() {
            let revoke_op = self.op(revoke);
            let OpKind::Access {
                user,
                granted: false,
                ..
            } = &revoke_op.kind
            else {
                continue;
            };
            let Some(revoked_at) = revoke_op
                .complete
                .filter(|_| revoke_op.outcome == Outcome::Ok)
            else {
                continue;
            };
            let grant = changes[n + 1..].iter().copied().find(|&c| {
                matches!(&self.op(c).kind, OpKind::Access { user: u, granted: true, .. } if u == user)
            });
            let granted_at = grant.map(|g| self.op(g).invoke);
            let late = self.ops.appends.iter().find(|append| {
                let op = self.op(append.op);
                let by_user = matches!(&op.kind, OpKind::Append { user: Some(u), .. } if u == user);
                let before_grant = match (granted_at, op.complete) {
                    (None, _) => true,
                    (Some(granted), Some(done)) => done < granted,
                    (Some(_), None) => false,
                };
                by_user && op.outcome == Outcome::Ok && op.invoke > revoked_at && before_grant
            });
            if let Some(append) = late {
                let mut witness = vec![revoke, append.op];
                witness.extend(grant);
                return Err(self.violation(
                    Rule::WriteAfterRevoke,
                    format!(
                        "a write of {user} was acknowledged although it began after the \
                         revocation of {user}'s write access returned{}",
                        if grant.is_some() {
                            " and ended before the next grant was asked for"
                        } else {
                            " (never granted again)"
                        }
                    ),
                    &witness,
                ));
            }
        }
        Ok(())
    }

    /// Every Ok log read lists each record at most once, and every record acknowledged or
    /// listed by an Ok log read completed before it was invoked. Sweeps the reads in invocation
    /// order against the appends and reads sorted by completion, keeping every record known by
    /// then: `O(r * k)` for `r` log reads and `k` records.
    fn log_kept_once(&self) -> Result<(), Violation> {
        let mut reads = self.ops.log_reads.clone();
        reads.sort_by_key(|read| self.order_key(read.op));
        for read in &reads {
            let mut seen = HashSet::with_capacity(read.values.len());
            if let Some(twice) = read.values.iter().find(|r| !seen.insert(r.as_str())) {
                return Err(self.violation(
                    Rule::LogRecordDuplicated,
                    format!("the log read lists record {twice:?} twice"),
                    &[read.op],
                ));
            }
        }
        // (completion, op, record) of everything that makes a record known.
        let mut known_at: Vec<(u64, usize, &str)> = self
            .ops
            .log_appends
            .iter()
            .map(|&(op, record)| (self.completed(op), op, record))
            .collect();
        for read in &reads {
            for record in read.values {
                known_at.push((self.completed(read.op), read.op, record.as_str()));
            }
        }
        known_at.sort_by_key(|&(at, op, _)| (at, self.op(op).id));
        let mut known = known_at.iter().peekable();
        // Each record with the first operation that made it known.
        let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
        for read in &reads {
            let invoke = self.op(read.op).invoke;
            while let Some(&(_, op, record)) = known.next_if(|(at, _, _)| *at < invoke) {
                kept.entry(record).or_insert(op);
            }
            let listed: HashSet<&str> = read.values.iter().map(String::as_str).collect();
            if let Some((record, &by)) = kept.iter().find(|(r, _)| !listed.contains(*r)) {
                let how = if matches!(self.op(by).kind, OpKind::AppendLog { .. }) {
                    "was acknowledged"
                } else {
                    "was listed by a log read"
                };
                return Err(self.violation(
                    Rule::LogRecordLost,
                    format!("record {record:?} {how} before this log read began, which misses it"),
                    &[by, read.op],
                ));
            }
        }
        Ok(())
    }

    fn op(&self, position: usize) -> &'h Op {
        &self.all[position]
    }

    fn order_key(&self, position: usize) -> (u64, u64) {
        let op = self.op(position);
        (op.invoke, op.id)
    }

    /// When the operation completed; never-completed operations sort last.
    fn completed(&self, position: usize) -> u64 {
        self.op(position).complete.unwrap_or(u64::MAX)
    }

    fn violation(&self, rule: Rule, message: String, witness: &[usize]) -> Violation {
        let mut positions = witness.to_vec();
        positions.sort_by_key(|&p| self.order_key(p));
        positions.dedup();
        Violation {
            rule,
            model: self.model.to_owned(),
            message,
            witness: positions.iter().map(|&p| self.op(p).clone()).collect(),
        }
    }

    /// The append that wrote `value` (checked to exist by `read_contents` before use).
    fn append_of(&self, value: &str) -> usize {
        self.values[value]
    }

    fn one_owner_per_epoch(&self) -> Result<(), Violation> {
        let mut claims = self.ops.claims.clone();
        claims.sort_by_key(|claim| self.order_key(claim.op));
        let mut owners: HashMap<u64, Claim> = HashMap::new();
        for claim in claims {
            match owners.entry(claim.epoch) {
                Entry::Vacant(vacant) => {
                    vacant.insert(claim);
                }
                Entry::Occupied(first) if first.get().controller != claim.controller => {
                    let first = first.get();
                    return Err(self.violation(
                        Rule::TwoOwnersOneEpoch,
                        format!(
                            "controllers {} and {} both claimed epoch {}",
                            first.controller, claim.controller, claim.epoch
                        ),
                        &[first.op, claim.op],
                    ));
                }
                Entry::Occupied(_) => {}
            }
        }
        Ok(())
    }

    /// Sweeps the claims in invocation order, folding in each claim once it has completed
    /// before the current invocation.
    fn epochs_move_forward(&self) -> Result<(), Violation> {
        let mut by_invoke = self.ops.claims.clone();
        by_invoke.sort_by_key(|claim| self.order_key(claim.op));
        let mut by_complete = self.ops.claims.clone();
        by_complete.sort_by_key(|claim| (self.completed(claim.op), self.op(claim.op).id));
        let mut done = by_complete.iter().peekable();
        let mut highest: Option<Claim> = None;
        let mut active = TopActive::default();
        for claim in &by_invoke {
            let invoke = self.op(claim.op).invoke;
            while let Some(earlier) = done.next_if(|c| self.completed(c.op) < invoke) {
                if highest.is_none_or(|h| earlier.epoch > h.epoch) {
                    highest = Some(*earlier);
                }
                if earlier.active {
                    active.add(*earlier);
                }
            }
            if claim.active {
                if let Some(other) = active.best_other_than(claim.controller) {
                    if other.epoch > claim.epoch {
                        return Err(self.violation(
                            Rule::StaleOwner,
                            format!(
                                "{} was seen active at epoch {} after {} had been seen active \
                                 at epoch {}",
                                claim.controller, claim.epoch, other.controller, other.epoch
                            ),
                            &[other.op, claim.op],
                        ));
                    }
                }
            }
            if let Some(high) = highest {
                if high.epoch > claim.epoch {
                    return Err(self.violation(
                        Rule::EpochRegression,
                        format!(
                            "{} was seen at epoch {} after {} had been seen at epoch {}",
                            claim.controller, claim.epoch, high.controller, high.epoch
                        ),
                        &[high.op, claim.op],
                    ));
                }
            }
        }
        Ok(())
    }

    /// The observed claims plus one implied claim per hand-off: D observed `MigratedTo` C
    /// implies C held an epoch above every claim of D (observed or implied) that completed
    /// before the observation was invoked. The implied claim is not `active` (it says nothing of
    /// when C served) and is witnessed by the hand-off observation.
    fn claims_with_handoffs(&self) -> Vec<Claim<'h>> {
        let mut known = self.ops.claims.clone();
        let mut handoffs = self.ops.handoffs.clone();
        handoffs.sort_by_key(|handoff| self.order_key(handoff.op));
        for handoff in handoffs {
            let invoke = self.op(handoff.op).invoke;
            let before = known
                .iter()
                .filter(|c| c.controller == handoff.from && self.completed(c.op) < invoke)
                .map(|c| c.epoch)
                .max();
            if let Some(epoch) = before {
                known.push(Claim {
                    op: handoff.op,
                    controller: handoff.to,
                    epoch: epoch + 1,
                    active: false,
                });
            }
        }
        known
    }

    fn no_ack_from_deposed_owner(&self) -> Result<(), Violation> {
        // Each controller's highest claim over the whole history, observed or implied by a
        // hand-off to it.
        let mut highest: BTreeMap<&str, Claim> = BTreeMap::new();
        for claim in self.claims_with_handoffs() {
            let slot = highest.entry(claim.controller).or_insert(claim);
            if claim.epoch > slot.epoch {
                *slot = claim;
            }
        }
        let mut appends: Vec<Append> = self
            .ops
            .appends
            .iter()
            .filter(|append| self.op(append.op).outcome == Outcome::Ok)
            .copied()
            .collect();
        appends.sort_by_key(|append| self.order_key(append.op));
        for (controller, own) in &highest {
            // The first observation to complete that shows another controller active above
            // every epoch this one ever held.
            let deposed_by = self
                .ops
                .claims
                .iter()
                .filter(|c| c.active && c.controller != *controller && c.epoch > own.epoch)
                .min_by_key(|c| (self.completed(c.op), self.op(c.op).id));
            let Some(deposed_by) = deposed_by else {
                continue;
            };
            let deposed_at = self.completed(deposed_by.op);
            let late_ack = appends
                .iter()
                .find(|a| a.controller == *controller && deposed_at < self.op(a.op).invoke);
            if let Some(ack) = late_ack {
                return Err(self.violation(
                    Rule::DeposedOwnerAck,
                    format!(
                        "{controller} (never seen above epoch {}) acknowledged a write invoked \
                         after {} had been seen active at epoch {}",
                        own.epoch, deposed_by.controller, deposed_by.epoch
                    ),
                    &[own.op, deposed_by.op, ack.op],
                ));
            }
        }
        Ok(())
    }

    /// Duplicates, invented values, failed writes and values from the future in one read.
    fn read_contents(&self, read: &Read) -> Result<(), Violation> {
        let read_op = self.op(read.op);
        let mut seen = HashSet::with_capacity(read.values.len());
        for value in read.values {
            if !seen.insert(value.as_str()) {
                return Err(self.violation(
                    Rule::DuplicateInRead,
                    format!("the read lists {value:?} twice"),
                    &[read.op],
                ));
            }
            let Some(&append) = self.values.get(value.as_str()) else {
                return Err(self.violation(
                    Rule::InventedValue,
                    format!("the read lists {value:?}, which nothing appended"),
                    &[read.op],
                ));
            };
            let append_op = self.op(append);
            if append_op.kind.model() != self.model {
                return Err(self.violation(
                    Rule::InventedValue,
                    format!(
                        "the read lists {value:?}, which was appended to model {:?}",
                        append_op.kind.model()
                    ),
                    &[append, read.op],
                ));
            }
            if append_op.outcome == Outcome::Fail {
                return Err(self.violation(
                    Rule::FailedWriteVisible,
                    format!("the read lists {value:?}, whose append failed"),
                    &[append, read.op],
                ));
            }
            if read_op.precedes(append_op) {
                return Err(self.violation(
                    Rule::FutureValue,
                    format!("the read lists {value:?}, whose append began after the read ended"),
                    &[append, read.op],
                ));
            }
        }
        Ok(())
    }

    /// Scans the read keeping the latest-invoked append so far; a value whose append completed
    /// before that invocation is out of order.
    fn read_order(&self, read: &Read) -> Result<(), Violation> {
        let mut latest: Option<usize> = None;
        for value in read.values {
            let append = self.append_of(value);
            if let Some(later) = latest {
                if self.op(append).precedes(self.op(later)) {
                    return Err(self.violation(
                        Rule::ReadOrder,
                        format!(
                            "the read lists {:?} before {value:?}, but the append of {value:?} \
                             completed before the append of {:?} began",
                            self.value_of(later),
                            self.value_of(later),
                        ),
                        &[append, later, read.op],
                    ));
                }
            }
            if latest.is_none_or(|l| self.op(append).invoke > self.op(l).invoke) {
                latest = Some(append);
            }
        }
        Ok(())
    }

    fn value_of(&self, append: usize) -> &'h str {
        match &self.op(append).kind {
            OpKind::Append { value, .. } => value,
            other => panic!("op {} is not an append: {other}", self.op(append).id),
        }
    }

    /// A read must contain every Ok append that completed before a moment `T`: the later of the
    /// read's invocation and the invocation of the latest-invoked append it contains. Counting
    /// against the sorted completion times keeps this linear in the read's length; the missing
    /// value is only searched for once a count comes up short.
    fn no_lost_writes(&self, reads: &[Read]) -> Result<(), Violation> {
        let mut acked: Vec<usize> = self
            .ops
            .appends
            .iter()
            .filter(|a| self.op(a.op).outcome == Outcome::Ok)
            .map(|a| a.op)
            .collect();
        acked.sort_by_key(|&a| (self.completed(a), self.op(a).id));
        let acked_at: Vec<u64> = acked.iter().map(|&a| self.completed(a)).collect();
        for read in reads {
            let read_op = self.op(read.op);
            let mut horizon = read_op.invoke;
            let mut horizon_append = None;
            for value in read.values {
                let append = self.append_of(value);
                if self.op(append).invoke > horizon {
                    horizon = self.op(append).invoke;
                    horizon_append = Some(append);
                }
            }
            let required = acked_at.partition_point(|&at| at < horizon);
            let present = read
                .values
                .iter()
                .map(|value| self.op(self.append_of(value)))
                .filter(|op| op.outcome == Outcome::Ok && op.complete.is_some_and(|c| c < horizon))
                .count();
            if present >= required {
                continue;
            }
            let listed: HashSet<&str> = read.values.iter().map(String::as_str).collect();
            let missing = acked[..required]
                .iter()
                .copied()
                .find(|&a| !listed.contains(self.value_of(a)))
                .expect("a short count means some required value is missing");
            let value = self.value_of(missing);
            if self.op(missing).precedes(read_op) {
                return Err(self.violation(
                    Rule::LostWrite,
                    format!(
                        "{value:?} was acknowledged before the read began, but the read \
                         misses it"
                    ),
                    &[missing, read.op],
                ));
            }
            // Otherwise the missing append completed before the latest-invoked listed append
            // began, which is what moved the horizon past the read's invocation.
            let later = horizon_append.expect("the horizon moved past the read's invocation");
            return Err(self.violation(
                Rule::LostWrite,
                format!(
                    "{value:?} was acknowledged before the append of {:?} began, and the read \
                     lists {:?} but misses {value:?}",
                    self.value_of(later),
                    self.value_of(later),
                ),
                &[missing, later, read.op],
            ));
        }
        Ok(())
    }

    /// Every read must be a prefix of the longest one (that makes all of them prefixes of one
    /// another).
    fn reads_form_a_chain(&self, reads: &[Read]) -> Result<(), Violation> {
        let Some(longest) = reads.iter().rev().max_by_key(|read| read.values.len()) else {
            return Ok(());
        };
        for read in reads {
            if !longest.values.starts_with(read.values) {
                let common = read
                    .values
                    .iter()
                    .zip(longest.values)
                    .take_while(|(a, b)| a == b)
                    .count();
                // `read` is no longer than `longest`, so both have a value at `common`.
                return Err(self.violation(
                    Rule::ReadsDiverge,
                    format!(
                        "neither read is a prefix of the other: at position {common} read op {} \
                         has {:?} where read op {} has {:?}",
                        self.op(read.op).id,
                        read.values[common],
                        self.op(longest.op).id,
                        longest.values[common],
                    ),
                    &[read.op, longest.op],
                ));
            }
        }
        Ok(())
    }

    /// Sweeps reads in invocation order against the longest read completed before each (the
    /// reads are known to form a chain, so length is enough).
    fn reads_never_shrink(&self, reads: &[Read]) -> Result<(), Violation> {
        let mut by_complete = reads.to_vec();
        by_complete.sort_by_key(|read| (self.completed(read.op), self.op(read.op).id));
        let mut done = by_complete.iter().peekable();
        let mut longest: Option<&Read> = None;
        for read in reads {
            let invoke = self.op(read.op).invoke;
            while let Some(earlier) = done.next_if(|r| self.completed(r.op) < invoke) {
                if longest.is_none_or(|l| earlier.values.len() > l.values.len()) {
                    longest = Some(earlier);
                }
            }
            if let Some(earlier) = longest {
                if earlier.values.len() > read.values.len() {
                    return Err(self.violation(
                        Rule::ReadRegressed,
                        format!(
                            "read op {} (of {} values) began after read op {} (of {} values) \
                             had ended; {:?} disappeared",
                            self.op(read.op).id,
                            read.values.len(),
                            self.op(earlier.op).id,
                            earlier.values.len(),
                            &earlier.values[read.values.len()..]
                        ),
                        &[earlier.op, read.op],
                    ));
                }
            }
        }
        Ok(())
    }

    /// Orders the set reads by size; each must be contained in the next (then all are ordered
    /// by inclusion). Values are known to be unique within a read (`read_contents`).
    fn sets_form_a_chain(&self, sets: &[Read]) -> Result<(), Violation> {
        let mut by_size = sets.to_vec();
        by_size.sort_by_key(|read| (read.values.len(), self.order_key(read.op)));
        for pair in by_size.windows(2) {
            let (small, large) = (pair[0], pair[1]);
            let larger: HashSet<&str> = large.values.iter().map(String::as_str).collect();
            if let Some(missing) = small.values.iter().find(|v| !larger.contains(v.as_str())) {
                return Err(self.violation(
                    Rule::SetsDiverge,
                    format!(
                        "neither set read contains the other: read op {} has {missing:?}, which \
                         the larger read op {} lacks",
                        self.op(small.op).id,
                        self.op(large.op).id,
                    ),
                    &[small.op, large.op],
                ));
            }
        }
        Ok(())
    }

    /// Sweeps set reads in invocation order against the largest set read completed before each
    /// (the sets are known to form a chain, so size is enough).
    fn sets_never_shrink(&self, sets: &[Read]) -> Result<(), Violation> {
        let mut by_complete = sets.to_vec();
        by_complete.sort_by_key(|read| (self.completed(read.op), self.op(read.op).id));
        let mut done = by_complete.iter().peekable();
        let mut largest: Option<&Read> = None;
        for read in sets {
            let invoke = self.op(read.op).invoke;
            while let Some(earlier) = done.next_if(|r| self.completed(r.op) < invoke) {
                if largest.is_none_or(|l| earlier.values.len() > l.values.len()) {
                    largest = Some(earlier);
                }
            }
            if let Some(earlier) = largest {
                if earlier.values.len() > read.values.len() {
                    let now: HashSet<&str> = read.values.iter().map(String::as_str).collect();
                    let gone: Vec<&String> = earlier
                        .values
                        .iter()
                        .filter(|v| !now.contains(v.as_str()))
                        .collect();
                    return Err(self.violation(
                        Rule::ReadRegressed,
                        format!(
                            "set read op {} (of {} values) began after set read op {} (of {} \
                             values) had ended; {gone:?} disappeared",
                            self.op(read.op).id,
                            read.values.len(),
                            self.op(earlier.op).id,
                            earlier.values.len(),
                        ),
                        &[earlier.op, read.op],
                    ));
                }
            }
        }
        Ok(())
    }
}
