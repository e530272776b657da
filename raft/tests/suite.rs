//! openraft's storage test suite over both store pairs (sled and in-memory), plus the
//! adapter-level checks the suite does not make: restarts keep log, vote, state and the
//! snapshot; a malformed snapshot changes nothing; applied commands are idempotent.

// openraft's `Suite::test_all` returns its (large) `StorageError`.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LeaderId, LogId, Membership, RaftSnapshotBuilder};
use starling_proto::command::{command, command_result, Command, SetControllerConfig};
use starling_raft::store::{
    open_memory, open_sled, MemLogStore, MemStateMachine, SledLogStore, SledStateMachine,
};
use starling_raft::type_config::{Request, StorageError, TypeConfig, Vote};

const UUID: &str = "00000000-0000-0000-0000-00000000c0de";

struct SledBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, SledStateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, SledStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log_store, state_machine, _view) = open_sled(dir.path(), UUID).expect("opens");
        Ok((dir, log_store, state_machine))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError> {
        let (log_store, state_machine, _view) = open_memory();
        Ok(((), log_store, state_machine))
    }
}

#[test]
fn openraft_suite_sled() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

#[test]
fn openraft_suite_memory() -> Result<(), StorageError> {
    Suite::test_all(MemBuilder)
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(LeaderId::new(term, 1), index)
}

fn set_config(request_id: &str, key: &str, value: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 0),
        payload: EntryPayload::Normal(Request::command(Command {
            request_id: request_id.into(),
            op: Some(command::Op::SetControllerConfig(SetControllerConfig {
                values: [(key.to_owned(), value.to_owned())].into(),
            })),
            ..Default::default()
        })),
    }
}

fn at(mut entry: Entry<TypeConfig>, index: u64) -> Entry<TypeConfig> {
    entry.log_id = log_id(1, index);
    entry
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], ())),
    }
}

async fn append(store: &mut SledLogStore, entries: Vec<Entry<TypeConfig>>) {
    // Returns only once the callback reported the entries flushed.
    store.blocking_append(entries).await.expect("appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_pair_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log_store, mut sm, view) = open_sled(dir.path(), UUID).expect("opens");
        let entries = vec![
            membership_entry(1),
            at(set_config("r1", "custom.a", "1"), 2),
            at(set_config("r2", "backups-to-keep", "7"), 3),
        ];
        append(&mut log_store, entries.clone()).await;
        log_store
            .save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("saves vote");
        log_store
            .save_committed(Some(log_id(1, 3)))
            .await
            .expect("saves committed");
        sm.apply(entries).await.expect("applies");
        assert_eq!(view.applied_index(), 3);
        assert_eq!(view.controller_config()["custom.a"], "1");
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("builds");
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 3)));
        log_store.purge(log_id(1, 1)).await.expect("purges");
    }
    let (mut log_store, mut sm, view) = open_sled(dir.path(), UUID).expect("reopens");
    assert_eq!(view.applied_index(), 3);
    let config = view.controller_config();
    assert_eq!(config["custom.a"], "1");
    assert_eq!(config["backups-to-keep"], "7");
    assert_eq!(config["status-history-size"], "20", "defaults merged");
    assert_eq!(
        log_store.read_vote().await.expect("reads"),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(
        log_store.read_committed().await.expect("reads"),
        Some(log_id(1, 3))
    );
    let state = log_store.get_log_state().await.expect("reads");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    let entries = log_store.try_get_log_entries(0..10).await.expect("reads");
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        [2, 3]
    );
    let snapshot = sm
        .get_current_snapshot()
        .await
        .expect("reads")
        .expect("the snapshot survived");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("lists")
        .collect();
    assert_eq!(files.len(), 1, "only the latest snapshot is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_snapshot_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log_store, mut sm, view) = open_sled(dir.path(), UUID).expect("opens");
    sm.apply([
        membership_entry(1),
        at(set_config("", "custom.keep", "yes"), 2),
    ])
    .await
    .expect("applies");
    let good = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("builds");
    let before = sm.applied_state().await.expect("reads");

    let mut garbage = sm.begin_receiving_snapshot().await.expect("begins");
    garbage
        .get_mut()
        .extend_from_slice(b"\xff\xfe not a snapshot");
    let mut meta = good.meta.clone();
    meta.snapshot_id = "other".into();
    assert!(sm.install_snapshot(&meta, garbage).await.is_err());

    // Valid bytes under metadata that does not match them are refused too.
    let mut lying = good.meta.clone();
    lying.last_log_id = Some(log_id(9, 99));
    lying.snapshot_id = "lying".into();
    assert!(sm
        .install_snapshot(&lying, good.snapshot.clone())
        .await
        .is_err());

    // A snapshot id that is not a plain file name is refused.
    let mut escape = good.meta.clone();
    escape.snapshot_id = "../escape".into();
    assert!(sm.install_snapshot(&escape, good.snapshot).await.is_err());

    assert_eq!(sm.applied_state().await.expect("reads"), before);
    assert_eq!(view.controller_config()["custom.keep"], "yes");
    let current = sm
        .get_current_snapshot()
        .await
        .expect("reads")
        .expect("kept");
    assert_eq!(current.meta, good.meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_idempotent_through_the_state_machine() {
    let (_log_store, mut sm, view) = open_memory();
    let responses = sm
        .apply([
            at(set_config("r1", "custom.a", "1"), 1),
            at(set_config("r1", "custom.a", "2"), 2),
            at(set_config("r2", "nope", "2"), 3),
        ])
        .await
        .expect("applies");
    assert_eq!(responses[0], responses[1]);
    assert!(matches!(
        responses[0].0.result,
        Some(command_result::Result::Ok(_))
    ));
    match &responses[2].0.result {
        Some(command_result::Result::Error(e)) => {
            assert!(
                e.message.contains("unknown controller-config key \"nope\""),
                "{}",
                e.message
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(view.controller_config()["custom.a"], "1");
    assert_eq!(view.applied_index(), 3);
}
