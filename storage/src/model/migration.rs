//! The migration's phase machine and the migration master's "what next", as pure code: the
//! persisted `MigrationRecord`, the legal `Phase` transitions, `next_action` (persisted record +
//! observations + time → one `Action`) and the target's rules for leftover imports, Activate and
//! drop requests. No I/O, no async, no clock: time comes in as `now_unix_ms`. `docs/migration.md`
//! describes the protocol this implements.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::ErrorKind;

pub use starling_proto::phase::Phase;

pub use starling_proto::limits::DESCRIPTION_BYTES_MAX;

/// What a transition does to the model itself, in the same atomic write as the record's new
/// phase. The apply layer must commit both together or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelEffect {
    /// The model is untouched.
    Nothing,
    /// CATCHUP → QUIESCE (the fence): the model becomes read-only, locked by this migration
    /// id; the lock index and the source's model digest at it are recorded.
    Lock,
    /// QUIESCE → SUCCESS: the model becomes a redirect to the target (point of no return).
    Redirect,
    /// Any phase → ABORT, and SUCCESS → LOGTRANSFER: the model's change feed stops recording
    /// (its entries are trimmed afterwards, in bounded steps).
    StopFeed,
    /// ABORT → ABORTDONE: the lock held by this migration id (if any) is released.
    Unlock,
}

/// The change to the model that goes with the transition `from → to`.
pub fn model_effect(from: Phase, to: Phase) -> ModelEffect {
    match (from, to) {
        (Phase::Catchup, Phase::Quiesce) => ModelEffect::Lock,
        (Phase::Quiesce, Phase::Success) => ModelEffect::Redirect,
        (_, Phase::Abort) | (Phase::Success, Phase::LogTransfer) => ModelEffect::StopFeed,
        (Phase::Abort, Phase::AbortDone) => ModelEffect::Unlock,
        _ => ModelEffect::Nothing,
    }
}

/// A place in a model's change feed: the log index of the command that changed the model and
/// its position in that entry's batch. Ordered by index, then position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedPosition {
    /// The log index.
    pub index: u64,
    /// The position in the entry's batch (0 for a lone command).
    pub position: u32,
}

impl FeedPosition {
    /// The position `(index, position)`.
    pub fn new(index: u64, position: u32) -> Self {
        FeedPosition { index, position }
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.position)
    }
}

/// The digests of a copy the source exported in PRECOPY (hex model digests,
/// `model::digest`): of the pairs read, and of the model at the feed's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyDigests {
    /// What the target must hold after importing the copy.
    pub copy_digest: String,
    /// The model at the feed's start; the digest at the lock adds the feed's delta to it.
    pub base_digest: String,
}

/// A migration's id, `<model-uuid>:<attempt>`; attempts of one model count up from 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MigrationId {
    /// The migrating model's uuid.
    pub model_uuid: String,
    /// Which attempt to migrate this model this is.
    pub attempt: u64,
}

impl MigrationId {
    /// The id of attempt `attempt` for model `model_uuid`.
    pub fn new(model_uuid: impl Into<String>, attempt: u64) -> Self {
        MigrationId {
            model_uuid: model_uuid.into(),
            attempt,
        }
    }

    /// Parses `<model-uuid>:<attempt>`.
    pub fn parse(id: &str) -> Result<Self, MigrationError> {
        let invalid = |reason: &str| MigrationError::InvalidId {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let (model_uuid, attempt) = id
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected <model-uuid>:<attempt>"))?;
        if model_uuid.is_empty() {
            return Err(invalid("the model uuid is empty"));
        }
        let attempt = attempt
            .parse::<u64>()
            .map_err(|_| invalid("the attempt is not a number"))?;
        if attempt == 0 {
            return Err(invalid("attempts count from 1"));
        }
        Ok(MigrationId::new(model_uuid, attempt))
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.model_uuid, self.attempt)
    }
}

/// The controller a model migrates to: what the master dials and what the redirect names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetController {
    /// The target controller's uuid.
    pub controller_uuid: String,
    /// Its name, as the redirect and `ctl` show it.
    pub name: String,
    /// Its API endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// Hex sha256 of its CA certificate.
    pub ca_fingerprint: String,
}

/// One committed phase change, kept in the record for the operator (at most one per phase,
/// since no phase is re-entered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseChange {
    /// The phase left.
    pub from: Phase,
    /// The phase entered.
    pub to: Phase,
    /// When the change was proposed.
    pub at_unix_ms: i64,
    /// Why, in a sentence an operator can read.
    pub reason: String,
}

/// Everything persisted about one migration on the source (replicated through its Raft log):
/// what a master on any node needs to resume after a leader change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRecord {
    /// `<model-uuid>:<attempt>`.
    pub id: MigrationId,
    /// Where the model goes.
    pub target: TargetController,
    /// The user who started the migration.
    pub initiated_by: String,
    /// The model's ownership epoch when the migration started; the target activates at + 1.
    pub ownership_epoch: u64,
    /// The current phase.
    pub phase: Phase,
    /// When the current phase was entered; phase deadlines count from here.
    pub phase_since_unix_ms: i64,
    /// When the record was created.
    pub started_unix_ms: i64,
    /// When a terminal phase was entered.
    pub ended_unix_ms: Option<i64>,
    /// The phase ABORT was entered from (decides whether the target may hold an import).
    pub aborted_from: Option<Phase>,
    /// Why the migration aborted.
    pub abort_reason: Option<String>,
    /// An operator's abort request (`ctl abort-migration`), persisted so any master sees it.
    pub abort_requested: Option<String>,
    /// The source's model digest at the lock index (recorded with the lock).
    pub source_digest: Option<String>,
    /// The target's model digest once it sealed the import at the lock index (recorded with
    /// SUCCESS).
    pub target_digest: Option<String>,
    /// The log index from which the model's change feed records (the record's creation).
    pub feed_from_index: u64,
    /// The copy exported in PRECOPY (a new export replaces it while in PRECOPY).
    pub copy: Option<CopyDigests>,
    /// The lock's log index (QUIESCE on).
    pub lock_index: Option<u64>,
    /// Feed entries up to here were applied by the target and trimmed on the source.
    pub feed_acked: FeedPosition,
    /// Machines whose agents acknowledged the quiesce (lock-first protocol only).
    pub agents_acked: BTreeSet<String>,
    /// Machines whose agents logged in to the target and reported success.
    pub agents_validated: BTreeSet<String>,
    /// Machines whose agents reported a failed validation, with the agent's reason.
    pub agent_failures: BTreeMap<String, String>,
    /// How far the target has acknowledged the model's log (a log sequence number; 0 = none).
    pub log_transfer_position: u64,
    /// Every phase change so far, oldest first.
    pub history: Vec<PhaseChange>,
}

impl MigrationRecord {
    /// A new record in PRECHECK: nothing locked, nothing sent.
    pub fn new(
        id: MigrationId,
        target: TargetController,
        initiated_by: impl Into<String>,
        ownership_epoch: u64,
        now_unix_ms: i64,
    ) -> Self {
        MigrationRecord {
            id,
            target,
            initiated_by: initiated_by.into(),
            ownership_epoch,
            phase: Phase::Precheck,
            phase_since_unix_ms: now_unix_ms,
            started_unix_ms: now_unix_ms,
            ended_unix_ms: None,
            aborted_from: None,
            abort_reason: None,
            abort_requested: None,
            source_digest: None,
            target_digest: None,
            feed_from_index: 0,
            copy: None,
            lock_index: None,
            feed_acked: FeedPosition::default(),
            agents_acked: BTreeSet::new(),
            agents_validated: BTreeSet::new(),
            agent_failures: BTreeMap::new(),
            log_transfer_position: 0,
            history: Vec::new(),
        }
    }

    /// Whether the target may hold an import of this migration: PRECOPY is persisted before
    /// anything is sent, so a migration aborted from PRECHECK never sent anything. (A lock-first
    /// record aborted from QUIESCE had not sent anything either.)
    pub fn import_may_exist(&self) -> bool {
        match self.phase {
            Phase::Precheck => false,
            Phase::Abort | Phase::AbortDone => match self.aborted_from {
                Some(Phase::Precheck) => false,
                // The lock-first protocol locked before sending anything; the fence locks after
                // the copy and records the lock index.
                Some(Phase::Quiesce) => self.lock_index.is_some(),
                _ => true,
            },
            _ => true,
        }
    }
}

/// A refused change to a migration record. Each is matchable; `kind()` picks the gRPC code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// `from → to` is not an edge of the phase graph.
    #[error("migration {migration_id}: cannot move from {from} to {to}")]
    IllegalTransition {
        /// The migration.
        migration_id: String,
        /// Its current phase.
        from: Phase,
        /// The phase asked for.
        to: Phase,
    },
    /// The migration has ended; nothing about it changes any more.
    #[error("migration {migration_id} has ended in {phase}")]
    Ended {
        /// The migration.
        migration_id: String,
        /// Its terminal phase.
        phase: Phase,
    },
    /// An abort was asked for (by the operator or by the master) after SUCCESS was committed.
    #[error(
        "migration {migration_id} cannot be aborted: it is in {phase}, past SUCCESS, so model \
         {model_uuid} is already active on controller {target:?} and this controller only holds a \
         redirect to it; to move the model back, migrate it again from {target:?}"
    )]
    AbortAfterSuccess {
        /// The migration.
        migration_id: String,
        /// The model.
        model_uuid: String,
        /// Its committed phase.
        phase: Phase,
        /// The target controller's name.
        target: String,
    },
    /// An abort was requested; only ABORT may follow.
    #[error("migration {migration_id} is being aborted ({reason}); it cannot move to {to}")]
    AbortPending {
        /// The migration.
        migration_id: String,
        /// The operator's reason.
        reason: String,
        /// The phase that was asked for.
        to: Phase,
    },
    /// SUCCESS asked for without both digests recorded and equal.
    #[error(
        "migration {migration_id}: SUCCESS needs matching digests (source {source_digest:?}, \
         target {target_digest:?})"
    )]
    DigestsNotConfirmed {
        /// The migration.
        migration_id: String,
        /// The recorded source digest.
        source_digest: Option<String>,
        /// The recorded target digest.
        target_digest: Option<String>,
    },
    /// A digest was reported that differs from the one recorded earlier.
    #[error("migration {migration_id}: {side} digest {reported} differs from recorded {recorded}")]
    DigestConflict {
        /// The migration.
        migration_id: String,
        /// "source" or "target".
        side: &'static str,
        /// The digest recorded.
        recorded: String,
        /// The digest now reported.
        reported: String,
    },
    /// A report that belongs to another phase (e.g. a quiesce ack during VALIDATION).
    #[error("migration {migration_id} is in {phase}; {what} is only accepted in {expected}")]
    WrongPhase {
        /// The migration.
        migration_id: String,
        /// Its current phase.
        phase: Phase,
        /// What was reported.
        what: &'static str,
        /// The phase(s) it belongs to.
        expected: &'static str,
    },
    /// A migration id that does not parse.
    #[error("invalid migration id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target was asked to activate or drop an import it does not hold for this id.
    #[error("controller holds no import of migration {migration_id} ({state})")]
    NoSuchImport {
        /// The migration named in the request.
        migration_id: String,
        /// What the target holds instead.
        state: String,
    },
    /// The target was asked to activate an import that is still receiving chunks.
    #[error("the import of migration {migration_id} is not complete ({bytes} byte(s) staged)")]
    ImportIncomplete {
        /// The migration.
        migration_id: String,
        /// Bytes staged so far.
        bytes: u64,
    },
    /// No migration with that id is recorded here.
    #[error("no migration {migration_id} is recorded on this controller")]
    UnknownMigration {
        /// The id asked about.
        migration_id: String,
    },
    /// The model already has a migration that has not ended.
    #[error("model \"{model}\" is already migrating (migration {migration_id} is in {phase})")]
    AlreadyMigrating {
        /// The model's name.
        model: String,
        /// The running migration.
        migration_id: String,
        /// Its phase.
        phase: Phase,
    },
    /// The target was asked to import a model that is active on it.
    #[error("model {model_uuid} is active on this controller")]
    ModelActiveHere {
        /// The model.
        model_uuid: String,
    },
    /// The target was asked to drop a model that migration already activated.
    #[error(
        "model of migration {migration_id} is active on this controller and cannot be dropped"
    )]
    AlreadyActive {
        /// The migration.
        migration_id: String,
    },
    /// The target was asked to activate an import the source has not sealed: it does not hold
    /// the changes up to the source's lock yet.
    #[error(
        "the import of migration {migration_id} is not sealed: it does not hold the changes up \
         to the source's lock (it has them through {position})"
    )]
    ImportNotSealed {
        /// The migration.
        migration_id: String,
        /// The last feed entry the import holds.
        position: FeedPosition,
    },
    /// A batch of feed entries would leave a gap after what the import holds.
    #[error(
        "the import of migration {migration_id} holds changes through {position}; a batch \
         starting after {after} would leave a gap"
    )]
    FeedGap {
        /// The migration.
        migration_id: String,
        /// The last feed entry the import holds.
        position: FeedPosition,
        /// Where the batch starts.
        after: FeedPosition,
    },
    /// A batch of feed entries is malformed.
    #[error("a batch of changes for migration {migration_id} is malformed: {reason}")]
    BadFeedBatch {
        /// The migration.
        migration_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The import was sealed at another lock index.
    #[error("the import of migration {migration_id} is sealed at index {sealed}, not {asked}")]
    SealConflict {
        /// The migration.
        migration_id: String,
        /// Where it is sealed.
        sealed: u64,
        /// Where the request would seal it.
        asked: u64,
    },
    /// The fence needs every alive machine's agent validated against the target.
    #[error(
        "migration {migration_id} cannot lock the model: the agents of machine(s) {machines} \
         have not validated against the target"
    )]
    AgentsNotValidated {
        /// The migration.
        migration_id: String,
        /// The machines, comma-separated.
        machines: String,
    },
    /// A batch of log records arrived after the inbound log transfer ended.
    #[error(
        "the log transfer of migration {migration_id} into this controller has ended; no more \
         log records are accepted"
    )]
    LogTransferEnded {
        /// The migration.
        migration_id: String,
    },
    /// The fence needs the copy's digests recorded.
    #[error("migration {migration_id} cannot lock the model: no copy was recorded")]
    NoCopyRecorded {
        /// The migration.
        migration_id: String,
    },
}

impl MigrationError {
    /// The kind of refusal, for mapping to a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MigrationError::InvalidId { .. } | MigrationError::BadFeedBatch { .. } => {
                ErrorKind::InvalidArgument
            }
            MigrationError::NoSuchImport { .. } | MigrationError::UnknownMigration { .. } => {
                ErrorKind::NotFound
            }
            MigrationError::ModelActiveHere { .. } => ErrorKind::AlreadyExists,
            _ => ErrorKind::FailedPrecondition,
        }
    }
}

/// The record after moving it to `to` at `now_unix_ms`, or why that is refused. Refuses edges
/// outside the graph, any change of an ended migration, ABORT once SUCCESS is committed, any
/// phase but ABORT once an abort was requested, and SUCCESS without equal recorded digests.
/// The caller commits the result together with `model_effect(record.phase, to)`.
pub fn apply_transition(
    record: &MigrationRecord,
    to: Phase,
    now_unix_ms: i64,
    reason: &str,
) -> Result<MigrationRecord, MigrationError> {
    let from = record.phase;
    let migration_id = record.id.to_string();
    if from.is_terminal() {
        return Err(MigrationError::Ended {
            migration_id,
            phase: from,
        });
    }
    if from.is_committed() && to.is_aborting() {
        return Err(abort_after_success(record));
    }
    if !from.can_transition_to(to) {
        return Err(MigrationError::IllegalTransition {
            migration_id,
            from,
            to,
        });
    }
    if let Some(requested) = &record.abort_requested {
        if !from.is_aborting() && to != Phase::Abort {
            return Err(MigrationError::AbortPending {
                migration_id,
                reason: requested.clone(),
                to,
            });
        }
    }
    if to == Phase::Success
        && (record.source_digest.is_none()
            || record.source_digest != record.target_digest
            || record.lock_index.is_none())
    {
        return Err(MigrationError::DigestsNotConfirmed {
            migration_id,
            source_digest: record.source_digest.clone(),
            target_digest: record.target_digest.clone(),
        });
    }
    let mut next = record.clone();
    next.phase = to;
    next.phase_since_unix_ms = now_unix_ms;
    if to == Phase::Abort {
        next.aborted_from = Some(from);
        next.abort_reason = Some(reason.to_owned());
    }
    if to.is_terminal() {
        next.ended_unix_ms = Some(now_unix_ms);
    }
    next.history.push(PhaseChange {
        from,
        to,
        at_unix_ms: now_unix_ms,
        reason: reason.to_owned(),
    });
    Ok(next)
}

fn abort_after_success(record: &MigrationRecord) -> MigrationError {
    MigrationError::AbortAfterSuccess {
        migration_id: record.id.to_string(),
        model_uuid: record.id.model_uuid.clone(),
        phase: record.phase,
        target: record.target.name.clone(),
    }
}

/// The record with an operator's abort request (`ctl abort-migration`) persisted, so whichever
/// node runs the master sees it. Refused with an explanation once SUCCESS is committed; a
/// migration already aborting is returned unchanged. The first reason wins.
pub fn request_abort(
    record: &MigrationRecord,
    reason: &str,
) -> Result<MigrationRecord, MigrationError> {
    if record.phase.is_committed() {
        return Err(abort_after_success(record));
    }
    if record.phase.is_terminal() {
        return Err(MigrationError::Ended {
            migration_id: record.id.to_string(),
            phase: record.phase,
        });
    }
    let mut next = record.clone();
    if !record.phase.is_aborting() && next.abort_requested.is_none() {
        next.abort_requested = Some(reason.to_owned());
    }
    Ok(next)
}

/// A fact recorded in a migration record without changing its phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The agent of `machine` acknowledged the quiesce (lock-first QUIESCE only).
    AgentAcked {
        /// The machine id.
        machine: String,
    },
    /// The agent of `machine` logged in to the target and reported (CATCHUP, or the
    /// lock-first VALIDATION).
    AgentValidated {
        /// The machine id.
        machine: String,
        /// The agent's report.
        report: AgentReport,
    },
    /// The copy exported in PRECOPY (replaces an earlier export's while in PRECOPY).
    Copy(CopyDigests),
    /// The target applied the feed through this position; the entries up to it are trimmed
    /// (CATCHUP only; never moves back).
    FeedAcked(FeedPosition),
    /// The source's model digest (lock-first IMPORT, VALIDATION; the fence records it with the
    /// lock).
    SourceDigest(String),
    /// The target's model digest (lock-first IMPORT, VALIDATION; the fence records it with
    /// SUCCESS).
    TargetDigest(String),
    /// The target acknowledged the model's log through this position (LOGTRANSFER only).
    LogPosition(u64),
}

/// The record with `progress` recorded, or why it is refused. Idempotent: recording the same
/// fact twice gives the same record; feed and log positions never move back.
pub fn apply_progress(
    record: &MigrationRecord,
    progress: &Progress,
) -> Result<MigrationRecord, MigrationError> {
    let wrong_phase = |what: &'static str, expected: &'static str| MigrationError::WrongPhase {
        migration_id: record.id.to_string(),
        phase: record.phase,
        what,
        expected,
    };
    let mut next = record.clone();
    match progress {
        Progress::AgentAcked { machine } => {
            if record.phase != Phase::Quiesce {
                return Err(wrong_phase("a quiesce acknowledgement", "QUIESCE"));
            }
            next.agents_acked.insert(machine.clone());
        }
        Progress::AgentValidated { machine, report } => {
            if !record.phase.agents_validate() {
                return Err(wrong_phase("a validation report", "CATCHUP"));
            }
            match report {
                AgentReport::Ok => {
                    next.agents_validated.insert(machine.clone());
                    next.agent_failures.remove(machine);
                }
                AgentReport::Failed { reason } => {
                    if !next.agents_validated.contains(machine) {
                        next.agent_failures.insert(machine.clone(), reason.clone());
                    }
                }
            }
        }
        Progress::Copy(copy) => {
            if record.phase != Phase::Precopy {
                return Err(wrong_phase("a copy", "PRECOPY"));
            }
            next.copy = Some(copy.clone());
        }
        Progress::FeedAcked(position) => {
            if record.phase != Phase::Catchup {
                return Err(wrong_phase("a feed acknowledgement", "CATCHUP"));
            }
            next.feed_acked = next.feed_acked.max(*position);
        }
        Progress::SourceDigest(digest) | Progress::TargetDigest(digest) => {
            if !matches!(
                record.phase,
                Phase::Quiesce | Phase::Import | Phase::Validation
            ) {
                return Err(wrong_phase("a digest", "QUIESCE"));
            }
            let (side, slot) = match progress {
                Progress::SourceDigest(_) => ("source", &mut next.source_digest),
                _ => ("target", &mut next.target_digest),
            };
            match slot {
                Some(recorded) if recorded != digest => {
                    return Err(MigrationError::DigestConflict {
                        migration_id: record.id.to_string(),
                        side,
                        recorded: recorded.clone(),
                        reported: digest.clone(),
                    })
                }
                _ => *slot = Some(digest.clone()),
            }
        }
        Progress::LogPosition(position) => {
            if record.phase != Phase::LogTransfer {
                return Err(wrong_phase("a log position", "LOGTRANSFER"));
            }
            next.log_transfer_position = next.log_transfer_position.max(*position);
        }
    }
    Ok(next)
}

/// Whether the fence may start: the copy's digests are recorded and every alive machine's
/// agent has validated against the target. The lock's apply asks this of the state it locks,
/// so a machine added after the master last looked refuses the lock instead of slipping past.
pub fn lock_check(
    record: &MigrationRecord,
    alive_machines: &BTreeSet<String>,
) -> Result<(), MigrationError> {
    if record.copy.is_none() {
        return Err(MigrationError::NoCopyRecorded {
            migration_id: record.id.to_string(),
        });
    }
    let missing: BTreeSet<String> = alive_machines
        .difference(&record.agents_validated)
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::AgentsNotValidated {
            migration_id: record.id.to_string(),
            machines: join(&missing),
        });
    }
    Ok(())
}

/// An agent's validation report: it dialed the target with its own credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentReport {
    /// It logged in and saw the model.
    Ok,
    /// It could not; the agent's reason.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// The outcome of one run of the prechecks, and the phase it ran in (prechecks run before the
/// copy and again just before the fence; a report only counts for its own phase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrecheckReport {
    /// PRECHECK or CATCHUP.
    pub phase: Phase,
    /// One sentence per failed check; empty when every check passed.
    pub failures: Vec<String>,
}

/// The target's import as it reports it: the copy it imported and how far the feed got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetCopy {
    /// The model digest of the copy as imported.
    pub copy_digest: String,
    /// The model digest of what it holds now.
    pub digest: String,
    /// The last feed entry applied.
    pub position: FeedPosition,
    /// The lock index it was sealed at (0: not sealed).
    pub sealed_index: u64,
}

/// What the target says about its import of this migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportStatus {
    /// It holds nothing for this migration id.
    NotStarted,
    /// It has staged this much; a stream resumes from `bytes`.
    InProgress {
        /// Bytes staged (and replicated) so far.
        bytes: u64,
        /// Records staged so far.
        records: u64,
    },
    /// The import is committed in importing mode.
    Imported(TargetCopy),
    /// The target refused or failed the import (or a batch of changes) for good.
    Failed {
        /// The target's reason.
        reason: String,
    },
    /// The target could not be reached or did not answer in time; worth retrying.
    Unreachable {
        /// The transport's error.
        error: String,
    },
}

/// The answer to a call the master repeats until it is acknowledged (Activate, DropImport).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Acknowledged (also for a repeat of a call already acknowledged).
    Acked,
    /// The target answered no; retried all the same.
    Refused {
        /// The target's reason.
        reason: String,
    },
    /// No answer.
    Unreachable {
        /// The transport's error.
        error: String,
    },
}

/// How the log transfer went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTransferStatus {
    /// The stream stopped; the target acknowledged through `position`.
    InProgress {
        /// The last log sequence number the target stored.
        position: u64,
    },
    /// Every record was transferred through `position`.
    Complete {
        /// The last log sequence number.
        position: u64,
    },
    /// The transfer failed; retried from the target's position.
    Failed {
        /// Why.
        reason: String,
    },
}

/// How deleting the source's copy of the model went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReapResult {
    /// The data is gone; the redirect remains.
    Done,
    /// It failed for good (transient errors are retried by the caller, not reported).
    Failed {
        /// Why.
        reason: String,
    },
}

/// The source's feed as the master last counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedLag {
    /// The target position the count started after.
    pub after: FeedPosition,
    /// Entries after it (counted up to a cap above the fence lag).
    pub entries: u64,
}

/// An observation with the time it was made, for pacing retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<T> {
    /// What was observed.
    pub value: T,
    /// When.
    pub at_unix_ms: i64,
}

impl<T> Observed<T> {
    /// `value` observed at `at_unix_ms`.
    pub fn at(value: T, at_unix_ms: i64) -> Self {
        Observed { value, at_unix_ms }
    }
}

/// What the master learned since it (re)started. A restarted master starts from
/// `Observations::default()`: nothing it saw before survives except what is in the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observations {
    /// The model's alive machines; `None` until read (read again after a refused lock).
    pub machines: Option<BTreeSet<String>>,
    /// Validation reports received directly (the record's sets count too).
    pub validation_reports: BTreeMap<String, AgentReport>,
    /// The last precheck run.
    pub prechecks: Option<PrecheckReport>,
    /// The copy this master exported (its pages are in the master's memory).
    pub copy: Option<CopyDigests>,
    /// The target's last answer about the import (or to a batch of changes).
    pub import: Option<Observed<ImportStatus>>,
    /// The feed's entries after the target's position, as last counted.
    pub lag: Option<FeedLag>,
    /// Whether the feed still holds entries to trim (ABORT, LOGTRANSFER); `None`: not looked.
    pub feed_entries_left: Option<bool>,
    /// The last Activate call's answer.
    pub activate: Option<Observed<CallOutcome>>,
    /// The log transfer's last state.
    pub log_transfer: Option<Observed<LogTransferStatus>>,
    /// The reap's result.
    pub reap: Option<ReapResult>,
    /// The last DropImport call's answer.
    pub drop_import: Option<Observed<CallOutcome>>,
    /// An operator's abort request seen directly (the record's `abort_requested` counts too).
    pub abort_requested: Option<String>,
    /// The last commit the state machine refused (a proposal that applied as an error).
    pub refused: Option<Observed<RefusedCommit>>,
}

/// A commit the master proposed and the state machine refused: the lock of a model destroyed
/// since the prechecks, a digest that conflicts with the recorded one, a record another master
/// moved on. Only a refusal made in the record's current phase counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedCommit {
    /// The phase the record was in when the commit was proposed.
    pub from: Phase,
    /// The phase the commit moved to; `None` for a `Record` of progress.
    pub to: Option<Phase>,
    /// The state machine's reason.
    pub reason: String,
    /// The state machine marked the refusal as passing (`CommandError.transient`: a machine
    /// added since the master looked has not validated yet): it is retried, not aborted on.
    pub passing: bool,
}

impl RefusedCommit {
    /// What was refused, for the abort reason.
    fn what(&self) -> String {
        match self.to {
            Some(Phase::Quiesce) => "locking the model".into(),
            Some(to) => format!("the move to {to}"),
            None => "recording the migration's progress".into(),
        }
    }
}

/// Deadlines and retry pacing. Every wait before SUCCESS is bounded; after SUCCESS only
/// Activate is retried without end, because nothing else is safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// PRECHECK: the prechecks must pass within this.
    pub precheck_timeout_ms: u64,
    /// PRECOPY and CATCHUP, each: the copy is imported, and then the target catches up and
    /// every agent validates, within this (controller config `migration-import-timeout`).
    pub import_timeout_ms: u64,
    /// QUIESCE (the fence): the last changes reach the target and the digests are compared
    /// within this (controller config `migration-quiesce-timeout`); then ABORT.
    pub quiesce_timeout_ms: u64,
    /// CATCHUP: the fence starts once at most this many feed entries are still unsent
    /// (controller config `migration-fence-lag`).
    pub fence_lag_entries: u64,
    /// LOGTRANSFER: after this the rest of the log is given up and REAP follows (controller
    /// config `migration-log-transfer-timeout`).
    pub log_transfer_timeout_ms: u64,
    /// REAP: without a result in this time the migration ends in REAPFAILED.
    pub reap_timeout_ms: u64,
    /// ABORT: after this, unlock without the target's acknowledgement of the drop (its
    /// leftover rule drops the import once it asks). `None`: wait for the acknowledgement.
    pub abort_drop_timeout_ms: Option<u64>,
    /// Pause between repeats of a call that got no acknowledgement.
    pub retry_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            precheck_timeout_ms: 60_000,
            import_timeout_ms: 30 * 60_000,
            quiesce_timeout_ms: 60_000,
            fence_lag_entries: 1_000,
            log_transfer_timeout_ms: 10 * 60_000,
            reap_timeout_ms: 10 * 60_000,
            abort_drop_timeout_ms: Some(10 * 60_000),
            retry_interval_ms: 2_000,
        }
    }
}

/// The one thing the master does next. Commit actions (`Lock`, `Record`, `Transition`,
/// `CommitSuccess`, `TrimFeed`, `Unlock`) are Raft writes the master proposes; the rest are
/// calls or waits whose results go into `Observations`. Every action is idempotent on the
/// migration id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the prechecks and report them as a `PrecheckReport` for the current phase.
    RunPrechecks,
    /// PRECOPY: read the model page by page (no lock) into a copy; report its digests in
    /// `Observations::copy`.
    ExportCopy,
    /// PRECOPY: stage the recorded copy on the target and ask it to import it; report the
    /// target's `ImportStatus`.
    StageCopy,
    /// Ask the target about its import; report its `ImportStatus`.
    QueryImport,
    /// CATCHUP: send the target the feed entries after `after` (a batch or a few); report its
    /// `ImportStatus` and the entries still unsent (`Observations::lag`).
    StreamChanges {
        /// The target's position.
        after: FeedPosition,
    },
    /// Read the model's alive machines into `Observations::machines`.
    ReadMachines,
    /// Wait (until at most `until_unix_ms`) for these machines' agents to report.
    WaitForAgents {
        /// The machines not heard from.
        missing: BTreeSet<String>,
        /// The phase deadline.
        until_unix_ms: i64,
    },
    /// Commit CATCHUP → QUIESCE with the model's lock: the fence.
    Lock {
        /// Why, for the record and the operator.
        reason: String,
    },
    /// QUIESCE: send the target every feed entry after `after` (all are at or below the lock
    /// index: the model is locked) and seal its import at `seal_index`; report its status.
    SealTarget {
        /// The target's position.
        after: FeedPosition,
        /// The lock index.
        seal_index: u64,
    },
    /// Record a fact in the migration record (`apply_progress`).
    Record(Progress),
    /// Commit a phase change that touches nothing but the record (`apply_transition`) and its
    /// model effect.
    Transition {
        /// The new phase.
        to: Phase,
        /// Why, for the record and the operator.
        reason: String,
    },
    /// Commit QUIESCE → SUCCESS with the target's digest, together with the model becoming a
    /// redirect. Point of no return.
    CommitSuccess {
        /// The target's model digest at the lock index (equal to the source's).
        target_digest: String,
    },
    /// Call Activate on the target (repeated until acknowledged; never undone).
    CallActivate,
    /// Delete a bounded batch of the feed's remaining entries (ABORT, LOGTRANSFER); report
    /// whether some remain (`Observations::feed_entries_left`).
    TrimFeed,
    /// Stream the model's log to the target from this position.
    TransferLogs {
        /// The first log sequence number not known to be on the target, minus one.
        from: u64,
    },
    /// Delete the source's copy of the model's data, keeping the redirect.
    Reap,
    /// Ask the target to drop its import of this migration (repeated until acknowledged).
    DropImportOnTarget,
    /// Commit ABORT → ABORTDONE together with releasing the model's lock.
    Unlock {
        /// Why, for the record and the operator.
        reason: String,
    },
    /// Nothing to do before `until_unix_ms`; then ask again (refreshing what was waited on).
    Wait {
        /// When to act again.
        until_unix_ms: i64,
    },
    /// The migration has ended.
    Nothing,
}

/// The reason recorded with PRECHECK → PRECOPY.
pub const PRECOPY_REASON: &str =
    "prechecks passed; copying the model while it stays writable, recording its changes";
/// The reason recorded with `Action::CommitSuccess`.
pub const SUCCESS_REASON: &str =
    "the target holds every change up to the lock and the digests at the lock match";

impl Action {
    /// Whether the action is a Raft write of the record (`Lock`, `Record`, `Transition`,
    /// `CommitSuccess`, `Unlock`).
    pub fn is_commit(&self) -> bool {
        matches!(
            self,
            Action::Lock { .. }
                | Action::Record(_)
                | Action::Transition { .. }
                | Action::CommitSuccess { .. }
                | Action::Unlock { .. }
        )
    }

    /// The phase this action commits when taken in `from`, with the reason to record; `None`
    /// for actions that do not change the phase.
    pub fn commits(&self, from: Phase) -> Option<(Phase, String)> {
        match self {
            Action::Lock { reason } if from == Phase::Catchup => {
                Some((Phase::Quiesce, reason.clone()))
            }
            Action::CommitSuccess { .. } if from == Phase::Quiesce => {
                Some((Phase::Success, SUCCESS_REASON.into()))
            }
            Action::Transition { to, reason } => Some((*to, reason.clone())),
            Action::Unlock { reason } if from == Phase::Abort => {
                Some((Phase::AbortDone, reason.clone()))
            }
            _ => None,
        }
    }
}

/// The master's decision: from the persisted record, what it observed since it (re)started and
/// the time, the one next step. Rules enforced here:
/// - terminal phases yield `Nothing`;
/// - before SUCCESS, an abort request (record or observed), a phase deadline, a failed check,
///   a refused import, a digest mismatch or an agent's failed validation yields ABORT;
/// - from SUCCESS on, nothing yields ABORT: abort requests are ignored (`request_abort`
///   explains the refusal) and Activate is repeated until acknowledged;
/// - a phase only advances on evidence observed or recorded, so a master restarted with empty
///   observations asks before it acts and never re-commits a transition;
/// - the fence (QUIESCE) does nothing proportional to the model: it sends at most the entries
///   left when the lag was small, and compares two digests;
/// - ABORT drops the target's import (if one may exist) and trims the feed before `Unlock`;
/// - a refused commit is an observation, never proposed again at once: before SUCCESS it
///   aborts with the state machine's reason (unless the refused commit was the abort itself,
///   or the state machine called the refusal passing: a lock refused because a machine added
///   since the master looked has not validated); otherwise the same commit waits a retry
///   interval, so a refusal never spins.
pub fn next_action(
    record: &MigrationRecord,
    obs: &Observations,
    now_unix_ms: i64,
    limits: &Limits,
) -> Action {
    let action = decide(record, obs, now_unix_ms, limits);
    let refused = obs
        .refused
        .as_ref()
        .filter(|refused| refused.value.from == record.phase);
    match refused {
        Some(refused) if action.is_commit() => {
            after_refusal(record, refused, action, now_unix_ms, limits)
        }
        _ => action,
    }
}

/// What follows a commit refused in the record's current phase, when the decision is to
/// commit again.
fn after_refusal(
    record: &MigrationRecord,
    refused: &Observed<RefusedCommit>,
    action: Action,
    now_unix_ms: i64,
    limits: &Limits,
) -> Action {
    let phase = record.phase;
    let may_abort = !refused.value.passing
        && !phase.is_committed()
        && !phase.is_aborting()
        && refused.value.to != Some(Phase::Abort);
    if may_abort {
        return abort(format!(
            "{} was refused: {}",
            refused.value.what(),
            refused.value.reason
        ));
    }
    let until_unix_ms = add_ms(refused.at_unix_ms, limits.retry_interval_ms);
    if now_unix_ms < until_unix_ms {
        Action::Wait { until_unix_ms }
    } else {
        action
    }
}

/// `next_action` without the rule for refused commits.
fn decide(
    record: &MigrationRecord,
    obs: &Observations,
    now_unix_ms: i64,
    limits: &Limits,
) -> Action {
    let phase = record.phase;
    if phase.is_terminal() {
        return Action::Nothing;
    }
    if !phase.is_committed() && !phase.is_aborting() {
        if let Some(reason) = obs
            .abort_requested
            .as_ref()
            .or(record.abort_requested.as_ref())
        {
            return abort(format!("aborted by operator: {reason}"));
        }
    }
    let step = Step {
        record,
        obs,
        now_unix_ms,
        limits,
    };
    match phase {
        Phase::Precheck => step.precheck(),
        Phase::Precopy => step.precopy(),
        Phase::Catchup => step.catchup(),
        Phase::Quiesce if record.lock_index.is_none() => abort(LOCK_FIRST_REASON.into()),
        Phase::Quiesce => step.fence(),
        Phase::Import | Phase::Validation => abort(LOCK_FIRST_REASON.into()),
        Phase::Success => step.success(),
        Phase::LogTransfer => step.log_transfer(),
        Phase::Reap => step.reap(),
        Phase::Abort => step.abort(),
        Phase::Done | Phase::AbortDone | Phase::ReapFailed => Action::Nothing,
    }
}

/// Why a migration recorded by the lock-first protocol is aborted by this version.
const LOCK_FIRST_REASON: &str = "this migration was started by a controller version that \
    locked the model first; this version cannot resume it: run ctl migrate again";

fn abort(reason: String) -> Action {
    Action::Transition {
        to: Phase::Abort,
        reason,
    }
}

/// `ms` for a reason an operator reads (`250ms`, `1m 30s`, `10m`).
fn human_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

fn join(machines: &BTreeSet<String>) -> String {
    machines.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn add_ms(at_unix_ms: i64, ms: u64) -> i64 {
    at_unix_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The first 12 hex digits of a digest, for reasons an operator reads.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// One call of `next_action`, with the per-phase rules as methods.
struct Step<'a> {
    record: &'a MigrationRecord,
    obs: &'a Observations,
    now_unix_ms: i64,
    limits: &'a Limits,
}

impl Step<'_> {
    fn deadline(&self, timeout_ms: u64) -> i64 {
        add_ms(self.record.phase_since_unix_ms, timeout_ms)
    }

    /// ABORT if the current phase's deadline has passed, naming what was waited for.
    fn timed_out(&self, timeout_ms: u64, waiting_for: &str) -> Option<Action> {
        (self.now_unix_ms >= self.deadline(timeout_ms)).then(|| {
            abort(format!(
                "timed out after {} in {} waiting for {waiting_for}",
                human_ms(timeout_ms),
                self.record.phase
            ))
        })
    }

    /// `retry` unless the last unacknowledged attempt was less than a retry interval ago (then
    /// wait, but never past `deadline`).
    fn paced(&self, last_attempt_unix_ms: i64, deadline: Option<i64>, retry: Action) -> Action {
        let retry_at = add_ms(last_attempt_unix_ms, self.limits.retry_interval_ms);
        let until_unix_ms = deadline.map_or(retry_at, |deadline| retry_at.min(deadline));
        if self.now_unix_ms < until_unix_ms {
            Action::Wait { until_unix_ms }
        } else {
            retry
        }
    }

    fn precheck(&self) -> Action {
        if let Some(report) = self
            .obs
            .prechecks
            .as_ref()
            .filter(|r| r.phase == Phase::Precheck)
        {
            return if report.failures.is_empty() {
                Action::Transition {
                    to: Phase::Precopy,
                    reason: PRECOPY_REASON.into(),
                }
            } else {
                abort(format!("prechecks failed: {}", report.failures.join("; ")))
            };
        }
        self.timed_out(self.limits.precheck_timeout_ms, "the prechecks")
            .unwrap_or(Action::RunPrechecks)
    }

    /// PRECOPY: ask the target first (a restarted master may find the copy imported); export,
    /// record the copy's digests, stage and import; CATCHUP once the target holds exactly the
    /// recorded copy.
    fn precopy(&self) -> Action {
        let timeout_ms = self.limits.import_timeout_ms;
        let target = &self.record.target.name;
        if let Some(timeout) = self.timed_out(timeout_ms, "the target to import the copy") {
            return timeout;
        }
        let recorded = self.record.copy.as_ref();
        let Some(import) = &self.obs.import else {
            return Action::QueryImport;
        };
        match &import.value {
            ImportStatus::Imported(copy) => {
                return match recorded {
                    Some(recorded) if recorded.copy_digest == copy.copy_digest => {
                        Action::Transition {
                            to: Phase::Catchup,
                            reason: format!(
                                "controller {target:?} imported the copy ({}); streaming the \
                                 changes made since",
                                short(&copy.copy_digest)
                            ),
                        }
                    }
                    Some(recorded) => abort(format!(
                        "controller {target:?} imported a copy with digest {}, not the \
                         recorded {}",
                        copy.copy_digest, recorded.copy_digest
                    )),
                    None => abort(format!(
                        "controller {target:?} holds an import of this migration for which no \
                         copy was recorded"
                    )),
                };
            }
            ImportStatus::Failed { reason } => {
                return abort(format!("controller {target:?} failed the import: {reason}"))
            }
            ImportStatus::Unreachable { .. } => {
                let retry = match &self.obs.copy {
                    Some(copy) if recorded == Some(copy) => Action::StageCopy,
                    _ => Action::QueryImport,
                };
                return self.paced(import.at_unix_ms, Some(self.deadline(timeout_ms)), retry);
            }
            ImportStatus::NotStarted | ImportStatus::InProgress { .. } => {}
        }
        match &self.obs.copy {
            None => Action::ExportCopy,
            Some(copy) if recorded != Some(copy) => Action::Record(Progress::Copy(copy.clone())),
            Some(_) => Action::StageCopy,
        }
    }

    /// The target's import as last observed once it exists (CATCHUP, QUIESCE), or what to do
    /// instead: ask, retry (`retry` given the last known copy), or abort.
    fn target_copy(&self, timeout_ms: u64, retry: Action) -> Result<&TargetCopy, Action> {
        let target = &self.record.target.name;
        let Some(import) = &self.obs.import else {
            return Err(Action::QueryImport);
        };
        match &import.value {
            ImportStatus::Imported(copy) => Ok(copy),
            ImportStatus::Unreachable { .. } => {
                Err(self.paced(import.at_unix_ms, Some(self.deadline(timeout_ms)), retry))
            }
            ImportStatus::Failed { reason } => Err(abort(format!(
                "controller {target:?} refused the changes: {reason}"
            ))),
            ImportStatus::NotStarted | ImportStatus::InProgress { .. } => Err(abort(format!(
                "controller {target:?} no longer holds the import"
            ))),
        }
    }

    /// The machines whose agents reported a failed validation.
    fn agent_failure(&self, machines: &BTreeSet<String>) -> Option<(String, String)> {
        let mut failures = self.record.agent_failures.clone();
        for (machine, report) in &self.obs.validation_reports {
            if let AgentReport::Failed { reason } = report {
                if !self.record.agents_validated.contains(machine) {
                    failures
                        .entry(machine.clone())
                        .or_insert_with(|| reason.clone());
                }
            }
        }
        failures.into_iter().find(|(m, _)| machines.contains(m))
    }

    /// CATCHUP: stream the feed until the lag is small, trim what the target acknowledged, wait
    /// for every agent to validate, run the prechecks once more, then lock.
    fn catchup(&self) -> Action {
        let timeout_ms = self.limits.import_timeout_ms;
        let target = &self.record.target.name;
        let last_position = match &self.obs.import {
            Some(Observed {
                value: ImportStatus::Imported(copy),
                ..
            }) => copy.position,
            _ => self.record.feed_acked,
        };
        let copy = match self.target_copy(
            timeout_ms,
            Action::StreamChanges {
                after: last_position,
            },
        ) {
            Ok(copy) => copy,
            Err(action) => {
                return self
                    .timed_out(timeout_ms, "the target to catch up")
                    .unwrap_or(action)
            }
        };
        if copy.position < self.record.feed_acked {
            return abort(format!(
                "controller {target:?} holds changes through {} but this controller already \
                 trimmed its feed through {}",
                copy.position, self.record.feed_acked
            ));
        }
        if copy.sealed_index != 0 {
            return abort(format!(
                "controller {target:?} reports its import sealed at {} before the fence",
                copy.sealed_index
            ));
        }
        let lag = match &self.obs.lag {
            Some(lag) if lag.after == copy.position => lag.entries,
            _ => {
                return self
                    .timed_out(timeout_ms, "the target to catch up")
                    .unwrap_or(Action::StreamChanges {
                        after: copy.position,
                    })
            }
        };
        if copy.position > self.record.feed_acked {
            return Action::Record(Progress::FeedAcked(copy.position));
        }
        if let Some(timeout) = self.timed_out(timeout_ms, "the target to catch up") {
            return timeout;
        }
        if lag > self.limits.fence_lag_entries {
            return Action::StreamChanges {
                after: copy.position,
            };
        }
        let Some(machines) = &self.obs.machines else {
            return Action::ReadMachines;
        };
        if let Some((machine, reason)) = self.agent_failure(machines) {
            return abort(format!(
                "the agent of machine {machine} could not validate against controller \
                 {target:?}: {reason}"
            ));
        }
        let missing: BTreeSet<String> = machines
            .iter()
            .filter(|m| {
                !self.record.agents_validated.contains(*m)
                    && self.obs.validation_reports.get(*m) != Some(&AgentReport::Ok)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Action::WaitForAgents {
                missing,
                until_unix_ms: self.deadline(timeout_ms),
            };
        }
        match self
            .obs
            .prechecks
            .as_ref()
            .filter(|r| r.phase == Phase::Catchup)
        {
            None => Action::RunPrechecks,
            Some(report) if report.failures.is_empty() => Action::Lock {
                reason: format!(
                    "{lag} change(s) left to send, {} agent(s) validated against controller \
                     {target:?}; model locked, writes are held (the fence)",
                    machines.len()
                ),
            },
            Some(report) => abort(format!(
                "prechecks failed before the fence: {}",
                report.failures.join("; ")
            )),
        }
    }

    /// QUIESCE, the fence: send the last changes and seal the target at the lock index; SUCCESS
    /// when its digest there equals the source's, ABORT when it differs.
    fn fence(&self) -> Action {
        let timeout_ms = self.limits.quiesce_timeout_ms;
        let target = &self.record.target.name;
        let lock_index = self.record.lock_index.unwrap_or_default();
        let known = match &self.obs.import {
            Some(Observed {
                value: ImportStatus::Imported(copy),
                ..
            }) => Some(copy.position),
            _ => None,
        };
        let retry = match known {
            Some(after) => Action::SealTarget {
                after,
                seal_index: lock_index,
            },
            None => Action::QueryImport,
        };
        let copy = match self.target_copy(timeout_ms, retry) {
            Ok(copy) => copy,
            Err(action) => {
                return self
                    .timed_out(timeout_ms, "the target to take the last changes")
                    .unwrap_or(action)
            }
        };
        if copy.sealed_index == 0 {
            return self
                .timed_out(timeout_ms, "the target to take the last changes")
                .unwrap_or(Action::SealTarget {
                    after: copy.position,
                    seal_index: lock_index,
                });
        }
        if copy.sealed_index != lock_index {
            return abort(format!(
                "controller {target:?} sealed its import at index {}, not at the lock index \
                 {lock_index}",
                copy.sealed_index
            ));
        }
        match &self.record.source_digest {
            Some(source) if *source == copy.digest => Action::CommitSuccess {
                target_digest: copy.digest.clone(),
            },
            Some(source) => abort(format!(
                "digest mismatch at the lock index {lock_index}: this controller {source}, \
                 controller {target:?} {}",
                copy.digest
            )),
            None => abort("the lock recorded no source digest".into()),
        }
    }

    fn success(&self) -> Action {
        match &self.obs.activate {
            Some(Observed {
                value: CallOutcome::Acked,
                ..
            }) => Action::Transition {
                to: Phase::LogTransfer,
                reason: format!(
                    "controller {:?} activated the model at epoch {}",
                    self.record.target.name,
                    self.record.ownership_epoch + 1
                ),
            },
            Some(attempt) => self.paced(attempt.at_unix_ms, None, Action::CallActivate),
            None => Action::CallActivate,
        }
    }

    fn log_transfer(&self) -> Action {
        if self.obs.feed_entries_left != Some(false) {
            return Action::TrimFeed;
        }
        let recorded = self.record.log_transfer_position;
        let status = self.obs.log_transfer.as_ref();
        if let Some(LogTransferStatus::Complete { position }) = status.map(|s| &s.value) {
            return Action::Transition {
                to: Phase::Reap,
                reason: format!("log transferred through {position}"),
            };
        }
        let timeout_ms = self.limits.log_transfer_timeout_ms;
        if self.now_unix_ms >= self.deadline(timeout_ms) {
            return Action::Transition {
                to: Phase::Reap,
                reason: format!(
                    "log transfer incomplete after {} (target has it through {recorded}); \
                     the rest of the log is not transferred",
                    human_ms(timeout_ms)
                ),
            };
        }
        let Some(status) = status else {
            return Action::TransferLogs { from: recorded };
        };
        match &status.value {
            LogTransferStatus::InProgress { position } if *position > recorded => {
                Action::Record(Progress::LogPosition(*position))
            }
            LogTransferStatus::InProgress { .. } => Action::TransferLogs { from: recorded },
            _ => self.paced(
                status.at_unix_ms,
                Some(self.deadline(timeout_ms)),
                Action::TransferLogs { from: recorded },
            ),
        }
    }

    fn reap(&self) -> Action {
        match &self.obs.reap {
            Some(ReapResult::Done) => Action::Transition {
                to: Phase::Done,
                reason: "the source's copy of the model was deleted; the redirect remains".into(),
            },
            Some(ReapResult::Failed { reason }) => Action::Transition {
                to: Phase::ReapFailed,
                reason: format!("reap failed: {reason}"),
            },
            None if self.now_unix_ms >= self.deadline(self.limits.reap_timeout_ms) => {
                Action::Transition {
                    to: Phase::ReapFailed,
                    reason: format!(
                        "reap did not finish within {}",
                        human_ms(self.limits.reap_timeout_ms)
                    ),
                }
            }
            None => Action::Reap,
        }
    }

    fn abort(&self) -> Action {
        if let Some(action) = self.drop_import() {
            return action;
        }
        if self.obs.feed_entries_left != Some(false) {
            return Action::TrimFeed;
        }
        Action::Unlock {
            reason: self.unlock_reason(),
        }
    }

    fn unlock_reason(&self) -> String {
        let target = &self.record.target.name;
        let model = if self.record.lock_index.is_some() {
            "model unlocked"
        } else {
            "the model stayed writable throughout"
        };
        if !self.record.import_may_exist() {
            return format!("nothing was sent to the target; {model}");
        }
        match &self.obs.drop_import {
            Some(Observed {
                value: CallOutcome::Acked,
                ..
            }) => format!("controller {target:?} dropped the import; {model}"),
            _ => format!(
                "controller {target:?} did not acknowledge dropping the import within {}; \
                 {model} (the target drops the import when it next asks about this migration)",
                human_ms(self.limits.abort_drop_timeout_ms.unwrap_or(0))
            ),
        }
    }

    /// ABORT's first step: the target drops its import (if one may exist), repeated until it
    /// acknowledges or `abort_drop_timeout_ms` passes. `None` once done.
    fn drop_import(&self) -> Option<Action> {
        if !self.record.import_may_exist() {
            return None;
        }
        let attempt = match &self.obs.drop_import {
            Some(Observed {
                value: CallOutcome::Acked,
                ..
            }) => return None,
            Some(attempt) => Some(attempt.at_unix_ms),
            None => None,
        };
        let give_up_at = self
            .limits
            .abort_drop_timeout_ms
            .map(|timeout_ms| self.deadline(timeout_ms));
        if give_up_at.is_some_and(|at| self.now_unix_ms >= at) {
            return None;
        }
        Some(match attempt {
            None => Action::DropImportOnTarget,
            Some(at) => self.paced(at, give_up_at, Action::DropImportOnTarget),
        })
    }
}

/// What the source answers when a target asks about a migration id (`source_answer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceAnswer {
    /// The source has no record of that migration (it never existed, or the source was
    /// restored from a backup taken before it): the model is the source's.
    Unknown,
    /// Before SUCCESS and not aborting: the source may still commit it.
    InProgress {
        /// The source's phase.
        phase: Phase,
    },
    /// ABORT or ABORTDONE: it will never commit.
    Aborted {
        /// The source's phase.
        phase: Phase,
    },
    /// SUCCESS or later: the model is the target's; Activate is (or was) on its way.
    Committed {
        /// The source's phase.
        phase: Phase,
    },
    /// No answer (the target asked, the source did not reply).
    Unreachable,
}

/// The source's answer about a migration, from its record of that id (if any).
pub fn source_answer(record: Option<&MigrationRecord>) -> SourceAnswer {
    match record.map(|record| record.phase) {
        None => SourceAnswer::Unknown,
        Some(phase) if phase.is_committed() => SourceAnswer::Committed { phase },
        Some(phase) if phase.is_aborting() => SourceAnswer::Aborted { phase },
        Some(phase) => SourceAnswer::InProgress { phase },
    }
}

/// How far the target's import of a migration has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetImportState {
    /// Chunks are being staged.
    Receiving {
        /// Bytes staged so far.
        bytes: u64,
    },
    /// Committed in importing mode (invisible, read-only): the feed's changes are applied to
    /// it until it is sealed at the source's lock index; then it waits for Activate.
    Imported {
        /// The model digest of what it holds now.
        digest: String,
        /// The last feed entry applied.
        position: FeedPosition,
        /// The lock index it was sealed at (0: not sealed).
        sealed_index: u64,
    },
}

/// An import the target holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetImport {
    /// The migration it belongs to.
    pub migration_id: MigrationId,
    /// How far it got.
    pub state: TargetImportState,
    /// When the source last sent a chunk or called about it.
    pub last_activity_unix_ms: i64,
}

/// The target's timing for leftover imports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLimits {
    /// An import idle this long makes the target ask the source about it.
    pub idle_before_asking_ms: u64,
    /// How long an answer stays fresh (and the pause after an unanswered question).
    pub ask_interval_ms: u64,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            idle_before_asking_ms: 5 * 60_000,
            ask_interval_ms: 60_000,
        }
    }
}

/// What the target does about an import nobody is finishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// Keep it; decide again at `until_unix_ms`.
    Keep {
        /// When to decide again.
        until_unix_ms: i64,
        /// Why it is kept.
        reason: String,
    },
    /// Ask the source about the migration id (`source_answer` on its side).
    AskSource,
    /// Drop the import (replicated through the target's Raft log).
    Drop {
        /// Why, for the log.
        reason: String,
    },
}

/// The target's rule for an import nobody finishes (the fix for Juju #20361): it is dropped
/// only when the source positively says the migration aborted or that it has no record of it.
/// An unreachable source never leads to a drop, because the source may have committed SUCCESS
/// and the import is then the only live copy of the model. `answer` is the source's last
/// answer about this import's migration id, if any was asked.
pub fn target_leftover_decision(
    import: &TargetImport,
    answer: Option<&Observed<SourceAnswer>>,
    now_unix_ms: i64,
    limits: &TargetLimits,
) -> TargetAction {
    let (answer, until_unix_ms) =
        match asked(import.last_activity_unix_ms, answer, now_unix_ms, limits) {
            Asked::Idle { until_unix_ms } => {
                return TargetAction::Keep {
                    until_unix_ms,
                    reason: "the source is still working on it".into(),
                }
            }
            Asked::Ask => return TargetAction::AskSource,
            Asked::Answered {
                answer,
                until_unix_ms,
            } => (answer, until_unix_ms),
        };
    let id = &import.migration_id;
    match answer {
        SourceAnswer::Unknown => TargetAction::Drop {
            reason: format!("the source has no record of migration {id}"),
        },
        SourceAnswer::Aborted { phase } => TargetAction::Drop {
            reason: format!("the source aborted migration {id} ({phase})"),
        },
        SourceAnswer::InProgress { phase } => TargetAction::Keep {
            until_unix_ms,
            reason: format!("the source is in {phase}"),
        },
        SourceAnswer::Committed { phase } => TargetAction::Keep {
            until_unix_ms,
            reason: format!("the source committed migration {id} ({phase}); Activate is expected"),
        },
        SourceAnswer::Unreachable => TargetAction::Keep {
            until_unix_ms,
            reason: "the source did not answer; an import is never dropped on silence".into(),
        },
    }
}

/// Where the sweeper stands with something idle it may ask the source about.
enum Asked<'a> {
    /// Not idle long enough: decide again at `until_unix_ms`.
    Idle { until_unix_ms: i64 },
    /// Idle, and no answer given since the last activity is fresh: ask.
    Ask,
    /// The source's fresh answer, and when it goes stale.
    Answered {
        answer: &'a SourceAnswer,
        until_unix_ms: i64,
    },
}

/// The sweeper's timing, shared by imports and inbound log transfers: nothing is asked about
/// before `idle_before_asking_ms` without activity, and an answer counts when it was given
/// after the last activity and is younger than `ask_interval_ms`.
fn asked<'a>(
    last_activity_unix_ms: i64,
    answer: Option<&'a Observed<SourceAnswer>>,
    now_unix_ms: i64,
    limits: &TargetLimits,
) -> Asked<'a> {
    let idle_until = add_ms(last_activity_unix_ms, limits.idle_before_asking_ms);
    if now_unix_ms < idle_until {
        return Asked::Idle {
            until_unix_ms: idle_until,
        };
    }
    let fresh = answer.filter(|answer| {
        answer.at_unix_ms >= last_activity_unix_ms
            && now_unix_ms < add_ms(answer.at_unix_ms, limits.ask_interval_ms)
    });
    match fresh {
        None => Asked::Ask,
        Some(answer) => Asked::Answered {
            answer: &answer.value,
            until_unix_ms: add_ms(answer.at_unix_ms, limits.ask_interval_ms),
        },
    }
}

/// An inbound log transfer the target holds open (`logtransfer/<uuid>`, written at Activate):
/// until it ends, the model may not migrate on and no backup is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundLogTransfer {
    /// The migration that activated the model here.
    pub migration_id: MigrationId,
    /// When Activate applied here, or the last batch of log records did, whichever is later.
    pub last_activity_unix_ms: i64,
}

/// What the target does about an inbound log transfer that stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTransferAction {
    /// Keep it open; decide again at `until_unix_ms`.
    Keep {
        /// When to decide again.
        until_unix_ms: i64,
        /// Why it is kept.
        reason: String,
    },
    /// Ask the source about the migration id (`source_answer` on its side).
    AskSource,
    /// End the transfer (replicated: `EndLogTransfer`).
    End {
        /// Why, for the log.
        reason: String,
    },
}

/// The target's rule for an inbound log transfer whose end never came (the source gives up
/// LOGTRANSFER after its timeout, and its one "ended" call may not reach the target): the
/// transfer is ended once the source positively says it is past LOGTRANSFER (REAP, DONE,
/// REAPFAILED: it sends nothing more) or has no record of the migration. Silence, and a source
/// still in SUCCESS or LOGTRANSFER, keep it open. So does an "aborted" or "in progress" answer
/// about a migration that activated the model here: the source contradicts this controller's
/// state (e.g. it was restored from an older backup), and an operator should look.
pub fn inbound_log_transfer_decision(
    transfer: &InboundLogTransfer,
    answer: Option<&Observed<SourceAnswer>>,
    now_unix_ms: i64,
    limits: &TargetLimits,
) -> LogTransferAction {
    let (answer, until_unix_ms) =
        match asked(transfer.last_activity_unix_ms, answer, now_unix_ms, limits) {
            Asked::Idle { until_unix_ms } => {
                return LogTransferAction::Keep {
                    until_unix_ms,
                    reason: "log records arrived recently".into(),
                }
            }
            Asked::Ask => return LogTransferAction::AskSource,
            Asked::Answered {
                answer,
                until_unix_ms,
            } => (answer, until_unix_ms),
        };
    let id = &transfer.migration_id;
    let keep = |reason: String| LogTransferAction::Keep {
        until_unix_ms,
        reason,
    };
    match answer {
        SourceAnswer::Unknown => LogTransferAction::End {
            reason: format!("the source has no record of migration {id}"),
        },
        SourceAnswer::Committed {
            phase: phase @ (Phase::Reap | Phase::Done | Phase::ReapFailed),
        } => LogTransferAction::End {
            reason: format!("the source is past LOGTRANSFER in migration {id} ({phase})"),
        },
        SourceAnswer::Committed { phase } => {
            keep(format!("the source is in {phase}; its log may still come"))
        }
        SourceAnswer::InProgress { phase } | SourceAnswer::Aborted { phase } => keep(format!(
            "the source says migration {id} is in {phase}, yet it activated the model here"
        )),
        SourceAnswer::Unreachable => {
            keep("the source did not answer; a transfer is never ended on silence".into())
        }
    }
}

/// The operator's rule for ending an inbound log transfer by hand (`ctl end-log-transfer`), from
/// what the source answered when asked just now: `Ok` with the source's answer in words (it ends
/// the transfer), or `Err` with the refusal. The command exists for a source that is gone for
/// good, so silence ends the transfer, and so do the answers the sweeper acts on and those it
/// leaves to an operator (a contradicting "in progress" or "aborted"). A source that says it is
/// still transferring (SUCCESS, LOGTRANSFER) refuses without `force`: ending the transfer would
/// cost the records it has not sent, and it ends the transfer itself within its timeout.
pub fn operator_log_transfer_decision(
    answer: &SourceAnswer,
    source: &str,
    force: bool,
) -> Result<String, String> {
    let said = match answer {
        SourceAnswer::Unreachable => format!("controller \"{source}\" did not answer"),
        SourceAnswer::Unknown => {
            format!("controller \"{source}\" has no record of the migration")
        }
        SourceAnswer::Committed { phase }
        | SourceAnswer::InProgress { phase }
        | SourceAnswer::Aborted { phase } => {
            format!("controller \"{source}\" says the migration is in {phase}")
        }
    };
    let transferring = matches!(
        answer,
        SourceAnswer::Committed {
            phase: Phase::Success | Phase::LogTransfer
        }
    );
    if transferring && !force {
        return Err(format!(
            "{said}: it is still sending the model's log and ends the transfer itself within its \
             migration-log-transfer-timeout; ending it now loses the records it has not sent \
             (add --force to end it anyway)"
        ));
    }
    Ok(said)
}

/// What the target holds for a model uuid, as far as Activate and DropImport care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModelState {
    /// Nothing.
    Absent,
    /// An import of one migration.
    Importing(TargetImport),
    /// The model is active here; `activated_by` is the migration that activated it (`None`
    /// for a model created here).
    Active {
        /// The activating migration.
        activated_by: Option<MigrationId>,
    },
    /// The model was activated here by `activated_by` and has left since (destroyed, or
    /// migrated on): the controller remembers the activation.
    Gone {
        /// The migration that last activated it here.
        activated_by: MigrationId,
    },
}

/// What Activate does on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetActivate {
    /// Commit the import active at the source's epoch + 1.
    Activate,
    /// Already active through this same migration: acknowledge, change nothing.
    AlreadyActive,
}

/// The target's rule for Activate (the fix for Juju #21459): only the import of exactly this
/// migration id, fully imported, is activated; a repeat is acknowledged without effect, also
/// after the model left this controller (a source that never recorded the first answer would
/// otherwise wait in SUCCESS for ever); an Activate for any other id (a replay of an old
/// attempt, or one whose import was dropped) is refused, so a replay can never make a second
/// live copy.
pub fn target_activate_decision(
    state: &TargetModelState,
    migration_id: &MigrationId,
) -> Result<TargetActivate, MigrationError> {
    let no_import = |state: String| MigrationError::NoSuchImport {
        migration_id: migration_id.to_string(),
        state,
    };
    match state {
        TargetModelState::Importing(import) if &import.migration_id == migration_id => {
            match &import.state {
                TargetImportState::Imported {
                    sealed_index: 0,
                    position,
                    ..
                } => Err(MigrationError::ImportNotSealed {
                    migration_id: migration_id.to_string(),
                    position: *position,
                }),
                TargetImportState::Imported { .. } => Ok(TargetActivate::Activate),
                TargetImportState::Receiving { bytes } => Err(MigrationError::ImportIncomplete {
                    migration_id: migration_id.to_string(),
                    bytes: *bytes,
                }),
            }
        }
        TargetModelState::Active {
            activated_by: Some(by),
        }
        | TargetModelState::Gone { activated_by: by }
            if by == migration_id =>
        {
            Ok(TargetActivate::AlreadyActive)
        }
        TargetModelState::Gone { activated_by } => Err(no_import(format!(
            "the model was activated here by migration {activated_by} and has left"
        ))),
        TargetModelState::Importing(import) => Err(no_import(format!(
            "it holds an import of migration {}",
            import.migration_id
        ))),
        TargetModelState::Active { .. } => Err(no_import("the model is active here".into())),
        TargetModelState::Absent => Err(no_import("nothing".into())),
    }
}

/// What the target does with an Import of `migration_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportDecision {
    /// Import it.
    Import,
    /// Already imported by this migration: answer with what is held.
    AlreadyImported,
    /// A leftover import of an older attempt: replace it.
    ReplaceLeftover,
}

/// The target's rule for Import: a repeat is answered with what is held; a leftover of an
/// older attempt is replaced (the source runs one migration per model at a time, so starting
/// this attempt means the older one ended without SUCCESS); refused when the model is active
/// here, when a newer attempt's import is held, and when an attempt as new or newer already
/// activated the model here (a late Import of an attempt that lost: taking it would hold an
/// import nobody finishes, and block a log transfer).
pub fn target_import_decision(
    state: &TargetModelState,
    migration_id: &MigrationId,
) -> Result<ImportDecision, MigrationError> {
    let superseded = |by: &MigrationId| MigrationError::NoSuchImport {
        migration_id: migration_id.to_string(),
        state: format!("migration {by} already activated the model here"),
    };
    match state {
        TargetModelState::Importing(held) if &held.migration_id == migration_id => {
            Ok(ImportDecision::AlreadyImported)
        }
        TargetModelState::Importing(held) if held.migration_id.attempt < migration_id.attempt => {
            Ok(ImportDecision::ReplaceLeftover)
        }
        TargetModelState::Importing(held) => Err(MigrationError::NoSuchImport {
            migration_id: migration_id.to_string(),
            state: format!(
                "it holds an import of newer migration {}",
                held.migration_id
            ),
        }),
        TargetModelState::Active { .. } => Err(MigrationError::ModelActiveHere {
            model_uuid: migration_id.model_uuid.clone(),
        }),
        TargetModelState::Gone { activated_by } if activated_by.attempt >= migration_id.attempt => {
            Err(superseded(activated_by))
        }
        TargetModelState::Gone { .. } | TargetModelState::Absent => Ok(ImportDecision::Import),
    }
}

/// Which of a batch of feed entries the target applies to its import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetChanges {
    /// The index of the first entry to apply (the ones before it are already applied).
    pub skip: usize,
    /// Seal the import at this lock index once applied (`None`: do not seal now).
    pub seal: Option<u64>,
}

/// The target's rule for a batch of the source's feed entries (`entries`, their positions in
/// order), starting after `after`, sealing at `seal_index` when > 0: only this migration's
/// import takes them; the batch must not leave a gap after what the import holds, must be in
/// order and not past the seal; entries the import holds are skipped, so a repeated or
/// overlapping batch changes nothing. A sealed import takes nothing new (a repeat of the seal
/// is acknowledged).
pub fn target_changes_decision(
    state: &TargetModelState,
    migration_id: &MigrationId,
    after: FeedPosition,
    entries: &[FeedPosition],
    seal_index: u64,
) -> Result<TargetChanges, MigrationError> {
    let id = migration_id.to_string();
    let TargetModelState::Importing(import) = state else {
        return Err(MigrationError::NoSuchImport {
            migration_id: id,
            state: match state {
                TargetModelState::Active { .. } => "the model is active here".into(),
                _ => "nothing".into(),
            },
        });
    };
    if &import.migration_id != migration_id {
        return Err(MigrationError::NoSuchImport {
            migration_id: id,
            state: format!("it holds an import of migration {}", import.migration_id),
        });
    }
    let (position, sealed_index) = match &import.state {
        TargetImportState::Imported {
            position,
            sealed_index,
            ..
        } => (*position, *sealed_index),
        TargetImportState::Receiving { bytes } => {
            return Err(MigrationError::ImportIncomplete {
                migration_id: id,
                bytes: *bytes,
            })
        }
    };
    if entries.windows(2).any(|w| w[0] >= w[1]) || entries.first().is_some_and(|e| *e <= after) {
        return Err(MigrationError::BadFeedBatch {
            migration_id: id,
            reason: "its entries must come in order, after the batch's start".into(),
        });
    }
    if seal_index > 0 && entries.last().is_some_and(|e| e.index > seal_index) {
        return Err(MigrationError::SealConflict {
            migration_id: id,
            sealed: seal_index,
            asked: entries.last().map_or(0, |e| e.index),
        });
    }
    if sealed_index != 0 {
        let new = entries.iter().any(|e| *e > position);
        return if seal_index == sealed_index && !new {
            Ok(TargetChanges {
                skip: entries.len(),
                seal: None,
            })
        } else {
            Err(MigrationError::SealConflict {
                migration_id: id,
                sealed: sealed_index,
                asked: seal_index,
            })
        };
    }
    if after > position {
        return Err(MigrationError::FeedGap {
            migration_id: id,
            position,
            after,
        });
    }
    Ok(TargetChanges {
        skip: entries.partition_point(|e| *e <= position),
        seal: (seal_index > 0).then_some(seal_index),
    })
}

/// What DropImport does on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetDrop {
    /// Drop the import of this migration.
    Drop,
    /// Nothing of this migration is held (never arrived, already dropped, or a newer attempt's
    /// import, which must not be touched): acknowledge.
    NothingToDrop,
}

/// The target's rule for DropImport: drops only this migration's import; refuses to drop a
/// model this migration already activated (that would mean the source aborted after the
/// target activated, which the protocol rules out, so it is reported, never acted on).
pub fn target_drop_decision(
    state: &TargetModelState,
    migration_id: &MigrationId,
) -> Result<TargetDrop, MigrationError> {
    match state {
        TargetModelState::Importing(import) if &import.migration_id == migration_id => {
            Ok(TargetDrop::Drop)
        }
        TargetModelState::Active {
            activated_by: Some(by),
        }
        | TargetModelState::Gone { activated_by: by }
            if by == migration_id =>
        {
            Err(MigrationError::AlreadyActive {
                migration_id: migration_id.to_string(),
            })
        }
        _ => Ok(TargetDrop::NothingToDrop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MigrationRecord {
        MigrationRecord::new(
            MigrationId::new("m-uuid", 1),
            TargetController {
                controller_uuid: "t-uuid".into(),
                name: "target".into(),
                endpoints: vec!["127.0.0.1:17070".into()],
                ca_fingerprint: "ab".into(),
            },
            "admin",
            3,
            1_000,
        )
    }

    #[test]
    fn migration_ids_round_trip_and_refuse_junk() {
        let id = MigrationId::parse("0b7a-uuid:2").unwrap();
        assert_eq!(id, MigrationId::new("0b7a-uuid", 2));
        assert_eq!(id.to_string(), "0b7a-uuid:2");
        for junk in ["", "uuid", ":1", "uuid:", "uuid:x", "uuid:0", "uuid:-1"] {
            let err = MigrationId::parse(junk).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{junk:?}");
        }
    }

    #[test]
    fn phase_names_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
        }
        assert_eq!(Phase::parse("UNKNOWN"), None);
    }

    #[test]
    fn the_graph_is_forward_only_and_never_aborts_after_success() {
        for from in Phase::ALL {
            for to in from.next_phases() {
                assert!(from < to, "{from} → {to} goes backwards");
                assert!(!(from.is_committed() && to.is_aborting()), "{from} → {to}");
            }
            assert_eq!(from.is_terminal(), from.next_phases().is_empty(), "{from}");
        }
    }

    #[test]
    fn transitions_carry_their_model_effects() {
        assert_eq!(
            model_effect(Phase::Catchup, Phase::Quiesce),
            ModelEffect::Lock
        );
        assert_eq!(
            model_effect(Phase::Quiesce, Phase::Success),
            ModelEffect::Redirect
        );
        assert_eq!(
            model_effect(Phase::Catchup, Phase::Abort),
            ModelEffect::StopFeed
        );
        assert_eq!(
            model_effect(Phase::Success, Phase::LogTransfer),
            ModelEffect::StopFeed
        );
        assert_eq!(
            model_effect(Phase::Abort, Phase::AbortDone),
            ModelEffect::Unlock
        );
        assert_eq!(
            model_effect(Phase::Precopy, Phase::Catchup),
            ModelEffect::Nothing
        );
    }

    #[test]
    fn abort_records_where_it_came_from_and_ends_with_a_time() {
        let aborted = apply_transition(&record(), Phase::Abort, 3_000, "boom").unwrap();
        assert_eq!(aborted.aborted_from, Some(Phase::Precheck));
        assert_eq!(aborted.abort_reason.as_deref(), Some("boom"));
        assert!(!aborted.import_may_exist());
        let done = apply_transition(&aborted, Phase::AbortDone, 4_000, "unlocked").unwrap();
        assert_eq!(done.ended_unix_ms, Some(4_000));
        assert_eq!(done.history.len(), 2);
        let precopy = apply_transition(&record(), Phase::Precopy, 2_000, "copy").unwrap();
        let aborted = apply_transition(&precopy, Phase::Abort, 3_000, "boom").unwrap();
        assert!(aborted.import_may_exist());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(90_000), "1m 30s");
        assert_eq!(human_ms(600_000), "10m");
    }
}
