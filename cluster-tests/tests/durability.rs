//! Every acknowledged controller-config write survives (a) a SIGKILL of the leader in the middle
//! of the load and (b) a power cut of all three nodes at once. Three real `ctld` processes; 1,000
//! writes of unique values through randomly chosen nodes (seeded: `STARLING_SEED` replays a run).
//!
//! A write is *acknowledged* when SetControllerConfig returned OK; a write whose every attempt
//! failed or timed out is *unknown* and may or may not be present, but if present must carry the
//! value written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::seed::test_seed;
use starling_cluster_tests::{AuthedControllerClient, ClusterOptions, LocalCluster};
use starling_proto::controller::SetControllerConfigRequest;
use tracing::{info, warn};

const N_WRITES: u64 = 1_000;
const KILL_LEADER_AT: u64 = 300;
const RESTART_KILLED_AT: u64 = 600;
/// How long one write may keep retrying (same request id) before it counts as unknown.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts of one write.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const LEADER_WAIT: Duration = Duration::from_secs(60);
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// What the load observed.
#[derive(Default)]
struct History {
    /// key -> (value, log index of the acknowledged write).
    acknowledged: BTreeMap<String, (String, u64)>,
    /// key -> value of writes that never got an answer.
    unknown: BTreeMap<String, String>,
}

impl History {
    fn max_acknowledged_index(&self) -> u64 {
        self.acknowledged
            .values()
            .map(|(_, index)| *index)
            .max()
            .unwrap_or(0)
    }

    /// Problems found in one node's applied config.
    fn check(&self, values: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, (value, index)) in &self.acknowledged {
            match values.get(key) {
                Some(found) if found == value => {}
                Some(found) => problems.push(format!(
                    "{key}: acknowledged {value:?} (log index {index}) but found {found:?}"
                )),
                None => problems.push(format!(
                    "{key}: acknowledged {value:?} (log index {index}) but missing"
                )),
            }
        }
        for (key, value) in &self.unknown {
            if let Some(found) = values.get(key) {
                if found != value {
                    problems.push(format!(
                        "{key}: wrote {value:?} (unknown) but found {found:?}"
                    ));
                }
            }
        }
        problems
    }
}

/// Writes `key` = `value` through random running nodes until acknowledged or out of time.
async fn write_one(
    clients: &BTreeMap<u64, AuthedControllerClient>,
    running: &[u64],
    rng: &mut StdRng,
    request: SetControllerConfigRequest,
) -> Result<u64, String> {
    let deadline = Instant::now() + WRITE_DEADLINE;
    loop {
        let node_id = running[rng.gen_range(0..running.len())];
        let mut client = clients[&node_id].clone();
        let last_error = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            client.set_controller_config(request.clone()),
        )
        .await
        {
            Ok(Ok(response)) => return Ok(response.into_inner().log_index),
            Ok(Err(status)) => format!("node {node_id}: {status}"),
            Err(_) => format!("node {node_id}: no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(last_error);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Waits until every node has applied `index`, then checks its applied config against `history`.
async fn check_every_node(cluster: &LocalCluster, history: &History, phase: &str) -> Result<()> {
    let index = history.max_acknowledged_index();
    for node_id in cluster.node_ids() {
        let config = cluster.wait_applied(node_id, index, CATCH_UP_WAIT).await?;
        let values: BTreeMap<String, String> = config.values.into_iter().collect();
        let problems = history.check(&values);
        ensure!(
            problems.is_empty(),
            "{phase}: node {node_id} (applied index {}) lost acknowledged writes:\n{}",
            config.applied_index,
            problems.join("\n")
        );
        let unknown_present = history
            .unknown
            .keys()
            .filter(|k| values.contains_key(*k))
            .count();
        info!(
            phase,
            node_id,
            applied_index = config.applied_index,
            acknowledged = history.acknowledged.len(),
            unknown = history.unknown.len(),
            unknown_present,
            "node holds every acknowledged write"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kill_and_power_cut() -> Result<()> {
    init_tracing();
    let seed = test_seed("acknowledged_writes_survive_leader_kill_and_power_cut");
    let mut cluster = LocalCluster::start(ClusterOptions::new("durability", 3)).await?;
    let clients = cluster
        .node_ids()
        .into_iter()
        .map(|id| Ok((id, cluster.client(id)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;

    info!(
        "--- {N_WRITES} writes through random nodes; SIGKILL the leader at write {KILL_LEADER_AT}"
    );
    let mut history = History::default();
    let mut killed = None;
    for write_idx in 0..N_WRITES {
        if write_idx == KILL_LEADER_AT {
            let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
            info!(leader, write_idx, "--- SIGKILL the leader");
            cluster.kill(leader)?;
            killed = Some(leader);
        }
        if write_idx == RESTART_KILLED_AT {
            if let Some(node_id) = killed {
                info!(node_id, write_idx, "--- restart the killed node");
                cluster.start_node(node_id)?;
            }
        }
        // One generator per write, so a replay makes the same choices whatever failed before.
        let mut rng = StdRng::seed_from_u64(seed ^ write_idx.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let key = format!("custom.k{write_idx}");
        let value = format!("v{write_idx}-{:016x}", rng.gen::<u64>());
        let request = SetControllerConfigRequest {
            values: [(key.clone(), value.clone())].into_iter().collect(),
            request_id: format!("durability-{seed:x}-{write_idx}"),
        };
        let running = cluster.running_ids();
        match write_one(&clients, &running, &mut rng, request).await {
            Ok(index) => {
                history.acknowledged.insert(key, (value, index));
            }
            Err(error) => {
                warn!(write_idx, %error, "write unknown");
                history.unknown.insert(key, value);
            }
        }
    }
    info!(
        acknowledged = history.acknowledged.len(),
        unknown = history.unknown.len(),
        max_index = history.max_acknowledged_index(),
        "--- load done"
    );
    ensure!(
        history.acknowledged.len() as u64 >= N_WRITES / 2,
        "only {} of {N_WRITES} writes were acknowledged (seed {seed:#x}): the cluster was unavailable most of the run",
        history.acknowledged.len()
    );

    info!("--- every node, the restarted one included, holds every acknowledged write");
    cluster.wait_for_leader(LEADER_WAIT).await?;
    check_every_node(&cluster, &history, "after leader kill").await?;

    info!("--- power cut: SIGKILL all three nodes at once, restart them");
    cluster.kill_all();
    for node_id in cluster.node_ids() {
        cluster.start_node(node_id)?;
    }
    cluster.wait_for_leader(LEADER_WAIT).await?;
    check_every_node(&cluster, &history, "after power cut").await?;
    Ok(())
}
