//! The migration commands applied through `ApplyBatch` on two `MemStore`s, a source and a
//! target: the lock and its refusals, an abort that leaves the source byte-identical, the import
//! (invisible, read-only), Activate at epoch + 1 and its replays, DropImport, leftovers of an
//! older attempt, the redirect, REAP and the log transfer.

use prost::Message;
use starling_proto::command::{self as cmd, command::Op, command_error::Code};
use starling_proto::migration as mpb;
use starling_proto::model::{BackupRecord, CharmMeta, LogRecord};
use starling_storage::migration::{latest_migration, read_import, read_lock, read_redirect};
use starling_storage::model::charm::parse_metadata;
use starling_storage::staging::StagingEvent;
use starling_storage::{
    description_digest, export::description_bytes, keys, StateBackend, StateRead, StorageError,
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

fn add_machine() -> Op {
    Op::AddMachine(cmd::AddMachine {
        model_uuid: UUID.into(),
        credential_sha256: "ab".repeat(32),
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
    })
}

fn fact(id: &str, fact: cmd::migration_progress::Fact) -> Op {
    Op::MigrationProgress(cmd::MigrationProgress {
        migration_id: id.into(),
        fact: Some(fact),
    })
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
    })
}

/// Stages the source's description and the charm on `target` and imports it for `id`.
fn import(target: &mut Harness, source: &Harness, id: &str) {
    let description = target.stage(id, &description_bytes(&source.description()));
    let charm = target.stage(id, CHARM);
    target.ok(import_op(id, vec![description, charm]));
}

fn model_keys(h: &Harness) -> usize {
    h.store
        .scan_prefix(&keys::model_prefix(UUID), usize::MAX)
        .expect("scans")
        .len()
}

#[test]
fn the_lock_refuses_writes_and_an_abort_leaves_the_source_byte_identical() {
    let mut source = source();
    let id = start(&mut source);
    assert_eq!(id, format!("{UUID}:1"));
    // PRECHECK locks nothing.
    source.ok(add_machine());
    let before = description_digest(&source.description());
    to(&mut source, &id, "QUIESCE");
    assert_eq!(read_lock(&source.store, UUID).unwrap(), Some(id.clone()));
    let refusal = source.refused(add_machine(), Code::FailedPrecondition);
    assert!(
        refusal.contains("locked by migration") && refusal.contains(&id),
        "{refusal}"
    );
    source.refused(
        Op::AppendLog(cmd::AppendLog {
            model_uuid: UUID.into(),
            records: vec![LogRecord {
                message: "x".into(),
                ..Default::default()
            }],
        }),
        Code::FailedPrecondition,
    );
    // A second migration of the same model is refused while this one runs.
    let again = source.refused(
        Op::StartMigration(cmd::StartMigration {
            model_uuid: UUID.into(),
            source_secret: "s3cret".into(),
            target: Some(target_controller()),
        }),
        Code::FailedPrecondition,
    );
    assert!(
        again.contains("locked") || again.contains("already migrating"),
        "{again}"
    );
    for machine in ["0", "1", "2"] {
        source.ok(fact(
            &id,
            cmd::migration_progress::Fact::AgentAcked(machine.into()),
        ));
    }
    to(&mut source, &id, "IMPORT");
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::SourceDigest(before.clone()),
    ));
    to(&mut source, &id, "ABORT");
    to(&mut source, &id, "ABORTDONE");
    assert_eq!(read_lock(&source.store, UUID).unwrap(), None);
    assert_eq!(description_digest(&source.description()), before);
    let record = latest_migration(&source.store, UUID).unwrap().unwrap();
    assert_eq!(record.phase, "ABORTDONE");
    assert_eq!(record.aborted_from, "IMPORT");
    assert_eq!(
        record.target.unwrap().token,
        "",
        "the target's token is forgotten once the migration has ended"
    );
    // Unlocked: writes work again; the next attempt gets the next id.
    source.ok(add_machine());
    assert_eq!(start(&mut source), format!("{UUID}:2"));
}

#[test]
fn an_import_is_invisible_until_activated_and_activation_is_at_epoch_plus_one() {
    let mut source = source();
    let id = start(&mut source);
    to(&mut source, &id, "QUIESCE");
    let source_digest = description_digest(&source.description());
    let mut target = Harness::new();
    import(&mut target, &source, &id);
    let held = read_import(&target.store, UUID)
        .unwrap()
        .expect("import held");
    assert_eq!(
        held.digest, source_digest,
        "the target's own export matches"
    );
    assert_eq!(held.migration_id, id);
    // The staged description blob is gone; the charm blob stays.
    assert!(target
        .store
        .get(&keys::blob_key(&digest_of(&description_bytes(
            &source.description()
        ))))
        .unwrap()
        .is_none());
    // Invisible and read-only.
    let refusal = target.refused(add_machine(), Code::NotFound);
    assert!(refusal.contains("not found"), "{refusal}");
    // A repeated Import is a no-op.
    import(&mut target, &source, &id);
    // Activate for another attempt is refused; for this one it activates at epoch + 1.
    target.refused(
        Op::ActivateModel(cmd::ActivateModel {
            migration_id: format!("{UUID}:7"),
        }),
        Code::NotFound,
    );
    let epoch = source.description().model.unwrap().ownership_epoch;
    let activated = target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    assert_eq!(activated.ownership_epoch, epoch + 1);
    assert_eq!(
        target.description().model.unwrap().ownership_epoch,
        epoch + 1
    );
    // A replayed Activate changes nothing; a DropImport of the activated migration is refused.
    let before = target.store.export_state().unwrap().entries;
    let again = target.ok(Op::ActivateModel(cmd::ActivateModel {
        migration_id: id.clone(),
    }));
    assert_eq!(again.ownership_epoch, epoch + 1);
    assert_eq!(target.store.export_state().unwrap().entries, before);
    target.refused(
        Op::DropImport(cmd::DropImport {
            migration_id: id.clone(),
            reason: "late".into(),
        }),
        Code::FailedPrecondition,
    );
    // Active: writable.
    target.ok(add_machine());
}

/// Issue 12 item 4: the target applied Activate, the source never recorded the answer, and the
/// model left the target (destroyed there). The repeated Activate used to be refused
/// `NoSuchImport` for ever (the source stuck in SUCCESS); the target remembers which migration
/// activated the model and acknowledges the repeat. Another migration's Activate, a DropImport
/// of the activating migration and a late Import of an older attempt stay refused.
#[test]
fn activate_is_acknowledged_after_the_model_left_the_target() {
    let mut source = source();
    let id = start(&mut source);
    to(&mut source, &id, "QUIESCE");
    let mut target = Harness::new();
    import(&mut target, &source, &id);
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
    let id = start(&mut source);
    to(&mut source, &id, "QUIESCE");
    to(&mut source, &id, "IMPORT");
    let digest = description_digest(&source.description());
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::SourceDigest(digest.clone()),
    ));
    let mut target = Harness::new();
    import(&mut target, &source, &id);
    let target_digest = read_import(&target.store, UUID).unwrap().unwrap().digest;
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::TargetDigest(target_digest),
    ));
    to(&mut source, &id, "VALIDATION");
    to(&mut source, &id, "SUCCESS");
    let redirect = read_redirect(&source.store, UUID)
        .unwrap()
        .expect("redirect");
    assert_eq!(redirect.controller_name, "beta");
    let refusal = source.refused(add_machine(), Code::FailedPrecondition);
    assert_eq!(
        refusal,
        "model \"web\" has been migrated to controller \"beta\". To access it run 'ctl switch beta:web'."
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
        starling_storage::migration::read_log_transfer(&target.store, UUID).unwrap(),
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
        }),
        Code::FailedPrecondition,
    );
    to(&mut source, &id, "REAP");
    source.ok(Op::ReapModel(cmd::ReapModel {
        migration_id: id.clone(),
    }));
    to(&mut source, &id, "DONE");
    assert_eq!(model_keys(&source), 0);
    assert!(read_redirect(&source.store, UUID).unwrap().is_some());
    assert!(source
        .store
        .get(&keys::model_name_key("alice", "web"))
        .unwrap()
        .is_none());
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
    to(&mut target, &back, "QUIESCE");
    import(&mut source, &target, &back);
    source.ok(Op::ActivateModel(cmd::ActivateModel { migration_id: back }));
    assert!(read_redirect(&source.store, UUID).unwrap().is_none());
    source.ok(add_machine());
}

const VERSION: &str = "0.1.0";

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
    let id = start(&mut source);
    to(&mut source, &id, "QUIESCE");
    to(&mut source, &id, "IMPORT");
    let mut target = Harness::new();
    import(&mut target, &source, &id);
    let mid_import = backup(&mut target, "mid-import");
    let refusal = source.refused(restore(&before), Code::FailedPrecondition);
    assert!(
        refusal.contains(&id) && refusal.contains("no migration is in flight"),
        "{refusal}"
    );
    let refusal = target.refused(restore(&mid_import), Code::FailedPrecondition);
    assert!(refusal.contains("being imported"), "{refusal}");

    // The migration ends DONE.
    let digest = description_digest(&source.description());
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::SourceDigest(digest),
    ));
    let target_digest = read_import(&target.store, UUID).unwrap().unwrap().digest;
    source.ok(fact(
        &id,
        cmd::migration_progress::Fact::TargetDigest(target_digest),
    ));
    for phase in ["VALIDATION", "SUCCESS"] {
        to(&mut source, &id, phase);
    }
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
    source.ok(Op::ReapModel(cmd::ReapModel {
        migration_id: id.clone(),
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
    to(&mut aborting, &id, "QUIESCE");
    let mut target = Harness::new();
    import(&mut target, &aborting, &id);
    let mid_import = backup(&mut target, "mid-import");
    to(&mut aborting, &id, "ABORT");
    target.ok(Op::DropImport(cmd::DropImport {
        migration_id: id.clone(),
        reason: "aborted".into(),
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
    to(&mut source, &first, "QUIESCE");
    let mut target = Harness::new();
    import(&mut target, &source, &first);
    // The source aborts without reaching the target; a second attempt replaces the leftover.
    to(&mut source, &first, "ABORT");
    to(&mut source, &first, "ABORTDONE");
    let second = start(&mut source);
    to(&mut source, &second, "QUIESCE");
    import(&mut target, &source, &second);
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
    }));
    assert!(!late.dropped);
    assert!(read_import(&target.store, UUID).unwrap().is_some());
    // An Import of the older attempt is refused now.
    let stale = target.stage(&first, &description_bytes(&source.description()));
    target.refused(import_op(&first, vec![stale]), Code::NotFound);
    let dropped = target.ok(Op::DropImport(cmd::DropImport {
        migration_id: second,
        reason: "aborted".into(),
    }));
    assert!(dropped.dropped);
    assert_eq!(model_keys(&target), 0);
    assert!(read_import(&target.store, UUID).unwrap().is_none());
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
    // Activating it ends the import: the staging area is told.
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
    }));
    assert!(read_import(&target.store, UUID).unwrap().is_some());
    // The description blob served its purpose and is gone.
    assert!(starling_storage::records::read_blob(&target.store, &digest)
        .unwrap()
        .is_none());
    assert!(target.staging_events.is_empty());
}
