//! How `ctl` shows a model migration: one line per phase change with its reason, a progress line
//! while a phase waits, the outcome, and the short form `ctl models` puts in its Status column.
//! Everything here is pure; `ctl migrate --wait` polls `MigrationStatus`, feeds each answer to
//! [`Follow`] and prints the [`Line`]s it returns.

use std::time::Duration;

use starling_proto::controller::MigrationInfo;
use starling_proto::migration::PhaseChange;
use starling_proto::phase::Phase;

use crate::format::{format_duration, human_bytes};

// The phase names as `ctl` matches them; `Phase` spells them.
/// The record exists; prechecks run. The model stays writable until QUIESCE.
pub const PRECHECK: &str = Phase::Precheck.as_str();
/// The model is copied to the target (invisible, read-only there) while it stays writable.
pub const PRECOPY: &str = Phase::Precopy.as_str();
/// The changes made since the copy are streamed to the target; agents validate against it.
pub const CATCHUP: &str = Phase::Catchup.as_str();
/// The fence: the model is locked, writes are held, the last changes go to the target.
pub const QUIESCE: &str = Phase::Quiesce.as_str();
/// Lock-first protocol only (older records): the locked model was streamed to the target.
pub const IMPORT: &str = Phase::Import.as_str();
/// Lock-first protocol only (older records): digests compared, agents validated.
pub const VALIDATION: &str = Phase::Validation.as_str();
/// The point of no return: the model is a redirect on the source; the target activates it.
pub const SUCCESS: &str = Phase::Success.as_str();
/// The model's log is copied to the target.
pub const LOGTRANSFER: &str = Phase::LogTransfer.as_str();
/// The source deletes its copy of the model, keeping the redirect.
pub const REAP: &str = Phase::Reap.as_str();
/// Terminal: the model lives on the target.
pub const DONE: &str = Phase::Done.as_str();
/// The target is told to drop its import; then the model is unlocked.
pub const ABORT: &str = Phase::Abort.as_str();
/// Terminal: the model is on the source, unlocked, exactly as before.
pub const ABORTDONE: &str = Phase::AbortDone.as_str();
/// Terminal: the model lives on the target; the source's copy was not all deleted.
pub const REAPFAILED: &str = Phase::ReapFailed.as_str();

/// How often `ctl migrate --wait` asks for the migration's status.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// When stdout is not a terminal, progress lines are printed at most this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Phase names are padded to this width in phase lines (the longest is `LOGTRANSFER`).
const PHASE_WIDTH: usize = 12;

/// Whether `phase` ends the migration.
pub fn is_terminal(phase: &str) -> bool {
    Phase::parse(phase).is_some_and(Phase::is_terminal)
}

/// Whether `phase` is at or after SUCCESS, where a migration can no longer be aborted.
pub fn is_committed(phase: &str) -> bool {
    Phase::parse(phase).is_some_and(Phase::is_committed)
}

/// Whether `phase` is a phase of a migration that has not ended yet.
pub fn is_in_progress(phase: &str) -> bool {
    Phase::parse(phase).is_some_and(Phase::is_in_progress)
}

/// The phase of a model's migration summary (`ModelInfo.migration`): `IMPORT` for `IMPORT`,
/// `ABORTDONE` for `ABORTDONE: <reason>`, `""` when the model never migrated.
pub fn summary_phase(summary: &str) -> &str {
    summary.split_once(':').map_or(summary, |(p, _)| p).trim()
}

/// What `ctl models` shows in its Status column: `migrating: PHASE` while a migration runs,
/// `<status> (migration aborted)` after one aborted, else the model's status.
pub fn models_status(current: &str, migration: &str) -> String {
    let phase = summary_phase(migration);
    if is_in_progress(phase) {
        format!("migrating: {phase}")
    } else if phase == ABORTDONE {
        format!("{} (migration aborted)", or_dash(current))
    } else {
        or_dash(current)
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One phase change as `ctl migrate --wait` prints it: `PHASE        reason`.
pub fn phase_line(change: &PhaseChange) -> String {
    let line = format!(
        "{:<width$} {}",
        change.to,
        one_line(&change.reason),
        width = PHASE_WIDTH
    );
    line.trim_end().to_string()
}

/// What a phase does while it waits, when the controller does not say.
fn default_activity(phase: &str) -> &'static str {
    match phase {
        PRECHECK => "running prechecks",
        PRECOPY => "copying the model to the target",
        CATCHUP => "streaming the changes made since the copy",
        QUIESCE => "FENCE: writes held, sending the last changes",
        IMPORT => "importing model",
        VALIDATION => "validating against the target",
        SUCCESS => "waiting for the target to activate the model",
        LOGTRANSFER => "transferring the model's log",
        REAP => "deleting the source's copy",
        ABORT => "dropping the import on the target",
        _ => "",
    }
}

/// The progress line of a migration that waits in its phase, e.g.
/// `  importing model: 1.2 MB of 3.4 MB, 10102 records; agents 2/2 acked`; `None` when it has
/// ended or there is nothing to say beyond its phase.
pub fn progress_line(info: &MigrationInfo) -> Option<String> {
    let phase = info.phase.as_str();
    if is_terminal(phase) {
        return None;
    }
    let mut groups = Vec::new();
    if matches!(phase, PRECOPY | IMPORT | LOGTRANSFER) {
        let mut transfer = Vec::new();
        if info.bytes_total > 0 {
            transfer.push(format!(
                "{} of {}",
                human_bytes(info.bytes_sent),
                human_bytes(info.bytes_total)
            ));
        } else if info.bytes_sent > 0 {
            transfer.push(format!("{} sent", human_bytes(info.bytes_sent)));
        }
        if info.records_total > 0 {
            transfer.push(format!("{} records", info.records_total));
        }
        if !transfer.is_empty() {
            groups.push(transfer.join(", "));
        }
    }
    if phase == CATCHUP {
        groups.push(format!("lag {} changes", info.catchup_lag));
    }
    if info.agents_total > 0 {
        let total = info.agents_total;
        match phase {
            CATCHUP => groups.push(format!(
                "agents {}/{total} validated",
                info.agents_validated
            )),
            IMPORT => groups.push(format!("agents {}/{total} acked", info.agents_acked)),
            VALIDATION => groups.push(format!(
                "agents {}/{total} acked, {}/{total} validated",
                info.agents_acked, info.agents_validated
            )),
            _ => {}
        }
    }
    let activity = one_line(&info.activity);
    if activity.is_empty() && groups.is_empty() {
        return None;
    }
    let activity = if activity.is_empty() {
        default_activity(phase).to_string()
    } else {
        activity
    };
    let mut line = format!("  {activity}");
    if !groups.is_empty() {
        line.push_str(": ");
        line.push_str(&groups.join("; "));
    }
    Some(line)
}

/// A line to print while following a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A phase change: always printed, on its own line.
    Phase(String),
    /// Progress within the phase: on a terminal it replaces the previous progress line.
    Progress(String),
}

/// Follows one migration across polls: which phase changes were printed, and which progress
/// line was printed when.
#[derive(Debug, Clone)]
pub struct Follow {
    tty: bool,
    phases_shown: usize,
    progress_shown: Option<String>,
    progress_at: Option<Duration>,
}

impl Follow {
    /// A follower that prints to a terminal (`tty`: progress redrawn in place, as often as it
    /// changes) or not (progress printed when it changes, at once in a new phase, then at most
    /// every [`PROGRESS_EVERY`]).
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            phases_shown: 0,
            progress_shown: None,
            progress_at: None,
        }
    }

    /// The lines to print for the status `info`, answered `now` after following began: every
    /// phase change not printed yet, then the progress line if it is due.
    pub fn observe(&mut self, info: &MigrationInfo, now: Duration) -> Vec<Line> {
        let mut lines: Vec<Line> = info
            .history
            .iter()
            .skip(self.phases_shown)
            .map(|change| Line::Phase(phase_line(change)))
            .collect();
        self.phases_shown = self.phases_shown.max(info.history.len());
        if !lines.is_empty() {
            // A new phase shows its progress at once.
            self.progress_at = None;
            if self.tty {
                // Printing a phase line erased the progress line: draw it again.
                self.progress_shown = None;
            }
        }
        if let Some(progress) = progress_line(info) {
            lines.extend(self.progress(progress, now));
        }
        lines
    }

    /// The line to print when the controller did not answer (`error`); it is tried again.
    pub fn unanswered(&mut self, error: &str, now: Duration) -> Option<Line> {
        self.progress(format!("  {}; trying again", one_line(error)), now)
    }

    fn progress(&mut self, line: String, now: Duration) -> Option<Line> {
        if self.progress_shown.as_ref() == Some(&line) {
            return None;
        }
        if !self.tty
            && self
                .progress_at
                .is_some_and(|at| now < at.saturating_add(PROGRESS_EVERY))
        {
            return None;
        }
        self.progress_shown = Some(line.clone());
        self.progress_at = Some(now);
        Some(Line::Progress(line))
    }
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// DONE: the model lives on the target.
    Done,
    /// REAPFAILED: the model lives on the target; the source's cleanup is left.
    ReapFailed,
    /// ABORTDONE: the model is on the source, as before.
    Aborted,
}

/// The outcome of a migration in `phase`, or `None` while it runs.
pub fn outcome(phase: &str) -> Option<Outcome> {
    match phase {
        DONE => Some(Outcome::Done),
        REAPFAILED => Some(Outcome::ReapFailed),
        ABORTDONE => Some(Outcome::Aborted),
        _ => None,
    }
}

/// The reason of the last phase change, if any.
fn last_reason(info: &MigrationInfo) -> Option<&str> {
    info.history
        .last()
        .map(|c| c.reason.as_str())
        .filter(|r| !r.is_empty())
}

/// The error of an aborted migration: `migration <id> aborted: <reason>`.
pub fn aborted_message(info: &MigrationInfo) -> String {
    let reason = info
        .abort_reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .or_else(|| last_reason(info))
        .unwrap_or("no reason was recorded");
    format!(
        "migration {} aborted: {}",
        info.migration_id,
        one_line(reason)
    )
}

/// The warning (stderr) of a migration that ended in REAPFAILED, controller `source` being the
/// one the model left.
pub fn reap_failed_warning(info: &MigrationInfo, source: &str) -> String {
    let mut text = format!(
        "WARNING migration {} ended in REAPFAILED: model \"{}\" lives on controller \"{}\" now, \
         but controller \"{source}\" did not delete all of its old copy",
        info.migration_id, info.model_name, info.target_name
    );
    if let Some(reason) = last_reason(info) {
        text.push_str(&format!(" ({})", one_line(reason)));
    }
    text.push_str("; the model itself is fine, only the source's cleanup is left\n");
    text
}

/// The error when `--wait` gives up after `waited`. `phase` is the last phase seen (`None`: no
/// status could be read); `model` is how to name the model in a command (`alpha:admin/web`).
/// The migration itself continues, so the message says how to follow or stop it.
pub fn timeout_message(id: &str, phase: Option<&str>, waited: Duration, model: &str) -> String {
    let waited = format_duration(waited);
    let follow = format!("follow it with 'ctl show-model {model}'");
    let stop = format!("stop it with 'ctl abort-migration {model}'");
    match phase {
        None => format!(
            "the status of migration {id} could not be read for {waited}; it continues on the \
             controller: {follow} or {stop}"
        ),
        Some(phase) if is_committed(phase) => format!(
            "migration {id} is still in {phase} after {waited}; it continues on the controller and \
             can no longer be aborted: {follow}"
        ),
        Some(ABORT) => format!(
            "migration {id} is still in ABORT after {waited}; it continues on the controller, which \
             unlocks the model once the target has dropped its import: {follow}"
        ),
        Some(phase) => format!(
            "migration {id} is still in {phase} after {waited}; it continues on the controller: \
             {follow} or {stop}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "11111111-2222-4333-8444-555555555555:1";

    fn change(from: &str, to: &str, reason: &str) -> PhaseChange {
        PhaseChange {
            from: from.into(),
            to: to.into(),
            at_unix_ms: 1_700_000_000_000,
            reason: reason.into(),
        }
    }

    /// The status of migration [`ID`] after the phase changes `history`.
    fn info(history: &[PhaseChange]) -> MigrationInfo {
        MigrationInfo {
            migration_id: ID.into(),
            model_uuid: "11111111-2222-4333-8444-555555555555".into(),
            model_name: "admin/web".into(),
            target_name: "beta".into(),
            phase: history.last().map(|c| c.to.clone()).unwrap_or_default(),
            started_unix_ms: 1_700_000_000_000,
            history: history.to_vec(),
            initiated_by: "admin".into(),
            ..Default::default()
        }
    }

    /// What `--wait` prints for `polls` (answered `ms` after it began), as the terminal would
    /// show it without one: progress lines are lines too.
    fn follow(tty: bool, polls: &[(u64, MigrationInfo)]) -> String {
        let mut follow = Follow::new(tty);
        let mut out = String::new();
        for (ms, info) in polls {
            for line in follow.observe(info, Duration::from_millis(*ms)) {
                let (Line::Phase(text) | Line::Progress(text)) = line;
                out.push_str(&text);
                out.push('\n');
            }
        }
        out
    }

    fn done_polls() -> Vec<(u64, MigrationInfo)> {
        let h = [
            change(
                PRECHECK,
                PRECOPY,
                "prechecks passed; copying the model while it stays writable",
            ),
            change(
                PRECOPY,
                CATCHUP,
                "controller \"beta\" imported the copy (9f2c4e1a); streaming the changes made since",
            ),
            change(
                CATCHUP,
                QUIESCE,
                "3 change(s) left to send, 2 agent(s) validated; model locked, writes are held",
            ),
            change(
                QUIESCE,
                SUCCESS,
                "the target holds every change up to the lock and the digests at the lock match",
            ),
            change(
                SUCCESS,
                LOGTRANSFER,
                "controller \"beta\" activated the model at epoch 2",
            ),
            change(LOGTRANSFER, REAP, "log transferred through 10000"),
            change(
                REAP,
                DONE,
                "the source's copy of the model was deleted; the redirect remains",
            ),
        ];
        let mut precopy = info(&h[..1]);
        precopy.bytes_total = 3_400_000;
        precopy.bytes_sent = 1_200_000;
        precopy.records_total = 10_102;
        // Changes within 2 s of the last progress line are not printed without a terminal.
        let mut precopy_more = precopy.clone();
        precopy_more.bytes_sent = 2_000_000;
        let mut precopy_most = precopy.clone();
        precopy_most.bytes_sent = 3_100_000;
        let mut catchup = info(&h[..2]);
        catchup.agents_total = 2;
        catchup.agents_validated = 1;
        catchup.catchup_lag = 12;
        let mut fence = info(&h[..3]);
        fence.activity = "FENCE: model locked, writes held; sending the last changes".into();
        let mut success = info(&h[..4]);
        success.activity = "waiting for controller \"beta\" to acknowledge Activate".into();
        let mut done = info(&h);
        done.ended_unix_ms = Some(1_700_000_060_000);
        vec![
            (0, precopy),
            (500, precopy_more),
            (3000, precopy_most),
            (3500, catchup),
            (3700, fence),
            (4000, success),
            (4500, info(&h[..5])),
            (5000, done),
        ]
    }

    fn abort_polls() -> Vec<(u64, MigrationInfo)> {
        let h = [
            change(
                PRECHECK,
                PRECOPY,
                "prechecks passed; copying the model while it stays writable",
            ),
            change(
                PRECOPY,
                CATCHUP,
                "controller \"beta\" imported the copy (9f2c4e1a); streaming the changes made since",
            ),
            change(
                CATCHUP,
                ABORT,
                "the agent of machine 3 could not validate against controller \"beta\": refused",
            ),
            change(
                ABORT,
                ABORTDONE,
                "controller \"beta\" dropped the import; the model stayed writable throughout",
            ),
        ];
        let mut catchup = info(&h[..2]);
        catchup.agents_total = 2;
        catchup.agents_validated = 1;
        catchup.catchup_lag = 3;
        let mut abort = info(&h[..3]);
        abort.abort_reason = Some(h[2].reason.clone());
        let mut done = info(&h);
        done.abort_reason = abort.abort_reason.clone();
        done.ended_unix_ms = Some(1_700_000_070_000);
        vec![(0, catchup), (2000, abort), (4000, done)]
    }

    #[test]
    fn follow_to_done() {
        let polls = done_polls();
        let last = &polls.last().unwrap().1;
        assert_eq!(outcome(&last.phase), Some(Outcome::Done));
        insta::assert_snapshot!("migrate_wait_done", follow(false, &polls));
    }

    #[test]
    fn follow_to_abortdone() {
        let polls = abort_polls();
        let last = &polls.last().unwrap().1;
        assert_eq!(outcome(&last.phase), Some(Outcome::Aborted));
        let mut out = follow(false, &polls);
        out.push_str(&format!("ERROR {}\n", aborted_message(last)));
        insta::assert_snapshot!("migrate_wait_abortdone", out);
    }

    #[test]
    fn a_terminal_gets_every_change_and_progress_again_after_a_phase_line() {
        let out = follow(true, &done_polls());
        // Every distinct progress line, however close together.
        assert!(out.contains("2.0 MB of 3.4 MB"), "{out}");
        assert!(out.contains("3.1 MB of 3.4 MB"), "{out}");
        let mut follow = Follow::new(true);
        let polls = done_polls();
        follow.observe(&polls[2].1, Duration::ZERO);
        let mut same = polls[2].1.clone();
        assert!(follow.observe(&same, Duration::ZERO).is_empty());
        same.history.push(change(PRECOPY, CATCHUP, "imported"));
        same.phase = CATCHUP.into();
        let lines = follow.observe(&same, Duration::ZERO);
        assert!(
            matches!(lines[..], [Line::Phase(_), Line::Progress(_)]),
            "{lines:?}"
        );
    }

    #[test]
    fn without_a_terminal_progress_is_rate_limited_and_never_repeated() {
        let mut follow = Follow::new(false);
        let polls = done_polls();
        let precopy = &polls[2].1;
        // The PRECOPY line and its progress.
        assert_eq!(follow.observe(precopy, Duration::ZERO).len(), 2);
        assert!(follow.observe(precopy, Duration::from_secs(60)).is_empty());
        let line = follow.unanswered(
            "cannot connect to controller \"alpha\"",
            Duration::from_secs(61),
        );
        assert_eq!(
            line,
            Some(Line::Progress(
                "  cannot connect to controller \"alpha\"; trying again".into()
            ))
        );
        assert_eq!(follow.unanswered("again", Duration::from_secs(62)), None);
    }

    #[test]
    fn phase_lines_are_aligned() {
        assert_eq!(
            phase_line(&change(SUCCESS, LOGTRANSFER, "activated")),
            "LOGTRANSFER  activated"
        );
        assert_eq!(
            phase_line(&change(PRECHECK, QUIESCE, "locked\nnow")),
            "QUIESCE      locked now"
        );
        assert_eq!(phase_line(&change(REAP, DONE, "")), "DONE");
    }

    #[test]
    fn progress_needs_something_to_say() {
        assert_eq!(progress_line(&info(&[change(PRECHECK, QUIESCE, "")])), None);
        let mut i = info(&[change(QUIESCE, IMPORT, "")]);
        i.bytes_sent = 999;
        assert_eq!(progress_line(&i).unwrap(), "  importing model: 999 B sent");
        i.phase = DONE.into();
        assert_eq!(progress_line(&i), None);
    }

    #[test]
    fn outcomes_and_their_messages() {
        assert_eq!(outcome(REAPFAILED), Some(Outcome::ReapFailed));
        assert_eq!(outcome(IMPORT), None);
        let mut i = info(&[change(REAP, REAPFAILED, "reap timed out after 10m")]);
        assert_eq!(
            reap_failed_warning(&i, "alpha"),
            format!(
                "WARNING migration {ID} ended in REAPFAILED: model \"admin/web\" lives on \
                 controller \"beta\" now, but controller \"alpha\" did not delete all of its old \
                 copy (reap timed out after 10m); the model itself is fine, only the source's \
                 cleanup is left\n"
            )
        );
        i.history.clear();
        assert_eq!(
            aborted_message(&i),
            format!("migration {ID} aborted: no reason was recorded")
        );
        i.abort_reason = Some("aborted by operator: wrong target".into());
        assert_eq!(
            aborted_message(&i),
            format!("migration {ID} aborted: aborted by operator: wrong target")
        );
    }

    #[test]
    fn timeouts_say_how_to_follow_or_stop() {
        let d = Duration::from_secs(90);
        let m = "alpha:admin/web";
        assert_eq!(
            timeout_message(ID, Some(IMPORT), d, m),
            format!(
                "migration {ID} is still in IMPORT after 1m 30s; it continues on the controller: \
                 follow it with 'ctl show-model {m}' or stop it with 'ctl abort-migration {m}'"
            )
        );
        let committed = timeout_message(ID, Some(SUCCESS), d, m);
        assert!(
            committed.contains("can no longer be aborted"),
            "{committed}"
        );
        assert!(!committed.contains("abort-migration"), "{committed}");
        assert!(timeout_message(ID, None, d, m).starts_with("the status of migration"));
    }

    #[test]
    fn models_status_column() {
        assert_eq!(models_status("available", ""), "available");
        assert_eq!(models_status("busy", "IMPORT"), "migrating: IMPORT");
        assert_eq!(
            models_status("available", "ABORTDONE: machine 3 did not ack"),
            "available (migration aborted)"
        );
        assert_eq!(models_status("available", "DONE"), "available");
        assert_eq!(summary_phase("ABORTDONE: x: y"), "ABORTDONE");
    }
}
