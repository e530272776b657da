//! The HTTPS side port of real `ctld` nodes: `/healthz`, `/readyz` and the Prometheus
//! `/metrics`, verified against the controller's CA; readiness follows the group's leader and
//! the Raft metrics follow a leader change.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use starling_cluster_tests::side_port::{self, metric};
use starling_cluster_tests::{init_tracing, ClusterOptions, LocalCluster};
use starling_proto::controller::SetControllerConfigRequest;
use tracing::info;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to notice it lost its leader (several election timeouts, on a
/// machine whose disk may be throttled).
const NOTICE_WAIT: Duration = Duration::from_secs(60);

async fn get(cluster: &LocalCluster, id: u64, path: &str) -> Result<side_port::Response> {
    side_port::get(cluster.http_addr(id), &cluster.registration().ca_cert, path).await
}

/// The sample `name` on node `id`; an error when it is missing.
async fn sample(cluster: &LocalCluster, id: u64, name: &str) -> Result<f64> {
    let response = get(cluster, id, "/metrics").await?;
    ensure!(
        response.status == 200,
        "/metrics answered {}",
        response.status
    );
    metric(&response.body, name).with_context(|| format!("node {id} has no sample {name}"))
}

/// Polls `probe` every 200 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let reason = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            Instant::now() < deadline,
            "{what} within {limit:?}: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_follow_the_group() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::start(ClusterOptions::new("side-port", 3)).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let token = cluster.registration().token.clone();

    info!("--- a write, so the leader has applied entries and synced its log");
    let mut client = cluster.client_with(leader, Some(&token), RPC_TIMEOUT)?;
    client
        .set_controller_config(SetControllerConfigRequest {
            values: [("custom.probe".to_owned(), "1".to_owned())].into(),
            request_id: String::new(),
        })
        .await?;

    info!("--- a follower's status page lists every member as the member sees itself");
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    eventually(
        "the follower's overview agree with the group",
        NOTICE_WAIT,
        || async {
            let response = side_port::get_as(
                cluster.http_addr(follower),
                &cluster.registration().ca_cert,
                "/status.json",
                Some(&token),
            )
            .await?;
            ensure!(
                response.status == 200,
                "/status.json answered {}",
                response.status
            );
            let overview: serde_json::Value = serde_json::from_str(&response.body)?;
            let members = overview["members"].as_array().context("members")?;
            ensure!(members.len() == 3, "members: {members:?}");
            for member in members {
                let id = member["id"].as_u64().context("id")?;
                let state = member["state"]
                    .as_str()
                    .context("a member without its state")?;
                let expected = if id == leader { "leader" } else { "follower" };
                ensure!(state == expected, "member {id} says {state}: {member}");
                ensure!(
                    member["term"] == overview["node"]["term"],
                    "member {id} in another term: {member} vs {}",
                    overview["node"]
                );
                ensure!(member["applied_index"].as_u64() >= Some(1), "{member}");
            }
            Ok(())
        },
    )
    .await?;

    info!("--- every node is healthy and ready; the leader's metrics say so");
    for id in cluster.node_ids() {
        let health = get(&cluster, id, "/healthz").await?;
        ensure!(
            health.status == 200 && health.body == "ok\n",
            "healthz of node {id}: {health:?}"
        );
        eventually(&format!("node {id} ready"), NOTICE_WAIT, || async {
            let ready = get(&cluster, id, "/readyz").await?;
            ensure!(
                ready.status == 200 && ready.body.starts_with("ready: leader"),
                "{ready:?}"
            );
            Ok(())
        })
        .await?;
    }
    let term = sample(&cluster, leader, "starling_raft_term").await?;
    ensure!(term >= 1.0, "term {term}");
    ensure!(sample(&cluster, leader, "starling_raft_is_leader").await? == 1.0);
    ensure!(sample(&cluster, leader, "starling_raft_leader_id").await? == leader as f64);
    ensure!(sample(&cluster, leader, "starling_raft_applied_index").await? >= 1.0);
    ensure!(sample(&cluster, leader, "starling_raft_leader_changes_total").await? >= 1.0);
    let metrics = get(&cluster, leader, "/metrics").await?.body;
    for family in [
        "starling_storage_sync_seconds",
        "starling_raft_last_log_index",
        "starling_raft_proposal_entries_total",
    ] {
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with(family) && !l.starts_with('#')),
            "no {family} samples in:\n{metrics}"
        );
    }

    info!("--- the leader is SIGKILLed: a follower sees the new term and another leader change");
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    let changes_before = sample(&cluster, follower, "starling_raft_leader_changes_total").await?;
    cluster.kill(leader)?;
    let new_leader = cluster
        .wait_for_leader_other_than(Some(leader), LEADER_WAIT)
        .await?;
    eventually("the follower's metrics to follow", NOTICE_WAIT, || async {
        let now_term = sample(&cluster, follower, "starling_raft_term").await?;
        let changes = sample(&cluster, follower, "starling_raft_leader_changes_total").await?;
        let leader_id = sample(&cluster, follower, "starling_raft_leader_id").await?;
        ensure!(
            now_term > term && changes > changes_before && leader_id == new_leader as f64,
            "term {now_term} (was {term}), leader changes {changes} (was {changes_before}), \
             leader {leader_id} (want {new_leader})"
        );
        Ok(())
    })
    .await?;

    info!("--- with two of three nodes gone the last one is healthy but not ready");
    let last = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader && *id != new_leader)
        .context("a third node")?;
    cluster.kill(new_leader)?;
    eventually("the last node to report not ready", NOTICE_WAIT, || async {
        let ready = get(&cluster, last, "/readyz").await?;
        ensure!(
            ready.status == 503 && ready.body.starts_with("not ready"),
            "{ready:?}"
        );
        Ok(())
    })
    .await?;
    let health = get(&cluster, last, "/healthz").await?;
    ensure!(health.status == 200, "healthz without a quorum: {health:?}");
    Ok(())
}
