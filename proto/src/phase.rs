//! A migration's phases: their names (as records, logs and `ctl` spell them) and the
//! predicates every side asks of them. The controller's decision code
//! (`starling_storage::model::migration`), `agentd` and `ctl` all use this one definition.

use std::fmt;

/// The persisted step of a migration (`docs/migration.md`). Forward only: see
/// `can_transition_to`. The model stays writable until QUIESCE (the fence); IMPORT and
/// VALIDATION are the lock-first protocol's steps, kept so records it wrote still read (a
/// migration found in one of them is aborted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The record exists and prechecks run; nothing is locked. (Juju's NONE/PRECHECK.)
    Precheck,
    /// The model stays writable while the source exports a copy of it and the target imports
    /// the copy (invisible, read-only); the source records every change since the start.
    Precopy,
    /// The model stays writable; the source streams the changes made since the copy and the
    /// target applies them; the model's agents prove they can log in to the target.
    Catchup,
    /// The fence: the model is locked (read-only, writes are held); the last changes go to the
    /// target and the digests at the lock index are compared.
    Quiesce,
    /// Lock-first protocol only: the locked model was streamed to the target.
    Import,
    /// Lock-first protocol only: digests compared, agents validated.
    Validation,
    /// The transfer is committed: the source model is a redirect. Point of no return.
    Success,
    /// The model's log is streamed to the target.
    LogTransfer,
    /// The source deletes the model's data, keeping the redirect.
    Reap,
    /// Terminal: the model lives on the target and the source is clean.
    Done,
    /// Any failure before SUCCESS: the target is told to drop its import.
    Abort,
    /// Terminal: the source model is unlocked, exactly as it was before the migration.
    AbortDone,
    /// Terminal: the model lives on the target; the source's cleanup is left to the operator.
    ReapFailed,
}

impl Phase {
    /// Every phase, in declaration order.
    pub const ALL: [Phase; 13] = [
        Phase::Precheck,
        Phase::Precopy,
        Phase::Catchup,
        Phase::Quiesce,
        Phase::Import,
        Phase::Validation,
        Phase::Success,
        Phase::LogTransfer,
        Phase::Reap,
        Phase::Done,
        Phase::Abort,
        Phase::AbortDone,
        Phase::ReapFailed,
    ];

    /// Whether `self → to` is a legal transition. The graph is acyclic: no phase is ever
    /// re-entered, and nothing at or after SUCCESS leads to ABORT.
    pub fn can_transition_to(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Precheck, Precopy | Abort)
                | (Precopy, Catchup | Abort)
                | (Catchup, Quiesce | Abort)
                | (Quiesce, Success | Abort)
                | (Import | Validation, Abort)
                | (Success, LogTransfer)
                | (LogTransfer, Reap)
                | (Reap, Done | ReapFailed)
                | (Abort, AbortDone)
        )
    }

    /// The phases `self` may move to.
    pub fn next_phases(self) -> Vec<Phase> {
        Phase::ALL
            .into_iter()
            .filter(|to| self.can_transition_to(*to))
            .collect()
    }

    /// DONE, ABORTDONE and REAPFAILED: nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::AbortDone | Phase::ReapFailed)
    }

    /// SUCCESS and every phase after it: the transfer is committed and can never be aborted.
    pub fn is_committed(self) -> bool {
        matches!(
            self,
            Phase::Success | Phase::LogTransfer | Phase::Reap | Phase::Done | Phase::ReapFailed
        )
    }

    /// ABORT and ABORTDONE.
    pub fn is_aborting(self) -> bool {
        matches!(self, Phase::Abort | Phase::AbortDone)
    }

    /// Every phase but the terminal ones: the migration has not ended.
    pub fn is_in_progress(self) -> bool {
        !self.is_terminal()
    }

    /// Whether agents are told about the migration: in CATCHUP they log in to the target with
    /// their own credential (the target holds the import by then) and report; in the fence
    /// (QUIESCE) there is nothing left for them to do, but the notice stays until SUCCESS
    /// redirects them. They never stop reporting: the controller holds what the fence blocks.
    pub fn notifies_agents(self) -> bool {
        matches!(self, Phase::Catchup | Phase::Quiesce)
    }

    /// Whether agents validate against the target when told about the migration in this
    /// phase (VALIDATION is the lock-first protocol's name for it).
    pub fn agents_validate(self) -> bool {
        matches!(self, Phase::Catchup | Phase::Validation)
    }

    /// Whether the source's copy of the model is locked (read-only) in this phase when the
    /// migration got here the usual way: the fence. ABORT keeps the lock of a migration
    /// aborted from the fence until ABORTDONE.
    pub fn locks_model(self) -> bool {
        matches!(self, Phase::Quiesce | Phase::Import | Phase::Validation)
    }

    /// The name used in records, logs and `ctl` output (Juju's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Precheck => "PRECHECK",
            Phase::Precopy => "PRECOPY",
            Phase::Catchup => "CATCHUP",
            Phase::Quiesce => "QUIESCE",
            Phase::Import => "IMPORT",
            Phase::Validation => "VALIDATION",
            Phase::Success => "SUCCESS",
            Phase::LogTransfer => "LOGTRANSFER",
            Phase::Reap => "REAP",
            Phase::Done => "DONE",
            Phase::Abort => "ABORT",
            Phase::AbortDone => "ABORTDONE",
            Phase::ReapFailed => "REAPFAILED",
        }
    }

    /// The phase named `name` (as `as_str` spells it).
    pub fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
