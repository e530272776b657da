//! A model with 10,000 units built through `ApplyBatch` on the sled `Store` in commands of 500
//! units, then exported: checks the figures and prints them (size, records, time).

use std::time::Instant;

use sha2::{Digest, Sha256};
use starling_proto::command::{self as cmd, command::Op, Command};
use starling_storage::model::charm::parse_metadata;
use starling_storage::{
    description_digest, export::description_bytes, export_model, import_model, ApplyBatch,
    ApplyLimits, MemStore, StateBackend, Store,
};

const UUID: &str = "0b5f6d2e-1c3a-4e4f-9a7b-2d3c4e5f6a7b";
const UNITS: usize = 10_000;
const UNITS_PER_COMMAND: usize = 500;
const MACHINES: usize = 100;

fn apply(store: &Store, index: &mut u64, op: Op) -> cmd::Ok {
    *index += 1;
    let command = Command {
        request_id: format!("req-{index}"),
        op: Some(op),
        proposed_unix_ms: 1_700_000_000_000 + *index as i64,
        caller: "admin".into(),
        authority: None,
    };
    let mut batch = ApplyBatch::new(store, ApplyLimits::default());
    let result = batch.apply_command(*index, &command).expect("applies");
    store.state_commit(batch.into_writes()).expect("commits");
    match result.result {
        Some(cmd::command_result::Result::Ok(ok)) => ok,
        other => panic!("refused: {other:?}"),
    }
}

#[test]
fn ten_thousand_units_in_batches_of_500_export_and_import() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), "controller-uuid").expect("opens");
    let mut index = 0;
    let started = Instant::now();
    apply(
        &store,
        &mut index,
        Op::AddModel(cmd::AddModel {
            uuid: UUID.into(),
            name: "big".into(),
            ..Default::default()
        }),
    );
    for _ in 0..MACHINES {
        apply(
            &store,
            &mut index,
            Op::AddMachine(cmd::AddMachine {
                model_uuid: UUID.into(),
                credential_sha256: String::new(),
            }),
        );
    }
    let archive = b"a charm archive".to_vec();
    let digest = hex::encode(Sha256::digest(&archive));
    apply(
        &store,
        &mut index,
        Op::PutBlobChunk(cmd::PutBlobChunk {
            digest: digest.clone(),
            offset: 0,
            data: archive.clone(),
        }),
    );
    apply(
        &store,
        &mut index,
        Op::CommitBlob(cmd::CommitBlob {
            digest: digest.clone(),
            size: archive.len() as u64,
        }),
    );
    let charm = parse_metadata("name: worker\ncommand: sleep infinity\n").expect("valid");
    apply(
        &store,
        &mut index,
        Op::Deploy(cmd::Deploy {
            model_uuid: UUID.into(),
            application: "worker".into(),
            charm: Some(charm),
            charm_digest: digest,
            config: Default::default(),
            machines: Vec::new(),
            spread_units: 0,
        }),
    );
    let mut created = 0;
    while created < UNITS {
        let machines = (created..created + UNITS_PER_COMMAND)
            .map(|i| (i % MACHINES).to_string())
            .collect();
        let ok = apply(
            &store,
            &mut index,
            Op::AddUnits(cmd::AddUnits {
                model_uuid: UUID.into(),
                application: "worker".into(),
                machines,
                spread_units: 0,
            }),
        );
        assert_eq!(ok.units.len(), UNITS_PER_COMMAND);
        created += UNITS_PER_COMMAND;
    }
    let built = started.elapsed();

    let started = Instant::now();
    let description = export_model(&store, UUID).expect("reads").expect("exists");
    let bytes = description_bytes(&description);
    let exported = started.elapsed();
    assert_eq!(description.units.len(), UNITS);
    assert_eq!(description.units.iter().filter(|u| u.leader).count(), 1);
    assert_eq!(description.machines.len(), MACHINES);
    // Measured in pages of 1,024 keys: every unit and machine counted once.
    let footprint = starling_storage::records::model_footprint(&store, UUID).expect("reads");
    assert_eq!(footprint.units, UNITS as u64);
    assert_eq!(footprint.machines, MACHINES as u64);
    let records = 1
        + description.machines.len()
        + description.applications.len()
        + description.units.len()
        + description.relations.len()
        + description.status_history.len();

    let started = Instant::now();
    let target = MemStore::new();
    let writes = import_model(&target, &description).expect("imports");
    target.state_commit(writes).expect("commits");
    let imported = started.elapsed();
    let again = export_model(&target, UUID).expect("reads").expect("exists");
    assert_eq!(description_digest(&again), description_digest(&description));

    println!(
        "10k units: built in {built:?} ({} commands), exported in {exported:?}, imported in {imported:?}; \
         description {} bytes, {records} records",
        index,
        bytes.len()
    );
}
