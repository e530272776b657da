//! A model of 10,000 units, deployed in batches, round-trips through a snapshot install to a
//! node added later: the new node, which never saw the log entries that built the model, answers
//! the same full status as the leader.

mod support;

use std::time::{Duration, Instant};

use prost::Message;
use starling_proto::controller::{
    AddMachineRequest, AddModelRequest, AddNodeRequest, AddUnitRequest, DeployRequest, FullStatus,
    ModelRef, StatusRequest,
};
use starling_raft::RaftTiming;
use support::{free_port, init_tracing, Cluster, DEADLINE};
use tracing::info;

const N_MACHINES: usize = 100;
const N_UNITS: usize = 10_000;
const UNITS_PER_BATCH: usize = 500;

/// A deterministic tar.gz holding a minimal charm.
fn charm_archive() -> Vec<u8> {
    let metadata = b"name: filler\nsummary: a unit that does nothing\ncommand: sleep 3600\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "metadata.yaml", &metadata[..])
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// The status without what legitimately differs between nodes: the time of the read and the
/// load each node measures itself (its rates, and sizes it refreshes every few seconds: a node
/// that got the model by snapshot applied none of the writes that built it).
fn without_clock(mut status: FullStatus) -> FullStatus {
    status.now_unix_ms = 0;
    if let Some(info) = status.model.as_mut() {
        info.load = None;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_units_reach_a_new_node_by_snapshot() {
    init_tracing();
    let timing = RaftTiming {
        snapshot_logs_since_last: 20,
        logs_kept_after_snapshot: 5,
        ..RaftTiming::default()
    };
    let mut cluster = Cluster::new(3, timing);
    for id in 1..=3 {
        cluster.start(id);
    }
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;

    info!("--- a model with {N_MACHINES} machines and {N_UNITS} units, in batches");
    client
        .add_model(cluster.authed(AddModelRequest {
            name: "big".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let model = || {
        Some(ModelRef {
            name: "admin/big".into(),
            uuid: String::new(),
        })
    };
    for _ in 0..N_MACHINES {
        client
            .add_machine(cluster.authed(AddMachineRequest {
                model: model(),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    let archive = charm_archive();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
    let chunk = starling_proto::controller::CharmChunk {
        digest: digest.clone(),
        size: archive.len() as u64,
        offset: 0,
        data: archive,
    };
    let mut upload = cluster.authed(futures::stream::iter(vec![chunk]));
    upload.set_timeout(Duration::from_secs(30));
    client.upload_charm(upload).await.unwrap();
    let machines = |batch: usize| -> Vec<String> {
        (0..UNITS_PER_BATCH)
            .map(|i| ((batch * UNITS_PER_BATCH + i) % N_MACHINES).to_string())
            .collect()
    };
    client
        .deploy(cluster.authed(DeployRequest {
            model: model(),
            application: "filler".into(),
            charm_digest: digest,
            to: machines(0),
            ..Default::default()
        }))
        .await
        .unwrap();
    for batch in 1..N_UNITS / UNITS_PER_BATCH {
        client
            .add_unit(cluster.authed(AddUnitRequest {
                model: model(),
                application: "filler".into(),
                to: machines(batch),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    let status = |client: &mut starling_proto::controller::controller_client::ControllerClient<
        tonic::transport::Channel,
    >,
                  cluster: &Cluster| {
        let request = cluster.authed(StatusRequest { model: model() });
        let mut client = client.clone();
        async move { client.status(request).await.map(|r| r.into_inner()) }
    };
    let started = Instant::now();
    let on_leader = without_clock(status(&mut client, &cluster).await.unwrap());
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        bytes = on_leader.encoded_len(),
        "full status of the big model"
    );
    assert_eq!(on_leader.units.len(), N_UNITS);
    assert_eq!(on_leader.machines.len(), N_MACHINES);
    assert_eq!(
        on_leader.units.iter().filter(|u| u.leader).count(),
        1,
        "one leader unit"
    );

    info!(
        "--- a fourth node joins; the log that built the model is purged, so it needs a snapshot"
    );
    let (address, http_address) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // Membership changes are made on the leader, and the one elected at start-up can lose
    // office to a concurrent campaign while the model is built: ask whoever leads now, again
    // when a node answers that it no longer does.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (leader, added) = loop {
        let leader = cluster.wait_for_leader().await;
        let answer = cluster
            .client(leader)
            .await
            .add_node(cluster.authed(AddNodeRequest {
                address: address.clone(),
                http_address: http_address.clone(),
            }))
            .await;
        match answer {
            Ok(added) => break (leader, added.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                info!(leader, error = %status.message(), "add-node went to a former leader; again");
            }
            Err(status) => panic!("add-node via node {leader}: {status}"),
        }
    };
    let info = cluster.show(leader).await.unwrap();
    let purged = info
        .members
        .iter()
        .find(|m| m.id == leader)
        .and_then(|m| m.purged_index)
        .unwrap_or(0);
    assert!(purged > 0, "the leader purged its log: {info:?}");
    let dir = cluster.root.join(format!("node-{}", added.node_id));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, contents) in &added.files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    cluster.addresses.insert(added.node_id, address);
    cluster.start(added.node_id);

    let mut new_node = cluster.client(added.node_id).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(on_new) = status(&mut new_node, &cluster).await {
            let on_new = without_clock(on_new);
            if on_new.units.len() == N_UNITS {
                assert_eq!(
                    on_new, on_leader,
                    "the new node's model equals the leader's"
                );
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never served the big model",
            added.node_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = cluster.show(added.node_id).await.unwrap();
    let joined = info.members.iter().find(|m| m.id == added.node_id).unwrap();
    assert!(
        joined.snapshot_index.unwrap_or(0) >= purged,
        "the new node was caught up by a snapshot: {joined:?}"
    );
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.stop(id).await;
    }
}
