//! Persistence tests of the sled `Store`: reopen after drop, torn batches after SIGKILL, the
//! controller claim on the data dir, the lock, log operations and state replacement.

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};

use starling_proto::command::{command, Command, SetControllerConfig};
use starling_proto::raft as pb;
use starling_storage::state::{read_applied_state, read_stored_config};
use starling_storage::{
    keys, AppliedState, ApplyBatch, ApplyLimits, LogBackend, RaftMetaKey, StateBackend, StateImage,
    StateRead, StorageError, Store,
};

const UUID: &str = "11111111-2222-3333-4444-555555555555";

fn log_id(index: u64) -> pb::LogId {
    pb::LogId {
        term: 1,
        leader_node_id: 1,
        index,
    }
}

fn set_config(request_id: &str, values: &[(&str, &str)]) -> Command {
    Command {
        request_id: request_id.into(),
        op: Some(command::Op::SetControllerConfig(SetControllerConfig {
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
        ..Default::default()
    }
}

/// Applies `commands` at consecutive indexes from `first_index` as one batch.
fn apply_batch(store: &Store, first_index: u64, commands: &[Command]) {
    let mut batch = ApplyBatch::new(store, ApplyLimits::default());
    let mut index = first_index;
    for command in commands {
        batch.apply_command(index, command).expect("applies");
        index += 1;
    }
    batch.set_last_applied(&log_id(index - 1));
    store.state_commit(batch.into_writes()).expect("commits");
}

#[test]
fn reopen_after_drop_keeps_log_vote_and_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), UUID).expect("opens");
        let synced = store
            .log_append(vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec()),
            ])
            .expect("appends");
        assert!(synced.is_some(), "append reports its sync");
        store
            .raft_meta_put(RaftMetaKey::Vote, b"vote".to_vec())
            .expect("saves vote");
        apply_batch(&store, 1, &[set_config("r1", &[("custom.a", "1")])]);
    }
    let store = Store::open(dir.path(), UUID).expect("reopens");
    let log = store.log_range(..).expect("reads");
    assert_eq!(
        log,
        vec![
            (1, b"one".to_vec()),
            (2, b"two".to_vec()),
            (3, b"three".to_vec())
        ]
    );
    assert_eq!(
        store.raft_meta_get(RaftMetaKey::Vote).expect("reads"),
        Some(b"vote".to_vec())
    );
    assert_eq!(read_stored_config(&store).expect("reads")["custom.a"], "1");
    assert_eq!(
        read_applied_state(&store).expect("reads").last_applied,
        Some(log_id(1))
    );
}

#[test]
fn log_range_truncate_and_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), UUID).expect("opens");
    store
        .log_append((1..=10).map(|i| (i, vec![i as u8])).collect())
        .expect("appends");
    let indexes =
        |range: Vec<(u64, Vec<u8>)>| range.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(indexes(store.log_range(3..5).expect("reads")), [3, 4]);
    assert_eq!(indexes(store.log_range(9..).expect("reads")), [9, 10]);
    let (seven, three) = (7, 3);
    assert!(store
        .log_range(seven..three)
        .expect("inverted range is empty")
        .is_empty());
    store.log_truncate_from(8).expect("truncates");
    assert_eq!(store.log_last().expect("reads").map(|(i, _)| i), Some(7));
    store
        .log_purge_through(3, b"purged".to_vec())
        .expect("purges");
    assert_eq!(indexes(store.log_range(..).expect("reads")), [4, 5, 6, 7]);
    assert_eq!(
        store.raft_meta_get(RaftMetaKey::LastPurged).expect("reads"),
        Some(b"purged".to_vec())
    );
}

#[test]
fn a_log_an_older_version_kept_in_sled_moves_to_the_segment_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), UUID).expect("opens"));
    // What an older version left: the log in sled's `log` tree, no `wal/` dir.
    std::fs::remove_dir_all(dir.path().join("wal")).expect("removes the segment files");
    {
        let db = sled::open(dir.path().join("sled")).expect("opens sled");
        let log = db.open_tree("log").expect("opens the log tree");
        for index in 5u64..=9 {
            log.insert(index.to_be_bytes(), format!("entry {index}").into_bytes())
                .expect("inserts");
        }
        db.flush().expect("flushes");
    }
    let store = Store::open(dir.path(), UUID).expect("reopens");
    let expected: Vec<(u64, Vec<u8>)> = (5u64..=9)
        .map(|i| (i, format!("entry {i}").into_bytes()))
        .collect();
    assert_eq!(store.log_range(..).expect("reads"), expected);
    store
        .log_append(vec![(10, b"entry 10".to_vec())])
        .expect("appends after the move");
    drop(store);
    let store = Store::open(dir.path(), UUID).expect("reopens again");
    assert_eq!(store.log_last().expect("reads").map(|(i, _)| i), Some(10));
    assert_eq!(store.log_range(..).expect("reads").len(), 6);
    drop(store);
    let db = sled::open(dir.path().join("sled")).expect("opens sled");
    assert!(
        db.open_tree("log").expect("opens").is_empty(),
        "the sled log tree is emptied once the files hold the log"
    );
}

#[test]
fn data_dir_of_another_controller_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), UUID).expect("opens"));
    let err = Store::open(dir.path(), "other-uuid").expect_err("refused");
    assert!(
        matches!(err, StorageError::WrongController { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "data dir {} belongs to controller {UUID}, not other-uuid",
            dir.path().display()
        )
    );
    Store::open(dir.path(), UUID).expect("the owner still opens it");
}

#[test]
fn second_open_reports_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path(), UUID).expect("opens");
    let err = Store::open(dir.path(), UUID).expect_err("locked");
    assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");
}

#[test]
fn export_and_replace_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Store::open(&dir.path().join("a"), UUID).expect("opens");
    apply_batch(
        &source,
        1,
        &[
            set_config("r1", &[("custom.a", "1"), ("backups-to-keep", "3")]),
            set_config("", &[("custom.b", "2")]),
        ],
    );
    let image = source.export_state().expect("exports");
    assert_eq!(image.applied.last_applied, Some(log_id(2)));
    let decoded = StateImage::decode(&image.encode()).expect("decodes");
    assert_eq!(decoded, image);

    let target = Store::open(&dir.path().join("b"), UUID).expect("opens");
    apply_batch(&target, 1, &[set_config("old", &[("custom.stale", "x")])]);
    assert!(target.replace_state(&decoded).expect("replaces").is_some());
    assert_eq!(target.export_state().expect("exports"), image);
    assert!(target
        .get(&keys::config_key("custom.stale"))
        .expect("reads")
        .is_none());
    assert!(target
        .get(&keys::request_key("old"))
        .expect("reads")
        .is_none());
    assert_eq!(
        read_stored_config(&target).expect("reads"),
        read_stored_config(&source).expect("reads")
    );
    // An empty image empties the state.
    target
        .replace_state(&StateImage::default())
        .expect("replaces");
    assert!(target
        .scan_prefix(b"", usize::MAX)
        .expect("scans")
        .is_empty());
    assert_eq!(
        read_applied_state(&target).expect("reads"),
        AppliedState::default()
    );
}

const TORN_DIR_ENV: &str = "STARLING_TORN_BATCH_DIR";
const KEYS_PER_BATCH: usize = 50;

/// The writer half of `torn_batches_never_half_apply`: only does something when the parent test
/// runs it in a child process, which is then killed with SIGKILL in the middle of its writes.
#[test]
fn torn_batch_writer_child() {
    let Ok(dir) = std::env::var(TORN_DIR_ENV) else {
        return;
    };
    let store = Store::open(std::path::Path::new(&dir), UUID).expect("opens");
    for round in 1u64.. {
        // Every batch rewrites all keys to `round`, so a half-applied batch shows mixed values.
        let values: Vec<(String, String)> = (0..KEYS_PER_BATCH)
            .map(|i| {
                (
                    format!("custom.k{i:03}"),
                    format!("{round}-{}", "x".repeat(200)),
                )
            })
            .collect();
        let values: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        apply_batch(&store, round, &[set_config("", &values)]);
        if round % 20 == 0 {
            store.sync().expect("syncs");
            println!("synced {round}");
        }
    }
}

#[test]
fn torn_batches_never_half_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    for attempt in 0..3 {
        let mut child = Process::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "torn_batch_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(TORN_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns the writer");
        let stdout = child.stdout.take().expect("piped");
        let mut synced_round = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("reads");
            if let Some(round) = line.strip_prefix("synced ") {
                synced_round = round.parse().expect("round");
                if synced_round >= 40 {
                    break;
                }
            }
        }
        assert!(
            synced_round >= 40,
            "writer stopped early (attempt {attempt})"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");

        let store = Store::open(dir.path(), UUID).expect("reopens after SIGKILL");
        let config = read_stored_config(&store).expect("reads");
        let rounds: std::collections::BTreeSet<&str> = config
            .values()
            .map(|v| v.split('-').next().expect("round"))
            .collect();
        assert_eq!(config.len(), KEYS_PER_BATCH, "attempt {attempt}");
        assert_eq!(rounds.len(), 1, "a batch was half applied: {rounds:?}");
        let round: u64 = rounds.first().expect("one round").parse().expect("number");
        assert!(round >= synced_round, "a synced batch was lost");
        let applied = read_applied_state(&store).expect("reads").last_applied;
        assert_eq!(
            applied,
            Some(log_id(round)),
            "last_applied matches the data"
        );
    }
}

/// sled's reverse prefix scan: the last rows of a prefix, newest key first, nothing past it.
#[test]
fn the_last_rows_of_a_prefix_come_from_its_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), UUID).expect("opens");
    let rows = ["a", "m/1", "m/2", "m/3", "m0", "z"];
    store
        .state_commit(
            rows.iter()
                .map(|k| (k.as_bytes().to_vec(), Some(b"v".to_vec())))
                .collect(),
        )
        .expect("commits");
    let last: Vec<Vec<u8>> = store
        .scan_prefix_last(b"m/", 2)
        .expect("scans")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(last, [b"m/3".to_vec(), b"m/2".to_vec()]);
    assert_eq!(store.scan_prefix_last(b"q/", 2).expect("scans"), vec![]);
}
