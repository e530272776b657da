//! Tests of the history checker (`starling_cluster_tests::history`): histories that must pass,
//! one or more hand-made bad histories per rule, malformed histories, and a property test over
//! histories produced by a simulated correct cluster.

use std::collections::HashSet;

use proptest::prelude::*;
use starling_cluster_tests::history::{
    check, CheckError, History, HistoryBuilder, MalformedKind, MigrationResult, Op, OpId, OpKind,
    Outcome, Ownership, Recorder, Rule, Violation,
};

const M: &str = "m1";

// ---------------------------------------------------------------------------------------------
// Helpers

fn append(
    b: &mut HistoryBuilder,
    ctl: &str,
    value: &str,
    at: (u64, u64),
    outcome: Outcome,
) -> OpId {
    b.op(0, OpKind::append(M, value, ctl), at.0, Some(at.1), outcome)
}

fn acked(b: &mut HistoryBuilder, ctl: &str, value: &str, at: (u64, u64)) -> OpId {
    append(b, ctl, value, at, Outcome::Ok)
}

fn pending_append(b: &mut HistoryBuilder, ctl: &str, value: &str, invoke: u64) -> OpId {
    b.op(
        0,
        OpKind::append(M, value, ctl),
        invoke,
        None,
        Outcome::Unknown,
    )
}

fn read(b: &mut HistoryBuilder, ctl: &str, at: (u64, u64), values: &[&str]) -> OpId {
    b.op(
        1,
        OpKind::read_values(M, ctl, values.iter().copied()),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

fn observe(b: &mut HistoryBuilder, ctl: &str, at: (u64, u64), observed: Ownership) -> OpId {
    b.op(
        2,
        OpKind::observed(M, ctl, observed),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

fn active(epoch: u64) -> Ownership {
    Ownership::Active { epoch }
}

fn passes(history: &History) {
    if let Err(err) = check(history) {
        panic!("expected the history to pass, got:\n{err}");
    }
}

/// Checks that `history` breaks `rule`, that the witness is small and holds every op in
/// `offenders`, and that it names the model.
fn rejects(history: &History, rule: Rule, offenders: &[OpId]) -> Violation {
    let violation = match check(history) {
        Ok(summary) => panic!("expected {rule}, but the history passed: {summary:?}"),
        Err(CheckError::Malformed(malformed)) => panic!("expected {rule}, got {malformed}"),
        Err(CheckError::Violation(violation)) => violation,
    };
    assert_eq!(violation.rule, rule, "wrong rule:\n{violation}");
    assert_eq!(violation.model, M);
    assert!(
        !violation.witness.is_empty() && violation.witness.len() <= 3,
        "witness is not small:\n{violation}"
    );
    let ids: Vec<OpId> = violation.witness.iter().map(|op| op.id).collect();
    for id in offenders {
        assert!(
            ids.contains(id),
            "op {id} missing from the witness:\n{violation}"
        );
    }
    violation
}

fn malformed(history: &History, kind: MalformedKind, offenders: &[OpId]) {
    match check(history) {
        Err(CheckError::Malformed(malformed)) => {
            assert_eq!(malformed.kind, kind, "{malformed}");
            let ids: Vec<OpId> = malformed.ops.iter().map(|op| op.id).collect();
            assert_eq!(ids, offenders, "{malformed}");
        }
        other => panic!("expected a malformed history ({kind:?}), got {other:?}"),
    }
}

fn raw(id: OpId, invoke: u64, complete: Option<u64>, outcome: Outcome, kind: OpKind) -> Op {
    Op {
        id,
        process: 0,
        invoke,
        complete,
        outcome,
        kind,
    }
}

// ---------------------------------------------------------------------------------------------
// Good histories

#[test]
fn empty_history_passes() {
    let summary = check(&History::default()).unwrap();
    assert_eq!(summary.ops, 0);
    assert_eq!(summary.models, 0);
}

#[test]
fn sequential_appends_and_reads_pass() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    read(&mut b, "A", (2, 3), &[]);
    acked(&mut b, "A", "a", (4, 5));
    read(&mut b, "A", (6, 7), &["a"]);
    acked(&mut b, "A", "b", (8, 9));
    acked(&mut b, "A", "c", (10, 11));
    read(&mut b, "A", (12, 13), &["a", "b", "c"]);
    read(&mut b, "A", (14, 15), &["a", "b", "c"]);
    let summary = check(&b.build()).unwrap();
    assert_eq!(summary.ops, 8);
    assert_eq!(summary.models, 1);
    assert_eq!(summary.appends, 3);
    assert_eq!(summary.reads, 4);
    assert_eq!(summary.ownership_observations, 1);
    assert_eq!(summary.migrations, 0);
}

#[test]
fn concurrent_appends_may_be_seen_in_either_order() {
    for order in [["a", "b"], ["b", "a"]] {
        let mut b = HistoryBuilder::new();
        acked(&mut b, "A", "a", (0, 10));
        acked(&mut b, "A", "b", (5, 15));
        // Concurrent with both appends: may see none, either one, or both.
        read(&mut b, "A", (6, 9), &[]);
        read(&mut b, "A", (6, 12), &order[..1]);
        read(&mut b, "A", (20, 30), &order);
        read(&mut b, "A", (31, 32), &order);
        passes(&b.build());
    }
}

#[test]
fn concurrent_reads_that_are_prefixes_pass() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 5));
    acked(&mut b, "A", "b", (10, 40));
    // Overlapping reads: the later-invoked one may still be the shorter.
    read(&mut b, "A", (20, 50), &["a", "b"]);
    read(&mut b, "A", (25, 30), &["a"]);
    passes(&b.build());
}

#[test]
fn migration_history_passes() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    observe(&mut b, "B", (0, 1), Ownership::Absent);
    acked(&mut b, "A", "a1", (2, 3));
    acked(&mut b, "A", "a2", (4, 5));
    read(&mut b, "A", (6, 7), &["a1", "a2"]);
    let migration = b.invoke(9, 10, OpKind::migration(M, "mig-1", "A", "B"));
    observe(&mut b, "A", (11, 12), Ownership::Locked { epoch: 1 });
    observe(&mut b, "B", (11, 12), Ownership::Importing);
    // A read of the frozen source is still fine.
    read(&mut b, "A", (13, 14), &["a1", "a2"]);
    // An append that timed out during the migration and never landed.
    append(&mut b, "A", "lost-in-flight", (13, 16), Outcome::Unknown);
    b.complete_migration(migration, 20, MigrationResult::Done);
    observe(
        &mut b,
        "A",
        (21, 22),
        Ownership::MigratedTo {
            controller: "B".into(),
        },
    );
    observe(&mut b, "B", (21, 22), active(2));
    read(&mut b, "B", (23, 24), &["a1", "a2"]);
    acked(&mut b, "B", "b1", (25, 26));
    read(&mut b, "B", (27, 28), &["a1", "a2", "b1"]);
    let history = b.build();
    let summary = check(&history).unwrap();
    assert_eq!(summary.migrations, 1);
    assert_eq!(summary.ownership_observations, 6);
}

#[test]
fn aborted_migration_keeps_the_source_owner() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    acked(&mut b, "A", "a1", (2, 3));
    let migration = b.invoke(9, 4, OpKind::migration(M, "mig-1", "A", "B"));
    observe(&mut b, "A", (5, 6), Ownership::Locked { epoch: 1 });
    observe(&mut b, "B", (5, 6), Ownership::Importing);
    b.complete_migration(migration, 10, MigrationResult::AbortDone);
    observe(&mut b, "A", (11, 12), active(1));
    observe(&mut b, "B", (11, 12), Ownership::Absent);
    acked(&mut b, "A", "a2", (13, 14));
    read(&mut b, "A", (15, 16), &["a1", "a2"]);
    passes(&b.build());
}

#[test]
fn controller_that_regains_the_model_may_ack_again() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    acked(&mut b, "A", "a", (2, 3));
    observe(&mut b, "B", (10, 11), active(2));
    acked(&mut b, "B", "b", (12, 13));
    observe(&mut b, "A", (20, 21), active(3));
    acked(&mut b, "A", "c", (22, 23));
    read(&mut b, "A", (24, 25), &["a", "b", "c"]);
    passes(&b.build());
}

#[test]
fn unknown_appends_may_or_may_not_appear() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    // Timed out, then never seen: fine.
    append(&mut b, "A", "maybe-not", (2, 3), Outcome::Unknown);
    // Timed out, but it landed: fine, and later reads keep it.
    append(&mut b, "A", "maybe", (4, 5), Outcome::Unknown);
    // Never completed at all, and it landed much later.
    pending_append(&mut b, "A", "pending", 6);
    read(&mut b, "A", (10, 11), &["a", "maybe"]);
    read(&mut b, "A", (12, 13), &["a", "maybe"]);
    read(&mut b, "A", (20, 21), &["a", "maybe", "pending"]);
    passes(&b.build());
}

#[test]
fn failed_and_unknown_reads_and_observations_are_ignored() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    b.op(
        1,
        OpKind::read_values(M, "A", ["nonsense", "nonsense"]),
        2,
        Some(3),
        Outcome::Fail,
    );
    b.op(
        1,
        OpKind::read_values(M, "A", ["x"]),
        4,
        None,
        Outcome::Unknown,
    );
    observe(&mut b, "A", (5, 6), active(2));
    b.op(
        2,
        OpKind::observed(M, "B", active(2)),
        7,
        Some(8),
        Outcome::Fail,
    );
    append(&mut b, "A", "failed", (9, 10), Outcome::Fail);
    read(&mut b, "A", (11, 12), &["a"]);
    let summary = check(&b.build()).unwrap();
    assert_eq!(summary.reads, 1);
    assert_eq!(summary.ownership_observations, 1);
}

#[test]
fn models_are_checked_independently() {
    let mut b = HistoryBuilder::new();
    b.op(0, OpKind::append("m1", "x", "A"), 0, Some(1), Outcome::Ok);
    b.op(0, OpKind::append("m2", "y", "B"), 0, Some(1), Outcome::Ok);
    b.op(
        0,
        OpKind::observed("m1", "A", active(1)),
        0,
        Some(1),
        Outcome::Ok,
    );
    b.op(
        0,
        OpKind::observed("m2", "B", active(1)),
        0,
        Some(1),
        Outcome::Ok,
    );
    b.op(
        0,
        OpKind::read_values("m1", "A", ["x"]),
        2,
        Some(3),
        Outcome::Ok,
    );
    b.op(
        0,
        OpKind::read_values("m2", "B", ["y"]),
        2,
        Some(3),
        Outcome::Ok,
    );
    assert_eq!(check(&b.build()).unwrap().models, 2);
}

// ---------------------------------------------------------------------------------------------
// Rule 1: one owner per epoch, epochs move forward

#[test]
fn two_actives_at_one_epoch_are_rejected() {
    let mut b = HistoryBuilder::new();
    let a = observe(&mut b, "A", (0, 10), active(3));
    observe(&mut b, "A", (1, 2), active(3));
    let c = observe(&mut b, "B", (5, 15), active(3));
    let v = rejects(&b.build(), Rule::TwoOwnersOneEpoch, &[a, c]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn locked_and_active_at_one_epoch_on_two_controllers_are_rejected() {
    let mut b = HistoryBuilder::new();
    let a = observe(&mut b, "A", (0, 1), Ownership::Locked { epoch: 1 });
    let c = observe(&mut b, "B", (2, 3), active(1));
    rejects(&b.build(), Rule::TwoOwnersOneEpoch, &[a, c]);
}

#[test]
fn epoch_going_backwards_is_rejected() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    let high = observe(&mut b, "A", (2, 3), active(4));
    let low = observe(&mut b, "A", (5, 6), active(2));
    let v = rejects(&b.build(), Rule::EpochRegression, &[high, low]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn epoch_going_backwards_from_a_lock_is_rejected() {
    let mut b = HistoryBuilder::new();
    let high = observe(&mut b, "B", (0, 1), Ownership::Locked { epoch: 5 });
    let low = observe(&mut b, "A", (5, 6), Ownership::Locked { epoch: 4 });
    rejects(&b.build(), Rule::EpochRegression, &[high, low]);
}

#[test]
fn concurrent_observations_may_disagree_on_epoch_order() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 10), active(1));
    observe(&mut b, "B", (5, 6), active(2));
    passes(&b.build());
}

#[test]
fn stale_owner_still_serving_is_rejected() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    let newer = observe(&mut b, "B", (2, 3), active(2));
    let stale = observe(&mut b, "A", (4, 5), active(1));
    let v = rejects(&b.build(), Rule::StaleOwner, &[newer, stale]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn stale_owner_is_found_behind_a_higher_claim_by_the_same_controller() {
    // The highest claim seen so far is the stale controller's own lock; the stale-owner
    // witness must still be found among the other controllers.
    let mut b = HistoryBuilder::new();
    let newer = observe(&mut b, "B", (0, 1), active(2));
    observe(&mut b, "A", (0, 2), Ownership::Locked { epoch: 1 });
    let stale = observe(&mut b, "A", (4, 5), active(1));
    rejects(&b.build(), Rule::StaleOwner, &[newer, stale]);
}

// ---------------------------------------------------------------------------------------------
// Rule 2: no acknowledgement from a deposed owner

#[test]
fn deposed_owner_acking_a_write_is_rejected() {
    let mut b = HistoryBuilder::new();
    let old = observe(&mut b, "A", (0, 1), active(1));
    acked(&mut b, "A", "fine", (2, 3));
    let new = observe(&mut b, "B", (10, 11), active(2));
    let ack = acked(&mut b, "A", "too-late", (12, 13));
    let v = rejects(&b.build(), Rule::DeposedOwnerAck, &[old, new, ack]);
    assert_eq!(v.witness.len(), 3);
}

#[test]
fn deposed_owner_ack_concurrent_with_the_new_owner_observation_passes() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    observe(&mut b, "B", (10, 20), active(2));
    // Invoked before the observation of B completed: A may still have been the owner.
    acked(&mut b, "A", "racing", (15, 25));
    passes(&b.build());
}

/// A at epoch 1, B at epoch 2, then B redirecting to A (so A regained the model above epoch 2),
/// and an acknowledged write by A; every observation of A at its new epoch is missing, as when
/// A's node was cut off while it owned the model. Returns the hand-off observation.
fn regained_by_a_hand_off(b: &mut HistoryBuilder) -> OpId {
    observe(b, "A", (0, 1), active(1));
    observe(b, "B", (10, 11), active(2));
    let to_a = Ownership::MigratedTo {
        controller: "A".into(),
    };
    let handoff = observe(b, "B", (20, 21), to_a);
    acked(b, "A", "regained", (30, 31));
    handoff
}

#[test]
fn an_owner_regained_by_a_hand_off_may_ack_without_being_observed_at_its_new_epoch() {
    let mut b = HistoryBuilder::new();
    regained_by_a_hand_off(&mut b);
    passes(&b.build());
}

#[test]
fn an_owner_deposed_after_regaining_by_a_hand_off_is_still_caught() {
    // A's implied epoch is 3; B seen active at epoch 4 deposes it again.
    let mut b = HistoryBuilder::new();
    let handoff = regained_by_a_hand_off(&mut b);
    let newer = observe(&mut b, "B", (40, 41), active(4));
    let late = acked(&mut b, "A", "too-late", (50, 51));
    rejects(&b.build(), Rule::DeposedOwnerAck, &[handoff, newer, late]);
}

#[test]
fn failed_or_unknown_appends_on_a_deposed_owner_pass() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    observe(&mut b, "B", (10, 11), active(2));
    append(&mut b, "A", "refused", (12, 13), Outcome::Fail);
    append(&mut b, "A", "timed-out", (12, 13), Outcome::Unknown);
    passes(&b.build());
}

// ---------------------------------------------------------------------------------------------
// Rule 3: no lost, duplicated or invented values

#[test]
fn lost_acknowledged_write_is_rejected() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    let lost = acked(&mut b, "A", "b", (2, 3));
    let r = read(&mut b, "A", (4, 5), &["a"]);
    let v = rejects(&b.build(), Rule::LostWrite, &[lost, r]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn write_lost_across_a_migration_is_rejected() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    acked(&mut b, "A", "a1", (2, 3));
    let lost = acked(&mut b, "A", "a2", (4, 5));
    let migration = b.invoke(9, 6, OpKind::migration(M, "mig-1", "A", "B"));
    b.complete_migration(migration, 10, MigrationResult::Done);
    observe(&mut b, "B", (11, 12), active(2));
    let r = read(&mut b, "B", (13, 14), &["a1"]);
    let v = rejects(&b.build(), Rule::LostWrite, &[lost, r]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn write_lost_behind_a_later_value_is_rejected() {
    let mut b = HistoryBuilder::new();
    let first = acked(&mut b, "A", "first", (0, 10));
    let second = acked(&mut b, "A", "second", (20, 30));
    // Concurrent with both appends, but it saw the second, which was applied after the first.
    let r = read(&mut b, "A", (5, 40), &["second"]);
    let v = rejects(&b.build(), Rule::LostWrite, &[first, second, r]);
    assert_eq!(v.witness.len(), 3);
}

#[test]
fn duplicate_value_in_a_read_is_rejected() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    let r = read(&mut b, "A", (2, 3), &["a", "a"]);
    let v = rejects(&b.build(), Rule::DuplicateInRead, &[r]);
    assert_eq!(v.witness.len(), 1);
}

#[test]
fn invented_value_is_rejected() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    let r = read(&mut b, "A", (2, 3), &["a", "ghost"]);
    let v = rejects(&b.build(), Rule::InventedValue, &[r]);
    assert_eq!(v.witness.len(), 1);
}

#[test]
fn value_of_another_model_is_rejected() {
    let mut b = HistoryBuilder::new();
    let other = b.op(0, OpKind::append("m2", "x", "A"), 0, Some(1), Outcome::Ok);
    let r = read(&mut b, "A", (2, 3), &["x"]);
    let v = rejects(&b.build(), Rule::InventedValue, &[other, r]);
    assert!(v.message.contains("m2"), "{v}");
}

#[test]
fn failed_append_visible_is_rejected() {
    let mut b = HistoryBuilder::new();
    let failed = append(&mut b, "A", "nope", (0, 1), Outcome::Fail);
    let r = read(&mut b, "A", (2, 3), &["nope"]);
    let v = rejects(&b.build(), Rule::FailedWriteVisible, &[failed, r]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn value_from_the_future_is_rejected() {
    let mut b = HistoryBuilder::new();
    let r = read(&mut b, "A", (0, 1), &["later"]);
    let later = append(&mut b, "A", "later", (5, 6), Outcome::Unknown);
    rejects(&b.build(), Rule::FutureValue, &[r, later]);
}

// ---------------------------------------------------------------------------------------------
// Rule 4: reads are prefixes of one another and respect the real-time order of appends

#[test]
fn later_read_missing_an_element_is_rejected() {
    // The appends were never acknowledged, so only the two reads show the loss.
    let mut b = HistoryBuilder::new();
    pending_append(&mut b, "A", "a", 0);
    pending_append(&mut b, "A", "b", 0);
    let first = read(&mut b, "A", (10, 20), &["a", "b"]);
    let second = read(&mut b, "B", (30, 40), &["a"]);
    let v = rejects(&b.build(), Rule::ReadRegressed, &[first, second]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn reads_in_different_orders_are_rejected() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 10));
    acked(&mut b, "A", "b", (0, 10));
    let first = read(&mut b, "A", (20, 21), &["a", "b"]);
    let second = read(&mut b, "A", (30, 31), &["b", "a"]);
    let v = rejects(&b.build(), Rule::ReadsDiverge, &[first, second]);
    assert_eq!(v.witness.len(), 2);
}

#[test]
fn concurrent_reads_that_diverge_are_rejected() {
    let mut b = HistoryBuilder::new();
    pending_append(&mut b, "A", "a", 0);
    pending_append(&mut b, "A", "b", 0);
    let first = read(&mut b, "A", (10, 50), &["a"]);
    let second = read(&mut b, "A", (20, 30), &["b"]);
    rejects(&b.build(), Rule::ReadsDiverge, &[first, second]);
}

#[test]
fn read_order_contradicting_real_time_is_rejected() {
    let mut b = HistoryBuilder::new();
    let first = acked(&mut b, "A", "first", (0, 10));
    let second = acked(&mut b, "A", "second", (20, 30));
    let r = read(&mut b, "A", (40, 50), &["second", "first"]);
    let v = rejects(&b.build(), Rule::ReadOrder, &[first, second, r]);
    assert_eq!(v.witness.len(), 3);
}

#[test]
fn read_order_with_unacknowledged_appends_is_rejected() {
    let mut b = HistoryBuilder::new();
    let first = append(&mut b, "A", "first", (0, 10), Outcome::Unknown);
    let second = pending_append(&mut b, "A", "second", 20);
    let r = read(&mut b, "A", (40, 50), &["second", "first"]);
    rejects(&b.build(), Rule::ReadOrder, &[first, second, r]);
}

// ---------------------------------------------------------------------------------------------
// Malformed histories

#[test]
fn completion_before_invocation_is_malformed() {
    let history = History::new(vec![raw(
        7,
        10,
        Some(5),
        Outcome::Ok,
        OpKind::append(M, "a", "A"),
    )]);
    malformed(&history, MalformedKind::CompleteBeforeInvoke, &[7]);
}

#[test]
fn duplicate_op_ids_are_malformed() {
    let history = History::new(vec![
        raw(1, 0, Some(1), Outcome::Ok, OpKind::append(M, "a", "A")),
        raw(2, 0, Some(1), Outcome::Ok, OpKind::append(M, "b", "A")),
        raw(
            1,
            2,
            Some(3),
            Outcome::Ok,
            OpKind::read_values(M, "A", ["a", "b"]),
        ),
    ]);
    malformed(&history, MalformedKind::DuplicateOpId, &[1, 1]);
}

#[test]
fn duplicate_appended_values_are_malformed() {
    let history = History::new(vec![
        raw(1, 0, Some(1), Outcome::Fail, OpKind::append(M, "a", "A")),
        raw(2, 2, Some(3), Outcome::Ok, OpKind::append("m2", "a", "A")),
    ]);
    malformed(&history, MalformedKind::DuplicateValue, &[1, 2]);
}

#[test]
fn definite_outcome_without_completion_is_malformed() {
    let history = History::new(vec![raw(
        4,
        0,
        None,
        Outcome::Ok,
        OpKind::read_values(M, "A", Vec::<String>::new()),
    )]);
    malformed(&history, MalformedKind::MissingCompletion, &[4]);
}

// ---------------------------------------------------------------------------------------------
// Reporting, saving and recording

#[test]
fn violation_display_lists_rule_message_and_witness() {
    let mut b = HistoryBuilder::new();
    acked(&mut b, "A", "a", (0, 1));
    read(&mut b, "B", (2, 3), &[]);
    let err = check(&b.build()).unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("lost-write on model \"m1\": "),
        "{text}"
    );
    assert!(
        lines[1].contains("op 0") && lines[1].contains("append \"a\""),
        "{text}"
    );
    assert!(
        lines[2].contains("op 1") && lines[2].contains("read"),
        "{text}"
    );
}

#[test]
fn histories_round_trip_through_json() {
    let mut b = HistoryBuilder::new();
    observe(&mut b, "A", (0, 1), active(1));
    observe(
        &mut b,
        "A",
        (0, 1),
        Ownership::MigratedTo {
            controller: "B".into(),
        },
    );
    observe(&mut b, "A", (0, 1), Ownership::Importing);
    acked(&mut b, "A", "a", (2, 3));
    pending_append(&mut b, "A", "b", 4);
    read(&mut b, "A", (5, 6), &["a"]);
    let m = b.invoke(3, 7, OpKind::migration(M, "mig", "A", "B"));
    b.complete_migration(m, 8, MigrationResult::Unknown);
    let history = b.build();
    let json = history.to_json();
    assert!(json.contains("\"type\": \"append\""), "{json}");
    assert!(json.contains("\"state\": \"migrated_to\""), "{json}");
    assert_eq!(History::from_json(&json).unwrap(), history);
    assert!(History::from_json("{\"ops\": 3}").is_err());
}

#[test]
fn builder_completes_pending_operations() {
    let mut b = HistoryBuilder::new();
    let w = b.invoke(1, 0, OpKind::append(M, "a", "A"));
    let r = b.invoke(2, 1, OpKind::read(M, "A"));
    let o = b.invoke(3, 1, OpKind::ownership(M, "A"));
    b.complete(w, 5, Outcome::Ok);
    b.complete_read(r, 6, ["a"]);
    b.complete_ownership(o, 7, active(1));
    let history = b.build();
    assert_eq!(history.ops[1].complete, Some(6));
    assert_eq!(history.ops[1].outcome, Outcome::Ok);
    passes(&history);
}

#[test]
#[should_panic(expected = "already complete")]
fn builder_refuses_to_complete_twice() {
    let mut b = HistoryBuilder::new();
    let w = b.invoke(1, 0, OpKind::append(M, "a", "A"));
    b.complete(w, 5, Outcome::Ok);
    b.complete(w, 6, Outcome::Ok);
}

#[test]
fn recorder_is_shared_across_threads() {
    let recorder = Recorder::new();
    let handles: Vec<_> = (0..4u64)
        .map(|process| {
            let recorder = recorder.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let id =
                        recorder.invoke(process, OpKind::append(M, format!("{process}-{i}"), "A"));
                    recorder.complete(id, Outcome::Unknown);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let id = recorder.invoke(9, OpKind::read(M, "A"));
    recorder.complete(id, Outcome::Fail);
    let history = recorder.history();
    assert_eq!(history.len(), 101);
    assert!(history.ops.iter().all(|op| op.complete >= Some(op.invoke)));
    let ids: HashSet<OpId> = history.ops.iter().map(|op| op.id).collect();
    assert_eq!(ids.len(), 101);
    passes(&history);
}

// ---------------------------------------------------------------------------------------------
// Simulated correct cluster

const CONTROLLERS: [&str; 3] = ["A", "B", "C"];
const MODELS: [&str; 2] = ["m1", "m2"];

/// One operation of the simulation: what it does and how its times and outcome fall.
#[derive(Clone, Debug)]
struct Step {
    /// 0..5 append, 5..8 read, 8 observe, 9 migrate.
    what: u8,
    model: usize,
    controller: usize,
    /// Time from the previous step's invocation to this one's.
    gap: u64,
    /// Time from invocation to the moment the operation takes effect.
    until_effect: u64,
    /// Time from that moment to completion.
    until_done: u64,
    /// 0..7 Ok, 7..9 Fail, 9..11 Unknown (applied or not by `applied`), 11 never completes.
    outcome: u8,
    applied: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..10,
        0..MODELS.len(),
        0..CONTROLLERS.len(),
        0u64..4,
        0u64..15,
        0u64..15,
        0u8..12,
        any::<bool>(),
    )
        .prop_map(
            |(what, model, controller, gap, until_effect, until_done, outcome, applied)| Step {
                what,
                model,
                controller,
                gap,
                until_effect,
                until_done,
                outcome,
                applied,
            },
        )
}

#[derive(Default)]
struct SimModel {
    owner: usize,
    epoch: u64,
    values: Vec<String>,
    /// What each controller answers about the model.
    answers: [Option<Ownership>; 3],
}

/// Runs the steps against a correct, linearizable cluster: each step takes effect at one moment
/// inside its interval, in the order of those moments.
fn simulate(steps: &[Step]) -> History {
    let mut timed = Vec::with_capacity(steps.len());
    let mut now = 0;
    for (i, step) in steps.iter().enumerate() {
        now += step.gap;
        let effect = now + step.until_effect;
        timed.push((effect, i, now, effect + step.until_done));
    }
    timed.sort();
    let mut models: Vec<SimModel> = MODELS
        .iter()
        .map(|_| {
            let mut model = SimModel {
                epoch: 1,
                ..SimModel::default()
            };
            model.answers[0] = Some(Ownership::Active { epoch: 1 });
            model
        })
        .collect();
    let mut b = HistoryBuilder::new();
    for &(effect, i, invoke, done) in &timed {
        let step = &steps[i];
        let process = i as u64 % 5;
        let name = MODELS[step.model];
        let model = &mut models[step.model];
        let owner = CONTROLLERS[model.owner];
        let (outcome, complete) = match step.outcome {
            0..=6 => (Outcome::Ok, Some(done)),
            7..=8 => (Outcome::Fail, Some(done)),
            9..=10 => (Outcome::Unknown, Some(done)),
            _ => (Outcome::Unknown, None),
        };
        match step.what {
            0..=4 => {
                let value = format!("v{i}");
                let takes_effect = match outcome {
                    Outcome::Ok => true,
                    Outcome::Fail => false,
                    Outcome::Unknown => step.applied,
                };
                if takes_effect {
                    model.values.push(value.clone());
                }
                b.op(
                    process,
                    OpKind::append(name, value, owner),
                    invoke,
                    complete,
                    outcome,
                );
            }
            5..=7 => {
                let values = if outcome == Outcome::Ok {
                    model.values.clone()
                } else {
                    vec!["garbage".to_string()]
                };
                b.op(
                    process,
                    OpKind::read_values(name, owner, values),
                    invoke,
                    complete,
                    outcome,
                );
            }
            8 => {
                let answer = model.answers[step.controller]
                    .clone()
                    .unwrap_or(Ownership::Absent);
                let asked = CONTROLLERS[step.controller];
                b.op(
                    process,
                    OpKind::observed(name, asked, answer),
                    invoke,
                    complete,
                    outcome,
                );
            }
            _ => {
                let from = model.owner;
                let to = (from + 1) % CONTROLLERS.len();
                model.owner = to;
                model.epoch += 1;
                model.answers[from] = Some(Ownership::MigratedTo {
                    controller: CONTROLLERS[to].to_string(),
                });
                model.answers[to] = Some(Ownership::Active { epoch: model.epoch });
                let id = b.invoke(
                    9,
                    invoke,
                    OpKind::migration(name, format!("mig-{i}"), CONTROLLERS[from], CONTROLLERS[to]),
                );
                b.complete_migration(id, done, MigrationResult::Done);
                // The harness observes every new owner once, the moment it activates.
                b.op(
                    9,
                    OpKind::observed(
                        name,
                        CONTROLLERS[to],
                        Ownership::Active { epoch: model.epoch },
                    ),
                    effect,
                    Some(effect),
                    Outcome::Ok,
                );
            }
        }
    }
    b.build()
}

fn read_values_mut(op: &mut Op) -> Option<&mut Vec<String>> {
    match &mut op.kind {
        OpKind::Read { values, .. } if op.outcome == Outcome::Ok => Some(values),
        _ => None,
    }
}

/// Finds an Ok read and a position in it holding a value acknowledged before the read began.
fn acknowledged_before_a_read(history: &History) -> Option<(usize, usize)> {
    for (r, op) in history.ops.iter().enumerate() {
        let OpKind::Read { values, .. } = &op.kind else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        for (position, value) in values.iter().enumerate() {
            let acked_before = history.ops.iter().any(|w| {
                matches!(&w.kind, OpKind::Append { value: v, .. } if v == value)
                    && w.outcome == Outcome::Ok
                    && w.precedes(op)
            });
            if acked_before {
                return Some((r, position));
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn simulated_correct_histories_pass(steps in prop::collection::vec(step(), 1..150)) {
        let history = simulate(&steps);
        if let Err(err) = check(&history) {
            prop_assert!(false, "correct history rejected:\n{}\n{}", err, history.to_json());
        }
    }

    #[test]
    fn dropping_an_acknowledged_value_from_a_read_is_caught(
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let mut history = simulate(&steps);
        if let Some((r, position)) = acknowledged_before_a_read(&history) {
            read_values_mut(&mut history.ops[r]).unwrap().remove(position);
            let err = check(&history).expect_err("a dropped acknowledged value must be caught");
            let violation = err.violation().expect("still well formed");
            prop_assert_eq!(violation.rule, Rule::LostWrite, "{}", violation);
        }
    }

    #[test]
    fn duplicating_a_value_in_a_read_is_caught(steps in prop::collection::vec(step(), 1..150)) {
        let mut history = simulate(&steps);
        let target = history
            .ops
            .iter_mut()
            .filter_map(read_values_mut)
            .find(|values| !values.is_empty());
        if let Some(values) = target {
            let first = values[0].clone();
            values.push(first);
            let err = check(&history).expect_err("a duplicated value must be caught");
            prop_assert_eq!(err.violation().map(|v| v.rule), Some(Rule::DuplicateInRead));
        }
    }
}

#[test]
fn large_history_is_checked() {
    // About 100k operations from the simulation, with a fixed pseudo-random sequence.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let steps: Vec<Step> = (0..100_000)
        .map(|_| {
            // Half appends, half ownership questions, a few reads and migrations: the reads
            // return whole lists, so they are kept rare to bound the total read length.
            let what = match next(1000) {
                0 => 5,
                1..=500 => 8,
                501 => 9,
                _ => 0,
            };
            Step {
                what,
                model: next(MODELS.len() as u64) as usize,
                controller: next(CONTROLLERS.len() as u64) as usize,
                gap: next(3),
                until_effect: next(20),
                until_done: next(20),
                outcome: next(12) as u8,
                applied: next(2) == 0,
            }
        })
        .collect();
    let history = simulate(&steps);
    let summary = check(&history).unwrap();
    assert!(summary.ops >= 100_000);
    assert!(summary.reads > 50, "{summary:?}");
}
