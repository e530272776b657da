//! A stateright model of the pre-copy protocol (`docs/migration.md`): PRECOPY, CATCHUP, the
//! fence and held writes, with one model moving from a source controller to a target controller, over an unordered network that loses
//! and duplicates messages, while either controller's leader may crash and timers fire early.
//! The model stays writable while it is copied (PRECOPY) and its changes are streamed (CATCHUP);
//! the fence (QUIESCE) locks it, holds the writes that arrive, sends the last changes and seals
//! the target. The checker explores every interleaving within a fault budget and checks the
//! safety rules (at most one owner, one decision per migration id, an abort leaves the source as
//! the lock found it, the model is never lost, the target activates every change, every write
//! applies exactly once on exactly one controller) and that every migration ends once the
//! faults stop.
//!
//! The rules are a small re-statement of the pure decision code in
//! `starling_storage::model::migration` (`Phase`, `apply_transition`, `next_action`,
//! `target_activate_decision`, `target_drop_decision`, `target_leftover_decision`,
//! `source_answer`); the function comments here name the function each rule mirrors.
//! Simplifications: LOGTRANSFER and REAP are folded into DONE (REAPFAILED is not modelled);
//! agents always validate; the copy is one message, so an import is complete once it exists;
//! the model's data is a version that every write increments, so the change feed up to a
//! version is that version and the digest of a copy is its version; the fence may start at any
//! lag (a lag bound at least the write budget); a held write waits until the fence ends (the
//! hold's bound is not modelled); a precheck failure and an operator abort are both the same
//! budgeted "Timeout" (any pre-SUCCESS phase → ABORT); epochs and model data are small numbers.
//! The model does not migrate the model back, so the source's epoch never changes.
//!
//! What this model leaves to [`crate::protocol_model`] (three controllers, log transfer,
//! onward and return migrations, destroy and re-create, backups and restores, staging request
//! ids, refused commits): that model still runs the lock-first phase sequence (QUIESCE,
//! IMPORT, VALIDATION); the pre-copy phases are checked here.
//!
//! # Faults and timers, and why the search is finite
//!
//! Every message delivery consumes the message. Faults cost one unit of a shared budget
//! ([`ProtocolModel::fault_budget`]): dropping a message, delivering a message and keeping a
//! copy (duplication), a crash of either side's leader (its volatile state is lost; its Raft
//! log is not), a phase deadline or an operator abort before SUCCESS (→ ABORT), and ABORT
//! giving up on the target's drop acknowledgement.
//!
//! Retry timers are free, but only fire when a retry is needed: the master resends a request
//! only when neither the request nor its reply is in flight and it has not observed the answer,
//! and the target asks the source about its import only when the answer would differ from the
//! last one it heard. A retry that fires earlier only duplicates a message that is still in
//! flight (a budgeted duplication covers it) or repeats a question whose answer the target
//! already knows (a step that returns to the same state). With that reduction every free step
//! makes progress, so the state graph is acyclic ([`ProtocolModel::find_cycle`] checks it), every
//! path ends, and stateright's `eventually` (checked on the paths' last states) means what it
//! says: after the last fault, every migration ends.
//!
//! # Properties and planted bugs
//!
//! `always`: [`AT_MOST_ONE_OWNER`], [`ENDED_WITH_ONE_OWNER`], [`ONE_DECISION`],
//! [`ABORT_RESTORES_SOURCE`], [`NEVER_LOST`], [`NO_LOST_WRITE`], [`EVERY_WRITE_ONCE`]; `eventually`:
//! [`EVERY_MIGRATION_ENDS`]; `sometimes` (so the model is not vacuous): [`EXAMPLES`]. Each of
//! [`Bugs`] breaks one rule of the protocol, and `tests/precopy_model.rs` shows which property
//! catches it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use stateright::{Model, Property};

/// Which attempt to migrate the model a migration is: its id is `<model-uuid>:<attempt>`, and
/// the model's uuid is the same for every attempt here. Attempts count from 1.
pub type Attempt = u8;

/// Planted bugs that the properties must catch (issue 6, item 5). All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bugs {
    /// The target activates an import as soon as it is imported, without waiting for the
    /// source's Activate (so before the SUCCESS decision).
    pub activate_before_decision: bool,
    /// The source's phase deadline may still fire in SUCCESS and abort the migration.
    pub abort_after_success: bool,
    /// The source keeps the phases after the lock only in the master's memory: a crash of the
    /// source leader loses them and the new master resumes at QUIESCE.
    pub forget_phase_on_crash: bool,
    /// The target drops its import when the source does not answer its question about it.
    pub drop_on_silence: bool,
    /// The lock does not make the model read-only: clients may still write to it.
    pub write_while_locked: bool,
    /// The target has no leftover rule: it never asks the source about an import that nobody
    /// finishes, so an import left behind by an abort stays for ever.
    pub keep_leftover_imports: bool,
    /// The fence seals the target where it is, without the changes made since the last batch,
    /// and the master takes the source's digest for the target's (`fence-before-last-change`).
    pub fence_before_last_change: bool,
}

/// The persisted step of a migration, as `storage::model::migration::Phase` without
/// LOGTRANSFER, REAP and REAPFAILED (folded into DONE) and without the lock-first protocol's
/// IMPORT and VALIDATION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The record exists; nothing is locked.
    Precheck,
    /// The model stays writable; the source sends a copy, the target imports it.
    Precopy,
    /// The model stays writable; the source streams the changes made since the copy.
    Catchup,
    /// The fence: the model is locked, writes are held; the last changes go to the target,
    /// which seals its import; the digests are compared.
    Quiesce,
    /// The transfer is committed; the source model is a redirect. Point of no return.
    Success,
    /// Terminal: the model lives on the target.
    Done,
    /// A failure before SUCCESS: the target is told to drop its import.
    Abort,
    /// Terminal: the source model is unlocked, as it was.
    AbortDone,
}

impl Phase {
    /// Whether `self → to` is an edge of the phase graph (`Phase::can_transition_to`).
    pub fn can_transition_to(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Precheck, Precopy | Abort)
                | (Precopy, Catchup | Abort)
                | (Catchup, Quiesce | Abort)
                | (Quiesce, Success | Abort)
                | (Success, Done)
                | (Abort, AbortDone)
        )
    }

    /// SUCCESS and DONE: the transfer is committed and can never be aborted.
    pub fn is_committed(self) -> bool {
        matches!(self, Phase::Success | Phase::Done)
    }

    /// ABORT and ABORTDONE.
    pub fn is_aborting(self) -> bool {
        matches!(self, Phase::Abort | Phase::AbortDone)
    }

    /// DONE and ABORTDONE: nothing more happens in this migration.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::AbortDone)
    }
}

/// One migration record on the source, persisted in its Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationRecord {
    /// The current phase.
    pub phase: Phase,
    /// The phase ABORT was entered from.
    pub aborted_from: Option<Phase>,
    /// The source's digest at the lock (its data then), recorded with the lock.
    pub source_digest: Option<u8>,
}

impl MigrationRecord {
    fn new() -> Self {
        MigrationRecord {
            phase: Phase::Precheck,
            aborted_from: None,
            source_digest: None,
        }
    }

    /// Whether the target may hold an import of this migration (`import_may_exist`): PRECOPY
    /// is persisted before the copy is sent, so an abort from PRECHECK sent nothing.
    pub fn import_may_exist(&self) -> bool {
        match self.phase {
            Phase::Precheck => false,
            Phase::Abort | Phase::AbortDone => {
                matches!(self.aborted_from, Some(from) if from >= Phase::Precopy)
            }
            _ => true,
        }
    }
}

/// The source controller's copy of the model (persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceModel {
    /// Active and writable.
    Active,
    /// Locked by this migration: read-only, still the owner.
    Locked(Attempt),
    /// A redirect to the target, committed with SUCCESS of this migration.
    Redirect(Attempt),
}

/// What the migration master has observed from the target for the current phase. Volatile:
/// lost when the source leader crashes, and cleared at every phase change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Observation {
    /// The target holds the import (imported, or it applied a batch of changes) through this
    /// version of the data: its position in the feed.
    Imported {
        /// The version the target holds.
        position: u8,
    },
    /// The target sealed its import; the digest of what it holds.
    Sealed {
        /// The digest (the version it holds).
        digest: u8,
    },
    /// The target refused the import for good.
    ImportRefused,
    /// The target acknowledged Activate.
    Activated,
    /// The target refused Activate (retried all the same).
    ActivateRefused,
    /// The target acknowledged dropping the import (or had nothing to drop).
    Dropped,
    /// The target refused to drop (retried all the same).
    DropRefused,
}

/// The source controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// One record per attempt, oldest first; the last is the current migration. Persisted.
    pub records: Vec<MigrationRecord>,
    /// The model's state. Persisted.
    pub model: SourceModel,
    /// The model's ownership epoch. Persisted.
    pub epoch: u8,
    /// The model's data: a version that every client write increments. Persisted.
    pub value: u8,
    /// Writes held by the fence (they wait in the service of some source node). Volatile in a
    /// node, but not lost with the master.
    pub held: u8,
    /// The master's last observation in the current phase. Volatile.
    pub observed: Option<Observation>,
}

impl Source {
    /// The current migration's attempt number.
    pub fn attempt(&self) -> Attempt {
        Attempt::try_from(self.records.len()).expect("a handful of attempts")
    }

    /// The current migration's record.
    pub fn current(&self) -> &MigrationRecord {
        self.records.last().expect("the model starts with a record")
    }

    fn current_mut(&mut self) -> &mut MigrationRecord {
        self.records
            .last_mut()
            .expect("the model starts with a record")
    }

    /// What the source answers a target asking about migration `id` (`source_answer`).
    pub fn answer(&self, id: Attempt) -> Answer {
        let record = usize::from(id)
            .checked_sub(1)
            .and_then(|index| self.records.get(index));
        match record.map(|record| record.phase) {
            None => Answer::Unknown,
            Some(phase) if phase.is_committed() => Answer::Committed,
            Some(phase) if phase.is_aborting() => Answer::Aborted,
            Some(_) => Answer::InProgress,
        }
    }
}

/// The source's answer about a migration id (`SourceAnswer`), or the target's own conclusion
/// that no answer came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Answer {
    /// No record of that migration.
    Unknown,
    /// Before SUCCESS and not aborting.
    InProgress,
    /// SUCCESS or after: Activate is on its way.
    Committed,
    /// ABORT or ABORTDONE.
    Aborted,
    /// No answer came (only the target uses this; the source never sends it).
    Unreachable,
}

/// The target controller's copy of the model (persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetModel {
    /// Nothing for this model.
    Absent,
    /// An import of migration `id` in importing mode: invisible, read-only.
    Importing {
        /// The migration that sent it.
        id: Attempt,
        /// The imported data, with the changes applied so far.
        data: u8,
        /// The source's ownership epoch it was exported at.
        epoch: u8,
        /// Sealed at the source's lock: takes no more changes; may be activated.
        sealed: bool,
    },
    /// Active, activated by migration `id`.
    Active {
        /// The migration that activated it.
        id: Attempt,
        /// The model's data.
        data: u8,
        /// The ownership epoch it is active at.
        epoch: u8,
    },
}

/// The target controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The model's state. Persisted.
    pub model: TargetModel,
    /// Whether it asked the source about its import and waits for the answer. Volatile.
    pub asking: bool,
    /// The last answer about its current import. Volatile.
    pub heard: Option<Answer>,
    /// Writes the source answered with the redirect (`retry_on_target`) that the clients are
    /// about to send to the target.
    pub retrying: u8,
}

/// A message between the controllers. Every message carries the migration id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    /// Source → target: the copy of the (writable) model.
    Import {
        /// The migration.
        id: Attempt,
        /// The model's data.
        data: u8,
        /// The model's ownership epoch at the source.
        epoch: u8,
    },
    /// Target → source: imported (or already imported, or a batch of changes applied), with
    /// the version it holds.
    ImportAck {
        /// The migration.
        id: Attempt,
        /// The version the import holds.
        position: u8,
    },
    /// Target → source: the import (or a batch, or the seal) is refused.
    ImportRefused {
        /// The migration.
        id: Attempt,
    },
    /// Source → target: the changes up to version `upto` (`ApplyChanges`).
    Changes {
        /// The migration.
        id: Attempt,
        /// The last version streamed.
        upto: u8,
    },
    /// Source → target, in the fence: the last changes, up to the lock's version, and the seal.
    Seal {
        /// The migration.
        id: Attempt,
        /// The version the changes reach (the source's data at the lock).
        upto: u8,
    },
    /// Target → source: sealed, with the digest of what the import holds.
    SealAck {
        /// The migration.
        id: Attempt,
        /// The version the import holds.
        digest: u8,
    },
    /// Source → target, only from SUCCESS: make the import active at `epoch`.
    Activate {
        /// The migration.
        id: Attempt,
        /// The new ownership epoch (the source's + 1).
        epoch: u8,
    },
    /// Target → source: active (or already active by this migration).
    ActivateAck {
        /// The migration.
        id: Attempt,
    },
    /// Target → source: no such import (`NoSuchImport`).
    ActivateRefused {
        /// The migration.
        id: Attempt,
    },
    /// Source → target, from ABORT: drop the import of this migration.
    DropImport {
        /// The migration.
        id: Attempt,
    },
    /// Target → source: dropped, or nothing to drop.
    DropAck {
        /// The migration.
        id: Attempt,
    },
    /// Target → source: the model is active by this migration and is not dropped.
    DropRefused {
        /// The migration.
        id: Attempt,
    },
    /// Target → source: the leftover rule asks what became of this migration.
    AskSource {
        /// The migration.
        id: Attempt,
    },
    /// Source → target: the answer.
    SourceAnswer {
        /// The migration.
        id: Attempt,
        /// What the source's record says.
        answer: Answer,
    },
}

/// Facts about the history, kept only to state properties (not part of either controller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Bit `attempt - 1` is set once that migration entered SUCCESS.
    pub committed: u8,
    /// Bit `attempt - 1` is set once that migration entered ABORT.
    pub aborted: u8,
    /// The current migration's model (data, epoch) when it was locked; cleared when it ends.
    pub locked_as: Option<(u8, u8)>,
    /// Set when an unlock left the source model different from what was locked.
    pub abort_changed_source: bool,
    /// Set when the target dropped a leftover import on the source's answer.
    pub leftover_dropped: bool,
    /// Writes a client got an answer for or is still waiting on: accepted by the source, held
    /// by the fence, or being retried on the target.
    pub issued: u8,
    /// Held writes the target applied after the redirect.
    pub retried: u8,
}

/// The whole system: both controllers, the network and the fault budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The source controller.
    pub source: Source,
    /// The target controller.
    pub target: Target,
    /// Messages in flight: unordered; a message is consumed when delivered.
    pub network: BTreeSet<Msg>,
    /// Faults still allowed.
    pub faults_left: u8,
    /// History for the properties.
    pub ghost: Ghost,
}

impl State {
    fn in_flight(&self, matches: impl Fn(&Msg) -> bool) -> bool {
        self.network.iter().any(matches)
    }

    /// How many controllers own the model: the source while it is active or locked (a locked
    /// model is read-only but still owned), the target while it is active.
    pub fn owners(&self) -> usize {
        let source = matches!(
            self.source.model,
            SourceModel::Active | SourceModel::Locked(_)
        );
        let target = matches!(self.target.model, TargetModel::Active { .. });
        usize::from(source) + usize::from(target)
    }
}

/// A step of the migration master: the one thing `next_action` would do in this state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasterStep {
    /// PRECHECK → PRECOPY (prechecks passed); the model stays writable.
    StartCopy,
    /// Send the copy (`StageCopy`), first or again.
    SendImport,
    /// The target imported the copy: PRECOPY → CATCHUP.
    BeginCatchup,
    /// Send the changes up to the source's data (`StreamChanges`), first or again.
    SendChanges,
    /// The target applied a batch (agents validated, prechecks passed again): CATCHUP →
    /// QUIESCE, locking the model and recording its digest.
    Lock,
    /// Send the last changes and the seal (`SealTarget`), first or again.
    SendSeal,
    /// The target refused the import, a batch or the seal: → ABORT.
    ImportFailed,
    /// Sealed with the source's digest: QUIESCE → SUCCESS, the model becomes a redirect.
    CommitSuccess,
    /// Sealed with another digest: QUIESCE → ABORT.
    DigestMismatch,
    /// Send Activate (`CallActivate`), first or again.
    SendActivate,
    /// The target acknowledged Activate: SUCCESS → DONE (via LOGTRANSFER and REAP).
    Finish,
    /// Tell the target to drop the import (`DropImportOnTarget`), first or again.
    SendDrop,
    /// ABORT → ABORTDONE, unlocking the model.
    Unlock,
    /// After ABORTDONE, the operator starts the next attempt.
    NextAttempt,
}

/// One transition of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The migration master's next step.
    Master(MasterStep),
    /// A client writes to the source model (applied, or held by the fence).
    Write,
    /// A client sends a write the fence answered with the redirect once more, to the target.
    RetryOnTarget,
    /// The target's idle timer: it asks the source about its import.
    TargetAsk,
    /// The target's question went unanswered.
    TargetSilence,
    /// Planted bug: the target activates its import on its own.
    TargetActivateEarly,
    /// A message is delivered (and consumed).
    Deliver(Msg),
    /// Fault: a message is delivered and a copy stays in flight.
    Duplicate(Msg),
    /// Fault: a message is lost.
    Drop(Msg),
    /// Fault: the source leader crashes; a new master resumes from the Raft log.
    CrashSource,
    /// Fault: the target leader crashes.
    CrashTarget,
    /// Fault: a phase deadline passes (or the operator aborts) before SUCCESS.
    Timeout,
    /// Fault: ABORT stops waiting for the target's drop acknowledgement and unlocks.
    GiveUpDrop,
}

/// The migration protocol as a stateright [`Model`]. The default bounds (2 attempts, 2 faults,
/// 1 client write, no bugs) give about 38 000 states.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    /// How many attempts the operator makes (a new one after each abort).
    pub attempts: Attempt,
    /// How many faults may happen in one run.
    pub fault_budget: u8,
    /// How many client writes may happen in one run.
    pub writes: u8,
    /// The planted bugs.
    pub bugs: Bugs,
}

impl Default for ProtocolModel {
    fn default() -> Self {
        ProtocolModel {
            attempts: 2,
            fault_budget: 2,
            writes: 1,
            bugs: Bugs::default(),
        }
    }
}

/// At every state, at most one controller owns the model.
pub const AT_MOST_ONE_OWNER: &str = "at most one owner";
/// When the current migration has ended, exactly one controller owns the model.
pub const ENDED_WITH_ONE_OWNER: &str = "an ended migration leaves exactly one owner";
/// No migration id is both committed (SUCCESS) and aborted (ABORT).
pub const ONE_DECISION: &str = "one decision per migration id";
/// ABORTDONE leaves the source model exactly as it was locked.
pub const ABORT_RESTORES_SOURCE: &str = "abort leaves the source unchanged";
/// The model always has an owner, or a redirect to a target that holds the import.
pub const NEVER_LOST: &str = "the model is never lost";
/// The target activates the data the source last had (plus the held writes retried there).
pub const NO_LOST_WRITE: &str = "the target activates the source's latest data";
/// Every write a client sent applies exactly once, on exactly one controller: accepted by the
/// source, or held by the fence and then applied by the source (abort) or the target (retry).
pub const EVERY_WRITE_ONCE: &str = "every write applies exactly once";
/// Every path ends with the last migration ended and both controllers consistent with it.
pub const EVERY_MIGRATION_ENDS: &str = "every migration ends";
/// Some run reaches DONE.
pub const SOME_DONE: &str = "a migration reaches DONE";
/// Some run reaches ABORTDONE.
pub const SOME_ABORTDONE: &str = "a migration reaches ABORTDONE";
/// Some run succeeds on a retry after an aborted attempt.
pub const SOME_RETRY_DONE: &str = "a retry after an abort reaches DONE";
/// Some run has the target drop a leftover import on the source's answer.
pub const SOME_LEFTOVER_DROPPED: &str = "the target drops a leftover import";
/// Some run has a write held by the fence and applied by the target after the redirect.
pub const SOME_HELD_WRITE_RETRIED: &str = "a held write is retried on the target";

/// The names of the safety properties (`always`).
pub const SAFETY: [&str; 7] = [
    AT_MOST_ONE_OWNER,
    ENDED_WITH_ONE_OWNER,
    ONE_DECISION,
    ABORT_RESTORES_SOURCE,
    NEVER_LOST,
    NO_LOST_WRITE,
    EVERY_WRITE_ONCE,
];

/// The names of the `sometimes` properties.
pub const EXAMPLES: [&str; 5] = [
    SOME_DONE,
    SOME_ABORTDONE,
    SOME_RETRY_DONE,
    SOME_LEFTOVER_DROPPED,
    SOME_HELD_WRITE_RETRIED,
];

fn bit(id: Attempt) -> u8 {
    1 << (id - 1)
}

impl ProtocolModel {
    /// The default bounds with `bugs` planted.
    pub fn with_bugs(bugs: Bugs) -> Self {
        ProtocolModel {
            bugs,
            ..ProtocolModel::default()
        }
    }

    /// The master's next step (`next_action`), if it has one. Commits go first; a request is
    /// (re)sent only when neither it nor its reply is in flight and its answer is not observed.
    pub fn master_step(&self, s: &State) -> Option<MasterStep> {
        let id = s.source.attempt();
        let record = s.source.current();
        let observed = s.source.observed;
        let in_flight = |s: &State| {
            s.in_flight(|m| {
                matches!(m, Msg::Import { id: i, .. } | Msg::ImportAck { id: i, .. }
                    | Msg::ImportRefused { id: i } | Msg::Changes { id: i, .. }
                    | Msg::Seal { id: i, .. } | Msg::SealAck { id: i, .. } if *i == id)
            })
        };
        match record.phase {
            Phase::Precheck => Some(MasterStep::StartCopy),
            Phase::Precopy => match observed {
                Some(Observation::Imported { .. }) => Some(MasterStep::BeginCatchup),
                Some(Observation::ImportRefused) => Some(MasterStep::ImportFailed),
                _ => (!in_flight(s)).then_some(MasterStep::SendImport),
            },
            Phase::Catchup => match observed {
                Some(Observation::Imported { .. }) => Some(MasterStep::Lock),
                Some(Observation::ImportRefused) => Some(MasterStep::ImportFailed),
                _ => (!in_flight(s)).then_some(MasterStep::SendChanges),
            },
            Phase::Quiesce => match observed {
                Some(Observation::Sealed { digest }) => Some(
                    if record.source_digest == Some(digest) || self.bugs.fence_before_last_change {
                        MasterStep::CommitSuccess
                    } else {
                        MasterStep::DigestMismatch
                    },
                ),
                Some(Observation::ImportRefused) => Some(MasterStep::ImportFailed),
                _ => (!in_flight(s)).then_some(MasterStep::SendSeal),
            },
            Phase::Success => match observed {
                Some(Observation::Activated) => Some(MasterStep::Finish),
                _ => (!s.in_flight(|m| {
                    matches!(m, Msg::Activate { id: i, .. } | Msg::ActivateAck { id: i }
                        | Msg::ActivateRefused { id: i } if *i == id)
                }))
                .then_some(MasterStep::SendActivate),
            },
            Phase::Abort => {
                if !record.import_may_exist() || observed == Some(Observation::Dropped) {
                    Some(MasterStep::Unlock)
                } else {
                    (!s.in_flight(|m| {
                        matches!(m, Msg::DropImport { id: i } | Msg::DropAck { id: i }
                            | Msg::DropRefused { id: i } if *i == id)
                    }))
                    .then_some(MasterStep::SendDrop)
                }
            }
            Phase::AbortDone => (id < self.attempts).then_some(MasterStep::NextAttempt),
            Phase::Done => None,
        }
    }

    /// Moves the current migration to `to` (`apply_transition` + `model_effect`), asserting
    /// that the edge is in the phase graph unless a planted bug takes it.
    fn transition(&self, s: &mut State, to: Phase) {
        let id = s.source.attempt();
        let from = s.source.current().phase;
        let bug_edge =
            self.bugs.abort_after_success && from == Phase::Success && to == Phase::Abort;
        assert!(
            from.can_transition_to(to) || bug_edge,
            "illegal transition {from:?} → {to:?}"
        );
        let record = s.source.current_mut();
        record.phase = to;
        if to == Phase::Abort {
            record.aborted_from = Some(from);
            s.ghost.aborted |= bit(id);
        }
        s.source.observed = None;
        match to {
            Phase::Quiesce => {
                s.source.model = SourceModel::Locked(id);
                s.source.current_mut().source_digest = Some(s.source.value);
                s.ghost.locked_as = Some((s.source.value, s.source.epoch));
            }
            Phase::Success => {
                s.source.model = SourceModel::Redirect(id);
                s.ghost.committed |= bit(id);
                // The held writes are answered with the redirect; their clients retry on the
                // target.
                s.target.retrying += std::mem::take(&mut s.source.held);
            }
            Phase::Done => s.ghost.locked_as = None,
            Phase::AbortDone => {
                if matches!(s.source.model, SourceModel::Locked(by) | SourceModel::Redirect(by) if by == id)
                {
                    s.source.model = SourceModel::Active;
                }
                if let Some(locked_as) = s.ghost.locked_as.take() {
                    if locked_as != (s.source.value, s.source.epoch) {
                        s.ghost.abort_changed_source = true;
                    }
                }
                // The held writes are proposed again and apply on the source.
                s.source.value += std::mem::take(&mut s.source.held);
            }
            _ => {}
        }
    }

    fn master(&self, s: &mut State, step: MasterStep) {
        let id = s.source.attempt();
        match step {
            MasterStep::StartCopy => self.transition(s, Phase::Precopy),
            MasterStep::SendImport => {
                s.network.insert(Msg::Import {
                    id,
                    data: s.source.value,
                    epoch: s.source.epoch,
                });
            }
            MasterStep::BeginCatchup => self.transition(s, Phase::Catchup),
            MasterStep::SendChanges => {
                s.network.insert(Msg::Changes {
                    id,
                    upto: s.source.value,
                });
            }
            MasterStep::Lock => self.transition(s, Phase::Quiesce),
            MasterStep::SendSeal => {
                // The planted bug seals the target where it is: no change reaches past it.
                let upto = if self.bugs.fence_before_last_change {
                    0
                } else {
                    s.source.value
                };
                s.network.insert(Msg::Seal { id, upto });
            }
            MasterStep::ImportFailed | MasterStep::DigestMismatch => {
                self.transition(s, Phase::Abort)
            }
            MasterStep::CommitSuccess => self.transition(s, Phase::Success),
            MasterStep::SendActivate => {
                s.network.insert(Msg::Activate {
                    id,
                    epoch: s.source.epoch + 1,
                });
            }
            MasterStep::Finish => self.transition(s, Phase::Done),
            MasterStep::SendDrop => {
                s.network.insert(Msg::DropImport { id });
            }
            MasterStep::Unlock => self.transition(s, Phase::AbortDone),
            MasterStep::NextAttempt => {
                s.source.records.push(MigrationRecord::new());
                s.source.observed = None;
            }
        }
    }

    /// Whether a client write is taken now: while the source model is active (it applies) or
    /// locked (it is held by the fence, or applies with the planted bug), within the run's
    /// write budget.
    fn can_write(&self, s: &State) -> bool {
        let writable = matches!(s.source.model, SourceModel::Active | SourceModel::Locked(_));
        writable && s.ghost.issued < self.writes
    }

    /// A client write reaching the source.
    fn write(&self, s: &mut State) {
        s.ghost.issued += 1;
        match s.source.model {
            SourceModel::Locked(_) if !self.bugs.write_while_locked => s.source.held += 1,
            _ => s.source.value += 1,
        }
    }

    fn phase_can_time_out(&self, phase: Phase) -> bool {
        match phase {
            Phase::Precheck | Phase::Precopy | Phase::Catchup | Phase::Quiesce => true,
            Phase::Success => self.bugs.abort_after_success,
            _ => false,
        }
    }

    fn source_receives(&self, s: &mut State, msg: Msg) {
        let id = s.source.attempt();
        let phase = s.source.current().phase;
        let copying = matches!(phase, Phase::Precopy | Phase::Catchup | Phase::Quiesce);
        let observation = match msg {
            Msg::ImportAck { id: i, position }
                if i == id && matches!(phase, Phase::Precopy | Phase::Catchup) =>
            {
                Observation::Imported { position }
            }
            Msg::SealAck { id: i, digest } if i == id && phase == Phase::Quiesce => {
                Observation::Sealed { digest }
            }
            Msg::ImportRefused { id: i } if i == id && copying => Observation::ImportRefused,
            Msg::ActivateAck { id: i } if i == id && phase == Phase::Success => {
                Observation::Activated
            }
            Msg::ActivateRefused { id: i } if i == id && phase == Phase::Success => {
                Observation::ActivateRefused
            }
            Msg::DropAck { id: i } if i == id && phase == Phase::Abort => Observation::Dropped,
            Msg::DropRefused { id: i } if i == id && phase == Phase::Abort => {
                Observation::DropRefused
            }
            Msg::AskSource { id } => {
                let answer = s.source.answer(id);
                s.network.insert(Msg::SourceAnswer { id, answer });
                return;
            }
            // A late reply for an earlier phase or attempt: nothing waits for it.
            _ => return,
        };
        s.source.observed = Some(observation);
    }

    fn set_target_model(s: &mut State, model: TargetModel) {
        if s.target.model != model {
            s.target.model = model;
            s.target.asking = false;
            s.target.heard = None;
        }
    }

    fn target_receives(&self, s: &mut State, msg: Msg) {
        let reply = match msg {
            Msg::Import { id, data, epoch } => match s.target.model {
                // A repeated copy for the same id is answered "already imported".
                TargetModel::Importing { id: held, data, .. } if held == id => {
                    Msg::ImportAck { id, position: data }
                }
                TargetModel::Absent => {
                    let import = TargetModel::Importing {
                        id,
                        data,
                        epoch,
                        sealed: false,
                    };
                    Self::set_target_model(s, import);
                    Msg::ImportAck { id, position: data }
                }
                // A leftover import of an earlier attempt never blocks a retry: attempt N
                // starts only after attempt N-1 ended in ABORTDONE, so the new import replaces
                // it (the precheck's "except a leftover import of an aborted attempt").
                TargetModel::Importing { id: held, .. } if held < id => {
                    let import = TargetModel::Importing {
                        id,
                        data,
                        epoch,
                        sealed: false,
                    };
                    Self::set_target_model(s, import);
                    Msg::ImportAck { id, position: data }
                }
                _ => Msg::ImportRefused { id },
            },
            // `target_changes_decision`: changes it holds are skipped; a sealed import takes no
            // new change.
            Msg::Changes { id, upto } => match s.target.model {
                TargetModel::Importing {
                    id: held,
                    data,
                    epoch,
                    sealed,
                } if held == id && (!sealed || upto <= data) => {
                    let data = data.max(upto);
                    let import = TargetModel::Importing {
                        id,
                        data,
                        epoch,
                        sealed,
                    };
                    Self::set_target_model(s, import);
                    Msg::ImportAck { id, position: data }
                }
                _ => Msg::ImportRefused { id },
            },
            Msg::Seal { id, upto } => match s.target.model {
                TargetModel::Importing {
                    id: held,
                    data,
                    epoch,
                    sealed,
                } if held == id && (!sealed || upto <= data) => {
                    let data = data.max(upto);
                    let import = TargetModel::Importing {
                        id,
                        data,
                        epoch,
                        sealed: true,
                    };
                    Self::set_target_model(s, import);
                    Msg::SealAck { id, digest: data }
                }
                _ => Msg::ImportRefused { id },
            },
            Msg::Activate { id, epoch } => match s.target.model {
                // `target_activate_decision`: only the sealed import of exactly this id.
                TargetModel::Importing {
                    id: held,
                    data,
                    sealed: true,
                    ..
                } if held == id => {
                    Self::set_target_model(s, TargetModel::Active { id, data, epoch });
                    Msg::ActivateAck { id }
                }
                TargetModel::Active { id: by, .. } if by == id => Msg::ActivateAck { id },
                _ => Msg::ActivateRefused { id },
            },
            Msg::DropImport { id } => match s.target.model {
                // `target_drop_decision`: never touches another attempt's import.
                TargetModel::Importing { id: held, .. } if held == id => {
                    Self::set_target_model(s, TargetModel::Absent);
                    Msg::DropAck { id }
                }
                TargetModel::Active { id: by, .. } if by == id => Msg::DropRefused { id },
                _ => Msg::DropAck { id },
            },
            Msg::SourceAnswer { id, answer } => {
                // Only an answer to the question it is asking counts (`target_leftover_decision`
                // ignores answers older than the import's last activity).
                let asked = s.target.asking
                    && matches!(s.target.model, TargetModel::Importing { id: held, .. } if held == id);
                if asked {
                    self.target_hears(s, answer);
                }
                return;
            }
            _ => unreachable!("{msg:?} is not for the target"),
        };
        s.network.insert(reply);
    }

    /// The leftover rule (`target_leftover_decision`): drop on *unknown* or *aborted*; keep on
    /// *in progress*, *committed* and silence (unless the planted bug drops on silence).
    fn target_hears(&self, s: &mut State, answer: Answer) {
        let drop = match answer {
            Answer::Unknown | Answer::Aborted => true,
            Answer::Unreachable => self.bugs.drop_on_silence,
            Answer::InProgress | Answer::Committed => false,
        };
        if drop {
            Self::set_target_model(s, TargetModel::Absent);
            s.ghost.leftover_dropped = true;
        } else {
            s.target.asking = false;
            s.target.heard = Some(answer);
        }
    }

    fn is_for_target(msg: &Msg) -> bool {
        matches!(
            msg,
            Msg::Import { .. }
                | Msg::Changes { .. }
                | Msg::Seal { .. }
                | Msg::Activate { .. }
                | Msg::DropImport { .. }
                | Msg::SourceAnswer { .. }
        )
    }

    fn deliver(&self, s: &mut State, msg: Msg) {
        if Self::is_for_target(&msg) {
            self.target_receives(s, msg);
        } else {
            self.source_receives(s, msg);
        }
    }

    fn held_import(s: &State) -> Option<Attempt> {
        match s.target.model {
            TargetModel::Importing { id, .. } => Some(id),
            _ => None,
        }
    }

    fn asking_in_flight(s: &State, id: Attempt) -> bool {
        s.in_flight(
            |m| matches!(m, Msg::AskSource { id: i } | Msg::SourceAnswer { id: i, .. } if *i == id),
        )
    }

    /// What a source crash changes: the master's observations, and with the planted bug the
    /// phases after the lock. `None` when it would change nothing.
    fn crashed_source(&self, s: &State) -> Option<Source> {
        let mut source = s.source.clone();
        source.observed = None;
        if self.bugs.forget_phase_on_crash {
            let record = source.current_mut();
            if matches!(
                record.phase,
                Phase::Catchup | Phase::Quiesce | Phase::Success | Phase::Abort
            ) {
                *record = MigrationRecord {
                    phase: Phase::Precopy,
                    ..MigrationRecord::new()
                };
            }
        }
        (source != s.source).then_some(source)
    }

    /// Whether the current migration has ended and both controllers agree with how: DONE with
    /// the source a redirect and the target active at the next epoch, or the last attempt in
    /// ABORTDONE with the source active and no import left on the target.
    pub fn settled(&self, s: &State) -> bool {
        let id = s.source.attempt();
        match s.source.current().phase {
            Phase::Done => {
                s.source.model == SourceModel::Redirect(id)
                    && s.target.retrying == 0
                    && matches!(s.target.model, TargetModel::Active { id: by, epoch, .. }
                        if by == id && epoch == s.source.epoch + 1)
            }
            Phase::AbortDone => {
                id == self.attempts
                    && s.source.model == SourceModel::Active
                    && s.target.model == TargetModel::Absent
            }
            _ => false,
        }
    }

    /// Whether no action changes `s`: the end of every path through it.
    pub fn is_final(&self, s: &State) -> bool {
        let mut actions = Vec::new();
        self.actions(s, &mut actions);
        actions
            .into_iter()
            .all(|action| self.next_state(s, action).is_none())
    }

    /// Searches the reachable state graph depth-first for a cycle. `Ok` with the number of
    /// states when there is none (so every path ends and `eventually` is checked on every
    /// path's last state); `Err` with the actions of a path that closes a cycle.
    pub fn find_cycle(&self) -> Result<usize, Vec<Action>> {
        fn fingerprint(state: &State) -> u64 {
            let mut hasher = DefaultHasher::new();
            state.hash(&mut hasher);
            hasher.finish()
        }
        struct Frame {
            via: Option<Action>,
            fingerprint: u64,
            pending: Vec<(Action, State)>,
        }
        // true: on the current path; false: fully explored.
        let mut on_path: HashMap<u64, bool> = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let successors = |state: &State| -> Vec<(Action, State)> {
            let mut actions = Vec::new();
            self.actions(state, &mut actions);
            actions
                .into_iter()
                .filter_map(|action| self.next_state(state, action).map(|next| (action, next)))
                .collect()
        };
        for init in self.init_states() {
            let fp = fingerprint(&init);
            if on_path.insert(fp, true).is_some() {
                continue;
            }
            stack.push(Frame {
                via: None,
                fingerprint: fp,
                pending: successors(&init),
            });
            while let Some(frame) = stack.last_mut() {
                let Some((action, next)) = frame.pending.pop() else {
                    on_path.insert(frame.fingerprint, false);
                    stack.pop();
                    continue;
                };
                let fp = fingerprint(&next);
                match on_path.get(&fp) {
                    Some(true) => {
                        let mut path: Vec<Action> = stack.iter().filter_map(|f| f.via).collect();
                        path.push(action);
                        return Err(path);
                    }
                    Some(false) => {}
                    None => {
                        on_path.insert(fp, true);
                        let pending = successors(&next);
                        stack.push(Frame {
                            via: Some(action),
                            fingerprint: fp,
                            pending,
                        });
                    }
                }
            }
        }
        Ok(on_path.len())
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            source: Source {
                records: vec![MigrationRecord::new()],
                model: SourceModel::Active,
                epoch: 1,
                value: 0,
                held: 0,
                observed: None,
            },
            target: Target {
                model: TargetModel::Absent,
                asking: false,
                heard: None,
                retrying: 0,
            },
            network: BTreeSet::new(),
            faults_left: self.fault_budget,
            ghost: Ghost::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if let Some(step) = self.master_step(s) {
            actions.push(Action::Master(step));
        }
        if self.can_write(s) {
            actions.push(Action::Write);
        }
        if s.target.retrying > 0 && matches!(s.target.model, TargetModel::Active { .. }) {
            actions.push(Action::RetryOnTarget);
        }
        if let Some(id) = Self::held_import(s) {
            if !s.target.asking
                && s.target.heard != Some(s.source.answer(id))
                && !self.bugs.keep_leftover_imports
            {
                actions.push(Action::TargetAsk);
            }
            if s.target.asking && !Self::asking_in_flight(s, id) {
                actions.push(Action::TargetSilence);
            }
            if self.bugs.activate_before_decision {
                actions.push(Action::TargetActivateEarly);
            }
        }
        actions.extend(s.network.iter().map(|msg| Action::Deliver(*msg)));
        if s.faults_left == 0 {
            return;
        }
        for msg in &s.network {
            actions.push(Action::Drop(*msg));
            actions.push(Action::Duplicate(*msg));
        }
        actions.push(Action::CrashSource);
        actions.push(Action::CrashTarget);
        let record = s.source.current();
        if self.phase_can_time_out(record.phase) {
            actions.push(Action::Timeout);
        }
        if record.phase == Phase::Abort && record.import_may_exist() {
            actions.push(Action::GiveUpDrop);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Master(step) => self.master(&mut s, step),
            Action::Write => self.write(&mut s),
            Action::RetryOnTarget => {
                let TargetModel::Active { id, data, epoch } = s.target.model else {
                    return None;
                };
                s.target.retrying -= 1;
                s.ghost.retried += 1;
                s.target.model = TargetModel::Active {
                    id,
                    data: data + 1,
                    epoch,
                };
            }
            Action::TargetAsk => {
                let id = Self::held_import(&s)?;
                s.target.asking = true;
                s.network.insert(Msg::AskSource { id });
            }
            Action::TargetSilence => self.target_hears(&mut s, Answer::Unreachable),
            Action::TargetActivateEarly => {
                let TargetModel::Importing {
                    id, data, epoch, ..
                } = s.target.model
                else {
                    return None;
                };
                Self::set_target_model(
                    &mut s,
                    TargetModel::Active {
                        id,
                        data,
                        epoch: epoch + 1,
                    },
                );
            }
            Action::Deliver(msg) => {
                s.network.remove(&msg);
                self.deliver(&mut s, msg);
            }
            Action::Duplicate(msg) => {
                s.faults_left -= 1;
                self.deliver(&mut s, msg);
                s.network.insert(msg);
            }
            Action::Drop(msg) => {
                s.faults_left -= 1;
                s.network.remove(&msg);
            }
            Action::CrashSource => {
                s.source = self.crashed_source(last)?;
                s.faults_left -= 1;
            }
            Action::CrashTarget => {
                if !s.target.asking && s.target.heard.is_none() {
                    return None;
                }
                s.target.asking = false;
                s.target.heard = None;
                s.faults_left -= 1;
            }
            Action::Timeout => {
                s.faults_left -= 1;
                self.transition(&mut s, Phase::Abort);
            }
            Action::GiveUpDrop => {
                s.faults_left -= 1;
                self.transition(&mut s, Phase::AbortDone);
            }
        }
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(AT_MOST_ONE_OWNER, |_, s: &State| s.owners() <= 1),
            Property::always(ENDED_WITH_ONE_OWNER, |_, s: &State| {
                !s.source.current().phase.is_terminal() || s.owners() == 1
            }),
            Property::always(ONE_DECISION, |_, s: &State| {
                s.ghost.committed & s.ghost.aborted == 0
            }),
            Property::always(ABORT_RESTORES_SOURCE, |_, s: &State| {
                !s.ghost.abort_changed_source
            }),
            Property::always(NEVER_LOST, |_, s: &State| {
                s.owners() >= 1
                    || matches!((s.source.model, s.target.model),
                        (SourceModel::Redirect(to), TargetModel::Importing { id, .. }) if to == id)
            }),
            Property::always(NO_LOST_WRITE, |_, s: &State| match s.target.model {
                TargetModel::Active { data, .. } => data == s.source.value + s.ghost.retried,
                _ => true,
            }),
            Property::always(EVERY_WRITE_ONCE, |_, s: &State| {
                let pending = s.source.held + s.target.retrying;
                match (s.source.model, s.target.model) {
                    (_, TargetModel::Active { data, .. }) => data + pending == s.ghost.issued,
                    (SourceModel::Active | SourceModel::Locked(_), _) => {
                        s.source.value + pending == s.ghost.issued
                    }
                    // Between SUCCESS and Activate nobody serves the model.
                    _ => true,
                }
            }),
            Property::eventually(EVERY_MIGRATION_ENDS, |model: &ProtocolModel, s: &State| {
                model.settled(s) && model.is_final(s)
            }),
            Property::sometimes(SOME_DONE, |_, s: &State| {
                s.source.current().phase == Phase::Done
            }),
            Property::sometimes(SOME_ABORTDONE, |_, s: &State| {
                s.source.records.iter().any(|r| r.phase == Phase::AbortDone)
            }),
            Property::sometimes(SOME_RETRY_DONE, |_, s: &State| {
                s.source.attempt() > 1 && s.source.current().phase == Phase::Done
            }),
            Property::sometimes(SOME_LEFTOVER_DROPPED, |_, s: &State| {
                s.ghost.leftover_dropped
            }),
            Property::sometimes(SOME_HELD_WRITE_RETRIED, |_, s: &State| s.ghost.retried > 0),
        ]
    }
}
