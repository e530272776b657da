//! In-process cluster: three (then four) `ctld` nodes in one process, each with its own sled
//! data dir, talking real TLS gRPC over loopback. Election, replication, a stopped leader
//! replaced, a snapshot installed on a node that fell behind, and a node added live. Every wait
//! polls a condition under a deadline; nothing sleeps for a fixed time to let things happen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use starling_agent::identity::DataDir;
use starling_agent::init::{self, InitOptions, NodeSpec};
use starling_agent::node::{self, RunOptions};
use starling_proto::controller::controller_client::ControllerClient;
use starling_proto::controller::{
    AddNodeRequest, ControllerInfo, GetControllerConfigRequest, SetControllerConfigRequest,
    ShowControllerRequest,
};
use starling_raft::RaftTiming;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::info;

const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Registration {
    token: String,
    ca_cert: String,
}

fn read_registration(path: &Path) -> Registration {
    let text = std::fs::read_to_string(path).unwrap();
    let value: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text).unwrap();
    Registration {
        token: value["token"].as_str().unwrap().to_string(),
        ca_cert: value["ca-cert"].as_str().unwrap().to_string(),
    }
}

struct RunningNode {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    registration: Registration,
    addresses: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, RunningNode>,
    timing: RaftTiming,
}

impl Cluster {
    fn new(n: u64, timing: RaftTiming) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let specs: Vec<NodeSpec> = (1..=n)
            .map(|id| {
                format!("{id},127.0.0.1:{},127.0.0.1:{}", free_port(), free_port())
                    .parse()
                    .unwrap()
            })
            .collect();
        let addresses = specs.iter().map(|s| (s.id, s.address.clone())).collect();
        let registration = init::init(&InitOptions {
            name: "alpha".into(),
            out: root.clone(),
            nodes: specs,
            cloud: "local".into(),
            region: "default".into(),
            version: "0.1.0".into(),
        })
        .unwrap();
        Self {
            _dir: dir,
            registration: read_registration(&registration),
            root,
            addresses,
            nodes: BTreeMap::new(),
            timing,
        }
    }

    fn start(&mut self, id: u64) {
        let (stop, stopped) = oneshot::channel();
        let options = RunOptions {
            data_dir: DataDir::new(self.root.join(format!("node-{id}"))),
            timing: self.timing.clone(),
        };
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let task = tokio::spawn(node::run(options, prometheus, async move {
            let _ = stopped.await;
        }));
        self.nodes.insert(id, RunningNode { stop, task });
    }

    async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node running");
        let _ = node.stop.send(());
        node.task.await.unwrap().unwrap();
    }

    async fn client(&self, id: u64) -> ControllerClient<Channel> {
        let address = &self.addresses[&id];
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.registration.ca_cert))
                    .domain_name("127.0.0.1"),
            )
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        ControllerClient::new(channel)
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.registration.token)
                .parse()
                .unwrap(),
        );
        request.set_timeout(Duration::from_secs(30));
        request
    }

    async fn show(&self, id: u64) -> Option<ControllerInfo> {
        let mut client = self.client(id).await;
        client
            .show_controller(self.authed(ShowControllerRequest {}))
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until a running node reports a leader that is itself running; returns it.
    async fn wait_for_leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for id in self.nodes.keys() {
                if let Some(info) = self.show(*id).await {
                    if let Some(leader) = info.leader_id {
                        if self.nodes.contains_key(&leader) {
                            return leader;
                        }
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set(&self, via: u64, key: &str, value: &str) {
        let mut client = self.client(via).await;
        let values = [(key.to_string(), value.to_string())].into();
        client
            .set_controller_config(self.authed(SetControllerConfigRequest {
                values,
                request_id: String::new(),
            }))
            .await
            .unwrap_or_else(|s| panic!("write {key} via node {via}: {s}"));
    }

    async fn local_config(&self, id: u64) -> Option<BTreeMap<String, String>> {
        let mut client = self.client(id).await;
        client
            .get_controller_config(self.authed(GetControllerConfigRequest { local: true }))
            .await
            .ok()
            .map(|r| r.into_inner().values.into_iter().collect())
    }

    /// Waits until node `id`'s own applied state holds `key = value`.
    async fn wait_for_value(&self, id: u64, key: &str, value: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(config) = self.local_config(id).await {
                if config.get(key).map(String::as_str) == Some(value) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} never applied {key}={value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

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
