//! Leadership without needless elections, on three real `ctld` processes:
//! - a SIGTERMed leader hands leadership to a caught-up voter before it stops (one election, won
//!   by the voter it chose, no write lost),
//! - `remove-node` of the leader hands over first and is carried out by the new leader,
//! - a follower paused for longer than the election timeout does not depose the leader when it
//!   wakes up (pre-vote: the others still hear from their leader),
//! - an initial member that starts after the others elected a leader joins it (it does not
//!   bootstrap the group a second time),
//! - a node whose gRPC server task ends stops with an error instead of running on unreachable
//!   (needs `ctld` built with `--features starling-ctld/failpoints`, as `scripts/test.sh` does).
//!
//! Speed is the benchmark's business (`scripts/bench.sh`); these check the mechanisms.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{AuthedControllerClient, ClusterOptions, LocalCluster};
use starling_proto::controller::{RemoveNodeRequest, SetControllerConfigRequest};
use tracing::info;

const LEADER_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The highest term any running node reports.
async fn term(cluster: &mut LocalCluster) -> Result<u64> {
    let mut best = 0;
    for id in cluster.running_ids() {
        if let Ok(info) = cluster.show_controller(id).await {
            best = best.max(info.members.iter().map(|m| m.term).max().unwrap_or(0));
        }
    }
    Ok(best)
}

/// One acknowledged write through node `via` (it forwards to the leader).
async fn write(cluster: &LocalCluster, via: u64, key: &str) -> Result<u64> {
    let mut client = cluster.client(via)?;
    let response = client
        .set_controller_config(SetControllerConfigRequest {
            values: [(format!("custom.{key}"), "v".to_owned())].into(),
            request_id: format!("leadership-{key}"),
        })
        .await
        .with_context(|| format!("write {key} through node {via}"))?;
    Ok(response.into_inner().log_index)
}

/// Writes through `client` one after another until `stop` (or 120 s); failures (a node
/// stopping) are retried. Returns how many were acknowledged.
async fn keep_writing(
    mut client: AuthedControllerClient,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut acknowledged = 0;
    while !*stop.borrow() && tokio::time::Instant::now() < deadline {
        let request = SetControllerConfigRequest {
            values: [("custom.stream".to_owned(), acknowledged.to_string())].into(),
            request_id: String::new(),
        };
        match client.set_controller_config(request).await {
            Ok(_) => acknowledged += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    Ok(acknowledged)
}

/// The leader once the group has settled, and its term: a leader elected at start-up can still
/// lose to a campaign that began at the same time, so the leader counts only when it is the
/// same, in the same term, before and after a write every node applied (a few tries).
async fn settled_leader(cluster: &mut LocalCluster) -> Result<(u64, u64)> {
    for attempt in 0..5 {
        let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
        let term_at = term(cluster).await?;
        let index = write(cluster, leader, &format!("settle-{attempt}")).await?;
        for id in cluster.node_ids() {
            cluster.wait_applied(id, index, LEADER_WAIT).await?;
        }
        if cluster.wait_for_leader(LEADER_WAIT).await? == leader && term(cluster).await? == term_at
        {
            return Ok((leader, term_at));
        }
        info!(attempt, "the leader changed while the group settled; again");
    }
    anyhow::bail!("the leader kept changing after start-up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_to_a_caught_up_voter() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::start(ClusterOptions::new("handoff", 3)).await?;
    let (leader, _) = settled_leader(&mut cluster).await?;
    let survivor = *cluster
        .node_ids()
        .iter()
        .find(|id| **id != leader)
        .context("a follower")?;
    let index = write(&cluster, survivor, "before").await?;
    for id in cluster.node_ids() {
        cluster.wait_applied(id, index, LEADER_WAIT).await?;
    }
    let term_before = term(&mut cluster).await?;

    // A writer keeps a proposal in flight at the leader throughout, as a rolling restart under
    // load does: the hand-off must not pick a voter that lacks the entry still being appended.
    let (writer_stop, stopped) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(keep_writing(cluster.client(survivor)?, stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    info!(leader, "--- SIGTERM the leader");
    let status = cluster.terminate(leader, STOP_WAIT)?;
    ensure!(status.success(), "the leader exited with {status}");
    let log = std::fs::read_to_string(cluster.log_path(leader))?;
    ensure!(
        log.contains("handed leadership over before stopping"),
        "the stopping leader did not hand over:\n{}",
        cluster.log_tail(leader, 40)
    );
    let new_leader = cluster
        .wait_for_leader_other_than(Some(leader), LEADER_WAIT)
        .await?;
    write(&cluster, survivor, "after").await?;
    writer_stop.send_replace(true);
    let acknowledged = writer.await??;
    ensure!(acknowledged > 0, "the writer had no write acknowledged");
    let term_after = term(&mut cluster).await?;
    // One campaign, by the voter the leader chose: nobody timed out and campaigned on its own.
    ensure!(
        term_after == term_before + 1,
        "term went from {term_before} to {term_after}: more than the one hand-off election"
    );
    let new_leader_log = std::fs::read_to_string(cluster.log_path(new_leader))?;
    ensure!(
        new_leader_log.contains("leader hands over; campaigning"),
        "node {new_leader} leads but was not the one asked to take over"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_over_first() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::start(ClusterOptions::new("rmleader", 3)).await?;
    let (leader, _) = settled_leader(&mut cluster).await?;
    let index = write(&cluster, leader, "before").await?;
    for id in cluster.node_ids() {
        cluster.wait_applied(id, index, LEADER_WAIT).await?;
    }
    let term_before = term(&mut cluster).await?;

    info!(leader, "--- remove-node of the leader, asked of the leader");
    cluster
        .client(leader)?
        .remove_node(RemoveNodeRequest { node_id: leader })
        .await
        .context("remove-node of the leader")?;
    let new_leader = cluster
        .wait_for_leader_other_than(Some(leader), LEADER_WAIT)
        .await?;
    let info = cluster.show_controller(new_leader).await?;
    let members: Vec<u64> = info.members.iter().map(|m| m.id).collect();
    ensure!(
        !members.contains(&leader) && members.len() == 2,
        "members after removing {leader}: {members:?}"
    );
    write(&cluster, new_leader, "after").await?;
    let term_after = term(&mut cluster).await?;
    ensure!(
        term_after == term_before + 1,
        "term went from {term_before} to {term_after}: more than the one hand-off election"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waking_from_a_pause_does_not_depose_the_leader() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::start(ClusterOptions::new("prevote", 3)).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let follower = *cluster
        .node_ids()
        .iter()
        .find(|id| **id != leader)
        .context("a follower")?;
    write(&cluster, leader, "warm").await?;
    let term_before = term(&mut cluster).await?;

    info!(
        follower,
        "--- SIGSTOP a follower for three maximum election timeouts"
    );
    cluster.pause(follower)?;
    // Writes go on without it; each one is a reason for the follower to be behind on waking.
    let mut last = 0;
    for i in 0..20 {
        last = write(&cluster, leader, &format!("paused-{i}")).await?;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    cluster.resume(follower)?;
    // Once it has caught up it has certainly run its watchdog on the stale contact.
    cluster.wait_applied(follower, last, LEADER_WAIT).await?;
    write(&cluster, follower, "after").await?;
    let term_after = term(&mut cluster).await?;
    let leader_after = cluster.leader().await;
    ensure!(
        term_after == term_before && leader_after == Some(leader),
        "term {term_before} -> {term_after}, leader {leader} -> {leader_after:?}: an election \
         was held; what the nodes logged about elections:\n{}",
        election_lines(&cluster)
    );
    Ok(())
}

/// The initial member that starts last, after the others have elected a leader (a slow start,
/// a late operator), joins that leader's term instead of starting one of its own: a node that
/// bootstraps the group once a leader exists would stand in the same first term with a vote that
/// outranks the leader's, refuse its AppendEntries and depose it.
#[tokio::test]
async fn a_member_starting_after_the_election_joins_the_leader() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::init(ClusterOptions::new("latecomer", 3))?;
    let latecomer = *cluster.node_ids().last().context("a node")?;
    for id in cluster.node_ids() {
        if id != latecomer {
            cluster.start_node(id)?;
        }
    }
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    write(&cluster, leader, "before").await?;
    let term_before = term(&mut cluster).await?;

    info!(
        latecomer,
        leader, "--- the last member starts after the election"
    );
    cluster.start_node(latecomer)?;
    let mut last = 0;
    for i in 0..5 {
        last = write(&cluster, leader, &format!("joined-{i}")).await?;
    }
    cluster.wait_applied(latecomer, last, LEADER_WAIT).await?;
    write(&cluster, latecomer, "through-the-latecomer").await?;
    let term_after = term(&mut cluster).await?;
    let leader_after = cluster.leader().await;
    ensure!(
        term_after == term_before && leader_after == Some(leader),
        "term {term_before} -> {term_after}, leader {leader} -> {leader_after:?}: the latecomer \
         started an election; what the nodes logged about elections:\n{}",
        election_lines(&cluster)
    );
    Ok(())
}

/// Every node's log lines about pre-votes, votes and elections (for a failure message).
fn election_lines(cluster: &LocalCluster) -> String {
    let mut out = String::new();
    for id in cluster.node_ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        for line in log.lines().filter(|l| {
            ["election", "vote", "campaign", "leader hands over"]
                .iter()
                .any(|word| l.contains(word))
        }) {
            out.push_str(&format!("node {id}: {line}\n"));
        }
    }
    out
}

#[test]
fn a_node_whose_grpc_server_ends_stops_with_an_error() -> Result<()> {
    init_tracing();
    let mut cluster = LocalCluster::init(ClusterOptions::new("deadserver", 1))?;
    let ctld = cluster.bins().ctld.clone();
    let version = std::process::Command::new(&ctld)
        .arg("--version")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&version.stdout).contains("+failpoints"),
        "{} was built without the failpoints feature (scripts/test.sh builds it)",
        ctld.display()
    );
    info!("--- the node's gRPC server returns as soon as it starts");
    cluster.set_env(vec![(
        "FAILPOINTS".to_owned(),
        "node.grpc-server=return".to_owned(),
    )]);
    cluster.start_node(1)?;
    let deadline = std::time::Instant::now() + STOP_WAIT;
    while cluster.is_running(1) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the node still runs {STOP_WAIT:?} after its gRPC server ended:\n{}",
            cluster.log_tail(1, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = cluster.log_tail(1, 30);
    ensure!(
        log.contains("ERROR the gRPC server stopped while the node was running"),
        "the node stopped without saying why:\n{log}"
    );
    Ok(())
}
