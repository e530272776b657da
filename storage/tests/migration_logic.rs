//! The migration's pure logic without a network: every phase × every kind of observation
//! (table-driven), the phase graph and its refusals, the target's rules, and the safety
//! properties under random observations and master crashes (proptest).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use starling_storage::model::migration::*;
use starling_storage::model::ErrorKind;

const T0: i64 = 1_000_000;
const D1: &str = "d1";

fn limits() -> Limits {
    Limits {
        precheck_timeout_ms: 30_000,
        quiesce_timeout_ms: 60_000,
        import_timeout_ms: 120_000,
        validation_timeout_ms: 60_000,
        log_transfer_timeout_ms: 60_000,
        reap_timeout_ms: 60_000,
        abort_drop_timeout_ms: Some(120_000),
        retry_interval_ms: 2_000,
    }
}

fn machines() -> BTreeSet<String> {
    ["0", "1"].into_iter().map(String::from).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn new_record() -> MigrationRecord {
    MigrationRecord::new(
        MigrationId::new("6f1c-model", 1),
        TargetController {
            controller_uuid: "9d2e-target".into(),
            name: "blue".into(),
            endpoints: vec!["127.0.0.1:17070".into()],
            ca_fingerprint: "c0ffee".into(),
        },
        "admin",
        4,
        T0 - 10_000,
    )
}

fn go(record: &MigrationRecord, to: Phase, at: i64) -> MigrationRecord {
    apply_transition(record, to, at, "test")
        .unwrap_or_else(|e| panic!("{} → {to}: {e}", record.phase))
}

fn note(record: &MigrationRecord, progress: Progress) -> MigrationRecord {
    apply_progress(record, &progress).unwrap_or_else(|e| panic!("{progress:?}: {e}"))
}

/// A record in `phase`, reached along legal transitions, entered at `T0`. VALIDATION and later
/// have both digests recorded as `D1`; ABORT came from VALIDATION (an import may exist).
fn at(phase: Phase) -> MigrationRecord {
    let mut record = new_record();
    let path: &[Phase] = match phase {
        Phase::Precheck => &[],
        Phase::Quiesce => &[Phase::Quiesce],
        Phase::Import => &[Phase::Quiesce, Phase::Import],
        Phase::Validation => &[Phase::Quiesce, Phase::Import, Phase::Validation],
        Phase::Success => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
        ],
        Phase::LogTransfer => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
            Phase::LogTransfer,
        ],
        Phase::Reap => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
            Phase::LogTransfer,
            Phase::Reap,
        ],
        Phase::Done => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
            Phase::LogTransfer,
            Phase::Reap,
            Phase::Done,
        ],
        Phase::ReapFailed => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
            Phase::LogTransfer,
            Phase::Reap,
            Phase::ReapFailed,
        ],
        Phase::Abort => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Abort,
        ],
        Phase::AbortDone => &[
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Abort,
            Phase::AbortDone,
        ],
    };
    for (step, to) in path.iter().enumerate() {
        if *to == Phase::Validation {
            record = note(&record, Progress::SourceDigest(D1.into()));
            record = note(&record, Progress::TargetDigest(D1.into()));
        }
        let when = if step + 1 == path.len() {
            T0
        } else {
            T0 - 5_000
        };
        record = go(&record, *to, when);
    }
    assert_eq!(record.phase, phase);
    record
}

/// One kind of observation, as the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Empty,
    Machines,
    AllQuiesced,
    SomeQuiesced,
    PrechecksPassed,
    PrechecksFailed,
    ImportNotStarted,
    ImportInProgress,
    Imported,
    AlreadyImported,
    ImportedOtherDigest,
    ImportFailed,
    ImportUnreachable,
    SourceDigest,
    AllValidated,
    ValidationFailed,
    ActivateAcked,
    ActivateUnreachable,
    LogProgress,
    LogComplete,
    LogFailed,
    ReapDone,
    ReapFailed,
    DropAcked,
    DropUnreachable,
    AbortRequested,
    DeadlinePassed,
}

const KINDS: [Kind; 27] = [
    Kind::Empty,
    Kind::Machines,
    Kind::AllQuiesced,
    Kind::SomeQuiesced,
    Kind::PrechecksPassed,
    Kind::PrechecksFailed,
    Kind::ImportNotStarted,
    Kind::ImportInProgress,
    Kind::Imported,
    Kind::AlreadyImported,
    Kind::ImportedOtherDigest,
    Kind::ImportFailed,
    Kind::ImportUnreachable,
    Kind::SourceDigest,
    Kind::AllValidated,
    Kind::ValidationFailed,
    Kind::ActivateAcked,
    Kind::ActivateUnreachable,
    Kind::LogProgress,
    Kind::LogComplete,
    Kind::LogFailed,
    Kind::ReapDone,
    Kind::ReapFailed,
    Kind::DropAcked,
    Kind::DropUnreachable,
    Kind::AbortRequested,
    Kind::DeadlinePassed,
];

/// "Now" for most cells: one second into the phase.
const NOW: i64 = T0 + 1_000;
/// When the observations that pace retries were made: just before `NOW`.
const SEEN: i64 = NOW - 500;
/// "Now" for `DeadlinePassed`: past every deadline in `limits()`.
const LATE: i64 = T0 + 10 * 60_000;

fn observe(kind: Kind, phase: Phase) -> (Observations, i64) {
    let mut obs = Observations::default();
    let imported = |status| Some(Observed::at(status, SEEN));
    match kind {
        Kind::Empty => {}
        Kind::Machines => obs.machines = Some(machines()),
        Kind::AllQuiesced => {
            obs.machines = Some(machines());
            obs.quiesce_acks = machines();
        }
        Kind::SomeQuiesced => {
            obs.machines = Some(machines());
            obs.quiesce_acks = set(&["0"]);
        }
        Kind::PrechecksPassed => {
            obs.prechecks = Some(PrecheckReport {
                phase,
                failures: vec![],
            })
        }
        Kind::PrechecksFailed => {
            obs.prechecks = Some(PrecheckReport {
                phase,
                failures: vec!["target version 3.0 is older than 3.1".into()],
            })
        }
        Kind::ImportNotStarted => obs.import = imported(ImportStatus::NotStarted),
        Kind::ImportInProgress => {
            obs.import = imported(ImportStatus::InProgress {
                bytes: 4096,
                records: 12,
            })
        }
        Kind::Imported => obs.import = imported(ImportStatus::Imported { digest: D1.into() }),
        Kind::AlreadyImported => {
            obs.import = imported(ImportStatus::AlreadyImported { digest: D1.into() })
        }
        Kind::ImportedOtherDigest => {
            obs.import = imported(ImportStatus::Imported {
                digest: "d2".into(),
            })
        }
        Kind::ImportFailed => {
            obs.import = imported(ImportStatus::Failed {
                reason: "disk full".into(),
            })
        }
        Kind::ImportUnreachable => {
            obs.import = imported(ImportStatus::Unreachable {
                error: "connection refused".into(),
            })
        }
        Kind::SourceDigest => obs.source_digest = Some(D1.into()),
        Kind::AllValidated => {
            obs.machines = Some(machines());
            obs.validation_reports = machines()
                .into_iter()
                .map(|m| (m, AgentReport::Ok))
                .collect();
        }
        Kind::ValidationFailed => {
            obs.machines = Some(machines());
            obs.validation_reports = BTreeMap::from([
                ("0".to_string(), AgentReport::Ok),
                (
                    "1".to_string(),
                    AgentReport::Failed {
                        reason: "certificate signed by unknown authority".into(),
                    },
                ),
            ]);
        }
        Kind::ActivateAcked => obs.activate = Some(Observed::at(CallOutcome::Acked, SEEN)),
        Kind::ActivateUnreachable => {
            obs.activate = Some(Observed::at(
                CallOutcome::Unreachable {
                    error: "timeout".into(),
                },
                SEEN,
            ))
        }
        Kind::LogProgress => {
            obs.log_transfer = Some(Observed::at(
                LogTransferStatus::InProgress { position: 50 },
                SEEN,
            ))
        }
        Kind::LogComplete => {
            obs.log_transfer = Some(Observed::at(
                LogTransferStatus::Complete { position: 80 },
                SEEN,
            ))
        }
        Kind::LogFailed => {
            obs.log_transfer = Some(Observed::at(
                LogTransferStatus::Failed {
                    reason: "stream reset".into(),
                },
                SEEN,
            ))
        }
        Kind::ReapDone => obs.reap = Some(ReapResult::Done),
        Kind::ReapFailed => {
            obs.reap = Some(ReapResult::Failed {
                reason: "sled: io error".into(),
            })
        }
        Kind::DropAcked => obs.drop_import = Some(Observed::at(CallOutcome::Acked, SEEN)),
        Kind::DropUnreachable => {
            obs.drop_import = Some(Observed::at(
                CallOutcome::Unreachable {
                    error: "no route to host".into(),
                },
                SEEN,
            ))
        }
        Kind::AbortRequested => obs.abort_requested = Some("operator changed their mind".into()),
        Kind::DeadlinePassed => return (obs, LATE),
    }
    (obs, NOW)
}

/// What a cell of the table expects.
#[derive(Debug)]
enum Expect {
    /// Exactly this action.
    Is(Action),
    /// A transition to ABORT whose reason contains this.
    Abort(&'static str),
    /// A transition (of any action kind) to this phase whose reason contains this.
    To(Phase, &'static str),
}

fn wait_retry() -> Action {
    Action::Wait {
        until_unix_ms: SEEN + limits().retry_interval_ms as i64,
    }
}

/// The step each phase re-issues when nothing it observed changes the decision — what a
/// restarted master does first.
fn default_for(phase: Phase) -> Action {
    match phase {
        Phase::Precheck => Action::RunPrechecks,
        Phase::Quiesce => Action::ReadMachines,
        Phase::Import => Action::StreamExport { resume_from: 0 },
        Phase::Validation => Action::ReadMachines,
        Phase::Success => Action::CallActivate,
        Phase::LogTransfer => Action::TransferLogs { from: 0 },
        Phase::Reap => Action::Reap,
        Phase::Abort => Action::DropImportOnTarget,
        Phase::Done | Phase::AbortDone | Phase::ReapFailed => Action::Nothing,
    }
}

/// The cells that differ from `default_for(phase)`.
fn expected(phase: Phase, kind: Kind) -> Expect {
    use Kind as K;
    use Phase as P;
    let quiesce_deadline = T0 + limits().quiesce_timeout_ms as i64;
    let validation_deadline = T0 + limits().validation_timeout_ms as i64;
    let waiting = |missing: &[&str], until| {
        Expect::Is(Action::WaitForAgents {
            missing: set(missing),
            until_unix_ms: until,
        })
    };
    let pre_commit = matches!(phase, P::Precheck | P::Quiesce | P::Import | P::Validation);
    match (phase, kind) {
        (_, K::AbortRequested) if pre_commit => Expect::Abort("aborted by operator"),
        (_, K::DeadlinePassed) if pre_commit => Expect::Abort("timed out after"),

        (P::Precheck, K::PrechecksPassed) => Expect::Is(Action::Lock),
        (P::Precheck, K::PrechecksFailed) => Expect::Abort("prechecks failed: target version"),

        (P::Quiesce, K::Machines | K::AllValidated | K::ValidationFailed) => {
            waiting(&["0", "1"], quiesce_deadline)
        }
        (P::Quiesce, K::SomeQuiesced) => waiting(&["1"], quiesce_deadline),
        (P::Quiesce, K::AllQuiesced) => Expect::Is(Action::RunPrechecks),

        (P::Import, K::ImportInProgress) => Expect::Is(Action::StreamExport { resume_from: 4096 }),
        (P::Import, K::Imported | K::AlreadyImported) => {
            Expect::Is(Action::Record(Progress::TargetDigest(D1.into())))
        }
        (P::Import, K::ImportedOtherDigest) => {
            Expect::Is(Action::Record(Progress::TargetDigest("d2".into())))
        }
        (P::Import, K::ImportFailed) => Expect::Abort("failed the import: disk full"),
        (P::Import, K::ImportUnreachable) => Expect::Is(wait_retry()),
        (P::Import, K::SourceDigest) => {
            Expect::Is(Action::Record(Progress::SourceDigest(D1.into())))
        }

        (P::Validation, K::Machines | K::AllQuiesced | K::SomeQuiesced) => {
            waiting(&["0", "1"], validation_deadline)
        }
        (P::Validation, K::AllValidated) => Expect::Is(Action::CommitSuccess),
        (P::Validation, K::ValidationFailed) => {
            Expect::Abort("machine 1 could not validate against controller \"blue\"")
        }
        (P::Validation, K::ImportNotStarted) => Expect::Abort("no longer holds the import"),
        (P::Validation, K::ImportInProgress) => Expect::Abort("reports the import incomplete"),
        (P::Validation, K::ImportedOtherDigest) => Expect::Abort("now reports digest d2 after d1"),
        (P::Validation, K::ImportFailed) => Expect::Abort("failed the import"),

        (P::Success, K::ActivateAcked) => {
            Expect::To(P::LogTransfer, "activated the model at epoch 5")
        }
        (P::Success, K::ActivateUnreachable) => Expect::Is(wait_retry()),

        (P::LogTransfer, K::LogProgress) => Expect::Is(Action::Record(Progress::LogPosition(50))),
        (P::LogTransfer, K::LogComplete) => Expect::To(P::Reap, "log transferred through 80"),
        (P::LogTransfer, K::LogFailed) => Expect::Is(wait_retry()),
        (P::LogTransfer, K::DeadlinePassed) => Expect::To(P::Reap, "log transfer incomplete"),

        (P::Reap, K::ReapDone) => Expect::To(P::Done, "deleted"),
        (P::Reap, K::ReapFailed) => Expect::To(P::ReapFailed, "reap failed: sled: io error"),
        (P::Reap, K::DeadlinePassed) => Expect::To(P::ReapFailed, "did not finish within 1m"),

        (P::Abort, K::DropAcked) => Expect::To(P::AbortDone, "dropped the import"),
        (P::Abort, K::DropUnreachable) => Expect::Is(wait_retry()),
        (P::Abort, K::DeadlinePassed) => Expect::To(P::AbortDone, "did not acknowledge dropping"),

        _ => Expect::Is(default_for(phase)),
    }
}

#[test]
fn every_phase_times_every_observation_kind() {
    let mut failures = Vec::new();
    let mut cells = 0;
    for phase in Phase::ALL {
        let record = at(phase);
        for kind in KINDS {
            cells += 1;
            let (obs, now) = observe(kind, phase);
            let action = next_action(&record, &obs, now, &limits());
            let expect = expected(phase, kind);
            let ok = match &expect {
                Expect::Is(want) => &action == want,
                Expect::Abort(text) => matches!(
                    &action,
                    Action::Transition { to: Phase::Abort, reason } if reason.contains(text)
                ),
                Expect::To(to, text) => action
                    .commits(phase)
                    .is_some_and(|(got, reason)| got == *to && reason.contains(text)),
            };
            if !ok {
                failures.push(format!(
                    "{phase} × {kind:?}: got {action:?}, want {expect:?}"
                ));
            }
        }
    }
    assert_eq!(cells, 11 * 27);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_migration_runs_start_to_done_when_everything_answers() {
    let limits = limits();
    let mut record = new_record();
    let mut obs = Observations {
        machines: Some(machines()),
        ..Observations::default()
    };
    let mut now = T0;
    let mut seen = Vec::new();
    for _ in 0..40 {
        let action = next_action(&record, &obs, now, &limits);
        seen.push(action.clone());
        if action == Action::Nothing {
            break;
        }
        cooperate(&mut record, &mut obs, &mut now, &action, &machines());
    }
    assert_eq!(record.phase, Phase::Done, "{seen:#?}");
    let phases: Vec<Phase> = record.history.iter().map(|c| c.to).collect();
    assert_eq!(
        phases,
        vec![
            Phase::Quiesce,
            Phase::Import,
            Phase::Validation,
            Phase::Success,
            Phase::LogTransfer,
            Phase::Reap,
            Phase::Done
        ]
    );
    assert_eq!(record.source_digest.as_deref(), Some(D1));
    assert_eq!(record.target_digest.as_deref(), Some(D1));
    assert_eq!(record.agents_acked, machines());
    assert_eq!(record.agents_validated, machines());
    assert!(record.ended_unix_ms.is_some());
}

#[test]
fn a_digest_mismatch_aborts_and_the_abort_drops_the_import_then_unlocks() {
    let mut record = at(Phase::Import);
    record = note(&record, Progress::SourceDigest(D1.into()));
    record = note(&record, Progress::TargetDigest("d2".into()));
    record = go(&record, Phase::Validation, T0);
    let action = next_action(&record, &Observations::default(), NOW, &limits());
    let Action::Transition {
        to: Phase::Abort,
        reason,
    } = &action
    else {
        panic!("{action:?}")
    };
    assert!(reason.contains("digest mismatch: source d1"), "{reason}");
    // SUCCESS itself is refused on mismatched digests, whoever asks.
    assert!(matches!(
        apply_transition(&record, Phase::Success, NOW, "x"),
        Err(MigrationError::DigestsNotConfirmed { .. })
    ));
    let aborted = go(&record, Phase::Abort, NOW);
    assert!(aborted.import_may_exist());
    assert_eq!(
        next_action(&aborted, &Observations::default(), NOW, &limits()),
        Action::DropImportOnTarget
    );
    let acked = Observations {
        drop_import: Some(Observed::at(CallOutcome::Acked, NOW)),
        ..Observations::default()
    };
    let unlock = next_action(&aborted, &acked, NOW, &limits());
    assert!(matches!(unlock, Action::Unlock { .. }), "{unlock:?}");
    assert_eq!(
        model_effect(Phase::Abort, Phase::AbortDone),
        ModelEffect::Unlock
    );
}

#[test]
fn an_abort_before_import_unlocks_without_calling_the_target() {
    for from in [Phase::Precheck, Phase::Quiesce] {
        let mut record = new_record();
        if from == Phase::Quiesce {
            record = go(&record, Phase::Quiesce, T0 - 1);
        }
        let aborted = go(&record, Phase::Abort, T0);
        assert!(!aborted.import_may_exist());
        let action = next_action(&aborted, &Observations::default(), NOW, &limits());
        assert!(
            matches!(&action, Action::Unlock { reason } if reason.contains("nothing was sent")),
            "{from}: {action:?}"
        );
    }
}

#[test]
fn without_a_drop_timeout_abort_waits_for_the_target_forever() {
    let limits = Limits {
        abort_drop_timeout_ms: None,
        ..limits()
    };
    let aborted = at(Phase::Abort);
    let far = T0 + 1_000 * 3600 * 24 * 30;
    assert_eq!(
        next_action(&aborted, &Observations::default(), far, &limits),
        Action::DropImportOnTarget
    );
    let unanswered = Observations {
        drop_import: Some(Observed::at(
            CallOutcome::Refused {
                reason: "busy".into(),
            },
            far - 1,
        )),
        ..Observations::default()
    };
    assert_eq!(
        next_action(&aborted, &unanswered, far, &limits),
        Action::Wait {
            until_unix_ms: far - 1 + 2_000
        }
    );
}

#[test]
fn retries_before_success_never_wait_past_the_phase_deadline() {
    let record = at(Phase::Import);
    let deadline = T0 + limits().import_timeout_ms as i64;
    let obs = Observations {
        import: Some(Observed::at(
            ImportStatus::Unreachable {
                error: "refused".into(),
            },
            deadline - 100,
        )),
        ..Observations::default()
    };
    assert_eq!(
        next_action(&record, &obs, deadline - 50, &limits()),
        Action::Wait {
            until_unix_ms: deadline
        }
    );
    assert!(matches!(
        next_action(&record, &obs, deadline, &limits()),
        Action::Transition {
            to: Phase::Abort,
            ..
        }
    ));
}

#[test]
fn persisted_agent_reports_count_after_a_restart() {
    let mut quiesce = at(Phase::Quiesce);
    quiesce = note(
        &quiesce,
        Progress::AgentAcked {
            machine: "0".into(),
        },
    );
    quiesce = note(
        &quiesce,
        Progress::AgentAcked {
            machine: "1".into(),
        },
    );
    let restarted = Observations {
        machines: Some(machines()),
        ..Observations::default()
    };
    // Acks survive; the prechecks are re-run because the last run was not persisted.
    assert_eq!(
        next_action(&quiesce, &restarted, NOW, &limits()),
        Action::RunPrechecks
    );

    let mut validation = at(Phase::Validation);
    for machine in ["0", "1"] {
        validation = note(
            &validation,
            Progress::AgentValidated {
                machine: machine.into(),
                report: AgentReport::Ok,
            },
        );
    }
    assert_eq!(
        next_action(&validation, &restarted, NOW, &limits()),
        Action::CommitSuccess
    );
    let failed = note(
        &at(Phase::Validation),
        Progress::AgentValidated {
            machine: "1".into(),
            report: AgentReport::Failed {
                reason: "tls".into(),
            },
        },
    );
    assert!(matches!(
        next_action(&failed, &restarted, NOW, &limits()),
        Action::Transition { to: Phase::Abort, reason } if reason.contains("machine 1")
    ));
}

#[test]
fn a_persisted_abort_request_is_honoured_by_a_restarted_master() {
    let requested = request_abort(&at(Phase::Import), "wrong target").unwrap();
    assert_eq!(requested.abort_requested.as_deref(), Some("wrong target"));
    assert!(matches!(
        next_action(&requested, &Observations::default(), NOW, &limits()),
        Action::Transition { to: Phase::Abort, reason } if reason.contains("wrong target")
    ));
    // Once requested, only ABORT is committed, even if the master proposed something else
    // before it saw the request: the Raft log's order decides, once.
    assert!(matches!(
        apply_transition(&requested, Phase::Validation, NOW, "imported"),
        Err(MigrationError::AbortPending { .. })
    ));
    // A second request keeps the first reason; a request while aborting changes nothing.
    let again = request_abort(&requested, "other").unwrap();
    assert_eq!(again.abort_requested.as_deref(), Some("wrong target"));
    let aborting = at(Phase::Abort);
    assert_eq!(request_abort(&aborting, "x").unwrap(), aborting);
}

#[test]
fn an_abort_after_success_is_refused_with_an_explanation() {
    for phase in [Phase::Success, Phase::LogTransfer, Phase::Reap] {
        let record = at(phase);
        let err = request_abort(&record, "please").unwrap_err();
        assert!(
            matches!(err, MigrationError::AbortAfterSuccess { .. }),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let text = err.to_string();
        assert!(text.contains("cannot be aborted"), "{text}");
        assert!(text.contains("\"blue\""), "{text}");
        assert!(text.contains("migrate it again"), "{text}");
        // An abort seen by the master is ignored: it keeps finishing the migration.
        let obs = Observations {
            abort_requested: Some("please".into()),
            ..Observations::default()
        };
        assert_eq!(
            next_action(&record, &obs, NOW, &limits()),
            default_for(phase)
        );
    }
    for phase in [Phase::Done, Phase::ReapFailed] {
        assert!(matches!(
            request_abort(&at(phase), "x"),
            Err(MigrationError::AbortAfterSuccess { .. })
        ));
    }
    assert!(matches!(
        request_abort(&at(Phase::AbortDone), "x"),
        Err(MigrationError::Ended { .. })
    ));
}

#[test]
fn activate_is_repeated_until_acknowledged_and_never_times_out() {
    let record = at(Phase::Success);
    let mut now = NOW;
    for _ in 0..100 {
        let refused = Observations {
            activate: Some(Observed::at(
                CallOutcome::Refused {
                    reason: "not leader".into(),
                },
                now,
            )),
            ..Observations::default()
        };
        assert_eq!(
            next_action(&record, &refused, now, &limits()),
            Action::Wait {
                until_unix_ms: now + 2_000
            }
        );
        now += 3_600_000;
        assert_eq!(
            next_action(&record, &refused, now, &limits()),
            Action::CallActivate
        );
    }
}

#[test]
fn every_illegal_transition_is_refused_with_a_typed_error() {
    for from in Phase::ALL {
        let record = at(from);
        for to in Phase::ALL {
            let result = apply_transition(&record, to, NOW, "test");
            if from.can_transition_to(to) {
                let next = result.unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
                assert_eq!(next.phase, to);
                assert_eq!(next.phase_since_unix_ms, NOW);
                assert_eq!(
                    next.history.last().map(|c| (c.from, c.to)),
                    Some((from, to))
                );
                continue;
            }
            let err = result.expect_err(&format!("{from} → {to} accepted"));
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
            match err {
                MigrationError::Ended { phase, .. } => {
                    assert!(from.is_terminal());
                    assert_eq!(phase, from);
                }
                MigrationError::AbortAfterSuccess { phase, .. } => {
                    assert!(from.is_committed() && to.is_aborting(), "{from} → {to}");
                    assert_eq!(phase, from);
                }
                MigrationError::IllegalTransition { from: f, to: t, .. } => {
                    assert_eq!((f, t), (from, to));
                }
                other => panic!("{from} → {to}: {other:?}"),
            }
        }
    }
    // The named cases from the brief.
    assert!(matches!(
        apply_transition(&at(Phase::Success), Phase::Abort, NOW, "x"),
        Err(MigrationError::AbortAfterSuccess { .. })
    ));
    for terminal in [Phase::Done, Phase::AbortDone, Phase::ReapFailed] {
        for to in Phase::ALL {
            assert!(matches!(
                apply_transition(&at(terminal), to, NOW, "x"),
                Err(MigrationError::Ended { .. })
            ));
        }
    }
}

#[test]
fn success_needs_both_digests_recorded() {
    let mut record = at(Phase::Quiesce);
    record = go(&record, Phase::Import, T0);
    record = go(&record, Phase::Validation, T0);
    assert!(matches!(
        apply_transition(&record, Phase::Success, NOW, "x"),
        Err(MigrationError::DigestsNotConfirmed { .. })
    ));
    let restarted = Observations {
        machines: Some(machines()),
        ..Observations::default()
    };
    assert_eq!(
        next_action(&record, &restarted, NOW, &limits()),
        Action::CompareDigests
    );
}

#[test]
fn progress_is_refused_outside_its_phase_and_digests_never_change() {
    let ack = Progress::AgentAcked {
        machine: "0".into(),
    };
    for phase in Phase::ALL {
        let result = apply_progress(&at(phase), &ack);
        assert_eq!(result.is_ok(), phase == Phase::Quiesce, "{phase}");
        let log = apply_progress(&at(phase), &Progress::LogPosition(7));
        assert_eq!(log.is_ok(), phase == Phase::LogTransfer, "{phase}");
        let digest = apply_progress(&at(phase), &Progress::SourceDigest(D1.into()));
        assert_eq!(
            digest.is_ok(),
            matches!(phase, Phase::Import | Phase::Validation),
            "{phase}"
        );
    }
    assert!(matches!(
        apply_progress(&at(Phase::Validation), &Progress::TargetDigest("d2".into())),
        Err(MigrationError::DigestConflict { side: "target", .. })
    ));
    let record = note(&at(Phase::LogTransfer), Progress::LogPosition(9));
    assert_eq!(
        note(&record, Progress::LogPosition(3)).log_transfer_position,
        9
    );
    let twice = note(&at(Phase::Quiesce), ack.clone());
    assert_eq!(note(&twice, ack), twice);
}

#[test]
fn the_source_answers_from_its_record() {
    assert_eq!(source_answer(None), SourceAnswer::Unknown);
    for phase in Phase::ALL {
        let answer = source_answer(Some(&at(phase)));
        let want = if phase.is_committed() {
            SourceAnswer::Committed { phase }
        } else if phase.is_aborting() {
            SourceAnswer::Aborted { phase }
        } else {
            SourceAnswer::InProgress { phase }
        };
        assert_eq!(answer, want);
    }
}

fn leftover(state: TargetImportState) -> TargetImport {
    TargetImport {
        migration_id: MigrationId::new("6f1c-model", 1),
        state,
        last_activity_unix_ms: T0,
    }
}

#[test]
fn a_leftover_import_is_dropped_only_on_a_positive_answer() {
    let limits = TargetLimits {
        idle_before_asking_ms: 60_000,
        ask_interval_ms: 10_000,
    };
    let idle = T0 + 60_000;
    for state in [
        TargetImportState::Receiving { bytes: 10 },
        TargetImportState::Imported { digest: D1.into() },
    ] {
        let import = leftover(state);
        // Busy imports are kept without asking.
        assert!(matches!(
            target_leftover_decision(&import, None, T0 + 1, &limits),
            TargetAction::Keep { until_unix_ms, .. } if until_unix_ms == idle
        ));
        assert_eq!(
            target_leftover_decision(&import, None, idle, &limits),
            TargetAction::AskSource
        );
        let answered = |answer| Observed::at(answer, idle);
        for (answer, drops) in [
            (SourceAnswer::Unknown, true),
            (
                SourceAnswer::Aborted {
                    phase: Phase::Abort,
                },
                true,
            ),
            (
                SourceAnswer::Aborted {
                    phase: Phase::AbortDone,
                },
                true,
            ),
            (
                SourceAnswer::InProgress {
                    phase: Phase::Validation,
                },
                false,
            ),
            (
                SourceAnswer::Committed {
                    phase: Phase::Success,
                },
                false,
            ),
            (SourceAnswer::Committed { phase: Phase::Done }, false),
            (SourceAnswer::Unreachable, false),
        ] {
            let decision = target_leftover_decision(
                &import,
                Some(&answered(answer.clone())),
                idle + 1,
                &limits,
            );
            match decision {
                TargetAction::Drop { .. } => assert!(drops, "{answer:?}"),
                TargetAction::Keep { until_unix_ms, .. } => {
                    assert!(!drops, "{answer:?}");
                    assert_eq!(until_unix_ms, idle + 10_000);
                }
                TargetAction::AskSource => panic!("{answer:?}: fresh answer ignored"),
            }
            // A stale answer is asked again, whatever it said.
            assert_eq!(
                target_leftover_decision(&import, Some(&answered(answer)), idle + 10_000, &limits),
                TargetAction::AskSource
            );
        }
        // An answer older than the import's last activity does not count.
        let old = Observed::at(SourceAnswer::Unknown, T0 - 1);
        assert_eq!(
            target_leftover_decision(&import, Some(&old), idle, &limits),
            TargetAction::AskSource
        );
    }
}

#[test]
fn activate_acts_only_on_this_migrations_complete_import() {
    let id = MigrationId::new("6f1c-model", 2);
    let older = MigrationId::new("6f1c-model", 1);
    let importing = |migration_id: &MigrationId, state| {
        TargetModelState::Importing(TargetImport {
            migration_id: migration_id.clone(),
            state,
            last_activity_unix_ms: T0,
        })
    };
    let imported = || TargetImportState::Imported { digest: D1.into() };
    assert_eq!(
        target_activate_decision(&importing(&id, imported()), &id),
        Ok(TargetActivate::Activate)
    );
    assert_eq!(
        target_activate_decision(
            &TargetModelState::Active {
                activated_by: Some(id.clone())
            },
            &id
        ),
        Ok(TargetActivate::AlreadyActive)
    );
    assert!(matches!(
        target_activate_decision(
            &importing(&id, TargetImportState::Receiving { bytes: 5 }),
            &id
        ),
        Err(MigrationError::ImportIncomplete { bytes: 5, .. })
    ));
    // Juju #21459: a replayed Activate of an older attempt, or one whose import was dropped,
    // activates nothing.
    for state in [
        importing(&id, imported()),
        TargetModelState::Absent,
        TargetModelState::Active {
            activated_by: Some(id.clone()),
        },
        TargetModelState::Active { activated_by: None },
    ] {
        let err = target_activate_decision(&state, &older).unwrap_err();
        assert!(
            matches!(err, MigrationError::NoSuchImport { .. }),
            "{state:?}"
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
    // DropImport drops only its own import and never an activated model.
    assert_eq!(
        target_drop_decision(&importing(&id, imported()), &id),
        Ok(TargetDrop::Drop)
    );
    assert_eq!(
        target_drop_decision(&importing(&id, imported()), &older),
        Ok(TargetDrop::NothingToDrop)
    );
    assert_eq!(
        target_drop_decision(&TargetModelState::Absent, &id),
        Ok(TargetDrop::NothingToDrop)
    );
    assert!(matches!(
        target_drop_decision(
            &TargetModelState::Active {
                activated_by: Some(id.clone())
            },
            &id
        ),
        Err(MigrationError::AlreadyActive { .. })
    ));
}

// --- The simulated environment for the property tests. ---

/// Answers `action` the way a healthy source, target and agents would, and commits what the
/// master commits.
fn cooperate(
    record: &mut MigrationRecord,
    obs: &mut Observations,
    now: &mut i64,
    action: &Action,
    machines: &BTreeSet<String>,
) {
    *now += 10;
    match action {
        Action::RunPrechecks => {
            obs.prechecks = Some(PrecheckReport {
                phase: record.phase,
                failures: vec![],
            })
        }
        Action::ReadMachines => obs.machines = Some(machines.clone()),
        Action::WaitForAgents { missing, .. } => {
            for machine in missing {
                let progress = if record.phase == Phase::Quiesce {
                    Progress::AgentAcked {
                        machine: machine.clone(),
                    }
                } else {
                    Progress::AgentValidated {
                        machine: machine.clone(),
                        report: AgentReport::Ok,
                    }
                };
                *record = note(record, progress);
            }
        }
        Action::StreamExport { .. } => {
            obs.source_digest = Some(D1.into());
            obs.import = Some(Observed::at(
                ImportStatus::Imported { digest: D1.into() },
                *now,
            ));
        }
        Action::CompareDigests => {
            obs.source_digest = Some(D1.into());
            obs.import = Some(Observed::at(
                ImportStatus::AlreadyImported { digest: D1.into() },
                *now,
            ));
        }
        Action::CallActivate => obs.activate = Some(Observed::at(CallOutcome::Acked, *now)),
        Action::TransferLogs { .. } => {
            obs.log_transfer = Some(Observed::at(
                LogTransferStatus::Complete { position: 9 },
                *now,
            ))
        }
        Action::Reap => obs.reap = Some(ReapResult::Done),
        Action::DropImportOnTarget => {
            obs.drop_import = Some(Observed::at(CallOutcome::Acked, *now))
        }
        Action::Wait { until_unix_ms } => *now = (*now).max(*until_unix_ms),
        Action::Nothing => {}
        other => commit(record, other, *now),
    }
}

/// Answers `action` the way an unreachable target would (agents still work, a reap fails),
/// and commits what the master commits.
fn partitioned(
    record: &mut MigrationRecord,
    obs: &mut Observations,
    now: &mut i64,
    action: &Action,
    machines: &BTreeSet<String>,
) {
    let unreachable = || CallOutcome::Unreachable {
        error: "partitioned".into(),
    };
    *now += 10;
    match action {
        Action::RunPrechecks => {
            obs.prechecks = Some(PrecheckReport {
                phase: record.phase,
                failures: vec!["controller \"blue\" is unreachable".into()],
            })
        }
        Action::StreamExport { .. } | Action::CompareDigests => {
            obs.source_digest = Some(D1.into());
            obs.import = Some(Observed::at(
                ImportStatus::Unreachable {
                    error: "partitioned".into(),
                },
                *now,
            ));
        }
        Action::CallActivate => obs.activate = Some(Observed::at(unreachable(), *now)),
        // The local store fails too, so REAPFAILED is reached.
        Action::Reap => {
            obs.reap = Some(ReapResult::Failed {
                reason: "store busy".into(),
            })
        }
        Action::DropImportOnTarget => obs.drop_import = Some(Observed::at(unreachable(), *now)),
        Action::TransferLogs { .. } => {
            obs.log_transfer = Some(Observed::at(
                LogTransferStatus::Failed {
                    reason: "partitioned".into(),
                },
                *now,
            ))
        }
        Action::WaitForAgents { until_unix_ms, .. } if record.phase == Phase::Validation => {
            // Agents cannot reach the target either.
            *now = (*now).max(*until_unix_ms);
        }
        other => cooperate(record, obs, now, other, machines),
    }
}

/// A refusal of the commit to `to` proposed in `from`, seen at `at`.
fn refused(from: Phase, to: Option<Phase>, at: i64) -> Observations {
    Observations {
        refused: Some(Observed::at(
            RefusedCommit {
                from,
                to,
                reason: "model \"m\" not found".into(),
            },
            at,
        )),
        ..Observations::default()
    }
}

/// Issue 12 item 5: `destroy-model` between the prechecks and the lock made the lock's apply
/// refuse, and the master proposed the lock again at once, for ever. Now the refusal aborts.
#[test]
fn a_refused_lock_aborts_with_the_reason_instead_of_locking_again() {
    let record = at(Phase::Precheck);
    let mut obs = refused(Phase::Precheck, Some(Phase::Quiesce), NOW);
    obs.prechecks = Some(PrecheckReport {
        phase: Phase::Precheck,
        failures: Vec::new(),
    });
    assert_eq!(
        next_action(&record, &obs, NOW, &limits()),
        Action::Transition {
            to: Phase::Abort,
            reason: "locking the model was refused: model \"m\" not found".into(),
        }
    );
    // The same prechecks without the refusal lock.
    obs.refused = None;
    assert_eq!(next_action(&record, &obs, NOW, &limits()), Action::Lock);
}

#[test]
fn a_refusal_made_in_an_earlier_phase_is_ignored() {
    let record = at(Phase::Import);
    let obs = refused(Phase::Quiesce, Some(Phase::Import), NOW);
    assert_eq!(
        next_action(&record, &obs, NOW, &limits()),
        next_action(&record, &Observations::default(), NOW, &limits())
    );
}

#[test]
fn a_refused_record_of_progress_before_success_aborts() {
    let record = at(Phase::Import);
    let mut obs = refused(Phase::Import, None, NOW);
    obs.source_digest = Some(D1.into());
    let action = next_action(&record, &obs, NOW, &limits());
    let Action::Transition { to, reason } = action else {
        panic!("{action:?}");
    };
    assert_eq!(to, Phase::Abort);
    assert!(
        reason.starts_with("recording the migration's progress was refused"),
        "{reason}"
    );
}

#[test]
fn a_refused_commit_that_cannot_abort_waits_a_retry_interval() {
    // After SUCCESS nothing aborts, and a refused ABORT is not proposed again at once either:
    // the same commit comes back once a retry interval has passed, never in a loop.
    for (record, obs) in [
        (
            at(Phase::Success),
            Observations {
                activate: Some(Observed::at(CallOutcome::Acked, NOW)),
                ..refused(Phase::Success, Some(Phase::LogTransfer), NOW)
            },
        ),
        (
            at(Phase::Precheck),
            Observations {
                abort_requested: Some("stop".into()),
                ..refused(Phase::Precheck, Some(Phase::Abort), NOW)
            },
        ),
        (
            at(Phase::Abort),
            Observations {
                drop_import: Some(Observed::at(CallOutcome::Acked, NOW)),
                ..refused(Phase::Abort, Some(Phase::AbortDone), NOW)
            },
        ),
    ] {
        let retry_at = NOW + 2_000;
        assert_eq!(
            next_action(&record, &obs, NOW + 1, &limits()),
            Action::Wait {
                until_unix_ms: retry_at
            },
            "{}",
            record.phase
        );
        let again = next_action(&record, &obs, retry_at, &limits());
        assert!(again.is_commit(), "{}: {again:?}", record.phase);
    }
}

/// Commits a commit action, checking it is legal — `next_action` never proposes a refused
/// change.
fn commit(record: &mut MigrationRecord, action: &Action, now: i64) {
    let from = record.phase;
    if let Action::Record(progress) = action {
        *record = apply_progress(record, progress)
            .unwrap_or_else(|e| panic!("{from}: proposed {progress:?}, refused: {e}"));
        return;
    }
    let Some((to, reason)) = action.commits(from) else {
        panic!("{from}: {action:?} is not a commit");
    };
    *record = apply_transition(record, to, now, &reason)
        .unwrap_or_else(|e| panic!("{from}: proposed {action:?}, refused: {e}"));
}

/// What can happen between two decisions of the master.
#[derive(Clone, Debug)]
enum Event {
    /// The master decides and its action is answered cooperatively.
    Act,
    /// The master decides and its action gets no useful answer (partition).
    ActPartitioned,
    /// An observation of the given kind arrives (random, possibly contradictory).
    See(Kind, u8),
    /// An agent reports through the replicated record.
    AgentReport(u8, bool),
    /// The operator asks for an abort.
    OperatorAbort,
    /// The master's node dies; the new leader's master starts with nothing observed.
    Crash,
    /// Time passes.
    Tick(u32),
}

/// Kinds of observation that never make a migration fail.
const BENIGN: [Kind; 14] = [
    Kind::Empty,
    Kind::Machines,
    Kind::AllQuiesced,
    Kind::SomeQuiesced,
    Kind::PrechecksPassed,
    Kind::ImportInProgress,
    Kind::Imported,
    Kind::AlreadyImported,
    Kind::SourceDigest,
    Kind::AllValidated,
    Kind::ActivateAcked,
    Kind::LogProgress,
    Kind::LogComplete,
    Kind::ReapDone,
];

/// One event. A `hostile` run also sees failures, contradictory reports, operator aborts and
/// long pauses; a calm one mostly gets far, so the phases after SUCCESS are exercised too.
fn event(hostile: bool) -> BoxedStrategy<Event> {
    let crash_or_act = prop_oneof![
        10 => Just(Event::Act),
        2 => Just(Event::ActPartitioned),
        2 => Just(Event::Crash),
        2 => (0u8..3).prop_map(|m| Event::AgentReport(m, true)),
        2 => (0u32..5_000).prop_map(Event::Tick),
        2 => (0..BENIGN.len(), any::<u8>()).prop_map(|(k, n)| Event::See(BENIGN[k], n | 1)),
    ];
    if !hostile {
        return crash_or_act.boxed();
    }
    prop_oneof![
        8 => crash_or_act,
        2 => (0..KINDS.len(), any::<u8>()).prop_map(|(k, n)| Event::See(KINDS[k], n)),
        1 => (0u8..3, any::<bool>()).prop_map(|(m, ok)| Event::AgentReport(m, ok)),
        1 => Just(Event::OperatorAbort),
        1 => (0u32..200_000).prop_map(Event::Tick),
    ]
    .boxed()
}

fn events(len: usize) -> impl Strategy<Value = Vec<Event>> {
    any::<bool>().prop_flat_map(move |hostile| proptest::collection::vec(event(hostile), 0..len))
}

fn merge_at<T>(now: i64, old: &mut Option<Observed<T>>, new: Option<Observed<T>>) {
    if let Some(mut new) = new {
        new.at_unix_ms = now;
        *old = Some(new);
    }
}

/// A random observation of `kind`, with digests and machines drawn from small sets so
/// matches and mismatches both happen.
fn random_observation(obs: &mut Observations, kind: Kind, n: u8, phase: Phase, now: i64) {
    let digest = if n.is_multiple_of(4) { "d2" } else { D1 };
    let (mut seen, _) = observe(kind, phase);
    if n.is_multiple_of(3) {
        seen.prechecks = seen.prechecks.map(|r| PrecheckReport {
            phase: Phase::ALL[usize::from(n) % 4],
            ..r
        });
    }
    if matches!(
        kind,
        Kind::Imported | Kind::AlreadyImported | Kind::SourceDigest
    ) {
        seen.source_digest = seen.source_digest.map(|_| digest.to_string());
        seen.import = seen.import.map(|mut i| {
            i.value = ImportStatus::Imported {
                digest: digest.into(),
            };
            i
        });
    }
    obs.machines = seen.machines.or(obs.machines.take());
    obs.quiesce_acks.extend(seen.quiesce_acks);
    obs.validation_reports.extend(seen.validation_reports);
    obs.prechecks = seen.prechecks.or(obs.prechecks.take());
    obs.source_digest = seen.source_digest.or(obs.source_digest.take());
    merge_at(now, &mut obs.import, seen.import);
    merge_at(now, &mut obs.activate, seen.activate);
    merge_at(now, &mut obs.log_transfer, seen.log_transfer);
    merge_at(now, &mut obs.drop_import, seen.drop_import);
    obs.reap = seen.reap.or(obs.reap.take());
    obs.abort_requested = seen.abort_requested.or(obs.abort_requested.take());
}

/// Checks the safety rules on one decision; returns the action.
fn decide_checked(
    record: &MigrationRecord,
    obs: &Observations,
    now: i64,
    limits: &Limits,
) -> Action {
    let action = next_action(record, obs, now, limits);
    let phase = record.phase;
    if phase.is_terminal() {
        assert_eq!(action, Action::Nothing, "terminal {phase}");
    }
    if phase.is_committed() {
        assert!(
            !matches!(action, Action::Unlock { .. } | Action::DropImportOnTarget),
            "{phase}: {action:?}"
        );
    }
    if let Some((to, _)) = action.commits(phase) {
        assert!(phase.can_transition_to(to), "{phase} → {to}");
        assert!(
            !(phase.is_committed() && to.is_aborting()),
            "{phase} → {to}"
        );
    }
    if action == Action::CallActivate {
        assert_eq!(phase, Phase::Success, "Activate before SUCCESS");
    }
    if action == Action::CommitSuccess {
        assert!(record.source_digest.is_some());
        assert_eq!(record.source_digest, record.target_digest);
    }
    // A restarted master (nothing observed) re-issues its phase's step: it never commits
    // progress it has no evidence for, only an abort (request or deadline), the unlock that
    // ends an abort, or the deadline-driven endings after SUCCESS.
    let fresh = next_action(record, &Observations::default(), now, limits);
    if let Some((to, _)) = fresh.commits(phase) {
        assert!(
            matches!(
                to,
                Phase::Abort | Phase::AbortDone | Phase::Reap | Phase::ReapFailed
            ),
            "{phase}: a restarted master committed {to} without evidence"
        );
    }
    action
}

fn run_to_end(
    record: &mut MigrationRecord,
    obs: &mut Observations,
    now: &mut i64,
    limits: &Limits,
    respond: fn(&mut MigrationRecord, &mut Observations, &mut i64, &Action, &BTreeSet<String>),
    steps: usize,
) {
    for _ in 0..steps {
        let action = decide_checked(record, obs, *now, limits);
        if action == Action::Nothing {
            return;
        }
        let before = record.phase;
        respond(record, obs, now, &action, &machines3());
        assert!(record.phase >= before, "{before} → {}", record.phase);
    }
}

fn machines3() -> BTreeSet<String> {
    set(&["0", "1", "2"])
}

fn simulate(events: &[Event]) -> (MigrationRecord, Observations, i64, bool) {
    let limits = limits();
    let mut record = new_record();
    let mut obs = Observations::default();
    let mut now = T0;
    let mut ever_committed = false;
    for event in events {
        let before = record.clone();
        match event {
            Event::Act | Event::ActPartitioned => {
                let action = decide_checked(&record, &obs, now, &limits);
                if matches!(event, Event::Act) {
                    cooperate(&mut record, &mut obs, &mut now, &action, &machines3());
                } else {
                    partitioned(&mut record, &mut obs, &mut now, &action, &machines3());
                }
            }
            Event::See(kind, n) => random_observation(&mut obs, *kind, *n, record.phase, now),
            Event::AgentReport(machine, ok) => {
                let machine = machine.to_string();
                let progress = match record.phase {
                    Phase::Quiesce => Some(Progress::AgentAcked { machine }),
                    Phase::Validation => Some(Progress::AgentValidated {
                        machine,
                        report: if *ok {
                            AgentReport::Ok
                        } else {
                            AgentReport::Failed {
                                reason: "tls".into(),
                            }
                        },
                    }),
                    _ => None,
                };
                if let Some(progress) = progress {
                    record = note(&record, progress);
                }
            }
            Event::OperatorAbort => match request_abort(&record, "operator") {
                Ok(next) => record = next,
                Err(MigrationError::AbortAfterSuccess { .. }) => {
                    assert!(record.phase.is_committed())
                }
                Err(MigrationError::Ended { .. }) => assert!(record.phase.is_terminal()),
                Err(other) => panic!("{other:?}"),
            },
            Event::Crash => obs = Observations::default(),
            Event::Tick(ms) => now += i64::from(*ms),
        }
        assert!(
            record.phase >= before.phase,
            "{} → {}",
            before.phase,
            record.phase
        );
        ever_committed |= record.phase.is_committed();
        if ever_committed {
            assert!(!record.phase.is_aborting(), "aborted after SUCCESS");
        }
    }
    (record, obs, now, ever_committed)
}

proptest! {
    // No regression files in the tree: a failure prints its minimal input and seed instead.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random observations, crashes, partitions and operator aborts: never an abort after
    /// SUCCESS, Activate only in SUCCESS, terminal phases yield Nothing, phases only move
    /// forward, a restarted master commits nothing without evidence; then, with everything
    /// answering, every run ends: in DONE once committed, in ABORTDONE once aborting.
    #[test]
    fn safety_under_random_observations_and_crashes(
        events in events(60),
        crash_at_end in any::<bool>(),
    ) {
        let (mut record, mut obs, mut now, committed) = simulate(&events);
        if crash_at_end {
            obs = Observations::default();
        }
        let aborting = record.phase.is_aborting();
        run_to_end(&mut record, &mut obs, &mut now, &limits(), cooperate, 60);
        prop_assert!(record.phase.is_terminal(), "stuck in {}", record.phase);
        if committed {
            prop_assert!(matches!(record.phase, Phase::Done | Phase::ReapFailed), "{}", record.phase);
        }
        if aborting {
            prop_assert_eq!(record.phase, Phase::AbortDone);
        }
        if record.phase == Phase::AbortDone {
            prop_assert!(record.history.iter().all(|c| !c.to.is_committed()));
        }
    }

    /// A refusal of the commit the master is about to make, in the record's current phase:
    /// the master never proposes it again before a retry interval has passed, and before
    /// SUCCESS it aborts instead (unless the refused commit was the abort).
    #[test]
    fn a_refused_commit_is_never_proposed_again_at_once(
        events in events(40),
        delay in 0i64..1_999,
    ) {
        let (record, obs, now, _) = simulate(&events);
        let planned = next_action(&record, &obs, now, &limits());
        if !planned.is_commit() {
            // Only a decision to commit can be refused.
            return Ok(());
        }
        let to = planned.commits(record.phase).map(|(to, _)| to);
        let seen = Observations {
            refused: Some(Observed::at(
                RefusedCommit { from: record.phase, to, reason: "no".into() },
                now,
            )),
            ..obs
        };
        let next = next_action(&record, &seen, now + delay, &limits());
        let may_abort = !record.phase.is_committed()
            && !record.phase.is_aborting()
            && to != Some(Phase::Abort);
        if may_abort {
            prop_assert_eq!(
                next.commits(record.phase).map(|(to, _)| to),
                Some(Phase::Abort),
                "{:?}", next
            );
        } else {
            prop_assert!(matches!(next, Action::Wait { .. }), "{:?}", next);
        }
    }

    /// A target that stops answering for good, seen by a master that restarts just then (so
    /// it can only use what is persisted): before VALIDATION the deadlines alone end the
    /// migration in ABORTDONE; in VALIDATION it ends in ABORTDONE or, if the record already
    /// holds every proof, in SUCCESS; from SUCCESS on it never aborts and keeps calling
    /// Activate.
    #[test]
    fn a_partitioned_target_aborts_before_success_and_never_after(
        events in events(40),
    ) {
        let (mut record, _, mut now, _) = simulate(&events);
        let mut obs = Observations::default();
        let committed = record.phase.is_committed();
        let phase = record.phase;
        run_to_end(&mut record, &mut obs, &mut now, &limits(), partitioned, 400);
        if phase == Phase::Validation {
            prop_assert!(
                matches!(record.phase, Phase::AbortDone | Phase::Success),
                "{}", record.phase
            );
        } else if !committed {
            prop_assert_eq!(record.phase, Phase::AbortDone, "from {}", phase);
        }
        if record.phase == Phase::Success {
            prop_assert_eq!(record.phase, Phase::Success);
            prop_assert_eq!(
                next_action(&record, &Observations::default(), now, &limits()),
                Action::CallActivate
            );
        }
        if committed {
            prop_assert!(record.phase.is_committed());
        }
    }
}

/// The random runs above are only as good as the states they reach: with a fixed seed, check
/// the generator drives runs into every phase before the drain, including past SUCCESS and
/// into ABORT.
#[test]
fn the_random_runs_reach_every_phase() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = events(60);
    let mut reached = BTreeSet::new();
    for _ in 0..512 {
        let events = strategy.new_tree(&mut runner).unwrap().current();
        let (record, _, _, _) = simulate(&events);
        reached.extend(record.history.iter().map(|change| change.to));
        reached.insert(record.phase);
    }
    let missing: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|phase| !reached.contains(phase))
        .collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?} (reached {reached:?})"
    );
}
