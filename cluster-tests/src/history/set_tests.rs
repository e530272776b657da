//! Set reads ([`OpKind::ReadSet`]): a good history passes, and each rule that applies to set
//! reads rejects a bad one with a minimal witness.

use super::{check, HistoryBuilder, OpId, OpKind, Outcome, Rule};

const M: &str = "m";

fn append(b: &mut HistoryBuilder, value: &str, at: (u64, u64), outcome: Outcome) -> OpId {
    b.op(0, OpKind::append(M, value, "A"), at.0, Some(at.1), outcome)
}

fn set_read(b: &mut HistoryBuilder, values: &[&str], at: (u64, u64)) -> OpId {
    b.op(
        1,
        OpKind::read_set_values(M, "A", values.iter().copied()),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

/// Checks that `b`'s history breaks `rule`, with exactly `witness` (ids in invocation order).
pub(super) fn rejects(b: HistoryBuilder, rule: Rule, witness: &[OpId]) {
    let history = b.build();
    let error = check(&history).expect_err("the history must be rejected");
    let violation = error.violation().expect("a violation, not a malformation");
    assert_eq!(violation.rule, rule, "{violation}");
    let ids: Vec<OpId> = violation.witness.iter().map(|op| op.id).collect();
    assert_eq!(ids, witness, "{violation}");
}

#[test]
fn a_good_set_history_passes_in_any_order() {
    let mut b = HistoryBuilder::new();
    append(&mut b, "a", (0, 10), Outcome::Ok);
    append(&mut b, "b", (5, 20), Outcome::Ok);
    append(&mut b, "c", (30, 40), Outcome::Unknown);
    append(&mut b, "d", (30, 40), Outcome::Fail);
    // Order means nothing in a set; concurrent b may be missing from an early read.
    set_read(&mut b, &["a"], (11, 12));
    set_read(&mut b, &["b", "a"], (21, 22));
    set_read(&mut b, &["a", "b"], (25, 26));
    set_read(&mut b, &["c", "b", "a"], (35, 50));
    set_read(&mut b, &["a", "c", "b"], (60, 61));
    let mut recorded = b.clone();
    let pending = recorded.invoke(2, 70, OpKind::read_set(M, "A"));
    recorded.complete_read(pending, 71, ["b", "c", "a"]);
    let summary = check(&recorded.build()).expect("a good set history");
    assert_eq!(summary.reads, 6);
}

#[test]
fn a_set_read_missing_an_acknowledged_write_is_a_lost_write() {
    let mut b = HistoryBuilder::new();
    let a = append(&mut b, "a", (0, 10), Outcome::Ok);
    append(&mut b, "b", (0, 10), Outcome::Ok);
    let r = set_read(&mut b, &["b"], (11, 12));
    rejects(b, Rule::LostWrite, &[a, r]);
}

#[test]
fn a_set_read_with_an_invented_failed_or_future_value_is_rejected() {
    let mut b = HistoryBuilder::new();
    let r = set_read(&mut b, &["nobody-wrote-this"], (0, 1));
    rejects(b, Rule::InventedValue, &[r]);

    let mut b = HistoryBuilder::new();
    let failed = append(&mut b, "a", (0, 10), Outcome::Fail);
    let r = set_read(&mut b, &["a"], (11, 12));
    rejects(b, Rule::FailedWriteVisible, &[failed, r]);

    let mut b = HistoryBuilder::new();
    let r = set_read(&mut b, &["a"], (0, 1));
    let future = append(&mut b, "a", (5, 10), Outcome::Unknown);
    rejects(b, Rule::FutureValue, &[r, future]);
}

#[test]
fn two_set_reads_neither_containing_the_other_diverge() {
    let mut b = HistoryBuilder::new();
    append(&mut b, "a", (0, 100), Outcome::Unknown);
    append(&mut b, "b", (0, 100), Outcome::Unknown);
    let first = set_read(&mut b, &["a"], (10, 20));
    let second = set_read(&mut b, &["b"], (15, 25));
    rejects(b, Rule::SetsDiverge, &[first, second]);
}

#[test]
fn a_set_read_after_a_larger_one_ended_regressed() {
    let mut b = HistoryBuilder::new();
    append(&mut b, "a", (0, 5), Outcome::Ok);
    append(&mut b, "b", (0, 100), Outcome::Unknown);
    let larger = set_read(&mut b, &["a", "b"], (10, 20));
    let smaller = set_read(&mut b, &["a"], (30, 40));
    rejects(b, Rule::ReadRegressed, &[larger, smaller]);
}

#[test]
fn list_order_rules_do_not_apply_to_set_reads() {
    let mut b = HistoryBuilder::new();
    append(&mut b, "a", (0, 1), Outcome::Ok);
    append(&mut b, "b", (2, 3), Outcome::Ok);
    // As a list this is out of order (ReadOrder); as a set it is fine.
    set_read(&mut b, &["b", "a"], (4, 5));
    // A list read of the same model is still checked as a list, independently.
    b.op(
        1,
        OpKind::read_values(M, "A", ["a", "b"]),
        6,
        Some(7),
        Outcome::Ok,
    );
    check(&b.build()).expect("set order carries no meaning");
}
