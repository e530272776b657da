//! The migration commands applied through `ApplyBatch` on two `MemStore`s, a source and a
//! target, as the master and the target service drive them: the change feed recorded while the
//! model stays writable, a copy read page by page while writes land between the pages, the
//! import, the changes streamed in batches, the lock (refused until every agent validated),
//! the seal, equal digests at the lock index without reading the model, SUCCESS, Activate at
//! epoch + 1, the redirect, REAP and the log; an abort that leaves the source's model as its
//! writes made it with the feed gone; requests the source applied answered from the target's
//! cache; the target's refusals (gaps, an unsealed Activate, another attempt's import).

use prost::Message;
use starling_proto::command::{self as cmd, command::Op, command_error::Code};
use starling_proto::migration as mpb;
use starling_proto::model::{BackupRecord, CharmMeta, LogRecord};
use starling_storage::feed::{entries_after, has_entries, position, read_feed};
use starling_storage::migration::{latest_migration, read_import, read_lock, read_redirect};
use starling_storage::model::charm::parse_metadata;
use starling_storage::model::digest::ModelDigest;
use starling_storage::precopy::{read_copy_page, CopyBuilder, ModelCopy};
use starling_storage::staging::StagingEvent;
use starling_storage::{
    export::description_bytes, export::model_digest, keys, StateBackend, StateRead, StorageError,
};

mod support;

use support::{digest_of, Harness, UUID};

fn upload(h: &mut Harness, bytes: &[u8]) -> String {
    h.upload(bytes, 4096)
}

fn counter() -> CharmMeta {
    parse_metadata("name: counter\ncommand: run\nprovides:\n  out: {interface: lines}\n")
        .expect("valid charm")
}

const CHARM: &[u8] = b"pretend this is a charm archive";

/// A source with one model: two machines, an application with two units, a log record.
fn source() -> Harness {
    let mut h = Harness::new();
    h.ok(Op::AddModel(cmd::AddModel {
        uuid: UUID.into(),
        name: "web".into(),
        cloud: "local".into(),
        region: "default".into(),
        ..Default::default()
    }));
    for _ in 0..2 {
        h.ok(add_machine());
    }
    let digest = upload(&mut h, CHARM);
    h.ok(Op::Deploy(cmd::Deploy {
        model_uuid: UUID.into(),
        application: "counter".into(),
        charm: Some(counter()),
        charm_digest: digest,
        config: Default::default(),
        machines: vec!["0".into(), "1".into()],
        spread_units: 0,
    }));
    h.ok(Op::AppendLog(cmd::AppendLog {
        model_uuid: UUID.into(),
        records: vec![LogRecord {
            entity: "unit-counter-0".into(),
            message: "started".into(),
            ..Default::default()
        }],
    }));
    h
}

/// How many records of the model `h` holds (its copy, on a target).
fn model_records(h: &Harness) -> usize {
    h.store
        .scan_prefix(&keys::model_prefix(UUID), usize::MAX)
        .unwrap()
        .len()
}

fn add_machine() -> Op {
    Op::AddMachine(cmd::AddMachine {
        model_uuid: UUID.into(),
        credential_sha256: "ab".repeat(32),
    })
}

fn set_config(key: &str, value: &str) -> Op {
    Op::SetModelConfig(cmd::SetModelConfig {
        model_uuid: UUID.into(),
        values: [(key.to_owned(), value.to_owned())].into(),
    })
}

fn target_controller() -> mpb::TargetController {
    mpb::TargetController {
        controller_uuid: "5d1b8f0e-0000-4000-8000-000000000001".into(),
        name: "beta".into(),
        endpoints: vec!["127.0.0.1:17070".into()],
        ca_cert: "-----BEGIN CERTIFICATE-----".into(),
        ca_fingerprint: "cd".repeat(32),
        token: "secret".into(),
    }
}

fn start(h: &mut Harness) -> String {
    h.ok(Op::StartMigration(cmd::StartMigration {
        model_uuid: UUID.into(),
        source_secret: "s3cret".into(),
        target: Some(target_controller()),
    }))
    .migration_id
}

fn to(h: &mut Harness, id: &str, phase: &str) {
    h.ok(transition(id, phase));
}

fn transition(id: &str, phase: &str) -> Op {
    Op::MigrationTransition(cmd::MigrationTransition {
        migration_id: id.into(),
        to: phase.into(),
        reason: format!("test moves to {phase}"),
        target_digest: String::new(),
    })
}

fn fact(id: &str, fact: cmd::migration_progress::Fact) -> Op {
    Op::MigrationProgress(cmd::MigrationProgress {
        migration_id: id.into(),
        fact: Some(fact),
    })
}

fn validated(id: &str, machine: &str) -> Op {
    fact(
        id,
        cmd::migration_progress::Fact::AgentValidated(cmd::AgentValidation {
            machine_id: machine.into(),
            ok: true,
            reason: String::new(),
        }),
    )
}

/// Reads a copy of the model on `h` in pages of `page_keys`, applying `between(h, page)` after
/// each page, as the master reads while the model stays writable.
fn copy_while_writing(
    h: &mut Harness,
    feed_from: u64,
    page_keys: usize,
    mut between: impl FnMut(&mut Harness, usize),
) -> ModelCopy {
    let mut builder = CopyBuilder::new(UUID, feed_from);
    let mut start = Some(keys::model_prefix(UUID));
    let mut page = 0;
    while let Some(page_start) = start {
        let (pairs, next) = read_copy_page(&h.store, UUID, &page_start, page_keys).unwrap();
        builder.add_page(&page_start, h.index, pairs).unwrap();
        between(h, page);
        page += 1;
        start = next;
    }
    builder.finish(&h.store).unwrap()
}

/// PRECHECK → PRECOPY, a copy read while `between` writes, its digests recorded.
fn precopy(source: &mut Harness, id: &str, between: impl FnMut(&mut Harness, usize)) -> ModelCopy {
    to(source, id, "PRECOPY");
    let feed_from = latest_migration(&source.store, UUID)
        .unwrap()
        .unwrap()
        .feed_from_index;
    let copy = copy_while_writing(source, feed_from, 3, between);
    source.ok(fact(
        id,
        cmd::migration_progress::Fact::Copy(cmd::CopyDigests {
            copy_digest: copy.copy_digest.to_hex(),
            base_digest: copy.base_digest.to_hex(),
        }),
    ));
    copy
}

/// Stages `copy` (and the charm) on `target` and imports it for `id`.
fn import(target: &mut Harness, copy: &ModelCopy, id: &str, feed_from: u64) {
    let description = target.stage(id, &description_bytes(&copy.description));
    let charm = target.stage(id, CHARM);
    target.ok(import_copy_op(
        id,
        vec![description, charm],
        feed_from,
        &copy.copy_digest.to_hex(),
    ));
}

/// The import of a copy of `id` from `files` (the description first) staged on the target, its
/// feed starting at `feed_from`, its model digest `copy_digest`.
fn import_copy_op(id: &str, files: Vec<mpb::StagedFile>, feed_from: u64, copy_digest: &str) -> Op {
    let mut op = import_op(id, files);
    if let Op::ImportModel(import) = &mut op {
        import.feed_from_index = feed_from;
        import.copy_digest = copy_digest.into();
    }
    op
}

/// The import of `id` from `files` (the description first) staged on the target.
fn import_op(id: &str, files: Vec<mpb::StagedFile>) -> Op {
    Op::ImportModel(cmd::ImportModel {
        migration_id: id.into(),
        description_digest: files[0].digest.clone(),
        source: Some(mpb::SourceController {
            name: "alpha".into(),
            ..Default::default()
        }),
        staged: files,
        ..Default::default()
    })
}

fn feed_from(h: &Harness) -> u64 {
    latest_migration(&h.store, UUID)
        .unwrap()
        .unwrap()
        .feed_from_index
}

/// The target's feed position and seal.
fn target_position(target: &Harness) -> (mpb::FeedPosition, u64) {
    let import = read_import(&target.store, UUID).unwrap().unwrap();
    (import.position.unwrap(), import.sealed_index)
}

/// Sends `target` the source's feed entries after its position, `batch` at a time, sealing at
/// `seal` with the last batch when given; the number of entries sent.
fn stream(
    source: &Harness,
    target: &mut Harness,
    id: &str,
    batch: usize,
    seal: Option<u64>,
) -> usize {
    let mut sent = 0;
    loop {
        let (after, _) = target_position(target);
        let entries = entries_after(&source.store, UUID, &after, seal, batch + 1).unwrap();
        let more = entries.len() > batch;
        let entries: Vec<_> = entries.into_iter().take(batch).collect();
        sent += entries.len();
        if entries.is_empty() && seal.is_none() {
            return sent;
        }
        target.ok(Op::ApplyModelChanges(cmd::ApplyModelChanges {
            migration_id: id.into(),
            after: Some(after),
            changes: entries,
            seal_index: if more { 0 } else { seal.unwrap_or(0) },
        }));
        if !more {
            return sent;
        }
    }
}

fn digest_of_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> ModelDigest {
    ModelDigest::of_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

/// A migration through PRECOPY and CATCHUP with writes at every step, on `source` to a fresh
/// target: the target holds exactly the source's model at the lock, and the digests agree.
#[test]
fn a_copy_read_while_writes_land_plus_the_feed_is_the_model_at_the_lock() {
    let mut source = source();
    let id = start(&mut source);
    // Writes between the start and the copy, and between every page of the copy: some keys the
    // copy has read already, some it has not, a deletion, a new machine.
    source.ok(set_config("before-copy", "1"));
    let mut n = 0;
    let copy = precopy(&mut source, &id, |h, page| {
        n += 1;
        h.ok(set_config(&format!("page-{page}"), &n.to_string()));
        if page == 1 {
            h.ok(add_machine());
            h.ok(Op::RemoveUnits(cmd::RemoveUnits {
                model_uuid: UUID.into(),
                units: vec!["counter/1".into()],
            }));
        }
    });
    let from = feed_from(&source);
    assert!(
        copy.copy_digest != model_digest(&source.store, UUID).unwrap(),
        "the model changed while it was copied"
    );
    let mut target = Harness::new();
    import(&mut target, &copy, &id, from);
    let held = read_import(&target.store, UUID).unwrap().unwrap();
    assert_eq!(held.copy_digest, copy.copy_digest.to_hex());
    assert_eq!(held.digest, held.copy_digest);
    assert_eq!(held.position, Some(position(from, 0)));
    to(&mut source, &id, "CATCHUP");
    // The changes so far, in small batches, and an acknowledgement that trims them.
    assert!(stream(&source, &mut target, &id, 2, None) > 3);
    let (acked, _) = target_position(&target);
    source.ok(fact(&id, cmd::migration_progress::Fact::FeedAcked(acked)));
    assert!(
        entries_after(&source.store, UUID, &position(0, 0), None, 10)
            .unwrap()
            .is_empty()
    );
    // More writes while catching up; then a lock refused until every machine validated.
    source.ok(set_config("catchup", "1"));
    source.ok(add_machine());
    for machine in ["0", "1", "2"] {
        source.ok(validated(&id, machine));
    }
    let refused = source.refused(transition(&id, "QUIESCE"), Code::FailedPrecondition);
    assert!(
        refused.contains("machine(s) 3") && refused.contains("validated"),
        "{refused}"
    );
    source.ok(validated(&id, "3"));
    to(&mut source, &id, "QUIESCE");
    let record = latest_migration(&source.store, UUID).unwrap().unwrap();
    let lock_index = record.lock_index;
    assert!(lock_index > 0);
    // The digest recorded with the lock is the model's, computed without reading it.
    assert_eq!(
        record.source_digest.as_deref(),
        Some(model_digest(&source.store, UUID).unwrap().to_hex().as_str())
    );
    // Activate before the seal is refused: the target lacks the last changes.
    let early = target.refused(
        Op::ActivateModel(cmd::ActivateModel {
            migration_id: id.clone(),
        }),
        Code::FailedPrecondition,
    );
    assert!(early.contains("not sealed"), "{early}");
    // The fence: the last changes and the seal in one call.
    assert!(stream(&source, &mut target, &id, 100, Some(lock_index)) >= 2);
    let (_, sealed) = target_position(&target);
    assert_eq!(sealed, lock_index);
    let import = read_import(&target.store, UUID).unwrap().unwrap();
    assert_eq!(Some(import.digest.clone()), record.source_digest);
    assert_eq!(target.model_pairs(), source.model_pairs());
    assert_eq!(
        digest_of_pairs(&target.model_pairs()).to_hex(),
        import.digest
    );
    // A repeated seal is acknowledged and changes nothing; a batch after the seal is refused.
    let before = target.store.export_state().unwrap().entries;
    assert_eq!(stream(&source, &mut target, &id, 100, Some(lock_index)), 0);
    assert_eq!(target.store.export_state().unwrap().entries, before);
    // SUCCESS needs the target's digest, recorded in the same write.
    source.refused(transition(&id, "SUCCESS"), Code::FailedPrecondition);
    source.ok(Op::MigrationTransition(cmd::MigrationTransition {
        migration_id: id.clone(),
        to: "SUCCESS".into(),
        reason: "digests match".into(),
        target_digest: import.digest.clone(),
    }));
    assert!(read_redirect(&source.store, UUID).unwrap().is_some());
    let epoch = source.description().model.unwrap().ownership_epoch;
    let activated = target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    assert_eq!(activated.ownership_epoch, epoch + 1);
    // Past SUCCESS the feed stops; its entries are trimmed in bounded steps.
    to(&mut source, &id, "LOGTRANSFER");
    assert!(read_feed(&source.store, UUID).unwrap().is_none());
    while source
        .ok(Op::TrimFeed(cmd::TrimFeed {
            migration_id: id.clone(),
        }))
        .more
    {}
    assert!(!has_entries(&source.store, UUID).unwrap());
}

#[test]
fn an_abort_keeps_every_write_of_the_precopy_and_removes_the_feed() {
    for abort_from in ["PRECOPY", "CATCHUP", "QUIESCE"] {
        let mut source = source();
        let untouched = source.model_pairs();
        let id = start(&mut source);
        let copy = precopy(&mut source, &id, |_, _| {});
        // The migration itself changes none of the model's keys.
        assert_eq!(source.model_pairs(), untouched, "{abort_from}");
        source.ok(set_config("during-precopy", "kept"));
        let mut target = Harness::new();
        import(&mut target, &copy, &id, feed_from(&source));
        if abort_from != "PRECOPY" {
            to(&mut source, &id, "CATCHUP");
            source.ok(set_config("during-catchup", "kept"));
        }
        if abort_from == "QUIESCE" {
            for machine in ["0", "1"] {
                source.ok(validated(&id, machine));
            }
            to(&mut source, &id, "QUIESCE");
            assert!(read_lock(&source.store, UUID).unwrap().is_some());
        }
        let written = source.model_pairs();
        to(&mut source, &id, "ABORT");
        assert!(read_feed(&source.store, UUID).unwrap().is_none());
        // Writes after the abort are not recorded any more.
        if abort_from != "QUIESCE" {
            source.ok(set_config("after-abort", "1"));
        }
        while source
            .ok(Op::TrimFeed(cmd::TrimFeed {
                migration_id: id.clone(),
            }))
            .more
        {}
        to(&mut source, &id, "ABORTDONE");
        assert!(!has_entries(&source.store, UUID).unwrap(), "{abort_from}");
        assert_eq!(read_lock(&source.store, UUID).unwrap(), None);
        let config = source.description().model.unwrap().config;
        assert_eq!(
            config.get("during-precopy").map(String::as_str),
            Some("kept")
        );
        if abort_from == "QUIESCE" {
            assert_eq!(
                source.model_pairs(),
                written,
                "the lock kept the model as it was"
            );
        }
        source.ok(add_machine());
        assert_eq!(start(&mut source), format!("{UUID}:2"));
    }
}

#[test]
fn a_write_refused_by_the_lock_is_not_kept_as_its_result() {
    let mut source = source();
    let id = start(&mut source);
    let copy = precopy(&mut source, &id, |_, _| {});
    let mut target = Harness::new();
    import(&mut target, &copy, &id, feed_from(&source));
    to(&mut source, &id, "CATCHUP");
    for machine in ["0", "1"] {
        source.ok(validated(&id, machine));
    }
    // Destroying a migrating model is refused.
    let destroy = source.refused(
        Op::DestroyModel(cmd::DestroyModel {
            model_uuid: UUID.into(),
            force: true,
        }),
        Code::FailedPrecondition,
    );
    assert!(destroy.contains("already migrating"), "{destroy}");
    to(&mut source, &id, "QUIESCE");
    match source.apply_with_id(set_config("held", "1"), "held-write") {
        cmd::command_result::Result::Error(e) => {
            assert!(e.transient, "{e:?}");
            assert_eq!(e.locked_by, id);
            assert!(e.message.contains("locked by migration"), "{}", e.message);
        }
        other => panic!("the lock let a write through: {other:?}"),
    }
    to(&mut source, &id, "ABORT");
    to(&mut source, &id, "ABORTDONE");
    // The same request applies now (after an abort, the held write is applied here).
    match source.apply_with_id(set_config("held", "1"), "held-write") {
        cmd::command_result::Result::Ok(_) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        source
            .description()
            .model
            .unwrap()
            .config
            .get("held")
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn a_request_the_source_applied_is_answered_by_the_target_from_its_cache() {
    let mut source = source();
    let id = start(&mut source);
    let copy = precopy(&mut source, &id, |_, _| {});
    let mut target = Harness::new();
    import(&mut target, &copy, &id, feed_from(&source));
    to(&mut source, &id, "CATCHUP");
    let applied = source.apply_with_id(add_machine(), "add-machine-once");
    let cmd::command_result::Result::Ok(first) = applied else {
        panic!("{applied:?}")
    };
    stream(&source, &mut target, &id, 100, None);
    for machine in ["0", "1", "2"] {
        source.ok(validated(&id, machine));
    }
    to(&mut source, &id, "QUIESCE");
    let lock_index = latest_migration(&source.store, UUID)
        .unwrap()
        .unwrap()
        .lock_index;
    stream(&source, &mut target, &id, 100, Some(lock_index));
    commit_success(&mut source, &target, &id);
    target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    let machines = target.description().machines.len();
    // The client retries its write on the target under the same request id: the first
    // result, nothing applied twice.
    match target.apply_with_id(add_machine(), "add-machine-once") {
        cmd::command_result::Result::Ok(again) => assert_eq!(again, first),
        other => panic!("{other:?}"),
    }
    assert_eq!(target.description().machines.len(), machines);
}

#[test]
fn the_target_refuses_gaps_foreign_keys_and_other_attempts() {
    let mut source = source();
    let id = start(&mut source);
    let copy = precopy(&mut source, &id, |_, _| {});
    let from = feed_from(&source);
    let mut target = Harness::new();
    import(&mut target, &copy, &id, from);
    // The import is invisible and read-only.
    let hidden = target.refused(add_machine(), Code::NotFound);
    assert!(hidden.contains("being imported"), "{hidden}");
    source.ok(set_config("a", "1"));
    source.ok(set_config("b", "2"));
    let entries = entries_after(&source.store, UUID, &position(from, 0), None, 10).unwrap();
    assert_eq!(entries.len(), 2);
    // A batch starting after an entry the target does not hold leaves a gap.
    let gap = target.refused(
        Op::ApplyModelChanges(cmd::ApplyModelChanges {
            migration_id: id.clone(),
            after: entries[0].at,
            changes: entries[1..].to_vec(),
            seal_index: 0,
        }),
        Code::FailedPrecondition,
    );
    assert!(gap.contains("gap"), "{gap}");
    // Out of order.
    let mut reversed = entries.clone();
    reversed.reverse();
    target.refused(
        Op::ApplyModelChanges(cmd::ApplyModelChanges {
            migration_id: id.clone(),
            after: Some(position(from, 0)),
            changes: reversed,
            seal_index: 0,
        }),
        Code::InvalidArgument,
    );
    // A key outside the model.
    let mut foreign = entries.clone();
    foreign[0].changes[0].key = b"user/mallory".to_vec();
    target.refused(
        Op::ApplyModelChanges(cmd::ApplyModelChanges {
            migration_id: id.clone(),
            after: Some(position(from, 0)),
            changes: foreign,
            seal_index: 0,
        }),
        Code::InvalidArgument,
    );
    // Another attempt's changes.
    target.refused(
        Op::ApplyModelChanges(cmd::ApplyModelChanges {
            migration_id: format!("{UUID}:9"),
            after: Some(position(from, 0)),
            changes: entries.clone(),
            seal_index: 0,
        }),
        Code::NotFound,
    );
    // The batch applied twice changes nothing the second time.
    let apply = Op::ApplyModelChanges(cmd::ApplyModelChanges {
        migration_id: id.clone(),
        after: Some(position(from, 0)),
        changes: entries,
        seal_index: 0,
    });
    target.ok(apply.clone());
    let once = target.store.export_state().unwrap().entries;
    target.ok(apply);
    let twice = target.store.export_state().unwrap().entries;
    assert_eq!(once.len(), twice.len());
    assert_eq!(
        read_import(&target.store, UUID).unwrap().unwrap().digest,
        digest_of_pairs(&target.model_pairs()).to_hex()
    );
    // A copy whose digest is not the one the source read is refused.
    let mut other = Harness::new();
    let described = other.stage(&id, &description_bytes(&copy.description));
    let charm = other.stage(&id, CHARM);
    let wrong = other.refused(
        import_copy_op(
            &id,
            vec![described, charm],
            from,
            &ModelDigest::EMPTY.to_hex(),
        ),
        Code::InvalidArgument,
    );
    assert!(wrong.contains("model digest"), "{wrong}");
}

/// A migration of `source` imported on a fresh target, through CATCHUP to the fence, with the
/// last changes sent and the import sealed at the lock: the target is ready for SUCCESS.
fn migrate_to_seal(source: &mut Harness) -> (String, Harness) {
    let id = start(source);
    let copy = precopy(source, &id, |_, _| {});
    let mut target = Harness::new();
    import(&mut target, &copy, &id, feed_from(source));
    to(source, &id, "CATCHUP");
    for machine in ["0", "1"] {
        source.ok(validated(&id, machine));
    }
    to(source, &id, "QUIESCE");
    let lock_index = latest_migration(&source.store, UUID)
        .unwrap()
        .unwrap()
        .lock_index;
    stream(source, &mut target, &id, 100, Some(lock_index));
    (id, target)
}

/// SUCCESS with the sealed import's digest.
fn commit_success(source: &mut Harness, target: &Harness, id: &str) {
    let digest = read_import(&target.store, UUID).unwrap().unwrap().digest;
    source.ok(Op::MigrationTransition(cmd::MigrationTransition {
        migration_id: id.into(),
        to: "SUCCESS".into(),
        reason: "digests match".into(),
        target_digest: digest,
    }));
}

fn model_keys(h: &Harness) -> usize {
    h.model_pairs().len()
}

/// Issue 12 item 4: the target applied Activate, the source never recorded the answer, and the
/// model left the target (destroyed there). The repeated Activate used to be refused
/// `NoSuchImport` for ever (the source stuck in SUCCESS); the target remembers which migration
/// activated the model and acknowledges the repeat. Another migration's Activate, a DropImport
/// of the activating migration and a late Import of an older attempt stay refused.
#[test]
fn activate_is_acknowledged_after_the_model_left_the_target() {
    let mut source = source();
    let (id, mut target) = migrate_to_seal(&mut source);
    commit_success(&mut source, &target, &id);
    let activate = |id: &str| {
        Op::ActivateModel(cmd::ActivateModel {
            migration_id: id.into(),
        })
    };
    target.ok(activate(&id));
    target.ok(Op::DestroyModel(cmd::DestroyModel {
        model_uuid: UUID.into(),
        force: true,
    }));
    assert_eq!(model_keys(&target), 0);
    let before = target.store.export_state().unwrap().entries;
    target.ok(activate(&id));
    assert_eq!(
        target.store.export_state().unwrap().entries,
        before,
        "a repeated Activate after the model left changes nothing"
    );
    let other = target.refused(activate(&format!("{UUID}:7")), Code::NotFound);
    assert!(other.contains(&id), "{other}");
    target.refused(
        Op::DropImport(cmd::DropImport {
            migration_id: id.clone(),
            reason: "late".into(),
            max_records: 0,
        }),
        Code::FailedPrecondition,
    );
    // An Import of the attempt that activated it (or an older one) is a late replay: refused.
    let description = target.stage(&id, &description_bytes(&source.description()));
    target.refused(import_op(&id, vec![description]), Code::NotFound);
}

#[test]
fn success_makes_a_redirect_that_survives_reap_and_the_log_follows() {
    let mut source = source();
    let (id, mut target) = migrate_to_seal(&mut source);
    commit_success(&mut source, &target, &id);
    let redirect = read_redirect(&source.store, UUID)
        .unwrap()
        .expect("redirect");
    assert_eq!(redirect.controller_name, "beta");
    assert!(
        redirect.redirected_unix_ms > 0,
        "a redirect records when it was made"
    );
    let refusal = source.refused(add_machine(), Code::FailedPrecondition);
    assert_eq!(
        refusal,
        "model \"web\" has been migrated to controller \"beta\". To access it run 'ctl switch beta:web'."
    );
    // The refusal carries the redirect (a forwarding node answers with it before it applied
    // SUCCESS itself), without the agents' credential hashes.
    let cmd::command_result::Result::Error(refused) = source.apply(add_machine()) else {
        panic!("a write to a migrated model applied");
    };
    assert!(refused.migrated);
    let carried = refused.redirect.expect("the refusal names the redirect");
    assert!(!redirect.machine_credentials.is_empty() && carried.machine_credentials.is_empty());
    assert_eq!(
        carried,
        mpb::Redirect {
            machine_credentials: Default::default(),
            ..redirect.clone()
        }
    );
    // Never aborted after SUCCESS.
    let late = source.refused(transition(&id, "ABORT"), Code::FailedPrecondition);
    assert!(late.contains("cannot be aborted"), "{late}");
    source.refused(
        Op::RequestMigrationAbort(cmd::RequestMigrationAbort {
            migration_id: id.clone(),
            reason: "too late".into(),
        }),
        Code::FailedPrecondition,
    );
    target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    to(&mut source, &id, "LOGTRANSFER");
    // The log travels with its sequence numbers.
    let log = starling_storage::records::read_log(&source.store, UUID, 0, 100).unwrap();
    assert!(!log.is_empty());
    // Until the source says the transfer ended, the model may not move on from the target.
    assert_eq!(
        starling_storage::migration::read_log_transfer(&target.store, UUID)
            .unwrap()
            .map(|t| t.migration_id),
        Some(id.clone())
    );
    let moved = target.ok(Op::ImportLog(cmd::ImportLog {
        migration_id: id.clone(),
        records: log.clone(),
        complete: true,
    }));
    assert_eq!(
        starling_storage::migration::read_log_transfer(&target.store, UUID).unwrap(),
        None
    );
    assert_eq!(moved.log_position, log.last().unwrap().seq);
    assert_eq!(
        starling_storage::records::read_log(&target.store, UUID, 0, 100).unwrap(),
        log
    );
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::LogPosition(moved.log_position),
    ));
    // REAP only in REAP.
    source.refused(
        Op::ReapModel(cmd::ReapModel {
            migration_id: id.clone(),
            max_records: 2,
        }),
        Code::FailedPrecondition,
    );
    to(&mut source, &id, "REAP");
    // REAP deletes a bounded chunk per command; the redirect stands throughout and the lock
    // goes with the last chunk.
    let records = model_records(&source);
    assert!(records > 2, "a model of {records} records shows no chunks");
    let mut chunks = 0;
    loop {
        let reaped = source.ok(Op::ReapModel(cmd::ReapModel {
            migration_id: id.clone(),
            max_records: 2,
        }));
        chunks += 1;
        assert!(read_redirect(&source.store, UUID).unwrap().is_some());
        assert!(source
            .store
            .get(&keys::model_name_key("alice", "web"))
            .unwrap()
            .is_none());
        let lock = source.store.get(&keys::migration_lock_key(UUID)).unwrap();
        if !reaped.more {
            assert!(lock.is_none(), "the last chunk left the lock");
            break;
        }
        assert!(lock.is_some(), "the lock went before the last chunk");
        assert_eq!(model_records(&source), records - 2 * chunks);
    }
    assert_eq!(chunks, records.div_ceil(2));
    to(&mut source, &id, "DONE");
    assert!(source.model_pairs().is_empty());
    // Migrating back: the model (now on the target) starts at the next attempt, and the old
    // source replaces its redirect when it activates the import.
    let back = target
        .ok(Op::StartMigration(cmd::StartMigration {
            model_uuid: UUID.into(),
            source_secret: "s3cret".into(),
            target: Some(mpb::TargetController {
                name: "alpha".into(),
                ..target_controller()
            }),
        }))
        .migration_id;
    assert_eq!(back, format!("{UUID}:2"));
    let copy = precopy(&mut target, &back, |_, _| {});
    import(&mut source, &copy, &back, feed_from(&target));
    to(&mut target, &back, "CATCHUP");
    for machine in ["0", "1"] {
        target.ok(validated(&back, machine));
    }
    to(&mut target, &back, "QUIESCE");
    let lock_index = latest_migration(&target.store, UUID)
        .unwrap()
        .unwrap()
        .lock_index;
    stream(&target, &mut source, &back, 100, Some(lock_index));
    source.ok(Op::ActivateModel(cmd::ActivateModel { migration_id: back }));
    assert!(read_redirect(&source.store, UUID).unwrap().is_none());
    source.ok(add_machine());
}

const VERSION: &str = "0.1.0";

fn import_log(id: &str, records: Vec<LogRecord>, complete: bool) -> Op {
    Op::ImportLog(cmd::ImportLog {
        migration_id: id.into(),
        records,
        complete,
    })
}

/// A migration committed on the source and activated on its target: (source, id, target).
fn activated() -> (Harness, String, Harness) {
    let mut source = source();
    let (id, mut target) = migrate_to_seal(&mut source);
    commit_success(&mut source, &target, &id);
    target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    (source, id, target)
}

fn end_log_transfer(id: &str) -> Op {
    Op::EndLogTransfer(cmd::EndLogTransfer {
        migration_id: id.into(),
        reason: "the source is past LOGTRANSFER".into(),
    })
}

/// Issue 12: the source gave up LOGTRANSFER and its end never arrived. Activate keeps the
/// source's contact with the open transfer (the import record holding it goes), each batch
/// renews its time, and `EndLogTransfer` (the sweeper's command) ends it only for its own
/// migration, idempotently; after it, a late batch (with or without `complete`) is refused and
/// stores nothing, and the restore the open transfer refused applies.
#[test]
fn an_ended_log_transfer_refuses_late_batches() {
    let (source, id, mut target) = activated();
    assert!(read_import(&target.store, UUID).unwrap().is_none());
    let open = starling_storage::migration::read_log_transfer(&target.store, UUID)
        .unwrap()
        .expect("an open transfer");
    assert_eq!(open.migration_id, id);
    assert_eq!(open.source.as_ref().map(|s| s.name.as_str()), Some("alpha"));
    assert!(open.activated_unix_ms > 0 && open.last_batch_unix_ms == 0);
    let during = backup(&mut target, "during");
    let refusal = target.refused(restore(&during), Code::FailedPrecondition);
    assert!(refusal.contains("still arriving"), "{refusal}");

    let log = starling_storage::records::read_log(&source.store, UUID, 0, 100).unwrap();
    target.ok(import_log(&id, log[..1].to_vec(), false));
    let renewed = starling_storage::migration::read_log_transfer(&target.store, UUID)
        .unwrap()
        .expect("still open");
    assert!(renewed.last_batch_unix_ms > open.activated_unix_ms);
    assert_eq!(renewed.source, open.source);

    // Another attempt's end changes nothing; this one's ends the transfer, once.
    let other = target.ok(end_log_transfer(&format!("{UUID}:7")));
    assert!(!other.ended);
    assert!(
        starling_storage::migration::read_log_transfer(&target.store, UUID)
            .unwrap()
            .is_some()
    );
    assert!(target.ok(end_log_transfer(&id)).ended);
    assert!(
        starling_storage::migration::read_log_transfer(&target.store, UUID)
            .unwrap()
            .is_none()
    );
    let before = target.store.export_state().unwrap().entries;
    assert!(!target.ok(end_log_transfer(&id)).ended);
    assert_eq!(target.store.export_state().unwrap().entries, before);

    // The records still in flight do not land in a copy that may be migrating on.
    let late = LogRecord {
        seq: 99,
        entity: "unit-counter-0".into(),
        message: "late".into(),
        ..Default::default()
    };
    for complete in [false, true] {
        let refusal = target.refused(
            import_log(&id, vec![late.clone()], complete),
            Code::FailedPrecondition,
        );
        assert!(refusal.contains("has ended"), "{refusal}");
    }
    // The restore the open transfer refused applies, and does not open it again.
    target.ok(restore(&during));
    assert!(
        starling_storage::migration::read_log_transfer(&target.store, UUID)
            .unwrap()
            .is_none()
    );
}

/// A `logtransfer/` value written by an older version is the bare migration id: it still reads
/// (without a source to ask), and the source's last batch still ends it.
#[test]
fn a_log_transfer_recorded_by_an_older_version_still_ends() {
    let (_, id, mut target) = activated();
    let key = keys::log_transfer_key(UUID);
    target
        .store
        .state_commit([(key, Some(id.clone().into_bytes()))].into())
        .unwrap();
    let old = starling_storage::migration::read_log_transfer(&target.store, UUID)
        .unwrap()
        .expect("reads");
    assert_eq!(old.migration_id, id);
    assert!(old.source.is_none());
    assert_eq!(
        starling_storage::migration::read_log_transfers(&target.store).unwrap(),
        vec![(UUID.to_owned(), old)]
    );
    target.ok(import_log(&id, Vec::new(), true));
    assert!(
        starling_storage::migration::read_log_transfer(&target.store, UUID)
            .unwrap()
            .is_none()
    );
}

/// Backs `h` up as `id`; the sha256 of the archive, which stays a blob on `h`, ready to restore.
fn backup(h: &mut Harness, id: &str) -> String {
    h.ok(Op::CreateBackup(cmd::CreateBackup {
        id: id.into(),
        version: VERSION.into(),
        ..Default::default()
    }));
    let record = h
        .store
        .get(&keys::backup_key(id))
        .unwrap()
        .expect("backup record");
    BackupRecord::decode(record.as_slice())
        .unwrap()
        .archive_sha256
}

fn restore(archive_sha256: &str) -> Op {
    Op::RestoreBackup(cmd::RestoreBackup {
        archive_sha256: archive_sha256.into(),
        force: true,
        controller_version: VERSION.into(),
    })
}

/// Issue 12 item 3: backups and restores of either side of a migration. A restore is refused
/// while a migration is in flight; afterwards the source's backup from before the migration
/// does not bring the model back to life beside the target's copy (it stays a redirect), and
/// the target's backup taken mid-import never makes the import a live model, neither after the
/// import was activated nor after it was dropped.
#[test]
fn restores_never_make_a_second_owner_and_wait_for_migrations_to_end() {
    let mut source = source();
    let before = backup(&mut source, "before");
    let (id, mut target) = migrate_to_seal(&mut source);
    let mid_import = backup(&mut target, "mid-import");
    let refusal = source.refused(restore(&before), Code::FailedPrecondition);
    assert!(
        refusal.contains(&id) && refusal.contains("no migration is in flight"),
        "{refusal}"
    );
    let refusal = target.refused(restore(&mid_import), Code::FailedPrecondition);
    assert!(refusal.contains("being imported"), "{refusal}");

    // The migration ends DONE.
    commit_success(&mut source, &target, &id);
    let activated = target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    for phase in ["LOGTRANSFER", "REAP"] {
        to(&mut source, &id, phase);
    }
    // The source says the log transfer has ended (a target still receiving it refuses a
    // restore).
    target.ok(Op::ImportLog(cmd::ImportLog {
        migration_id: id.clone(),
        records: Vec::new(),
        complete: true,
    }));
    // All at once, as a ReapModel of an older version's log (no `max_records`) meant.
    source.ok(Op::ReapModel(cmd::ReapModel {
        migration_id: id.clone(),
        max_records: 0,
    }));
    to(&mut source, &id, "DONE");

    // The source's backup holds the model active: restored, it stays a redirect.
    source.ok(restore(&before));
    assert_eq!(
        model_keys(&source),
        0,
        "the restore revived the migrated model"
    );
    assert!(read_redirect(&source.store, UUID).unwrap().is_some());
    source.refused(add_machine(), Code::FailedPrecondition);
    // The target's backup holds the import: the model stays as activated since.
    target.ok(restore(&mid_import));
    assert_eq!(
        target.description().model.unwrap().ownership_epoch,
        activated.ownership_epoch
    );
    target.ok(add_machine());

    // An import dropped since the backup comes back as an import (invisible, read-only; the
    // leftover rule drops it once the source says "aborted"), never as an active model.
    let mut aborting = crate::source();
    let id = start(&mut aborting);
    let copy = precopy(&mut aborting, &id, |_, _| {});
    let mut target = Harness::new();
    import(&mut target, &copy, &id, feed_from(&aborting));
    let mid_import = backup(&mut target, "mid-import");
    to(&mut aborting, &id, "ABORT");
    target.ok(Op::DropImport(cmd::DropImport {
        migration_id: id.clone(),
        reason: "aborted".into(),
        max_records: 0,
    }));
    to(&mut aborting, &id, "ABORTDONE");
    target.ok(restore(&mid_import));
    assert_eq!(
        read_import(&target.store, UUID)
            .unwrap()
            .map(|i| i.migration_id),
        Some(id.clone())
    );
    target.refused(add_machine(), Code::NotFound);
}

#[test]
fn drop_import_removes_only_its_own_attempt_and_a_newer_attempt_replaces_a_leftover() {
    let mut source = source();
    let first = start(&mut source);
    let copy = precopy(&mut source, &first, |_, _| {});
    let mut target = Harness::new();
    import(&mut target, &copy, &first, feed_from(&source));
    // The source aborts without reaching the target; a second attempt replaces the leftover.
    to(&mut source, &first, "ABORT");
    to(&mut source, &first, "ABORTDONE");
    let second = start(&mut source);
    let copy = precopy(&mut source, &second, |_, _| {});
    import(&mut target, &copy, &second, feed_from(&source));
    assert_eq!(
        read_import(&target.store, UUID)
            .unwrap()
            .unwrap()
            .migration_id,
        second
    );
    // A late DropImport of the first attempt must not touch the second's import.
    let late = target.ok(Op::DropImport(cmd::DropImport {
        migration_id: first.clone(),
        reason: "late".into(),
        max_records: 2,
    }));
    assert!(!late.dropped);
    assert!(read_import(&target.store, UUID).unwrap().is_some());
    // An Import of the older attempt is refused now.
    let stale = target.stage(&first, &description_bytes(&source.description()));
    target.refused(import_op(&first, vec![stale]), Code::NotFound);
    // In bounded chunks: the import stands (invisible, read-only) until the last one.
    let records = model_records(&target);
    assert!(records > 2, "a copy of {records} records shows no chunks");
    let mut chunks = 0;
    loop {
        let dropped = target.ok(Op::DropImport(cmd::DropImport {
            migration_id: second.clone(),
            reason: "aborted".into(),
            max_records: 2,
        }));
        chunks += 1;
        assert!(dropped.dropped);
        let import = read_import(&target.store, UUID).unwrap();
        if !dropped.more {
            assert!(import.is_none(), "the last chunk left the import record");
            break;
        }
        assert!(
            import.is_some(),
            "the import record went before the last chunk"
        );
        assert_eq!(model_records(&target), records - 2 * chunks);
        target.refused(add_machine(), Code::NotFound);
    }
    assert_eq!(chunks, records.div_ceil(2));
    assert!(target.model_pairs().is_empty());
    // Dropping again finds nothing to drop.
    let again = target.ok(Op::DropImport(cmd::DropImport {
        migration_id: second,
        reason: "aborted".into(),
        max_records: 2,
    }));
    assert!(!again.dropped && !again.more);
}

#[test]
fn a_corrupt_or_foreign_description_is_refused_and_imports_nothing() {
    let id = format!("{UUID}:1");
    let mut target = Harness::new();
    let junk = target.stage(&id, b"not a description at all \xff\xff\xff");
    let message = target.refused(import_op(&id, vec![junk]), Code::InvalidArgument);
    assert!(message.contains("description"), "{message}");
    // A description of another model than the migration names.
    let source = source();
    let mut description = source.description();
    description.model.as_mut().unwrap().uuid = "0b5f6d2e-1c3a-4e4f-9a7b-000000000000".into();
    let other = target.stage(&id, &description.encode_to_vec());
    let charm = target.stage(&id, CHARM);
    target.refused(import_op(&id, vec![other, charm]), Code::InvalidArgument);
    // A charm neither on the target nor among the staged files.
    let mut bare = Harness::new();
    let description = bare.stage(&id, &description_bytes(&source.description()));
    bare.refused(import_op(&id, vec![description]), Code::NotFound);
    // A description that is not among the staged files.
    let charm = bare.stage(&id, CHARM);
    let mut op = import_op(&id, vec![charm]);
    if let Op::ImportModel(import) = &mut op {
        import.description_digest = digest_of(b"elsewhere");
    }
    let message = bare.refused(op, Code::InvalidArgument);
    assert!(message.contains("not among the staged files"), "{message}");
}

#[test]
fn a_bulk_import_reads_its_files_from_the_staging_area_and_keeps_charms_as_blobs() {
    let source = source();
    let id = format!("{UUID}:1");
    let mut target = Harness::new();
    let bytes = description_bytes(&source.description());
    let description = target.stage(&id, &bytes);
    let charm = target.stage(&id, CHARM);
    target.ok(import_op(&id, vec![description.clone(), charm.clone()]));
    let index = target.index;
    // The charm is a blob of the target's state now, byte for byte.
    let blob = starling_storage::records::read_blob(&target.store, &charm.digest)
        .unwrap()
        .expect("the charm is a blob");
    assert_eq!(blob.size, CHARM.len() as u64);
    let stored =
        starling_storage::records::read_blob_range(&target.store, &blob, 0, 1 << 20).unwrap();
    assert_eq!(stored, CHARM);
    assert_eq!(
        read_import(&target.store, UUID)
            .unwrap()
            .unwrap()
            .record_count as usize,
        model_keys(&target) + 1, // the name index is outside the model's keys
    );
    // The staging area hears that the files were consumed, by which entry.
    assert_eq!(
        target.staging_events,
        vec![StagingEvent::Consumed {
            migration_id: id.clone(),
            index,
            description_digest: description.digest.clone(),
        }]
    );
    assert_eq!(target.staging.dirs().unwrap()[0].consumed_at, Some(index));
    // Sealed at the source's lock (no change since the copy), then activated: that ends the
    // import, and the staging area is told.
    let (after, _) = target_position(&target);
    target.ok(Op::ApplyModelChanges(cmd::ApplyModelChanges {
        migration_id: id.clone(),
        after: Some(after),
        changes: Vec::new(),
        seal_index: 1,
    }));
    target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    assert_eq!(
        target.staging_events.last(),
        Some(&StagingEvent::Ended { migration_id: id })
    );
}

#[test]
fn a_charm_the_target_holds_is_not_needed_among_the_staged_files() {
    let source = source();
    let id = format!("{UUID}:1");
    let mut target = Harness::new();
    upload(&mut target, CHARM);
    let description = target.stage(&id, &description_bytes(&source.description()));
    target.ok(import_op(&id, vec![description]));
    assert!(read_import(&target.store, UUID).unwrap().is_some());
}

#[test]
fn a_node_without_the_staged_files_cannot_apply_the_import_and_changes_nothing() {
    let source = source();
    let id = format!("{UUID}:1");
    // Staged on another node; this one never received them.
    let mut elsewhere = Harness::new();
    let description = elsewhere.stage(&id, &description_bytes(&source.description()));
    let charm = elsewhere.stage(&id, CHARM);
    let mut target = Harness::new();
    let before = target.store.export_state().unwrap().entries;
    match target.try_apply(import_op(&id, vec![description, charm])) {
        Err(StorageError::StagedFileMissing {
            migration_id,
            digest,
            ..
        }) => {
            assert_eq!(migration_id, id);
            assert_eq!(digest.len(), 64);
        }
        other => panic!("expected a storage failure, got {other:?}"),
    }
    assert_eq!(target.store.export_state().unwrap().entries, before);
}

#[test]
fn an_import_entry_of_an_earlier_version_still_applies_from_a_blob() {
    let source = source();
    let mut target = Harness::new();
    upload(&mut target, CHARM);
    let digest = upload(&mut target, &description_bytes(&source.description()));
    target.ok(Op::ImportModel(cmd::ImportModel {
        migration_id: format!("{UUID}:1"),
        description_digest: digest.clone(),
        source: None,
        staged: Vec::new(),
        ..Default::default()
    }));
    assert!(read_import(&target.store, UUID).unwrap().is_some());
    // The description blob served its purpose and is gone.
    assert!(starling_storage::records::read_blob(&target.store, &digest)
        .unwrap()
        .is_none());
    assert!(target.staging_events.is_empty());
}
