//! Proposal batching on a real (single-node, sled-backed) Raft node: a lone proposal commits in
//! an entry of its own; concurrent proposals share entries, each answered with its own result in
//! order; a refused command leaves the others of its entry applied; the queue and the entries are
//! bounded. Every wait is bounded by a deadline; nothing sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use starling_proto::command::{command, command_result, Command, SetControllerConfig};
use starling_raft::store::open_sled;
use starling_raft::{
    BatchLimits, Node, NodeOptions, PeerChannels, PeerDialer, Proposed, RaftHandle, RaftTiming,
};
use tonic::transport::ClientTlsConfig;
use tracing::info;

const UUID: &str = "00000000-0000-0000-0000-00000000ba7c";
const DEADLINE: Duration = Duration::from_secs(60);

fn set(request_id: &str, key: &str, value: &str) -> Command {
    Command {
        request_id: request_id.into(),
        op: Some(command::Op::SetControllerConfig(SetControllerConfig {
            values: [(key.to_owned(), value.to_owned())].into(),
        })),
        ..Default::default()
    }
}

fn is_ok(proposed: &Proposed) -> bool {
    matches!(proposed.result.result, Some(command_result::Result::Ok(_)))
}

/// A single-voter node on sled in `dir`, leader once this returns.
async fn single_node(dir: &std::path::Path, batch: BatchLimits) -> RaftHandle {
    let (log_store, state_machine, view) = open_sled(dir, UUID).expect("opens");
    let options = NodeOptions {
        node_id: 1,
        controller_uuid: UUID.into(),
        version: "test".into(),
        timing: RaftTiming {
            batch,
            ..RaftTiming::default()
        },
        // A single voter never dials a peer.
        channels: PeerChannels::new(PeerDialer::new(
            ClientTlsConfig::new(),
            Duration::from_secs(1),
        )),
    };
    let handle = RaftHandle::start(options, log_store, state_machine, view)
        .await
        .expect("starts");
    handle
        .initialize_if_new(BTreeMap::from([(1, Node::new("127.0.0.1:1"))]))
        .await
        .expect("initializes");
    handle
        .raft()
        .wait(Some(DEADLINE))
        .current_leader(1, "single node leads")
        .await
        .expect("elected");
    handle
}

/// Proposes `commands` all at once; the outcomes in the commands' order.
async fn propose_all(handle: &RaftHandle, commands: Vec<Command>) -> Vec<Proposed> {
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|c| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.propose(c).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        let outcome = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("answered before the deadline")
            .expect("task");
        outcomes.push(outcome.expect("committed"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_proposals_share_entries_each_with_its_own_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = BatchLimits {
        batch_commands_max: 64,
        batches_in_flight_max: 1,
        ..BatchLimits::default()
    };
    let handle = single_node(dir.path(), limits).await;

    info!("--- a lone proposal commits alone, without waiting for company");
    let before = handle.node_status().last_log_index;
    let lone = propose_all(&handle, vec![set("lone", "custom.lone", "1")]).await;
    assert!(is_ok(&lone[0]));
    assert_eq!(lone[0].log_index, before + 1);

    info!("--- 400 concurrent proposals, every 10th refused");
    let n_commands = 400;
    let commands = (0..n_commands)
        .map(|i| {
            let key = if i % 10 == 5 {
                format!("not-a-key-{i}")
            } else {
                format!("custom.k{i}")
            };
            set(&format!("r{i}"), &key, &i.to_string())
        })
        .collect();
    let outcomes = propose_all(&handle, commands).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(is_ok(outcome), i % 10 != 5, "command {i}: {outcome:?}");
    }
    let mut per_entry: BTreeMap<u64, usize> = BTreeMap::new();
    for outcome in &outcomes {
        *per_entry.entry(outcome.log_index).or_default() += 1;
    }
    info!(entries = per_entry.len(), "entries used");
    assert!(
        per_entry.len() < n_commands,
        "no two proposals shared an entry"
    );
    assert!(per_entry.values().all(|&n| n <= limits.batch_commands_max));
    let config = handle.state().controller_config();
    for i in 0..n_commands {
        assert_eq!(
            config.contains_key(&format!("custom.k{i}")),
            i % 10 != 5,
            "key {i}"
        );
    }

    info!("--- a retried request id answers its first result and changes nothing");
    let again = propose_all(&handle, vec![set("r7", "custom.k7", "changed")]).await;
    assert!(is_ok(&again[0]));
    assert_eq!(handle.state().controller_config()["custom.k7"], "7");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_queue_and_tiny_entries_still_commit_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = BatchLimits {
        queued_commands_max: 2,
        batch_commands_max: 3,
        batch_bytes_max: 1024,
        batches_in_flight_max: 1,
    };
    let handle = single_node(dir.path(), limits).await;
    let commands = (0..60)
        .map(|i| set(&format!("t{i}"), &format!("custom.t{i}"), "x"))
        .collect();
    let outcomes = propose_all(&handle, commands).await;
    assert!(outcomes.iter().all(is_ok));
    let mut per_entry: BTreeMap<u64, usize> = BTreeMap::new();
    for outcome in &outcomes {
        *per_entry.entry(outcome.log_index).or_default() += 1;
    }
    assert!(per_entry.values().all(|&n| n <= 3), "{per_entry:?}");
    let indexes: BTreeSet<u64> = per_entry.keys().copied().collect();
    assert!(indexes.len() >= 20);
    handle.shutdown().await;
}
