//! Access changes ([`OpKind::Access`]) and the model log ([`OpKind::AppendLog`],
//! [`OpKind::ReadLog`]): good histories pass, and a planted violation of each rule is reported
//! with its witness.

use super::set_tests::rejects;
use super::{check, HistoryBuilder, OpId, OpKind, Outcome, Rule};

const M: &str = "m";
const U: &str = "writer";

fn write(b: &mut HistoryBuilder, value: &str, at: (u64, u64), outcome: Outcome) -> OpId {
    b.op(
        7,
        OpKind::append_by(M, value, "A", U),
        at.0,
        Some(at.1),
        outcome,
    )
}

fn access(b: &mut HistoryBuilder, granted: bool, at: (u64, u64)) -> OpId {
    b.op(
        8,
        OpKind::access(M, U, "A", granted),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

fn log(b: &mut HistoryBuilder, record: &str, at: (u64, u64)) -> OpId {
    b.op(
        9,
        OpKind::append_log(M, record, "A"),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

fn read_log(b: &mut HistoryBuilder, controller: &str, records: &[&str], at: (u64, u64)) -> OpId {
    b.op(
        10,
        OpKind::read_log(M, controller, records.iter().copied()),
        at.0,
        Some(at.1),
        Outcome::Ok,
    )
}

/// Writes before the revocation, concurrent with it, refused inside it, straddling the grant,
/// and after the grant are all fine; so are another user's writes inside the window.
#[test]
fn writes_outside_a_revocation_window_pass() {
    let mut b = HistoryBuilder::new();
    write(&mut b, "a", (1, 5), Outcome::Ok);
    access(&mut b, false, (8, 10));
    write(&mut b, "concurrent", (9, 11), Outcome::Ok);
    write(&mut b, "refused", (12, 14), Outcome::Fail);
    write(&mut b, "unknown", (12, 14), Outcome::Unknown);
    b.op(
        3,
        OpKind::append(M, "harness", "A"),
        12,
        Some(13),
        Outcome::Ok,
    );
    b.op(
        3,
        OpKind::append_by(M, "other-user", "A", "someone"),
        12,
        Some(13),
        Outcome::Ok,
    );
    write(&mut b, "straddles", (15, 25), Outcome::Ok);
    access(&mut b, true, (20, 22));
    write(&mut b, "after", (30, 31), Outcome::Ok);
    let summary = check(&b.build()).expect("a good history");
    assert_eq!(summary.access_changes, 2);
}

#[test]
fn a_write_acknowledged_inside_a_revocation_window_is_rejected() {
    let mut b = HistoryBuilder::new();
    write(&mut b, "a", (1, 5), Outcome::Ok);
    let revoke = access(&mut b, false, (8, 10));
    let late = write(&mut b, "b", (12, 14), Outcome::Ok);
    let grant = access(&mut b, true, (20, 22));
    rejects(b, Rule::WriteAfterRevoke, &[revoke, late, grant]);
}

#[test]
fn a_write_acknowledged_after_a_revocation_never_lifted_is_rejected() {
    let mut b = HistoryBuilder::new();
    access(&mut b, true, (0, 1));
    let revoke = access(&mut b, false, (8, 10));
    // Still pending: the rule waits for the acknowledgement.
    b.op(
        7,
        OpKind::append_by(M, "p", "A", U),
        40,
        None,
        Outcome::Unknown,
    );
    let late = write(&mut b, "b", (50, 60), Outcome::Ok);
    rejects(b, Rule::WriteAfterRevoke, &[revoke, late]);
}

/// A revocation that never returned Ok opens no window.
#[test]
fn an_unconfirmed_revocation_opens_no_window() {
    let mut b = HistoryBuilder::new();
    b.op(
        8,
        OpKind::access(M, U, "A", false),
        8,
        None,
        Outcome::Unknown,
    );
    write(&mut b, "b", (12, 14), Outcome::Ok);
    check(&b.build()).expect("no window");
}

/// Records move with the model: a read of the source, then of the target after the migration,
/// lists them all once, whatever the order of records written meanwhile.
#[test]
fn a_log_kept_across_owners_passes() {
    let mut b = HistoryBuilder::new();
    log(&mut b, "unit-a-0#1", (0, 2));
    read_log(&mut b, "A", &["unit-a-0#1"], (3, 4));
    log(&mut b, "unit-a-0#2", (5, 6));
    // Concurrent with the append of #3: may miss it.
    log(&mut b, "unit-a-0#3", (7, 12));
    read_log(&mut b, "A", &["unit-a-0#1", "unit-a-0#2"], (8, 9));
    // A record nobody saw acknowledged yet (an agent's), then listed from then on.
    read_log(
        &mut b,
        "B",
        &["unit-a-0#1", "unit-a-0#2", "unit-a-0#3", "machine-0#9"],
        (20, 21),
    );
    read_log(
        &mut b,
        "B",
        &["unit-a-0#1", "unit-a-0#2", "machine-0#9", "unit-a-0#3"],
        (30, 31),
    );
    let summary = check(&b.build()).expect("a good log history");
    assert_eq!(summary.log_reads, 4);
}

#[test]
fn an_acknowledged_record_missing_from_a_later_log_read_is_rejected() {
    let mut b = HistoryBuilder::new();
    log(&mut b, "unit-a-0#1", (0, 2));
    let lost = log(&mut b, "unit-a-0#2", (3, 4));
    let read = read_log(&mut b, "B", &["unit-a-0#1"], (10, 11));
    rejects(b, Rule::LogRecordLost, &[lost, read]);
}

/// A record the source listed, missing on the target once the migration ended.
#[test]
fn a_listed_record_missing_from_a_later_log_read_is_rejected() {
    let mut b = HistoryBuilder::new();
    let seen = read_log(&mut b, "A", &["unit-a-0#1", "machine-0#4"], (0, 2));
    read_log(&mut b, "B", &["unit-a-0#1"], (1, 3));
    let read = read_log(&mut b, "B", &["unit-a-0#1", "unit-a-0#5"], (10, 11));
    rejects(b, Rule::LogRecordLost, &[seen, read]);
}

/// A re-sent record applied again by the target.
#[test]
fn a_record_listed_twice_is_rejected() {
    let mut b = HistoryBuilder::new();
    log(&mut b, "unit-a-0#1", (0, 2));
    read_log(&mut b, "A", &["unit-a-0#1"], (3, 4));
    let read = read_log(
        &mut b,
        "B",
        &["unit-a-0#1", "unit-a-0#2", "unit-a-0#1"],
        (10, 11),
    );
    rejects(b, Rule::LogRecordDuplicated, &[read]);
}
