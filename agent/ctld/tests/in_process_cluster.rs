//! In-process cluster: three (then four) `ctld` nodes in one process, each with its own sled
//! data dir, talking real TLS gRPC over loopback. Election, replication, a stopped leader
//! replaced, a snapshot installed on a node that fell behind, and a node added live. Every wait
//! polls a condition under a deadline; nothing sleeps for a fixed time to let things happen.

mod support;

use std::time::Duration;

use starling_proto::controller::AddNodeRequest;
use starling_raft::RaftTiming;
use support::{free_port, init_tracing, Cluster, DEADLINE};
use tracing::info;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elects_replicates_fails_over_installs_snapshots_and_adds_a_node() {
    init_tracing();
    let timing = RaftTiming {
        snapshot_logs_since_last: 50,
        logs_kept_after_snapshot: 10,
        ..RaftTiming::default()
    };
    let mut cluster = Cluster::new(3, timing);
    for id in 1..=3 {
        cluster.start(id);
    }

    info!("--- election");
    let leader = cluster.wait_for_leader().await;
    let info = cluster.show(leader).await.unwrap();
    assert_eq!(info.members.len(), 3);
    assert_eq!(
        info.members.iter().filter(|m| m.state == "leader").count(),
        1
    );

    info!("--- replication: a write through a follower reaches every node");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.set(follower, "custom.first", "1").await;
    for id in 1..=3 {
        cluster.wait_for_value(id, "custom.first", "1").await;
    }

    info!("--- the leader stops; the others elect a new one and keep committing");
    let stale_applied = cluster
        .show(leader)
        .await
        .unwrap()
        .members
        .iter()
        .find(|m| m.id == leader)
        .map(|m| m.applied_index)
        .unwrap();
    cluster.stop(leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    cluster.set(new_leader, "custom.second", "2").await;

    info!("--- the stopped node falls far behind; it catches up by snapshot");
    for i in 0..200 {
        cluster
            .set(new_leader, &format!("custom.k{i}"), &i.to_string())
            .await;
    }
    let info = cluster.show(new_leader).await.unwrap();
    let purged = info
        .members
        .iter()
        .find(|m| m.id == new_leader)
        .and_then(|m| m.purged_index)
        .unwrap_or(0);
    assert!(
        purged > stale_applied + 1,
        "the leader must have purged entries the stopped node lacks (purged {purged}, \
         stopped node applied {stale_applied}), or no snapshot is needed"
    );
    cluster.start(leader);
    cluster.wait_for_value(leader, "custom.k199", "199").await;
    let info = cluster.show(leader).await.unwrap();
    let restarted = info.members.iter().find(|m| m.id == leader).unwrap();
    assert!(
        restarted.snapshot_index.unwrap_or(0) >= purged,
        "the restarted node must hold a snapshot covering the purged entries: {restarted:?}"
    );
    cluster.wait_for_value(leader, "custom.second", "2").await;
    cluster.wait_for_value(leader, "custom.k0", "0").await;

    info!("--- a fourth node is added live and promoted once caught up");
    let current = cluster.wait_for_leader().await;
    let (address, http_address) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut client = cluster.client(current).await;
    let added = client
        .add_node(cluster.authed(AddNodeRequest {
            address: address.clone(),
            http_address,
        }))
        .await
        .expect("add-node on the leader")
        .into_inner();
    assert_eq!(added.node_id, 4);
    let dir = cluster.root.join("node-4");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, contents) in &added.files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    cluster.addresses.insert(4, address);
    cluster.start(4);
    cluster.wait_for_value(4, "custom.k199", "199").await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let info = cluster.show(current).await.unwrap();
        if info.members.iter().any(|m| m.id == 4 && m.role == "voter") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 never became a voter: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop(id).await;
    }
}
