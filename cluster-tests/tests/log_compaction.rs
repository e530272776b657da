//! Snapshots built while writes go on: three real `ctld` processes that snapshot every 200
//! applied entries and keep 50 after it. A follower stopped before the writes comes back after
//! the leader purged the entries it lacks, so it catches up by installing a snapshot; every node
//! then holds every acknowledged write. A snapshot whose state is not the state at its index
//! (a write of the read left out, or one from after its index let in) makes the follower's
//! values differ from the leader's, or its applied state run ahead of what it holds.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{ClusterOptions, LocalCluster};
use starling_proto::controller::SetControllerConfigRequest;
use tracing::info;

const N_WRITES: u64 = 800;
const WRITERS: u64 = 2;
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
const LEADER_WAIT: Duration = Duration::from_secs(60);
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// The `.snap` files under a node's data dir.
fn snapshot_files(cluster: &LocalCluster, id: u64) -> Result<Vec<String>> {
    let dir = cluster.data_dir(id).join("state").join("snapshots");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snap") {
            names.push(name);
        }
    }
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_from_snapshots_built_under_writes() -> Result<()> {
    init_tracing();
    let mut options = ClusterOptions::new("compaction", 3);
    options.run_args = [
        "--snapshot-logs-since-last",
        "200",
        "--logs-kept-after-snapshot",
        "50",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut cluster = LocalCluster::start(options).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    info!(
        leader,
        follower, "--- the follower stops; writes go on without it"
    );
    cluster.kill(follower)?;

    let token = cluster.registration().token.clone();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = cluster.client_with(leader, Some(&token), RPC_TIMEOUT)?;
        writers.push(tokio::spawn(async move {
            for i in (writer..N_WRITES).step_by(WRITERS as usize) {
                client
                    .set_controller_config(SetControllerConfigRequest {
                        values: [(format!("custom.w{i}"), i.to_string())].into(),
                        request_id: format!("compaction-{i}"),
                    })
                    .await
                    .with_context(|| format!("write {i}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let on_leader = cluster.local_config(leader).await?;
    ensure!(
        on_leader.applied_index >= 250,
        "only {} entries applied: too few to purge past the follower",
        on_leader.applied_index
    );
    ensure!(
        !snapshot_files(&cluster, leader)?.is_empty(),
        "the leader built no snapshot"
    );

    info!("--- the follower comes back, installs a snapshot and catches up");
    cluster.start_node(follower)?;
    cluster
        .wait_applied(follower, on_leader.applied_index, CATCH_UP_WAIT)
        .await?;
    ensure!(
        !snapshot_files(&cluster, follower)?.is_empty(),
        "the follower caught up without installing a snapshot"
    );
    let on_follower = cluster.local_config(follower).await?;
    for i in 0..N_WRITES {
        let key = format!("custom.w{i}");
        ensure!(
            on_follower.values.get(&key) == Some(&i.to_string()),
            "follower {follower}: {key} = {:?}",
            on_follower.values.get(&key)
        );
    }
    for id in cluster.node_ids() {
        let config = cluster.local_config(id).await?;
        if config.applied_index == on_follower.applied_index {
            ensure!(
                config.values == on_follower.values,
                "node {id} and the follower differ at index {}",
                config.applied_index
            );
        }
    }
    Ok(())
}
