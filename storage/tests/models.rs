//! The model commands applied through `ApplyBatch` on a `MemStore`: every op's success, and
//! every refusal leaving the state byte-for-byte as it was; export → import identity.

use proptest::prelude::*;
use starling_proto::command::{self as cmd, command::Op, command_error::Code};
use starling_proto::model::{Access, CharmMeta, LogRecord, Status};
use starling_storage::model::charm::parse_metadata;
use starling_storage::{
    description_digest, export_model, import_model, keys, records, MemStore, StateBackend,
    StateRead,
};

mod support;

use support::{digest_of, Harness, NOW, UUID};

fn add_model(uuid: &str, name: &str) -> Op {
    Op::AddModel(cmd::AddModel {
        uuid: uuid.into(),
        name: name.into(),
        cloud: "lxd".into(),
        region: "local".into(),
        ..Default::default()
    })
}

fn add_machine() -> Op {
    Op::AddMachine(cmd::AddMachine {
        model_uuid: UUID.into(),
        credential_sha256: "ab".repeat(32),
    })
}

fn upload(h: &mut Harness, bytes: &[u8]) -> String {
    h.upload(bytes, 7)
}

fn charm(name: &str, extra: &str) -> CharmMeta {
    parse_metadata(&format!("name: {name}\ncommand: run\n{extra}")).expect("valid charm")
}

fn wordpress() -> CharmMeta {
    charm(
        "wordpress",
        "requires:\n  db: {interface: mysql}\n  backup-db: {interface: mysql}\nprovides:\n  website: {interface: http}\npeers:\n  cluster: {interface: wp}\nconfig:\n  options:\n    port: {default: 80}\n    title: {}\n",
    )
}

fn mysql() -> CharmMeta {
    charm("mysql", "provides:\n  db: {interface: mysql}\n")
}

fn deploy(application: &str, charm: CharmMeta, digest: &str, machines: &[&str]) -> Op {
    Op::Deploy(cmd::Deploy {
        model_uuid: UUID.into(),
        application: application.into(),
        charm: Some(charm),
        charm_digest: digest.into(),
        config: Default::default(),
        machines: machines.iter().map(|m| m.to_string()).collect(),
        spread_units: 0,
    })
}

fn units(machines: &[&str], application: &str) -> Op {
    Op::AddUnits(cmd::AddUnits {
        model_uuid: UUID.into(),
        application: application.into(),
        machines: machines.iter().map(|m| m.to_string()).collect(),
        spread_units: 0,
    })
}

fn remove_units(names: &[&str]) -> Op {
    Op::RemoveUnits(cmd::RemoveUnits {
        model_uuid: UUID.into(),
        units: names.iter().map(|m| m.to_string()).collect(),
    })
}

fn status(entity: &str, kind: &str, current: &str, message: &str) -> Op {
    Op::SetStatus(cmd::SetStatus {
        model_uuid: UUID.into(),
        entity: entity.into(),
        kind: kind.into(),
        status: Some(Status {
            current: current.into(),
            message: message.into(),
            since_unix_ms: 0,
        }),
    })
}

fn leaders(h: &Harness, application: &str) -> Vec<String> {
    records::read_application_units(&h.store, UUID, application)
        .expect("reads")
        .into_iter()
        .filter(|u| u.leader)
        .map(|u| u.name)
        .collect()
}

/// A model with two machines, an uploaded wordpress charm and a mysql charm.
fn populated() -> (Harness, String, String) {
    let mut h = Harness::new();
    h.ok(add_model(UUID, "prod"));
    h.ok(add_machine());
    h.ok(add_machine());
    let wp = upload(&mut h, b"wordpress charm archive bytes");
    let db = upload(&mut h, b"mysql charm archive");
    (h, wp, db)
}

#[test]
fn models_are_added_indexed_and_refused_when_duplicate_or_malformed() {
    let mut h = Harness::new();
    h.ok(add_model(UUID, "prod"));
    let model = records::read_model(&h.store, UUID)
        .expect("reads")
        .expect("exists");
    assert_eq!(
        (model.owner.as_str(), model.name.as_str()),
        ("alice", "prod")
    );
    assert_eq!(model.next_log_seq, 1);
    assert_eq!(
        records::read_model_uuid(&h.store, "alice", "prod")
            .expect("reads")
            .as_deref(),
        Some(UUID)
    );
    let other = "11111111-2222-4333-8444-555555555555";
    let msg = h.refused(add_model(other, "prod"), Code::AlreadyExists);
    assert_eq!(msg, "model \"alice/prod\" already exists");
    h.refused(add_model(UUID, "staging"), Code::AlreadyExists);
    h.refused(add_model(other, "Prod"), Code::InvalidArgument);
    h.refused(add_model("not-a-uuid", "x"), Code::InvalidArgument);
    h.ok(add_model(other, "staging"));
    assert_eq!(records::read_models(&h.store).expect("reads").len(), 2);
    let msg = h.refused(
        Op::AddMachine(cmd::AddMachine {
            model_uuid: "22222222-2222-4333-8444-555555555555".into(),
            credential_sha256: String::new(),
        }),
        Code::NotFound,
    );
    assert!(msg.contains("not found"), "{msg}");
}

#[test]
fn machines_get_sequential_ids() {
    let mut h = Harness::new();
    h.ok(add_model(UUID, "prod"));
    assert_eq!(h.ok(add_machine()).machine_id, "0");
    assert_eq!(h.ok(add_machine()).machine_id, "1");
    h.refused(
        Op::AddMachine(cmd::AddMachine {
            model_uuid: UUID.into(),
            credential_sha256: "nothex".into(),
        }),
        Code::InvalidArgument,
    );
    let d = h.description();
    assert_eq!(d.machines.len(), 2);
    assert_eq!(
        d.machines[1].agent_status.as_ref().expect("set").current,
        "pending"
    );
}

#[test]
fn blobs_are_staged_in_order_verified_and_read_back() {
    let mut h = Harness::new();
    let bytes: Vec<u8> = (0..100u8).collect();
    let digest = digest_of(&bytes);
    h.ok(Op::PutBlobChunk(cmd::PutBlobChunk {
        digest: digest.clone(),
        offset: 0,
        data: bytes[..40].to_vec(),
    }));
    // A gap and an overlap are refused and change nothing.
    for offset in [50, 30] {
        let msg = h.refused(
            Op::PutBlobChunk(cmd::PutBlobChunk {
                digest: digest.clone(),
                offset,
                data: bytes[offset as usize..].to_vec(),
            }),
            Code::FailedPrecondition,
        );
        assert!(
            msg.contains("does not follow the 40 byte(s) staged"),
            "{msg}"
        );
    }
    h.refused(
        Op::PutBlobChunk(cmd::PutBlobChunk {
            digest: digest.clone(),
            offset: 40,
            data: vec![0; 1024 * 1024 + 1],
        }),
        Code::InvalidArgument,
    );
    h.ok(Op::PutBlobChunk(cmd::PutBlobChunk {
        digest: digest.clone(),
        offset: 40,
        data: bytes[40..].to_vec(),
    }));
    h.refused(
        Op::CommitBlob(cmd::CommitBlob {
            digest: digest.clone(),
            size: 99,
        }),
        Code::InvalidArgument,
    );
    h.ok(Op::CommitBlob(cmd::CommitBlob {
        digest: digest.clone(),
        size: 100,
    }));
    let blob = records::read_blob(&h.store, &digest)
        .expect("reads")
        .expect("complete");
    assert_eq!(blob.chunk_offsets, [0, 40]);
    assert_eq!(
        records::read_blob_range(&h.store, &blob, 0, 1000).expect("reads"),
        bytes
    );
    assert_eq!(
        records::read_blob_range(&h.store, &blob, 35, 10).expect("reads"),
        bytes[35..45]
    );
    assert!(records::read_blob_range(&h.store, &blob, 100, 10)
        .expect("reads")
        .is_empty());
    assert!(records::read_blob_upload(&h.store, &digest)
        .expect("reads")
        .is_none());
    // Re-uploading a complete blob is a no-op.
    h.ok(Op::CommitBlob(cmd::CommitBlob {
        digest: digest.clone(),
        size: 100,
    }));

    // Bytes that do not hash to the digest: refused, and the upload is discarded.
    let wrong = "cd".repeat(32);
    h.ok(Op::PutBlobChunk(cmd::PutBlobChunk {
        digest: wrong.clone(),
        offset: 0,
        data: b"abc".to_vec(),
    }));
    match h.apply(Op::CommitBlob(cmd::CommitBlob {
        digest: wrong.clone(),
        size: 3,
    })) {
        cmd::command_result::Result::Error(e) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains(&digest_of(b"abc")), "{}", e.message);
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(records::read_blob_upload(&h.store, &wrong)
        .expect("reads")
        .is_none());
    assert!(h
        .store
        .scan_prefix(&keys::blob_data_prefix(&wrong), 10)
        .expect("scans")
        .is_empty());
    let msg = h.refused(
        Op::CommitBlob(cmd::CommitBlob {
            digest: wrong,
            size: 3,
        }),
        Code::FailedPrecondition,
    );
    assert!(msg.contains("nothing was uploaded"), "{msg}");
}

#[test]
fn deploy_places_units_and_checks_charm_config_and_machines() {
    let (mut h, wp, _) = populated();
    let msg = h.refused(
        deploy("web", wordpress(), &"ee".repeat(32), &["0"]),
        Code::NotFound,
    );
    assert!(msg.contains("upload it first"), "{msg}");
    let msg = h.refused(deploy("web", wordpress(), &wp, &["0", "7"]), Code::NotFound);
    assert_eq!(msg, "machine 7 not found");
    h.refused(deploy("Web", wordpress(), &wp, &[]), Code::InvalidArgument);
    let mut bad_charm = wordpress();
    bad_charm.command.clear();
    h.refused(deploy("web", bad_charm, &wp, &[]), Code::InvalidArgument);
    let mut with_config = deploy("web", wordpress(), &wp, &[]);
    if let Op::Deploy(d) = &mut with_config {
        d.config.insert("colour".into(), "red".into());
    }
    let msg = h.refused(with_config, Code::InvalidArgument);
    assert!(msg.contains("no config option \"colour\""), "{msg}");

    let ok = h.ok(deploy("web", wordpress(), &wp, &["0", "1", "0"]));
    assert_eq!(ok.units, ["web/0", "web/1", "web/2"]);
    assert_eq!(leaders(&h, "web"), ["web/0"]);
    h.refused(deploy("web", wordpress(), &wp, &[]), Code::AlreadyExists);
    let d = h.description();
    assert_eq!(d.charm_digests, std::slice::from_ref(&wp));
    assert_eq!(d.units.len(), 3);
    assert_eq!(d.applications[0].charm_name, "wordpress");

    assert_eq!(h.ok(units(&["1"], "web")).units, ["web/3"]);
    h.refused(units(&[], "web"), Code::InvalidArgument);
    h.refused(units(&["0"], "nope"), Code::NotFound);
    h.refused(units(&["9"], "web"), Code::NotFound);
}

#[test]
fn units_without_machines_spread_over_the_machines_with_the_fewest_units() {
    let (mut h, wp, db) = populated();
    h.ok(add_machine()); // "2": with "0" and "1", three machines
    let unit_machines = |h: &Harness| -> Vec<(String, String)> {
        h.description()
            .units
            .iter()
            .map(|u| (u.name.clone(), u.machine.clone()))
            .collect()
    };
    h.ok(deploy("db", mysql(), &db, &["0", "0"]));
    let mut spread = deploy("web", wordpress(), &wp, &[]);
    if let Op::Deploy(d) = &mut spread {
        d.spread_units = 4;
    }
    assert_eq!(h.ok(spread).units, ["web/0", "web/1", "web/2", "web/3"]);
    // Machine 0 had two units: the empty 1 and 2 fill first, then every machine is even.
    let placed = unit_machines(&h);
    let web: Vec<&str> = placed
        .iter()
        .filter(|(u, _)| u.starts_with("web/"))
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(web, ["1", "2", "1", "2"]);
    let mut more = units(&[], "web");
    if let Op::AddUnits(a) = &mut more {
        a.spread_units = 2;
    }
    assert_eq!(h.ok(more).units, ["web/4", "web/5"]);
    let placed = unit_machines(&h);
    assert_eq!(placed.iter().filter(|(_, m)| m == "0").count(), 3);
    // Named machines still pin, and spread_units is then ignored.
    let mut pinned = units(&["0"], "web");
    if let Op::AddUnits(a) = &mut pinned {
        a.spread_units = 5;
    }
    assert_eq!(h.ok(pinned).units, ["web/6"]);
}

#[test]
fn a_models_footprint_counts_its_records_and_its_log_apart() {
    let (mut h, wp, _) = populated();
    let empty = records::model_footprint(&h.store, UUID).expect("reads");
    assert_eq!((empty.machines, empty.units, empty.log_records), (2, 0, 0));
    h.ok(deploy("web", wordpress(), &wp, &["0", "1", "0"]));
    h.ok(Op::AppendLog(cmd::AppendLog {
        model_uuid: UUID.into(),
        records: (0..5)
            .map(|i| LogRecord {
                entity: "unit-web-0".into(),
                message: format!("line {i}"),
                ..Default::default()
            })
            .collect(),
    }));
    let footprint = records::model_footprint(&h.store, UUID).expect("reads");
    assert_eq!(footprint.machines, 2);
    assert_eq!(footprint.units, 3);
    assert_eq!(footprint.log_records, 5);
    // The same keys and bytes as a plain scan of the model's prefix, split at its log.
    let all = h
        .store
        .scan_prefix(&keys::model_prefix(UUID), usize::MAX)
        .expect("reads");
    let size = |pairs: &[&(Vec<u8>, Vec<u8>)]| -> u64 {
        pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    };
    let log_prefix = keys::log_prefix(UUID);
    let (log, rest): (Vec<_>, Vec<_>) = all.iter().partition(|(k, _)| k.starts_with(&log_prefix));
    assert_eq!(footprint.records, rest.len() as u64);
    assert_eq!(footprint.bytes, size(&rest));
    assert_eq!(footprint.log_bytes, size(&log));
    // Another model's keys are not counted.
    assert_eq!(
        records::model_footprint(&h.store, "another-uuid").expect("reads"),
        records::ModelFootprint::default()
    );
}

#[test]
fn leadership_moves_to_the_lowest_remaining_unit() {
    let (mut h, wp, _) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0", "1", "1"]));
    h.refused(remove_units(&["web/9"]), Code::NotFound);
    h.refused(remove_units(&["web/1", "web/9"]), Code::NotFound);
    h.refused(remove_units(&["web"]), Code::InvalidArgument);
    h.refused(remove_units(&[]), Code::InvalidArgument);
    assert_eq!(h.ok(remove_units(&["web/1"])).units, ["web/1"]);
    assert_eq!(leaders(&h, "web"), ["web/0"]);
    h.ok(remove_units(&["web/0"]));
    assert_eq!(leaders(&h, "web"), ["web/2"]);
    h.ok(remove_units(&["web/2"]));
    assert!(leaders(&h, "web").is_empty());
    // The next unit of an application without units leads, numbers are never reused.
    assert_eq!(h.ok(units(&["0", "0"], "web")).units, ["web/3", "web/4"]);
    assert_eq!(leaders(&h, "web"), ["web/3"]);
}

#[test]
fn removing_a_machine_needs_force_while_units_remain() {
    let (mut h, wp, _) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0", "1", "0"]));
    let remove = |force| {
        Op::RemoveMachine(cmd::RemoveMachine {
            model_uuid: UUID.into(),
            machine_id: "0".into(),
            force,
        })
    };
    let msg = h.refused(remove(false), Code::FailedPrecondition);
    assert_eq!(
        msg,
        "machine 0 still hosts unit(s) web/0, web/2; remove them first or remove the machine with --force"
    );
    assert_eq!(h.ok(remove(true)).units, ["web/0", "web/2"]);
    assert_eq!(leaders(&h, "web"), ["web/1"]);
    let d = h.description();
    assert_eq!(d.machines.len(), 1);
    let msg = h.refused(units(&["0"], "web"), Code::NotFound);
    assert_eq!(msg, "machine 0 not found");
    h.refused(remove(false), Code::NotFound);
}

#[test]
fn relations_match_by_interface_and_are_unique() {
    let (mut h, wp, db) = populated();
    h.ok(deploy("web", wordpress(), &wp, &[]));
    h.ok(deploy("db", mysql(), &db, &[]));
    let integrate = |a: &str, b: &str| {
        Op::Integrate(cmd::Integrate {
            model_uuid: UUID.into(),
            endpoint_a: a.into(),
            endpoint_b: b.into(),
        })
    };
    let msg = h.refused(integrate("web", "db"), Code::InvalidArgument);
    assert!(msg.contains("web:backup-db db:db; web:db db:db"), "{msg}");
    h.refused(integrate("web", "web:website"), Code::InvalidArgument);
    h.refused(integrate("web", "nope"), Code::NotFound);
    assert_eq!(h.ok(integrate("web:db", "db")).relation_id, Some(0));
    h.refused(integrate("db", "web:db"), Code::AlreadyExists);
    assert_eq!(h.ok(integrate("web", "web")).relation_id, Some(1));
    let d = h.description();
    assert_eq!(d.relations.len(), 2);
    assert_eq!(d.relations[1].interface, "wp");
    let remove = |a: &str, b: &str| {
        Op::RemoveRelation(cmd::RemoveRelation {
            model_uuid: UUID.into(),
            endpoint_a: a.into(),
            endpoint_b: b.into(),
        })
    };
    h.refused(remove("web", "nope"), Code::NotFound);
    assert_eq!(h.ok(remove("db", "web")).relation_id, Some(0));
    assert_eq!(h.description().relations.len(), 1);
    // Relation ids are never reused.
    assert_eq!(h.ok(integrate("web:backup-db", "db")).relation_id, Some(2));
}

#[test]
fn removing_an_application_takes_its_units_relations_and_history() {
    let (mut h, wp, db) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0", "1"]));
    h.ok(deploy("db", mysql(), &db, &["1"]));
    h.ok(Op::Integrate(cmd::Integrate {
        model_uuid: UUID.into(),
        endpoint_a: "web:db".into(),
        endpoint_b: "db".into(),
    }));
    h.ok(status("unit-web-0", "workload", "active", "up"));
    h.ok(status("application-web", "", "active", ""));
    let remove = |application: &str| {
        Op::RemoveApplication(cmd::RemoveApplication {
            model_uuid: UUID.into(),
            application: application.into(),
        })
    };
    h.refused(remove("nope"), Code::NotFound);
    h.refused(remove("Bad_Name"), Code::InvalidArgument);
    let before = h.description();
    assert!(before
        .status_history
        .iter()
        .any(|s| s.entity == "application-web"));
    assert_eq!(h.ok(remove("web")).units, ["web/0", "web/1"]);
    let after = h.description();
    assert!(after.applications.iter().all(|a| a.name != "web"));
    assert!(after.units.iter().all(|u| u.application != "web"));
    assert!(after.relations.is_empty(), "{:?}", after.relations);
    assert!(
        after
            .status_history
            .iter()
            .all(|s| !s.entity.starts_with("unit-web-") && s.entity != "application-web"),
        "{:?}",
        after.status_history
    );
    // The rest of the model is untouched.
    assert_eq!(after.machines, before.machines);
    assert!(after.applications.iter().any(|a| a.name == "db"));
    assert_eq!(leaders(&h, "db"), ["db/0"]);
    h.refused(remove("web"), Code::NotFound);
    // The name can be deployed again; unit numbers start afresh with the new application.
    assert_eq!(
        h.ok(deploy("web", wordpress(), &wp, &["0"])).units,
        ["web/0"]
    );
}

#[test]
fn application_config_is_checked_and_reset_by_empty_values() {
    let (mut h, wp, _) = populated();
    h.ok(deploy("web", wordpress(), &wp, &[]));
    let set = |pairs: &[(&str, &str)]| {
        Op::SetApplicationConfig(cmd::SetApplicationConfig {
            model_uuid: UUID.into(),
            application: "web".into(),
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    };
    h.ok(set(&[("port", "8080"), ("title", "blog")]));
    let config = |h: &Harness| {
        let mut c: Vec<(String, String)> = records::read_application(&h.store, UUID, "web")
            .expect("reads")
            .expect("exists")
            .config
            .into_iter()
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        config(&h),
        [
            ("port".into(), "8080".into()),
            ("title".into(), "blog".into())
        ]
    );
    let msg = h.refused(set(&[("port", "1"), ("nope", "x")]), Code::InvalidArgument);
    assert!(msg.contains("(its charm declares: port, title)"), "{msg}");
    h.ok(set(&[("port", "")]));
    assert_eq!(config(&h), [("title".into(), "blog".into())]);
}

#[test]
fn status_history_is_bounded_by_controller_config() {
    let (mut h, wp, _) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0"]));
    h.ok(Op::SetControllerConfig(cmd::SetControllerConfig {
        values: [("status-history-size".to_owned(), "3".to_owned())].into(),
    }));
    for i in 0..5 {
        h.ok(status(
            "unit-web-0",
            "workload",
            "active",
            &format!("step {i}"),
        ));
    }
    // An unchanged status is not a new history entry.
    h.ok(status("unit-web-0", "workload", "active", "step 4"));
    h.ok(status("unit-web-0", "agent", "idle", ""));
    h.ok(status("machine-0", "", "started", ""));
    h.ok(status("model", "", "available", "ok"));
    h.ok(status("application-web", "", "active", ""));
    let history = records::read_history(&h.store, UUID, "unit-web-0")
        .expect("reads")
        .expect("exists");
    let messages: Vec<&str> = history.entries.iter().map(|s| s.message.as_str()).collect();
    assert_eq!(messages, ["step 2", "step 3", "step 4"]);
    let unit = records::read_unit(&h.store, UUID, "web", 0)
        .expect("reads")
        .expect("exists");
    assert_eq!(unit.workload_status.expect("set").message, "step 4");
    assert_eq!(unit.agent_status.expect("set").current, "idle");
    let entities: Vec<String> = h
        .description()
        .status_history
        .into_iter()
        .map(|s| s.entity)
        .collect();
    assert_eq!(
        entities,
        [
            "application-web",
            "machine-0",
            "model",
            "unit-web-0",
            "unit-web-0/agent"
        ]
    );
    h.refused(status("unit-web-9", "", "active", ""), Code::NotFound);
    h.refused(
        status("machine-0", "workload", "x", ""),
        Code::InvalidArgument,
    );
    h.refused(status("bogus", "", "x", ""), Code::InvalidArgument);
    h.refused(status("model", "", "", ""), Code::InvalidArgument);
    // Removing the unit drops its histories.
    h.ok(remove_units(&["web/0"]));
    assert!(records::read_history(&h.store, UUID, "unit-web-0")
        .expect("reads")
        .is_none());
}

#[test]
fn model_log_assigns_sequence_numbers_and_evicts_the_oldest() {
    let mut h = Harness::new();
    h.ok(add_model(UUID, "prod"));
    h.ok(Op::SetControllerConfig(cmd::SetControllerConfig {
        values: [("model-log-max-records".to_owned(), "100".to_owned())].into(),
    }));
    let append = |n: usize| {
        Op::AppendLog(cmd::AppendLog {
            model_uuid: UUID.into(),
            records: (0..n)
                .map(|i| LogRecord {
                    entity: "machine-0".into(),
                    message: format!("line {i}"),
                    ..Default::default()
                })
                .collect(),
        })
    };
    assert_eq!(h.ok(append(60)).last_log_seq, 60);
    assert_eq!(h.ok(append(60)).last_log_seq, 120);
    let all = records::read_log(&h.store, UUID, 0, usize::MAX).expect("reads");
    assert_eq!(all.len(), 100);
    assert_eq!(all[0].seq, 21);
    assert_eq!(all[0].time_unix_ms, NOW + 3);
    let page = records::read_log(&h.store, UUID, 110, 5).expect("reads");
    let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [111, 112, 113, 114, 115]);
    h.refused(append(0), Code::InvalidArgument);
    h.refused(append(1001), Code::InvalidArgument);
}

#[test]
fn destroying_a_model_needs_force_while_machines_remain() {
    let (mut h, wp, _) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0"]));
    let destroy = |force| {
        Op::DestroyModel(cmd::DestroyModel {
            model_uuid: UUID.into(),
            force,
        })
    };
    let msg = h.refused(destroy(false), Code::FailedPrecondition);
    assert!(msg.contains("still has 2 machine(s) (0, 1)"), "{msg}");
    h.ok(destroy(true));
    assert!(h
        .store
        .scan_prefix(&keys::model_prefix(UUID), 1)
        .expect("scans")
        .is_empty());
    assert!(records::read_models(&h.store).expect("reads").is_empty());
    // Blobs are controller-wide and survive.
    assert!(records::read_blob(&h.store, &wp).expect("reads").is_some());
    h.refused(destroy(true), Code::NotFound);
    h.ok(add_model(UUID, "controller"));
    h.refused(destroy(true), Code::FailedPrecondition);
}

#[test]
fn users_and_model_access() {
    let mut h = Harness::new();
    h.ok(add_model(UUID, "prod"));
    let add_user = |name: &str, access: &str| {
        Op::AddUser(cmd::AddUser {
            name: name.into(),
            token_sha256: "ab".repeat(32),
            controller_access: access.into(),
        })
    };
    h.ok(add_user("bob", ""));
    h.refused(add_user("bob", "login"), Code::AlreadyExists);
    h.refused(add_user("Bob", "login"), Code::InvalidArgument);
    h.refused(add_user("carol", "root"), Code::InvalidArgument);
    h.refused(
        Op::AddUser(cmd::AddUser {
            name: "carol".into(),
            token_sha256: "plaintext".into(),
            controller_access: String::new(),
        }),
        Code::InvalidArgument,
    );
    assert_eq!(
        records::read_user(&h.store, "bob")
            .expect("reads")
            .expect("exists")
            .controller_access,
        "login"
    );
    let set_access = |user: &str, access: Access, revoke: bool| {
        Op::SetModelAccess(cmd::SetModelAccess {
            model_uuid: UUID.into(),
            user: user.into(),
            access: access as i32,
            revoke,
        })
    };
    let grant = |user: &str, access: Access| set_access(user, access, false);
    let revoke = |user: &str, access: Access| set_access(user, access, true);
    h.ok(grant("bob", Access::Write));
    h.refused(grant("nobody", Access::Read), Code::NotFound);
    h.refused(grant("alice", Access::Read), Code::FailedPrecondition);
    let model = records::read_model(&h.store, UUID)
        .expect("reads")
        .expect("exists");
    assert_eq!(
        starling_storage::model::access::access_of(&model, "bob", false),
        Access::Write
    );
    // Revoking write leaves read; revoking nothing in particular, or from someone without
    // access, is refused.
    h.ok(revoke("bob", Access::Write));
    let model = records::read_model(&h.store, UUID)
        .expect("reads")
        .expect("exists");
    assert_eq!(
        starling_storage::model::access::access_of(&model, "bob", false),
        Access::Read
    );
    h.refused(revoke("bob", Access::Unspecified), Code::InvalidArgument);
    h.refused(revoke("carol", Access::Read), Code::NotFound);
    h.refused(revoke("alice", Access::Write), Code::FailedPrecondition);
    h.ok(grant("bob", Access::Unspecified));
    let users = records::read_model(&h.store, UUID)
        .expect("reads")
        .expect("exists")
        .users;
    assert!(users.iter().all(|u| u.name != "bob"), "{users:?}");
    assert!(
        users
            .iter()
            .any(|u| u.name == model.owner && u.access == Access::Admin as i32),
        "the owner stays the model's admin: {users:?}"
    );
}

#[test]
fn export_is_deterministic_and_import_refuses_collisions() {
    let (mut h, wp, db) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0", "1"]));
    h.ok(deploy("db", mysql(), &db, &["1"]));
    let first = h.description();
    assert_eq!(
        description_digest(&first),
        description_digest(&h.description())
    );
    let err = import_model(&h.store, &first).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
    let mut bad = first.clone();
    bad.format_version = 9;
    assert!(import_model(&MemStore::new(), &bad).is_err());
}

/// A random model built by applying random valid-looking commands; refusals are fine.
fn build_random(ops: &[(u8, u8, u8)]) -> Harness {
    let (mut h, wp, db) = populated();
    h.ok(deploy("web", wordpress(), &wp, &["0"]));
    h.ok(deploy("db", mysql(), &db, &[]));
    for (kind, a, b) in ops {
        let machine = (a % 4).to_string();
        let app = if b % 2 == 0 { "web" } else { "db" };
        let op = match kind % 8 {
            0 => add_machine(),
            1 => units(&[machine.as_str()], app),
            2 => remove_units(&[format!("{app}/{}", a % 5).as_str()]),
            3 => status(
                &format!("unit-{app}-{}", a % 5),
                if b % 3 == 0 { "agent" } else { "workload" },
                "active",
                &format!("m{b}"),
            ),
            4 => status(
                &format!("machine-{}", a % 4),
                "",
                "started",
                &format!("{b}"),
            ),
            5 => Op::Integrate(cmd::Integrate {
                model_uuid: UUID.into(),
                endpoint_a: if a % 2 == 0 {
                    "web:db"
                } else {
                    "web:backup-db"
                }
                .into(),
                endpoint_b: "db".into(),
            }),
            6 => Op::SetApplicationConfig(cmd::SetApplicationConfig {
                model_uuid: UUID.into(),
                application: "web".into(),
                values: [
                    ("port".to_owned(), a.to_string()),
                    ("title".to_owned(), b.to_string()),
                ]
                .into(),
            }),
            _ => Op::RemoveMachine(cmd::RemoveMachine {
                model_uuid: UUID.into(),
                machine_id: machine,
                force: b % 2 == 0,
            }),
        };
        h.apply(op);
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The watch reads only what the desired state depends on; every machine's desired state
    /// from that read is the one computed from the whole export.
    #[test]
    fn the_desired_state_from_its_inputs_is_the_one_from_the_export(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..60)
    ) {
        use starling_storage::model::desired::{read_desired_inputs, ModelDesired};
        let h = build_random(&ops);
        let exported = h.description();
        let inputs = read_desired_inputs(&h.store, UUID).expect("reads").expect("exists");
        let (full, trimmed) = (
            ModelDesired::compute(Some(&exported), 5_000),
            ModelDesired::compute(Some(&inputs), 5_000),
        );
        prop_assert_eq!(&full.machines, &trimmed.machines);
        prop_assert_eq!(&full.units_by_machine, &trimmed.units_by_machine);
        for machine in ["0", "1", "2", "3", "4"] {
            prop_assert_eq!(full.update_for(machine, 7), trimmed.update_for(machine, 7));
            prop_assert_eq!(full.units_for(machine), trimmed.units_for(machine));
        }
        prop_assert!(read_desired_inputs(&h.store, "no-such-model").expect("reads").is_none());
    }

    #[test]
    fn export_import_export_is_the_identity(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..60)
    ) {
        let h = build_random(&ops);
        let exported = h.description();
        let target = MemStore::new();
        let writes = import_model(&target, &exported).expect("imports into an empty state");
        target.state_commit(writes).expect("commits");
        let again = export_model(&target, UUID).expect("reads").expect("imported");
        prop_assert_eq!(
            starling_storage::export::description_bytes(&again),
            starling_storage::export::description_bytes(&exported)
        );
        prop_assert_eq!(description_digest(&again), description_digest(&exported));
        // The records themselves are byte-identical too.
        let source_rows = h.store.scan_prefix(&keys::model_prefix(UUID), usize::MAX).expect("scans");
        let target_rows = target.scan_prefix(&keys::model_prefix(UUID), usize::MAX).expect("scans");
        prop_assert_eq!(source_rows, target_rows);
    }
}
