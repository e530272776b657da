//! The machine-agent commands applied through `ApplyBatch` on a `MemStore`: `AgentReport`
//! (ownership checks, dedupe on `seq`, logs) and `RenewPresence` (one record per node).

use sha2::{Digest, Sha256};
use starling_proto::command::{self as cmd, command::Op, command_error::Code};
use starling_proto::model::{LogRecord, PresenceEntry, Status};
use starling_storage::model::charm::parse_metadata;
use starling_storage::{export_model, records, StateBackend};

mod support;

use support::{Harness, UUID};

/// A model with machines 0 and 1 and `web/0` on 0, `web/1` on 1.
fn deployed() -> Harness {
    let mut h = Harness::new();
    h.ok(Op::AddModel(cmd::AddModel {
        uuid: UUID.into(),
        name: "m".into(),
        ..Default::default()
    }));
    for _ in 0..2 {
        h.ok(Op::AddMachine(cmd::AddMachine {
            model_uuid: UUID.into(),
            credential_sha256: "ab".repeat(32),
        }));
    }
    let bytes = b"charm bytes";
    let digest = hex::encode(Sha256::digest(bytes));
    h.ok(Op::PutBlobChunk(cmd::PutBlobChunk {
        digest: digest.clone(),
        offset: 0,
        data: bytes.to_vec(),
    }));
    h.ok(Op::CommitBlob(cmd::CommitBlob {
        digest: digest.clone(),
        size: bytes.len() as u64,
    }));
    h.ok(Op::Deploy(cmd::Deploy {
        model_uuid: UUID.into(),
        application: "web".into(),
        charm: Some(parse_metadata("name: web\ncommand: run\n").expect("charm")),
        charm_digest: digest,
        config: Default::default(),
        machines: vec!["0".into(), "1".into()],
        spread_units: 0,
    }));
    h
}

fn status_report(seq: u64, entity: &str, current: &str) -> cmd::AgentStatusReport {
    cmd::AgentStatusReport {
        seq,
        entity: entity.into(),
        kind: "workload".into(),
        status: Some(Status {
            current: current.into(),
            message: format!("seq {seq}"),
            since_unix_ms: 0,
        }),
    }
}

fn report(machine: &str, reports: Vec<cmd::AgentStatusReport>, logs: Vec<LogRecord>) -> Op {
    Op::AgentReport(cmd::AgentReport {
        model_uuid: UUID.into(),
        machine_id: machine.into(),
        reports,
        logs,
    })
}

fn workload_of(h: &Harness, unit: &str) -> Status {
    export_model(&h.store, UUID)
        .expect("reads")
        .expect("model")
        .units
        .into_iter()
        .find(|u| u.name == unit)
        .and_then(|u| u.workload_status)
        .expect("unit with a workload status")
}

#[test]
fn reports_apply_in_seq_order_once() {
    let mut h = deployed();
    let ok = h.ok(report(
        "0",
        vec![
            status_report(2, "unit-web-0", "active"),
            status_report(1, "unit-web-0", "maintenance"),
        ],
        vec![],
    ));
    assert_eq!(ok.applied_seq, 2);
    assert_eq!(workload_of(&h, "web/0").current, "active");
    assert_eq!(
        records::read_agent_seq(&h.store, UUID, 0).expect("reads"),
        2
    );

    // The same batch again (a lost answer): nothing is re-applied.
    let ok = h.ok(report(
        "0",
        vec![
            status_report(1, "unit-web-0", "maintenance"),
            status_report(2, "unit-web-0", "active"),
        ],
        vec![],
    ));
    assert_eq!(ok.applied_seq, 2);
    assert_eq!(workload_of(&h, "web/0").current, "active");

    // Only the new part of an overlapping batch applies.
    let ok = h.ok(report(
        "0",
        vec![
            status_report(2, "unit-web-0", "error"),
            status_report(3, "unit-web-0", "blocked"),
        ],
        vec![],
    ));
    assert_eq!(ok.applied_seq, 3);
    let status = workload_of(&h, "web/0");
    assert_eq!(
        (status.current.as_str(), status.message.as_str()),
        ("blocked", "seq 3")
    );
}

#[test]
fn reports_about_another_machine_are_refused_whole() {
    let mut h = deployed();
    let message = h.refused(
        report(
            "0",
            vec![
                status_report(1, "unit-web-0", "active"),
                status_report(2, "unit-web-1", "active"),
            ],
            vec![],
        ),
        Code::PermissionDenied,
    );
    assert!(message.contains("unit-web-1"), "{message}");
    h.refused(
        report("0", vec![status_report(1, "machine-1", "started")], vec![]),
        Code::PermissionDenied,
    );
    h.refused(
        report("0", vec![status_report(1, "model", "busy")], vec![]),
        Code::PermissionDenied,
    );
    let foreign_log = LogRecord {
        entity: "unit-web-1".into(),
        message: "not mine".into(),
        ..Default::default()
    };
    h.refused(
        report("0", vec![], vec![foreign_log]),
        Code::PermissionDenied,
    );
    h.refused(
        report("7", vec![status_report(1, "machine-7", "started")], vec![]),
        Code::NotFound,
    );
}

#[test]
fn logs_are_appended_and_gone_units_skipped() {
    let mut h = deployed();
    let log = LogRecord {
        entity: "unit-web-0".into(),
        message: "hello".into(),
        ..Default::default()
    };
    let ok = h.ok(report(
        "0",
        vec![status_report(1, "unit-web-9", "active")],
        vec![log],
    ));
    assert_eq!(
        ok.applied_seq, 1,
        "a report about a removed unit still counts as applied"
    );
    assert_eq!(ok.last_log_seq, 1);
    let logs = records::read_log(&h.store, UUID, 0, 10).expect("reads");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].message, "hello");
}

#[test]
fn presence_keeps_one_record_per_node() {
    let mut h = deployed();
    let entry = |machine: &str, seen: i64| PresenceEntry {
        model_uuid: UUID.into(),
        machine_id: machine.into(),
        last_seen_unix_ms: seen,
    };
    h.ok(Op::RenewPresence(cmd::RenewPresence {
        node_id: 1,
        entries: vec![entry("0", 100), entry("1", 50)],
    }));
    h.ok(Op::RenewPresence(cmd::RenewPresence {
        node_id: 2,
        entries: vec![entry("0", 80)],
    }));
    let seen = records::read_model_presence(&h.store, UUID).expect("reads");
    assert_eq!(seen.get("0"), Some(&100));
    assert_eq!(seen.get("1"), Some(&50));
    // Node 1's next record replaces its previous one.
    h.ok(Op::RenewPresence(cmd::RenewPresence {
        node_id: 1,
        entries: vec![entry("0", 200)],
    }));
    let seen = records::read_model_presence(&h.store, UUID).expect("reads");
    assert_eq!(seen.get("0"), Some(&200));
    assert_eq!(seen.get("1"), None);
    assert_eq!(records::read_presence(&h.store).expect("reads").len(), 2);
}

#[test]
fn a_report_sent_again_to_the_next_controller_is_applied_once() {
    let mut source = deployed();
    let log = |agent_seq: u64| LogRecord {
        entity: "unit-web-0".into(),
        message: format!("record {agent_seq}"),
        agent_seq,
        ..Default::default()
    };
    let batch = || {
        report(
            "0",
            vec![status_report(1, "unit-web-0", "active")],
            vec![log(2), log(3)],
        )
    };
    assert_eq!(source.ok(batch()).applied_seq, 3);
    // The model moves: its description carries machine 0's last applied number.
    let description = export_model(&source.store, UUID)
        .expect("reads")
        .expect("model");
    assert_eq!(
        description
            .agent_seqs
            .iter()
            .map(|a| (a.machine_id.as_str(), a.seq))
            .collect::<Vec<_>>(),
        [("0", 3)]
    );
    let mut target = Harness::new();
    let writes = starling_storage::import_model(&target.store, &description).expect("imports");
    target.store.state_commit(writes).expect("commits");
    // The acknowledgement was lost: the agent sends the same batch to the target, plus one
    // new record.
    let logs_before = records::read_log(&target.store, UUID, 0, 100)
        .expect("reads")
        .len();
    let again = report(
        "0",
        vec![status_report(1, "unit-web-0", "blocked")],
        vec![log(2), log(3), log(4)],
    );
    assert_eq!(target.ok(again).applied_seq, 4);
    let logs: Vec<String> = records::read_log(&target.store, UUID, 0, 100)
        .expect("reads")
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(logs.len(), logs_before + 1, "{logs:?}");
    assert_eq!(logs.last().map(String::as_str), Some("record 4"));
    assert_eq!(workload_of(&target, "web/0").current, "active");
}
