//! A stateright model of the migration protocol (`docs/migration.md`): models move between two or
//! three controllers over an unordered network that loses and duplicates messages, while
//! controller leaders crash, timers fire early, and an operator migrates, migrates on and back,
//! destroys and re-creates, backs up and restores. The checker explores every interleaving
//! within the budgets of a [`Scenario`] and checks the safety rules (at most one owner, one
//! decision per migration id, an abort leaves the source as it was, nothing is lost, a
//! migration that nothing disturbed succeeds, …) and that every migration ends once the faults
//! stop.
//!
//! The rules are a small re-statement of the pure decision code in
//! `starling_storage::model::migration` (`Phase`, `apply_transition`, `next_action`,
//! `target_activate_decision`, `target_drop_decision`, `target_leftover_decision`,
//! `source_answer`) and of the apply rules around it (`storage::apply::models::migration`,
//! `storage::backup`); the function comments here name what each rule mirrors.
//!
//! What is modelled: the phases with LOGTRANSFER (REAP is folded into DONE: the source's data
//! goes, the redirect stays; REAPFAILED is not modelled); staging with the target's idempotency
//! records (a staged description is consumed by the import); the model's log (records written
//! by the owner's agents, carried by the log transfer, not by the export); the target's
//! memory of which migration activated a model; the open inbound log transfer that holds off an
//! onward migration; destroy and re-create with the same name (a new uuid); backups and
//! restores of either side. Simplifications: agents always acknowledge and validate; a
//! precheck failure and an operator abort are the same budgeted "Timeout"; the export and the
//! log transfer are one message each; data, epochs and log sequence numbers are small numbers.
//!
//! # Faults, operations and timers, and why the search is finite
//!
//! Every message delivery consumes the message. Faults cost one unit of a shared budget
//! ([`Scenario::faults`]): dropping a message, delivering a message and keeping a copy
//! (duplication), a crash of a master or of a target's sweeper (its volatile state is lost; its
//! Raft log is not), a phase deadline or an operator abort before SUCCESS (→ ABORT), ABORT
//! giving up on the target's drop acknowledgement, and LOGTRANSFER giving up the rest of the
//! log at its deadline. Operator actions and client writes have budgets of their own.
//!
//! Retry timers are free, but only fire when a retry is needed: the master resends a request
//! only when neither the request nor its reply is in flight and it has not observed the answer,
//! and a target asks the source about an import or an open log transfer only when the answer
//! would make it act (drop the import, end the log transfer). A retry that fires earlier only
//! duplicates a message that is still in flight (a budgeted duplication covers it) or asks a
//! question whose answer changes nothing the target keeps. A refusal the master
//! cannot change by asking again (a refused Activate, drop or log batch) is not retried for
//! free: in the protocol it cannot happen (a property says so), or a deadline (a budgeted
//! fault) ends the wait. With that reduction every free step makes progress, so the state graph
//! is acyclic ([`ProtocolModel::find_cycle`] checks it), every path ends, and stateright's
//! `eventually` (checked on the paths' last states) means what it says: after the last fault,
//! every migration ends.
//!
//! # Properties and planted bugs
//!
//! `always`: [`SAFETY`]; `eventually`: [`EVERY_MIGRATION_ENDS`]; `sometimes` (so a scenario is
//! not vacuous): [`Scenario::examples`]. Each of [`Bugs`] breaks one rule of the protocol, and
//! `tests/protocol_model.rs` shows which property catches it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use stateright::{Model, Property};

/// A controller: its index in [`State::controllers`]. The model starts on controller 0.
pub type Ctl = u8;
/// A model's uuid: 0 is the original model, 1 the model re-created under the same name after
/// 0 was destroyed.
pub type Uuid = u8;
/// Which attempt to migrate a model a migration is. Attempts count from 1 and keep growing as
/// the model moves between controllers (a migration's id is `<model-uuid>:<attempt>`).
pub type Attempt = u8;

/// How many model uuids the model tracks.
pub const UUIDS: usize = 2;

/// A migration's id, `<model-uuid>:<attempt>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MigId {
    /// The model.
    pub uuid: Uuid,
    /// The attempt.
    pub attempt: Attempt,
}

impl MigId {
    /// The id's bit in the ghost's sets (8 attempts per uuid).
    fn bit(self) -> u16 {
        1 << (u16::from(self.uuid) * 8 + u16::from(self.attempt) - 1)
    }
}

/// Planted bugs that the properties must catch. All off by default.
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
    /// Item 1 of issue 12: the target's staging request ids are derived from the content
    /// (digest and offset) only, not from the migration attempt, so a retry of an aborted
    /// attempt with an unchanged model is answered "already staged" and nothing is staged.
    pub content_request_ids: bool,
    /// Item 2: an onward migration may start while the inbound log transfer is still open, and
    /// `ImportLog` writes into whatever copy the target holds (locked or redirected too).
    pub onward_during_log_transfer: bool,
    /// Item 4: the target answers "already activated" only while it still holds the model, so
    /// a repeated Activate after the model was destroyed (or moved on) is refused.
    pub forget_activation_when_gone: bool,
    /// Item 3 as it was: a backup holds the models' records but not their locks, imports,
    /// redirects or migration records, and a restore replaces the records and keeps the
    /// restoring controller's own markers, in flight or not.
    pub restore_ignores_migrations: bool,
    /// Item 3, a tempting half-fix: backups hold everything and a restore puts back exactly
    /// the backup, so it forgets migrations that ended after the backup was taken.
    pub restore_rewinds_ownership: bool,
    /// Item 5: a refused lock is not an observation: the master proposes it again.
    pub retry_refused_commit: bool,
}

/// The persisted step of a migration, as `storage::model::migration::Phase` without REAP and
/// REAPFAILED (REAP is folded into DONE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The record exists; nothing is locked yet.
    Precheck,
    /// The model is locked (read-only); agents acknowledge.
    Quiesce,
    /// The source sends the export; the target stages and imports it.
    Import,
    /// The digests are compared.
    Validation,
    /// The transfer is committed; the source model is a redirect. Point of no return.
    Success,
    /// The model's log is sent to the target.
    LogTransfer,
    /// Terminal: the model lives on the target; the source's data is reaped.
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
            (Precheck, Quiesce | Abort)
                | (Quiesce, Import | Abort)
                | (Import, Validation | Abort)
                | (Validation, Success | Abort)
                | (Success, LogTransfer)
                | (LogTransfer, Done)
                | (Abort, AbortDone)
        )
    }

    /// SUCCESS and later: the transfer is committed and can never be aborted.
    pub fn is_committed(self) -> bool {
        matches!(self, Phase::Success | Phase::LogTransfer | Phase::Done)
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

/// What the source and the target compare: the export of a model (its log excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    /// The model's data.
    pub value: u8,
    /// Its ownership epoch.
    pub epoch: u8,
    /// The sequence number its next log record gets.
    pub next_log: u8,
}

/// A model's records on a controller (`m/<uuid>/…`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Data {
    /// The data: a version every client write increments.
    pub value: u8,
    /// The ownership epoch.
    pub epoch: u8,
    /// The sequence number of the next log record.
    pub next_log: u8,
    /// The log: bit `n` is the record with sequence number `n`.
    pub log: u8,
}

impl Data {
    /// What an export of this data hashes to.
    pub fn digest(&self) -> Digest {
        Digest {
            value: self.value,
            epoch: self.epoch,
            next_log: self.next_log,
        }
    }

    /// The log records at or after sequence number `position`.
    fn log_from(&self, position: u8) -> u8 {
        self.log & !((1u16 << position) - 1) as u8
    }
}

/// A migration the target takes part in, with the controller it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Inbound {
    /// The migration's attempt.
    pub attempt: Attempt,
    /// The source controller.
    pub from: Ctl,
}

/// What a controller holds of one model: its records and the markers the migration keeps
/// beside them (`miglock/`, `redirect/`, `import/`, `activated/`, `logtransfer/`). Persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holding {
    /// The model's records, if any.
    pub data: Option<Data>,
    /// Locked by this attempt (read-only, still owned).
    pub lock: Option<Attempt>,
    /// A redirect to this controller, left by this attempt (from SUCCESS on).
    pub redirect: Option<(Attempt, Ctl)>,
    /// The records are an import of this migration (invisible, read-only).
    pub import: Option<Inbound>,
    /// The migration that last activated the model here; kept after the model leaves.
    pub activated: Option<Attempt>,
    /// The inbound log transfer of this migration has not ended yet.
    pub log_in: Option<Inbound>,
}

impl Holding {
    /// Whether this controller owns the model here: records that are neither an import nor
    /// given away (a locked model is read-only but still owned).
    pub fn owns(&self) -> bool {
        self.data.is_some() && self.import.is_none() && self.redirect.is_none()
    }

    /// Whether the model is active here and not locked: it accepts writes.
    pub fn writable(&self) -> bool {
        self.owns() && self.lock.is_none()
    }

    /// The parts a restore compares: everything the migrations left, not the data.
    fn migration_markers(&self) -> (Option<Attempt>, Option<(Attempt, Ctl)>, Option<Inbound>) {
        (self.lock, self.redirect, self.import)
    }
}

/// One migration record on its source, persisted in the source's Raft log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// The migration.
    pub id: MigId,
    /// Where the model goes.
    pub target: Ctl,
    /// The current phase.
    pub phase: Phase,
    /// The phase ABORT was entered from.
    pub aborted_from: Option<Phase>,
    /// The digest the target reported for its import.
    pub target_digest: Option<Digest>,
    /// The target has every log record with a smaller sequence number.
    pub log_position: u8,
}

impl Record {
    fn new(id: MigId, target: Ctl) -> Self {
        Record {
            id,
            target,
            phase: Phase::Precheck,
            aborted_from: None,
            target_digest: None,
            log_position: 0,
        }
    }

    /// Whether the target may hold an import of this migration (`import_may_exist`): IMPORT is
    /// persisted before the export is sent, so an abort from PRECHECK or QUIESCE sent nothing.
    pub fn import_may_exist(&self) -> bool {
        match self.phase {
            Phase::Precheck | Phase::Quiesce => false,
            Phase::Abort | Phase::AbortDone => {
                matches!(self.aborted_from, Some(from) if from >= Phase::Import)
            }
            _ => true,
        }
    }
}

/// What the master observed about the current phase of one migration. Volatile: lost when
/// the master's leader crashes, cleared at every phase change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Observation {
    /// The target acknowledged the import with this digest.
    Imported(Digest),
    /// The target refused the import.
    ImportRefused,
    /// The target acknowledged Activate.
    Activated,
    /// The target refused Activate.
    ActivateRefused,
    /// The target acknowledged dropping the import (or had nothing to drop).
    Dropped,
    /// The target refused to drop.
    DropRefused,
    /// The target stored the log through this position.
    LogAcked(u8),
    /// The target refused the log.
    LogRefused,
    /// The model was destroyed on the target: its log has nowhere to go.
    LogGone,
    /// The phase's commit was refused (`Observations::refused`, issue 12 item 5).
    CommitRefused,
}

/// The source's answer about a migration id (`SourceAnswer`), or the target's own conclusion
/// that no answer came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Answer {
    /// No record of that migration.
    Unknown,
    /// Before SUCCESS and not aborting.
    InProgress,
    /// SUCCESS or later; `log_ended` once it is past LOGTRANSFER.
    Committed {
        /// Whether the log transfer has ended.
        log_ended: bool,
    },
    /// ABORT or ABORTDONE.
    Aborted,
    /// No answer came (only the target uses this; the source never sends it).
    Unreachable,
}

/// A backup of a controller: what `storage::backup::backup_content` holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backup {
    /// The models and their markers.
    pub copies: [Holding; UUIDS],
    /// The migration records.
    pub records: Vec<Record>,
    /// Ghost: per model, whether the controller owned the records it held when the backup
    /// was taken (`None`: it held none).
    pub owned_then: [Option<bool>; UUIDS],
}

/// One controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Controller {
    /// What it holds of each model. Persisted.
    pub copies: [Holding; UUIDS],
    /// The migrations it was the source of, in the order they started. Persisted.
    pub records: Vec<Record>,
    /// The staged model description a coming import reads (content-addressed). Persisted.
    pub staged: Option<(Uuid, Digest)>,
    /// The idempotency records of staging requests. Persisted.
    pub staged_requests: BTreeSet<(Option<MigId>, Uuid, Digest)>,
    /// The last backup taken (kept off the controller). Not part of the controller's state.
    pub backup: Option<Backup>,
    /// The master's observation per model. Volatile.
    pub observed: [Option<Observation>; UUIDS],
    /// The sweeper's question in flight (about an import or an open log transfer). Volatile.
    pub asking: Option<MigId>,
    /// The last answer the sweeper heard, and about what. Volatile.
    pub heard: Option<(MigId, Answer)>,
}

impl Controller {
    fn new(copies: [Holding; UUIDS]) -> Self {
        Controller {
            copies,
            records: Vec::new(),
            staged: None,
            staged_requests: BTreeSet::new(),
            backup: None,
            observed: [None; UUIDS],
            asking: None,
            heard: None,
        }
    }

    /// The record of migration `id`, if this controller was its source.
    pub fn record(&self, id: MigId) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }

    fn record_mut(&mut self, id: MigId) -> &mut Record {
        self.records
            .iter_mut()
            .find(|r| r.id == id)
            .expect("the record exists")
    }

    /// The migration of `uuid` this controller drives, if one has not ended.
    pub fn running(&self, uuid: Uuid) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.id.uuid == uuid && !r.phase.is_terminal())
    }

    /// What this controller answers about migration `id` (`source_answer`).
    pub fn answer(&self, id: MigId) -> Answer {
        match self.record(id).map(|r| r.phase) {
            None => Answer::Unknown,
            Some(phase) if phase.is_committed() => Answer::Committed {
                log_ended: phase == Phase::Done,
            },
            Some(phase) if phase.is_aborting() => Answer::Aborted,
            Some(_) => Answer::InProgress,
        }
    }

    /// Whether a migration is in flight here (what a restore refuses): a record that has not
    /// ended, an import, or an inbound log transfer that is still open.
    pub fn migration_in_flight(&self) -> bool {
        self.records.iter().any(|r| !r.phase.is_terminal())
            || self
                .copies
                .iter()
                .any(|c| c.import.is_some() || c.log_in.is_some())
    }

    /// The next attempt of `uuid` migrating away from here: attempts grow across controllers
    /// (`start_migration`: past this controller's records and the attempt that brought it).
    fn next_attempt(&self, uuid: Uuid) -> Attempt {
        let recorded = self
            .records
            .iter()
            .filter(|r| r.id.uuid == uuid)
            .map(|r| r.id.attempt)
            .max()
            .unwrap_or(0);
        recorded.max(self.copies[usize::from(uuid)].activated.unwrap_or(0)) + 1
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Body {
    /// Source → target: stage the export of the locked model and import it.
    Import(Data),
    /// Target → source: imported (or already imported), with the digest of what it holds.
    ImportAck(Digest),
    /// Target → source: the import is refused.
    ImportRefused,
    /// Source → target, only from SUCCESS: make the import active at this epoch.
    Activate(u8),
    /// Target → source: active (or already activated by this migration).
    ActivateAck,
    /// Target → source: no such import (`NoSuchImport`).
    ActivateRefused,
    /// Source → target, from ABORT: drop the import of this migration.
    DropImport,
    /// Target → source: dropped, or nothing to drop.
    DropAck,
    /// Target → source: the model is active by this migration and is not dropped.
    DropRefused,
    /// Source → target, from LOGTRANSFER: every log record from `from` on, and that this is the
    /// end of the log (`TransferLog` with `complete`).
    Logs {
        /// The records.
        records: u8,
        /// The source's next log sequence number: the target now has everything below it.
        upto: u8,
    },
    /// Target → source: stored through this position.
    LogAck(u8),
    /// Target → source: the log is refused.
    LogRefused,
    /// Target → source: the model was destroyed here; its log has nowhere to go.
    LogGone,
    /// Target → source: the sweeper asks what became of this migration.
    Ask,
    /// Source → target: the answer.
    Answer(Answer),
}

/// A message between two controllers about one migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Msg {
    /// The migration it is about.
    pub id: MigId,
    /// Sender.
    pub from: Ctl,
    /// Receiver.
    pub to: Ctl,
    /// What it says.
    pub body: Body,
}

/// What is left of the operator's and the clients' budgets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Budget {
    /// `ctl migrate` runs.
    pub migrations: u8,
    /// `ctl destroy-model` runs.
    pub destroys: u8,
    /// `ctl add-model` runs re-creating a destroyed model's name.
    pub recreates: u8,
    /// `ctl create-backup` runs.
    pub backups: u8,
    /// `ctl restore-backup --force` runs.
    pub restores: u8,
    /// Client writes.
    pub writes: u8,
    /// Agent log records.
    pub logs: u8,
}

/// Facts about the history, kept only to state properties (not part of any controller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Migrations that entered SUCCESS ([`MigId::bit`]).
    pub committed: u16,
    /// Migrations that entered ABORT.
    pub aborted: u16,
    /// Migrations during which a fault or an operator's destroy or restore happened.
    pub disturbed: u16,
    /// Migrations whose lock was refused since their master last crashed.
    pub lock_refused: u16,
    /// Per migration, the data (value, epoch) its model had when it was locked; removed when
    /// the migration ends.
    pub locked_as: Vec<(MigId, (u8, u8))>,
    /// Per model, the value every owner must hold (the last write, or what a restore put back).
    pub value: [u8; UUIDS],
    /// Per model, every log record written and not taken back by a restore.
    pub written_logs: [u8; UUIDS],
    /// Per model, log records the source gave up at its LOGTRANSFER deadline (and said so).
    pub given_up_logs: [u8; UUIDS],
    /// Per model, whether the operator destroyed it (or restored a backup without it).
    pub gone: [bool; UUIDS],
    /// The controllers model 0 has been owned by (bit per controller).
    pub homes: u8,
    /// Model 0 came back to a controller it had left.
    pub returned: bool,
    /// An unlock left the source model different from what was locked.
    pub abort_changed_source: bool,
    /// A target dropped a leftover import on the source's answer.
    pub leftover_dropped: bool,
    /// A target stored a log record written on another controller.
    pub log_moved: bool,
    /// A target refused Activate for a migration whose source waits in SUCCESS.
    pub activate_refused_after_commit: bool,
    /// A master proposed a lock again after it was refused, without a crash in between.
    pub refused_commit_repeated: bool,
    /// A restore made a model owned that the backup held as an import or a redirect.
    pub restore_activated: bool,
    /// A restore changed what a controller holds.
    pub restored: bool,
}

/// The whole system: the controllers, the network, the budgets and the ghost.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The controllers.
    pub controllers: Vec<Controller>,
    /// Messages in flight: unordered; a message is consumed when delivered.
    pub network: BTreeSet<Msg>,
    /// Faults still allowed.
    pub faults_left: u8,
    /// What the operator and clients may still do.
    pub budget: Budget,
    /// History for the properties.
    pub ghost: Ghost,
}

impl State {
    fn in_flight(&self, matches: impl Fn(&Msg) -> bool) -> bool {
        self.network.iter().any(matches)
    }

    fn copy(&self, c: Ctl, uuid: Uuid) -> &Holding {
        &self.controllers[usize::from(c)].copies[usize::from(uuid)]
    }

    fn copy_mut(&mut self, c: Ctl, uuid: Uuid) -> &mut Holding {
        &mut self.controllers[usize::from(c)].copies[usize::from(uuid)]
    }

    fn ctl(&self, c: Ctl) -> &Controller {
        &self.controllers[usize::from(c)]
    }

    fn ctl_mut(&mut self, c: Ctl) -> &mut Controller {
        &mut self.controllers[usize::from(c)]
    }

    fn ids(&self) -> impl Iterator<Item = Ctl> {
        0..Ctl::try_from(self.controllers.len()).expect("a few controllers")
    }

    /// How many controllers own model `uuid`.
    pub fn owners(&self, uuid: Uuid) -> usize {
        self.controllers
            .iter()
            .filter(|c| c.copies[usize::from(uuid)].owns())
            .count()
    }

    /// The controller that owns model `uuid`, if exactly one does.
    pub fn owner(&self, uuid: Uuid) -> Option<Ctl> {
        let mut owners = self.ids().filter(|c| self.copy(*c, uuid).owns());
        let first = owners.next()?;
        owners.next().is_none().then_some(first)
    }

    /// Every migration of `uuid` that has not ended, on any controller.
    fn running(&self, uuid: Uuid) -> impl Iterator<Item = (Ctl, Record)> + '_ {
        self.ids()
            .filter_map(move |c| self.ctl(c).running(uuid).map(|r| (c, *r)))
    }

    /// Bits of every migration that has not ended.
    fn in_flight_ids(&self) -> u16 {
        self.controllers
            .iter()
            .flat_map(|c| c.records.iter())
            .filter(|r| !r.phase.is_terminal())
            .fold(0, |bits, r| bits | r.id.bit())
    }

    /// Whether every log record of `uuid` that was written (and neither given up nor taken
    /// back) is held by its owner, or by a copy still sending it (a source in SUCCESS or
    /// LOGTRANSFER whose log transfer has not passed it).
    pub fn logs_kept(&self, uuid: Uuid) -> bool {
        let u = usize::from(uuid);
        if self.ghost.gone[u] {
            return true;
        }
        let mut held = 0u8;
        for c in &self.controllers {
            let copy = &c.copies[u];
            let Some(data) = copy.data else { continue };
            if copy.owns() {
                held |= data.log;
            } else if let Some((attempt, _)) = copy.redirect {
                let sending = c
                    .record(MigId { uuid, attempt })
                    .filter(|r| matches!(r.phase, Phase::Success | Phase::LogTransfer));
                if let Some(record) = sending {
                    held |= data.log_from(record.log_position);
                }
            }
        }
        let wanted = self.ghost.written_logs[u] & !self.ghost.given_up_logs[u];
        wanted & !held == 0
    }

    /// Whether model `uuid` has an owner, or a redirect to a controller holding the import of
    /// that very migration (between SUCCESS and Activate).
    pub fn reachable(&self, uuid: Uuid) -> bool {
        self.owners(uuid) >= 1
            || self.controllers.iter().any(|c| {
                matches!(c.copies[usize::from(uuid)].redirect, Some((attempt, to))
                    if matches!(self.copy(to, uuid).import,
                        Some(Inbound { attempt: held, .. }) if held == attempt))
            })
    }
}

/// A step of a migration master: the one thing `next_action` would do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasterStep {
    /// PRECHECK → QUIESCE, locking the model (prechecks passed), or the lock's refusal.
    Lock,
    /// A refused lock is an observation: PRECHECK → ABORT with the reason.
    AbortRefused,
    /// QUIESCE → IMPORT (every agent acknowledged; prechecks passed again); the export is
    /// sent.
    BeginImport,
    /// Send the export (`StreamExport`), first or again.
    SendImport,
    /// Record the target's digest; IMPORT → VALIDATION, then at once VALIDATION → SUCCESS
    /// (the model becomes a redirect; Activate is sent) when the digests match, or → ABORT.
    ConfirmImport,
    /// The target refused the import: IMPORT → ABORT.
    ImportFailed,
    /// Send Activate (`CallActivate`), first or again.
    SendActivate,
    /// The target acknowledged Activate: SUCCESS → LOGTRANSFER; the log is sent.
    BeginLogTransfer,
    /// Send the log (`TransferLogs`), first or again.
    SendLogs,
    /// The target stored the log: record the position; LOGTRANSFER → DONE (reaping the data).
    ConfirmLogs,
    /// The model was destroyed on the target: LOGTRANSFER → DONE, the log given up.
    LogsGone,
    /// Tell the target to drop the import (`DropImportOnTarget`), first or again.
    SendDrop,
    /// ABORT → ABORTDONE, unlocking the model.
    Unlock,
}

/// One transition of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The master on controller `at` takes its next step for model `uuid`.
    Master {
        /// The source controller.
        at: Ctl,
        /// The model.
        uuid: Uuid,
        /// The step.
        step: MasterStep,
    },
    /// The operator starts migrating model `uuid` from its owner to controller `to`.
    Migrate {
        /// The model.
        uuid: Uuid,
        /// The target.
        to: Ctl,
    },
    /// The operator destroys model `uuid` on its owner.
    Destroy(Uuid),
    /// The operator adds a model with the destroyed model's name on controller `at` (uuid 1).
    Recreate {
        /// Where.
        at: Ctl,
    },
    /// The operator backs up controller `at`.
    Backup(Ctl),
    /// The operator restores controller `at` from its last backup (`restore-backup --force`).
    Restore(Ctl),
    /// A client writes to model `uuid` on its owner.
    Write(Uuid),
    /// An agent of model `uuid` writes a log record on its owner.
    Log(Uuid),
    /// Controller `at`'s sweeper asks the source about migration `id` (an import it holds, or
    /// an inbound log transfer that is still open).
    Ask {
        /// The asking controller.
        at: Ctl,
        /// The migration.
        id: MigId,
    },
    /// Controller `at`'s question went unanswered.
    Silence(Ctl),
    /// Planted bug: controller `at` activates its import of `uuid` on its own.
    ActivateEarly {
        /// The target.
        at: Ctl,
        /// The model.
        uuid: Uuid,
    },
    /// A message is delivered (and consumed).
    Deliver(Msg),
    /// Fault: a message is delivered and a copy stays in flight.
    Duplicate(Msg),
    /// Fault: a message is lost.
    Drop(Msg),
    /// Fault: controller `at`'s leader crashes: its masters and sweeper lose what they
    /// observed; its Raft log is kept.
    Crash(Ctl),
    /// Fault: a phase deadline passes (or the operator aborts) before SUCCESS.
    Timeout {
        /// The source.
        at: Ctl,
        /// The model.
        uuid: Uuid,
    },
    /// Fault: ABORT stops waiting for the target's drop acknowledgement and unlocks.
    GiveUpDrop {
        /// The source.
        at: Ctl,
        /// The model.
        uuid: Uuid,
    },
    /// Fault: LOGTRANSFER's deadline passes: the rest of the log is given up, the source
    /// reaps (and says what was given up).
    GiveUpLogs {
        /// The source.
        at: Ctl,
        /// The model.
        uuid: Uuid,
    },
}

/// The budgets of one exploration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// How many controllers.
    pub controllers: u8,
    /// Faults allowed in one run.
    pub faults: u8,
    /// What the operator and clients may do in one run.
    pub budget: Budget,
}

impl Scenario {
    /// One model, two controllers, two migration attempts (a retry after an abort), client
    /// writes and agent log records: the protocol itself under faults.
    pub fn retries() -> Self {
        Scenario {
            controllers: 2,
            faults: 2,
            budget: Budget {
                migrations: 2,
                writes: 1,
                logs: 1,
                ..Budget::default()
            },
        }
    }

    /// Three controllers: a model migrates on (S→T→U) and back while log transfers are slow.
    pub fn onward() -> Self {
        Scenario {
            controllers: 3,
            faults: 1,
            budget: Budget {
                migrations: 3,
                logs: 2,
                ..Budget::default()
            },
        }
    }

    /// Two controllers: the model is destroyed (in the middle of a migration, too) and a
    /// model of the same name re-created and migrated.
    pub fn destroy() -> Self {
        Scenario {
            controllers: 2,
            faults: 2,
            budget: Budget {
                migrations: 2,
                destroys: 1,
                recreates: 1,
                ..Budget::default()
            },
        }
    }

    /// Two controllers: backups of either side at any moment, and a restore of either side.
    pub fn restore() -> Self {
        Scenario {
            controllers: 2,
            faults: 1,
            budget: Budget {
                migrations: 2,
                backups: 2,
                restores: 1,
                writes: 1,
                ..Budget::default()
            },
        }
    }

    /// The `sometimes` properties this scenario must show.
    pub fn examples(&self) -> Vec<&'static str> {
        let mut examples = vec![SOME_DONE, SOME_ABORTDONE];
        if self.budget.logs > 0 {
            examples.push(SOME_LOG_MOVED);
        }
        if self.faults > 0 && self.budget.migrations > 1 {
            examples.push(SOME_RETRY_DONE);
        }
        if self.faults > 0 {
            examples.push(SOME_LEFTOVER_DROPPED);
        }
        if self.controllers > 2 && self.budget.migrations > 1 {
            examples.push(SOME_ONWARD);
        }
        if self.budget.migrations > 1 {
            examples.push(SOME_RETURN);
        }
        if self.budget.recreates > 0 {
            examples.push(SOME_RECREATED_MIGRATED);
        }
        if self.budget.restores > 0 {
            examples.push(SOME_RESTORE);
        }
        examples
    }
}

/// The migration protocol as a stateright [`Model`].
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    /// The budgets.
    pub scenario: Scenario,
    /// The planted bugs.
    pub bugs: Bugs,
}

impl Default for ProtocolModel {
    fn default() -> Self {
        ProtocolModel {
            scenario: Scenario::retries(),
            bugs: Bugs::default(),
        }
    }
}

/// At every state, at most one controller owns each model.
pub const AT_MOST_ONE_OWNER: &str = "at most one owner";
/// When no migration of a model is running, it has exactly one owner (unless destroyed).
pub const ENDED_WITH_ONE_OWNER: &str = "an ended migration leaves exactly one owner";
/// No migration id is both committed (SUCCESS) and aborted (ABORT).
pub const ONE_DECISION: &str = "one decision per migration id";
/// ABORTDONE leaves the source model exactly as it was locked.
pub const ABORT_RESTORES_SOURCE: &str = "abort leaves the source unchanged";
/// A model always has an owner, or a redirect to a target that holds the import.
pub const NEVER_LOST: &str = "the model is never lost";
/// Every owner holds the model's latest data.
pub const NO_LOST_WRITE: &str = "the owner holds the latest write";
/// Every log record written is with the owner or still on its way (issue 12 item 2).
pub const LOGS_KEPT: &str = "no log record is lost without saying so";
/// A migration that no fault, destroy or restore disturbed never aborts (item 1).
pub const UNDISTURBED_SUCCEEDS: &str = "an undisturbed migration succeeds";
/// A target never refuses Activate to a source waiting in SUCCESS (item 4).
pub const ACTIVATE_ANSWERED: &str = "a source in SUCCESS always gets Activate acknowledged";
/// A refused commit is not proposed again unchanged (item 5).
pub const REFUSED_COMMIT_NOT_REPEATED: &str = "a refused commit is not proposed again";
/// A restore never makes an import or a redirect an owned model (item 3).
pub const RESTORE_NEVER_ACTIVATES: &str = "a restore never activates an import or a redirect";
/// Every path ends with every migration ended and the controllers consistent with it.
pub const EVERY_MIGRATION_ENDS: &str = "every migration ends";
/// Some run reaches DONE.
pub const SOME_DONE: &str = "a migration reaches DONE";
/// Some run reaches ABORTDONE.
pub const SOME_ABORTDONE: &str = "a migration reaches ABORTDONE";
/// Some run succeeds on a retry after an aborted attempt.
pub const SOME_RETRY_DONE: &str = "a retry after an abort reaches DONE";
/// Some run has the target drop a leftover import on the source's answer.
pub const SOME_LEFTOVER_DROPPED: &str = "the target drops a leftover import";
/// Some run moves a log record to another controller.
pub const SOME_LOG_MOVED: &str = "a log record reaches another controller";
/// Some run has model 0 owned by three controllers in turn.
pub const SOME_ONWARD: &str = "a model migrates on to a third controller";
/// Some run has model 0 come back to a controller it left.
pub const SOME_RETURN: &str = "a model migrates back";
/// Some run migrates a model re-created under a destroyed model's name.
pub const SOME_RECREATED_MIGRATED: &str = "a re-created model migrates";
/// Some run restores a backup that changes what a controller holds.
pub const SOME_RESTORE: &str = "a restore changes a controller";

/// The names of the safety properties (`always`).
pub const SAFETY: [&str; 11] = [
    AT_MOST_ONE_OWNER,
    ENDED_WITH_ONE_OWNER,
    ONE_DECISION,
    ABORT_RESTORES_SOURCE,
    NEVER_LOST,
    NO_LOST_WRITE,
    LOGS_KEPT,
    UNDISTURBED_SUCCEEDS,
    ACTIVATE_ANSWERED,
    REFUSED_COMMIT_NOT_REPEATED,
    RESTORE_NEVER_ACTIVATES,
];

fn uuids() -> impl Iterator<Item = Uuid> {
    0..Uuid::try_from(UUIDS).expect("two uuids")
}

impl ProtocolModel {
    /// `scenario` without bugs.
    pub fn new(scenario: Scenario) -> Self {
        ProtocolModel {
            scenario,
            bugs: Bugs::default(),
        }
    }

    /// `scenario` with `bugs` planted.
    pub fn with_bugs(scenario: Scenario, bugs: Bugs) -> Self {
        ProtocolModel { scenario, bugs }
    }

    /// The master's next step for the migration of `uuid` that controller `at` drives, if it
    /// has one (`next_action`). Commits go first; a request is (re)sent only when neither it
    /// nor its reply is in flight and its answer is not observed.
    pub fn master_step(&self, s: &State, at: Ctl, uuid: Uuid) -> Option<MasterStep> {
        let ctl = s.ctl(at);
        let record = ctl.running(uuid)?;
        let id = record.id;
        let observed = ctl.observed[usize::from(uuid)];
        let has_records = ctl.copies[usize::from(uuid)].data.is_some();
        if !has_records
            && matches!(
                record.phase,
                Phase::Quiesce | Phase::Import | Phase::Success | Phase::LogTransfer
            )
        {
            // Only the planted restore that ignores migrations takes a locked or redirected
            // model's records away; the master then has nothing to send.
            return None;
        }
        // Neither the request nor a reply to it is in flight.
        let quiet = |request: fn(&Body) -> bool| {
            !s.in_flight(|m| {
                m.id == id && (request(&m.body) || (m.to == at && m.body != Body::Ask))
            })
        };
        match record.phase {
            Phase::Precheck => Some(match observed {
                Some(Observation::CommitRefused) => MasterStep::AbortRefused,
                _ => MasterStep::Lock,
            }),
            Phase::Quiesce => Some(MasterStep::BeginImport),
            Phase::Import => match observed {
                Some(Observation::Imported(_)) => Some(MasterStep::ConfirmImport),
                Some(Observation::ImportRefused) => Some(MasterStep::ImportFailed),
                _ => quiet(|b| matches!(b, Body::Import(_))).then_some(MasterStep::SendImport),
            },
            // ConfirmImport passes VALIDATION within one step.
            Phase::Validation => None,
            Phase::Success => match observed {
                Some(Observation::Activated) => Some(MasterStep::BeginLogTransfer),
                // Refused: it cannot change by asking again (ACTIVATE_ANSWERED says it never
                // happens), so no free retry.
                Some(Observation::ActivateRefused) => None,
                _ => quiet(|b| matches!(b, Body::Activate(_))).then_some(MasterStep::SendActivate),
            },
            Phase::LogTransfer => match observed {
                Some(Observation::LogAcked(_)) => Some(MasterStep::ConfirmLogs),
                Some(Observation::LogGone) => Some(MasterStep::LogsGone),
                // Refused: only the deadline (GiveUpLogs) ends the wait.
                Some(Observation::LogRefused) => None,
                _ => quiet(|b| matches!(b, Body::Logs { .. })).then_some(MasterStep::SendLogs),
            },
            Phase::Abort => {
                if !record.import_may_exist() || observed == Some(Observation::Dropped) {
                    Some(MasterStep::Unlock)
                } else if observed == Some(Observation::DropRefused) {
                    None
                } else {
                    quiet(|b| matches!(b, Body::DropImport)).then_some(MasterStep::SendDrop)
                }
            }
            Phase::Done | Phase::AbortDone => None,
        }
    }

    /// Moves migration `id` on controller `at` to `to` (`apply_transition` + `model_effect`),
    /// asserting that the edge is in the phase graph unless a planted bug takes it.
    fn transition(&self, s: &mut State, at: Ctl, id: MigId, to: Phase) {
        let uuid = id.uuid;
        let u = usize::from(uuid);
        let from = s.ctl(at).record(id).expect("the record exists").phase;
        let bug_edge =
            self.bugs.abort_after_success && from == Phase::Success && to == Phase::Abort;
        assert!(
            from.can_transition_to(to) || bug_edge,
            "illegal transition {from:?} → {to:?}"
        );
        let record = s.ctl_mut(at).record_mut(id);
        record.phase = to;
        let target = record.target;
        if to == Phase::Abort {
            record.aborted_from = Some(from);
        }
        let drop_import = to == Phase::Abort && record.import_may_exist();
        if to == Phase::Abort {
            s.ghost.aborted |= id.bit();
        }
        if drop_import {
            // The master asks the target to drop the import at once.
            s.network.insert(Msg {
                id,
                from: at,
                to: target,
                body: Body::DropImport,
            });
        }
        s.ctl_mut(at).observed[u] = None;
        match to {
            Phase::Quiesce => {
                let copy = s.copy_mut(at, uuid);
                copy.lock = Some(id.attempt);
                let data = copy.data.expect("a locked model has records");
                s.ghost.locked_as.push((id, (data.value, data.epoch)));
            }
            Phase::Success => {
                s.copy_mut(at, uuid).redirect = Some((id.attempt, target));
                s.ghost.committed |= id.bit();
            }
            Phase::Done => {
                // REAP: the data and the lock go, the redirect stays.
                let copy = s.copy_mut(at, uuid);
                copy.data = None;
                copy.lock = None;
                s.ghost.locked_as.retain(|(locked, _)| *locked != id);
            }
            Phase::AbortDone => {
                let copy = s.copy_mut(at, uuid);
                if copy.lock == Some(id.attempt) {
                    copy.lock = None;
                }
                if copy.redirect.map(|(a, _)| a) == Some(id.attempt) {
                    copy.redirect = None;
                }
                let now = copy.data.map(|d| (d.value, d.epoch));
                if let Some(at_lock) = s.ghost.locked_as.iter().position(|(l, _)| *l == id) {
                    if Some(s.ghost.locked_as.remove(at_lock).1) != now {
                        s.ghost.abort_changed_source = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn master(&self, s: &mut State, at: Ctl, uuid: Uuid, step: MasterStep) {
        let u = usize::from(uuid);
        let record = *s.ctl(at).running(uuid).expect("a running migration");
        let id = record.id;
        let send = |s: &mut State, body: Body| {
            s.network.insert(Msg {
                id,
                from: at,
                to: record.target,
                body,
            });
        };
        match step {
            MasterStep::Lock => {
                // `apply_transition`'s Lock effect: the model must still be there and unlocked
                // (`Tx::model`); a destroy may have come between the prechecks and the lock.
                if s.copy(at, uuid).writable() {
                    self.transition(s, at, id, Phase::Quiesce);
                    return;
                }
                if s.ghost.lock_refused & id.bit() != 0 {
                    s.ghost.refused_commit_repeated = true;
                }
                s.ghost.lock_refused |= id.bit();
                if !self.bugs.retry_refused_commit {
                    // The refusal is an observation `next_action` acts on: ABORT.
                    s.ctl_mut(at).observed[u] = Some(Observation::CommitRefused);
                }
            }
            MasterStep::AbortRefused | MasterStep::ImportFailed => {
                self.transition(s, at, id, Phase::Abort)
            }
            MasterStep::BeginImport => {
                self.transition(s, at, id, Phase::Import);
                self.master(s, at, uuid, MasterStep::SendImport);
            }
            MasterStep::SendImport => {
                let data = s.copy(at, uuid).data.expect("a locked model has records");
                // The log travels separately.
                send(s, Body::Import(Data { log: 0, ..data }));
            }
            MasterStep::ConfirmImport => {
                let Some(Observation::Imported(digest)) = s.ctl(at).observed[u] else {
                    unreachable!("ConfirmImport needs an observed import");
                };
                s.ctl_mut(at).record_mut(id).target_digest = Some(digest);
                self.transition(s, at, id, Phase::Validation);
                let source = s.copy(at, uuid).data.map(|d| d.digest());
                if source == Some(digest) {
                    self.transition(s, at, id, Phase::Success);
                    self.master(s, at, uuid, MasterStep::SendActivate);
                } else {
                    self.transition(s, at, id, Phase::Abort);
                }
            }
            MasterStep::SendActivate => {
                let epoch = s.copy(at, uuid).data.expect("records until REAP").epoch;
                send(s, Body::Activate(epoch + 1));
            }
            MasterStep::BeginLogTransfer => {
                self.transition(s, at, id, Phase::LogTransfer);
                self.master(s, at, uuid, MasterStep::SendLogs);
            }
            MasterStep::SendLogs => {
                let data = s.copy(at, uuid).data.expect("records until REAP");
                send(
                    s,
                    Body::Logs {
                        records: data.log_from(record.log_position),
                        upto: data.next_log,
                    },
                );
            }
            MasterStep::ConfirmLogs => {
                let Some(Observation::LogAcked(position)) = s.ctl(at).observed[u] else {
                    unreachable!("ConfirmLogs needs an acknowledged log");
                };
                let record = s.ctl_mut(at).record_mut(id);
                record.log_position = record.log_position.max(position);
                let position = record.log_position;
                let data = s.copy(at, uuid).data.expect("records until REAP");
                if data.log_from(position) == 0 {
                    self.transition(s, at, id, Phase::Done);
                } else {
                    s.ctl_mut(at).observed[u] = None;
                }
            }
            MasterStep::LogsGone => {
                // The operator destroyed the model on the target: its log went with it.
                let data = s.copy(at, uuid).data.expect("records until REAP");
                s.ghost.given_up_logs[u] |= data.log_from(record.log_position);
                self.transition(s, at, id, Phase::Done);
            }
            MasterStep::SendDrop => send(s, Body::DropImport),
            MasterStep::Unlock => self.transition(s, at, id, Phase::AbortDone),
        }
    }

    /// Whether `ctl migrate` of `uuid` to `to` passes the prechecks now (source's and
    /// target's): the model is owned and writable on a controller other than `to`, that
    /// controller runs no migration of it, its inbound log transfer has ended (item 2), and
    /// `to` holds no records of it but a leftover import.
    pub fn can_migrate(&self, s: &State, uuid: Uuid, to: Ctl) -> bool {
        let Some(from) = s.owner(uuid) else {
            return false;
        };
        let source = s.copy(from, uuid);
        let target = s.copy(to, uuid);
        from != to
            && source.writable()
            && (source.log_in.is_none() || self.bugs.onward_during_log_transfer)
            && s.ctl(from).running(uuid).is_none()
            && (target.data.is_none() || target.import.is_some())
    }

    fn source_receives(&self, s: &mut State, msg: Msg) {
        let at = msg.to;
        if msg.body == Body::Ask {
            let answer = s.ctl(at).answer(msg.id);
            s.network.insert(Msg {
                id: msg.id,
                from: at,
                to: msg.from,
                body: Body::Answer(answer),
            });
            return;
        }
        let Some(phase) = s
            .ctl(at)
            .running(msg.id.uuid)
            .filter(|r| r.id == msg.id)
            .map(|r| r.phase)
        else {
            // A late reply for an ended migration: nothing waits for it.
            return;
        };
        let observation = match (msg.body, phase) {
            (Body::ImportAck(digest), Phase::Import) => Observation::Imported(digest),
            (Body::ImportRefused, Phase::Import) => Observation::ImportRefused,
            (Body::ActivateAck, Phase::Success) => Observation::Activated,
            (Body::ActivateRefused, Phase::Success) => Observation::ActivateRefused,
            (Body::DropAck, Phase::Abort) => Observation::Dropped,
            (Body::DropRefused, Phase::Abort) => Observation::DropRefused,
            (Body::LogAck(position), Phase::LogTransfer) => Observation::LogAcked(position),
            (Body::LogRefused, Phase::LogTransfer) => Observation::LogRefused,
            (Body::LogGone, Phase::LogTransfer) => Observation::LogGone,
            // A late reply for an earlier phase.
            _ => return,
        };
        let slot = &mut s.ctl_mut(at).observed[usize::from(msg.id.uuid)];
        let refusal = matches!(
            observation,
            Observation::ImportRefused
                | Observation::ActivateRefused
                | Observation::DropRefused
                | Observation::LogRefused
        );
        // A late refusal (of a duplicate) does not undo an acknowledgement already observed.
        if !(refusal && slot.is_some()) {
            *slot = Some(observation);
        }
    }

    /// Changes what `at` holds of `uuid`; a changed import or log transfer resets the
    /// sweeper's question about it.
    fn set_copy(s: &mut State, at: Ctl, uuid: Uuid, copy: Holding) {
        let old = *s.copy(at, uuid);
        *s.copy_mut(at, uuid) = copy;
        if (old.import, old.log_in) != (copy.import, copy.log_in) {
            let ctl = s.ctl_mut(at);
            if ctl.asking.is_some_and(|id| id.uuid == uuid) {
                ctl.asking = None;
            }
            if ctl.heard.is_some_and(|(id, _)| id.uuid == uuid) {
                ctl.heard = None;
            }
        }
    }

    fn target_receives(&self, s: &mut State, msg: Msg) {
        let at = msg.to;
        let id = msg.id;
        let uuid = id.uuid;
        let mut copy = *s.copy(at, uuid);
        let inbound = Inbound {
            attempt: id.attempt,
            from: msg.from,
        };
        let reply = match msg.body {
            Body::Import(data) => {
                // Staging (`Stage`): chunks are proposed under request ids; a request id seen
                // before is answered from its idempotency record and stages nothing.
                let digest = data.digest();
                let request = ((!self.bugs.content_request_ids).then_some(id), uuid, digest);
                let ctl = s.ctl_mut(at);
                if ctl.staged_requests.insert(request) {
                    ctl.staged = Some((uuid, digest));
                }
                // `import_model`: a repeat is "already imported"; a leftover of an older
                // attempt is replaced; anything else refuses.
                let held = copy.import.map(|i| i.attempt);
                if held == Some(id.attempt) {
                    // (The import record keeps the digest; only a restore that ignores the
                    // markers can take the records from under it.)
                    Body::ImportAck(copy.data.map_or(digest, |d| d.digest()))
                } else if (copy.data.is_some() && held.is_none())
                    || held.is_some_and(|a| a > id.attempt)
                    || copy.activated.is_some_and(|a| a >= id.attempt)
                    || s.ctl(at).staged != Some((uuid, digest))
                {
                    // Active here, a newer import, an attempt older than one that already
                    // activated the model here (a late message), or the staged description
                    // is missing ("blob not found; upload it first").
                    Body::ImportRefused
                } else {
                    s.ctl_mut(at).staged = None;
                    copy.data = Some(data);
                    copy.import = Some(inbound);
                    Self::set_copy(s, at, uuid, copy);
                    Body::ImportAck(digest)
                }
            }
            Body::Activate(epoch) => {
                // `target_activate_decision`: only the import of exactly this id; a repeat is
                // acknowledged, also after the model left (the activation is remembered).
                let activated_here = copy.activated == Some(id.attempt);
                let still_here = copy.owns();
                let importing = copy.import.map(|i| i.attempt) == Some(id.attempt);
                if let Some(data) = copy.data.filter(|_| importing) {
                    copy.data = Some(Data { epoch, ..data });
                    copy.import = None;
                    copy.redirect = None;
                    copy.lock = None;
                    copy.activated = Some(id.attempt);
                    copy.log_in = (!self.bugs.onward_during_log_transfer).then_some(inbound);
                    Self::set_copy(s, at, uuid, copy);
                    self.note_home(s, at, uuid);
                    Body::ActivateAck
                } else if activated_here && (still_here || !self.bugs.forget_activation_when_gone) {
                    Body::ActivateAck
                } else {
                    let waiting = s
                        .ctl(msg.from)
                        .record(id)
                        .is_some_and(|r| r.phase == Phase::Success);
                    if waiting {
                        s.ghost.activate_refused_after_commit = true;
                    }
                    Body::ActivateRefused
                }
            }
            Body::DropImport => {
                // `target_drop_decision`: never touches another attempt's import.
                if copy.import.map(|i| i.attempt) == Some(id.attempt) {
                    copy.data = None;
                    copy.import = None;
                    Self::set_copy(s, at, uuid, copy);
                    Body::DropAck
                } else if copy.activated == Some(id.attempt) && copy.owns() {
                    Body::DropRefused
                } else {
                    Body::DropAck
                }
            }
            Body::Logs { records, upto } => {
                // `import_log`: only into the model this migration activated, while it is
                // active here and its inbound log transfer is open; a destroyed model has no
                // log to add to.
                let accepts = if self.bugs.onward_during_log_transfer {
                    copy.activated == Some(id.attempt) && copy.data.is_some()
                } else {
                    copy.log_in == Some(inbound) && copy.writable()
                };
                if accepts {
                    let mut data = copy.data.expect("checked");
                    if records & !data.log != 0 {
                        s.ghost.log_moved = true;
                    }
                    data.log |= records;
                    data.next_log = data.next_log.max(upto);
                    copy.data = Some(data);
                    copy.log_in = None;
                    Self::set_copy(s, at, uuid, copy);
                    Body::LogAck(upto)
                } else if !self.bugs.onward_during_log_transfer
                    && copy.activated.is_some_and(|a| a >= id.attempt)
                    && copy.log_in.map(|i| i.attempt) != Some(id.attempt)
                {
                    // This inbound log transfer has ended here (its last batch was stored, or
                    // the model left after it ended): a repeat is acknowledged as complete.
                    Body::LogAck(upto)
                } else if copy.activated == Some(id.attempt)
                    && copy.data.is_none()
                    && copy.redirect.is_none()
                {
                    if copy.log_in == Some(inbound) {
                        copy.log_in = None;
                        Self::set_copy(s, at, uuid, copy);
                    }
                    Body::LogGone
                } else {
                    Body::LogRefused
                }
            }
            Body::Answer(answer) => {
                if s.ctl(at).asking == Some(id) {
                    self.sweeper_hears(s, at, id, answer);
                }
                return;
            }
            _ => unreachable!("{msg:?} is not for a target"),
        };
        s.network.insert(Msg {
            id,
            from: at,
            to: msg.from,
            body: reply,
        });
    }

    /// The sweeper's rules: an import is dropped on *unknown* or *aborted*
    /// (`target_leftover_decision`; kept on silence unless the planted bug drops it); an open
    /// inbound log transfer ends when the source says it is past LOGTRANSFER or knows nothing
    /// of it.
    fn sweeper_hears(&self, s: &mut State, at: Ctl, id: MigId, answer: Answer) {
        let uuid = id.uuid;
        let mut copy = *s.copy(at, uuid);
        let silence_drops = answer == Answer::Unreachable && self.bugs.drop_on_silence;
        if !self.sweeper_acts_on(&copy, id, answer) && !silence_drops {
            let ctl = s.ctl_mut(at);
            ctl.asking = None;
            ctl.heard = Some((id, answer));
            return;
        }
        if copy.import.map(|i| i.attempt) == Some(id.attempt) {
            copy.data = None;
            copy.import = None;
            s.ghost.leftover_dropped = true;
        } else {
            copy.log_in = None;
        }
        Self::set_copy(s, at, uuid, copy);
    }

    /// Whether the sweeper holding `copy` acts on `answer` about migration `id`: drops the
    /// import on *unknown* or *aborted*, ends the open log transfer on *unknown* or on the
    /// source having passed LOGTRANSFER.
    fn sweeper_acts_on(&self, copy: &Holding, id: MigId, answer: Answer) -> bool {
        let import = copy.import.map(|i| i.attempt) == Some(id.attempt)
            && matches!(answer, Answer::Unknown | Answer::Aborted);
        let log_in = copy.log_in.map(|i| i.attempt) == Some(id.attempt)
            && matches!(
                answer,
                Answer::Unknown | Answer::Committed { log_ended: true }
            );
        import || log_in
    }

    /// What controller `at`'s sweeper would ask about: an import or an open inbound log
    /// transfer, with the controller it came from.
    fn sweeper_subject(&self, s: &State, at: Ctl) -> Option<(MigId, Ctl)> {
        uuids().find_map(|uuid| {
            let copy = s.copy(at, uuid);
            let inbound = match (copy.import, copy.log_in) {
                (Some(import), _) if !self.bugs.keep_leftover_imports => import,
                (_, Some(log_in)) => log_in,
                _ => return None,
            };
            Some((
                MigId {
                    uuid,
                    attempt: inbound.attempt,
                },
                inbound.from,
            ))
        })
    }

    fn note_home(&self, s: &mut State, at: Ctl, uuid: Uuid) {
        if uuid == 0 {
            let bit = 1 << at;
            if s.ghost.homes & bit != 0 {
                s.ghost.returned = true;
            }
            s.ghost.homes |= bit;
        }
    }

    fn deliver(&self, s: &mut State, msg: Msg) {
        match msg.body {
            Body::Import(_)
            | Body::Activate(_)
            | Body::DropImport
            | Body::Logs { .. }
            | Body::Answer(_) => self.target_receives(s, msg),
            _ => self.source_receives(s, msg),
        }
    }

    /// What a crash of `at`'s leader changes: the observations, and with the planted bug the
    /// phases after the lock. `None` when it would change nothing.
    fn crashed(&self, s: &State, at: Ctl) -> Option<State> {
        let mut next = s.clone();
        let ctl = next.ctl_mut(at);
        ctl.observed = [None; UUIDS];
        ctl.asking = None;
        ctl.heard = None;
        if self.bugs.forget_phase_on_crash {
            for record in &mut ctl.records {
                if matches!(
                    record.phase,
                    Phase::Import | Phase::Validation | Phase::Success | Phase::Abort
                ) {
                    *record = Record {
                        phase: Phase::Quiesce,
                        ..Record::new(record.id, record.target)
                    };
                }
            }
        }
        if next == *s {
            return None;
        }
        let mine = next
            .ctl(at)
            .records
            .iter()
            .fold(0u16, |bits, r| bits | r.id.bit());
        next.ghost.lock_refused &= !mine;
        Some(next)
    }

    /// A backup of `at` (`backup_content`): with the planted bug, the records only.
    fn backup_of(&self, s: &State, at: Ctl) -> Backup {
        let ctl = s.ctl(at);
        let owned_then = ctl.copies.map(|c| c.data.map(|_| c.owns()));
        if self.bugs.restore_ignores_migrations {
            return Backup {
                copies: ctl.copies.map(|c| Holding {
                    data: c.data,
                    ..Holding::default()
                }),
                records: Vec::new(),
                owned_then,
            };
        }
        Backup {
            copies: ctl.copies,
            records: ctl.records.clone(),
            owned_then,
        }
    }

    /// What restoring `at` from `backup` leaves there (`restore_backup`), or `None` when the
    /// restore is refused:
    /// - refused while a migration is in flight on `at`;
    /// - a model whose migration memory (its migration records, lock, redirect, import and
    ///   activation) is the same in the backup and now is put back as the backup has it;
    /// - a model some migration touched since the backup is kept as it is now (a restore
    ///   never moves ownership back), and a backup holding a migration in flight that this
    ///   controller no longer knows of is refused.
    ///
    /// With the planted bugs: the old restore (records replaced, markers and records kept,
    /// never refused), or an exact restore (everything as the backup has it).
    fn restored(&self, s: &State, at: Ctl, backup: &Backup) -> Option<(Controller, [bool; UUIDS])> {
        let now = s.ctl(at);
        let mut next = now.clone();
        let mut restored = [false; UUIDS];
        if self.bugs.restore_ignores_migrations {
            for (copy, archived) in next.copies.iter_mut().zip(&backup.copies) {
                copy.data = archived.data;
            }
            return Some((next, [true; UUIDS]));
        }
        if now.migration_in_flight() {
            return None;
        }
        if self.bugs.restore_rewinds_ownership {
            next.copies = backup.copies;
            next.records = backup.records.clone();
            return Some((next, [true; UUIDS]));
        }
        for uuid in uuids() {
            let u = usize::from(uuid);
            let records = |records: &[Record]| -> Vec<Record> {
                records
                    .iter()
                    .filter(|r| r.id.uuid == uuid)
                    .copied()
                    .collect()
            };
            let (then, now_records) = (records(&backup.records), records(&now.records));
            let memory = |copy: &Holding, records: &Vec<Record>| {
                (
                    copy.migration_markers(),
                    copy.activated,
                    copy.log_in,
                    records.clone(),
                )
            };
            if memory(&backup.copies[u], &then) == memory(&now.copies[u], &now_records) {
                next.copies[u] = backup.copies[u];
                restored[u] = true;
            } else if then
                .iter()
                .any(|r| !r.phase.is_terminal() && !now_records.iter().any(|n| n.id == r.id))
            {
                return None;
            }
        }
        Some((next, restored))
    }

    fn restore(&self, s: &mut State, at: Ctl) -> Option<()> {
        let backup = s.ctl(at).backup.clone()?;
        let before: Vec<Holding> = s.ctl(at).copies.to_vec();
        let (next, restored) = self.restored(s, at, &backup)?;
        if next == *s.ctl(at) {
            return None;
        }
        *s.ctl_mut(at) = Controller {
            asking: None,
            heard: None,
            ..next
        };
        s.ghost.restored = true;
        for uuid in uuids() {
            let u = usize::from(uuid);
            if !restored[u] {
                continue;
            }
            let (old, new) = (before[u], *s.copy(at, uuid));
            if new.owns() && !old.owns() && backup.owned_then[u] == Some(false) {
                // What the backup held as an import or a redirect is owned now.
                s.ghost.restore_activated = true;
            }
            // A restore is the operator rewinding this controller's copy: what it put back is
            // now the model's latest data, and the log records only the old copy held are
            // taken back.
            let elsewhere = s
                .ids()
                .filter(|c| *c != at)
                .filter_map(|c| s.copy(c, uuid).data)
                .fold(0u8, |bits, d| bits | d.log);
            let old_log = old.data.map_or(0, |d| d.log);
            let new_log = new.data.map_or(0, |d| d.log);
            s.ghost.written_logs[u] = (s.ghost.written_logs[u] & !(old_log & !elsewhere)) | new_log;
            if new.owns() {
                s.ghost.value[u] = new.data.expect("owned").value;
                s.ghost.gone[u] = false;
            } else if old.owns() {
                s.ghost.gone[u] = true;
            }
        }
        Some(())
    }

    /// Whether model `uuid` is settled: no migration of it running, no import or open log
    /// transfer anywhere, and exactly one owner unless it was destroyed.
    pub fn settled(&self, s: &State, uuid: Uuid) -> bool {
        let u = usize::from(uuid);
        s.running(uuid).next().is_none()
            && s.controllers
                .iter()
                .all(|c| c.copies[u].import.is_none() && c.copies[u].log_in.is_none())
            && (s.ghost.gone[u] || s.owners(uuid) == 1 || !self.exists(s, uuid))
    }

    /// Whether model `uuid` was ever created.
    fn exists(&self, s: &State, uuid: Uuid) -> bool {
        uuid == 0
            || s.controllers
                .iter()
                .any(|c| c.copies[usize::from(uuid)] != Holding::default())
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

    fn disturb(s: &mut State) {
        s.ghost.disturbed |= s.in_flight_ids();
    }

    fn fault(s: &mut State) {
        s.faults_left -= 1;
        Self::disturb(s);
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut controllers = vec![
            Controller::new([Holding::default(); UUIDS]);
            usize::from(self.scenario.controllers)
        ];
        controllers[0].copies[0].data = Some(Data {
            value: 0,
            epoch: 1,
            next_log: 0,
            log: 0,
        });
        vec![State {
            controllers,
            network: BTreeSet::new(),
            faults_left: self.scenario.faults,
            budget: self.scenario.budget,
            ghost: Ghost {
                homes: 1,
                ..Ghost::default()
            },
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for at in s.ids() {
            for uuid in uuids() {
                if let Some(step) = self.master_step(s, at, uuid) {
                    actions.push(Action::Master { at, uuid, step });
                }
            }
        }
        let budget = s.budget;
        for uuid in uuids() {
            if budget.migrations > 0 {
                for to in s.ids() {
                    if self.can_migrate(s, uuid, to) {
                        actions.push(Action::Migrate { uuid, to });
                    }
                }
            }
            if let Some(owner) = s.owner(uuid) {
                let copy = s.copy(owner, uuid);
                let writable = copy.writable() || (self.bugs.write_while_locked && copy.owns());
                if budget.writes > 0 && writable {
                    actions.push(Action::Write(uuid));
                }
                if budget.logs > 0 && copy.writable() {
                    actions.push(Action::Log(uuid));
                }
                if budget.destroys > 0 && copy.writable() {
                    actions.push(Action::Destroy(uuid));
                }
            }
        }
        if budget.recreates > 0 && s.ghost.gone[0] && !self.exists(s, 1) {
            for at in s.ids() {
                actions.push(Action::Recreate { at });
            }
        }
        for at in s.ids() {
            if budget.backups > 0 {
                actions.push(Action::Backup(at));
            }
            if budget.restores > 0 && s.ctl(at).backup.is_some() {
                actions.push(Action::Restore(at));
            }
            let ctl = s.ctl(at);
            if let Some((id, from)) = self.sweeper_subject(s, at) {
                let answer = s.ctl(from).answer(id);
                // Asking only matters when the answer would make the sweeper act (asking
                // otherwise changes nothing but what it remembers hearing), except with the
                // planted bug, where a question lost on the way is what drops the import.
                let worth_asking = if self.bugs.drop_on_silence {
                    ctl.heard != Some((id, answer))
                } else {
                    self.sweeper_acts_on(s.copy(at, id.uuid), id, answer)
                };
                if ctl.asking.is_none() && worth_asking {
                    actions.push(Action::Ask { at, id });
                }
            }
            if let Some(id) = ctl.asking {
                if !s.in_flight(|m| m.id == id && matches!(m.body, Body::Ask | Body::Answer(_))) {
                    actions.push(Action::Silence(at));
                }
            }
            if self.bugs.activate_before_decision {
                for uuid in uuids() {
                    if s.copy(at, uuid).import.is_some() {
                        actions.push(Action::ActivateEarly { at, uuid });
                    }
                }
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
        for at in s.ids() {
            actions.push(Action::Crash(at));
            for uuid in uuids() {
                let Some(record) = s.ctl(at).running(uuid) else {
                    continue;
                };
                let can_time_out = match record.phase {
                    Phase::Precheck | Phase::Quiesce | Phase::Import | Phase::Validation => true,
                    Phase::Success => self.bugs.abort_after_success,
                    _ => false,
                };
                if can_time_out {
                    actions.push(Action::Timeout { at, uuid });
                }
                if record.phase == Phase::Abort && record.import_may_exist() {
                    actions.push(Action::GiveUpDrop { at, uuid });
                }
                if record.phase == Phase::LogTransfer {
                    actions.push(Action::GiveUpLogs { at, uuid });
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Master { at, uuid, step } => self.master(&mut s, at, uuid, step),
            Action::Migrate { uuid, to } => {
                let from = s.owner(uuid)?;
                let attempt = s.ctl(from).next_attempt(uuid);
                let id = MigId { uuid, attempt };
                s.ctl_mut(from).records.push(Record::new(id, to));
                s.ctl_mut(from).observed[usize::from(uuid)] = None;
                s.budget.migrations -= 1;
            }
            Action::Destroy(uuid) => {
                let at = s.owner(uuid)?;
                s.copy_mut(at, uuid).data = None;
                s.ghost.gone[usize::from(uuid)] = true;
                s.budget.destroys -= 1;
                Self::disturb(&mut s);
            }
            Action::Recreate { at } => {
                s.copy_mut(at, 1).data = Some(Data {
                    value: 0,
                    epoch: 0,
                    next_log: 0,
                    log: 0,
                });
                s.budget.recreates -= 1;
            }
            Action::Backup(at) => {
                let backup = self.backup_of(&s, at);
                s.ctl_mut(at).backup = Some(backup);
                s.budget.backups -= 1;
            }
            Action::Restore(at) => {
                self.restore(&mut s, at)?;
                s.budget.restores -= 1;
                Self::disturb(&mut s);
            }
            Action::Write(uuid) => {
                let at = s.owner(uuid)?;
                let u = usize::from(uuid);
                let data = s.copy_mut(at, uuid).data.as_mut().expect("owned");
                data.value += 1;
                s.ghost.value[u] = data.value;
                s.budget.writes -= 1;
            }
            Action::Log(uuid) => {
                let at = s.owner(uuid)?;
                let u = usize::from(uuid);
                let data = s.copy_mut(at, uuid).data.as_mut().expect("owned");
                let bit = 1u8 << data.next_log;
                data.log |= bit;
                data.next_log += 1;
                s.ghost.written_logs[u] |= bit;
                s.budget.logs -= 1;
            }
            Action::Ask { at, id } => {
                let (_, from) = self.sweeper_subject(&s, at)?;
                s.ctl_mut(at).asking = Some(id);
                s.network.insert(Msg {
                    id,
                    from: at,
                    to: from,
                    body: Body::Ask,
                });
            }
            Action::Silence(at) => {
                let id = s.ctl(at).asking?;
                self.sweeper_hears(&mut s, at, id, Answer::Unreachable);
            }
            Action::ActivateEarly { at, uuid } => {
                let mut copy = *s.copy(at, uuid);
                let import = copy.import?;
                let data = copy.data.expect("an import has records");
                copy.data = Some(Data {
                    epoch: data.epoch + 1,
                    ..data
                });
                copy.import = None;
                copy.activated = Some(import.attempt);
                Self::set_copy(&mut s, at, uuid, copy);
            }
            Action::Deliver(msg) => {
                s.network.remove(&msg);
                self.deliver(&mut s, msg);
            }
            Action::Duplicate(msg) => {
                Self::fault(&mut s);
                self.deliver(&mut s, msg);
                s.network.insert(msg);
            }
            Action::Drop(msg) => {
                Self::fault(&mut s);
                s.network.remove(&msg);
            }
            Action::Crash(at) => {
                s = self.crashed(last, at)?;
                Self::fault(&mut s);
            }
            Action::Timeout { at, uuid } => {
                Self::fault(&mut s);
                let id = s.ctl(at).running(uuid)?.id;
                self.transition(&mut s, at, id, Phase::Abort);
            }
            Action::GiveUpDrop { at, uuid } => {
                Self::fault(&mut s);
                let id = s.ctl(at).running(uuid)?.id;
                self.transition(&mut s, at, id, Phase::AbortDone);
            }
            Action::GiveUpLogs { at, uuid } => {
                Self::fault(&mut s);
                let record = *s.ctl(at).running(uuid)?;
                let data = s.copy(at, uuid).data.unwrap_or_default();
                s.ghost.given_up_logs[usize::from(uuid)] |= data.log_from(record.log_position);
                self.transition(&mut s, at, record.id, Phase::Done);
            }
        }
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(AT_MOST_ONE_OWNER, |_, s: &State| {
                uuids().all(|u| s.owners(u) <= 1)
            }),
            Property::always(ENDED_WITH_ONE_OWNER, |model: &ProtocolModel, s: &State| {
                uuids().all(|u| {
                    s.running(u).next().is_some()
                        || s.ghost.gone[usize::from(u)]
                        || !model.exists(s, u)
                        || s.owners(u) == 1
                })
            }),
            Property::always(ONE_DECISION, |_, s: &State| {
                s.ghost.committed & s.ghost.aborted == 0
            }),
            Property::always(ABORT_RESTORES_SOURCE, |_, s: &State| {
                !s.ghost.abort_changed_source
            }),
            Property::always(NEVER_LOST, |model: &ProtocolModel, s: &State| {
                uuids()
                    .all(|u| s.ghost.gone[usize::from(u)] || !model.exists(s, u) || s.reachable(u))
            }),
            Property::always(NO_LOST_WRITE, |_, s: &State| {
                uuids().all(|u| {
                    let latest = s.ghost.value[usize::from(u)];
                    s.controllers.iter().all(|c| {
                        let copy = &c.copies[usize::from(u)];
                        !copy.owns() || copy.data.map(|d| d.value) == Some(latest)
                    })
                })
            }),
            Property::always(LOGS_KEPT, |_, s: &State| uuids().all(|u| s.logs_kept(u))),
            Property::always(UNDISTURBED_SUCCEEDS, |_, s: &State| {
                s.controllers
                    .iter()
                    .flat_map(|c| &c.records)
                    .all(|r| !r.phase.is_aborting() || s.ghost.disturbed & r.id.bit() != 0)
            }),
            Property::always(ACTIVATE_ANSWERED, |_, s: &State| {
                !s.ghost.activate_refused_after_commit
            }),
            Property::always(REFUSED_COMMIT_NOT_REPEATED, |_, s: &State| {
                !s.ghost.refused_commit_repeated
            }),
            Property::always(RESTORE_NEVER_ACTIVATES, |_, s: &State| {
                !s.ghost.restore_activated
            }),
            Property::eventually(EVERY_MIGRATION_ENDS, |model: &ProtocolModel, s: &State| {
                uuids().all(|u| model.settled(s, u)) && model.is_final(s)
            }),
            Property::sometimes(SOME_DONE, |_, s: &State| {
                s.controllers
                    .iter()
                    .flat_map(|c| &c.records)
                    .any(|r| r.phase == Phase::Done)
            }),
            Property::sometimes(SOME_ABORTDONE, |_, s: &State| {
                s.controllers
                    .iter()
                    .flat_map(|c| &c.records)
                    .any(|r| r.phase == Phase::AbortDone)
            }),
            Property::sometimes(SOME_RETRY_DONE, |_, s: &State| {
                let records: Vec<&Record> = s.controllers.iter().flat_map(|c| &c.records).collect();
                records.iter().any(|done| {
                    done.phase == Phase::Done
                        && records.iter().any(|r| {
                            r.phase == Phase::AbortDone
                                && r.id.uuid == done.id.uuid
                                && r.id.attempt < done.id.attempt
                        })
                })
            }),
            Property::sometimes(SOME_LEFTOVER_DROPPED, |_, s: &State| {
                s.ghost.leftover_dropped
            }),
            Property::sometimes(SOME_LOG_MOVED, |_, s: &State| s.ghost.log_moved),
            Property::sometimes(SOME_ONWARD, |_, s: &State| s.ghost.homes.count_ones() >= 3),
            Property::sometimes(SOME_RETURN, |_, s: &State| s.ghost.returned),
            Property::sometimes(SOME_RECREATED_MIGRATED, |_, s: &State| {
                s.controllers
                    .iter()
                    .flat_map(|c| &c.records)
                    .any(|r| r.id.uuid == 1 && r.phase == Phase::Done)
            }),
            Property::sometimes(SOME_RESTORE, |_, s: &State| s.ghost.restored),
        ]
    }
}
