//! An in-process controller for tests: N `ctld` nodes in one process, each with its own sled
//! data dir, serving real TLS gRPC on loopback. Every wait polls a condition under a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use starling_ctld::identity::DataDir;
use starling_ctld::init::{self, InitOptions, NodeSpec};
use starling_ctld::node::{self, RunOptions};
use starling_proto::controller::controller_client::ControllerClient;
use starling_proto::controller::{
    ControllerInfo, GetControllerConfigRequest, SetControllerConfigRequest, ShowControllerRequest,
};
use starling_raft::RaftTiming;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long any wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The admin credential and CA of a controller.
pub struct Registration {
    /// The admin token.
    pub token: String,
    /// The CA certificate (PEM).
    pub ca_cert: String,
}

fn read_registration(path: &Path) -> Registration {
    let text = std::fs::read_to_string(path).unwrap();
    let value: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text).unwrap();
    Registration {
        token: value["token"].as_str().unwrap().to_string(),
        ca_cert: value["ca-cert"].as_str().unwrap().to_string(),
    }
}

/// A node running in this process.
pub struct RunningNode {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A controller whose nodes run in this process.
pub struct Cluster {
    _dir: tempfile::TempDir,
    /// Where the node data dirs live.
    pub root: PathBuf,
    /// The admin credential.
    pub registration: Registration,
    /// gRPC address of every node ever started.
    pub addresses: BTreeMap<u64, String>,
    /// The running nodes.
    pub nodes: BTreeMap<u64, RunningNode>,
    timing: RaftTiming,
}

impl Cluster {
    /// Creates (does not start) an n-node controller.
    pub fn new(n: u64, timing: RaftTiming) -> Self {
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

    /// Starts node `id` from its data dir.
    pub fn start(&mut self, id: u64) {
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

    /// Stops node `id` gracefully.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node running");
        let _ = node.stop.send(());
        node.task.await.unwrap().unwrap();
    }

    pub async fn client(&self, id: u64) -> ControllerClient<Channel> {
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

    pub fn authed<T>(&self, message: T) -> tonic::Request<T> {
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

    pub async fn show(&self, id: u64) -> Option<ControllerInfo> {
        let mut client = self.client(id).await;
        client
            .show_controller(self.authed(ShowControllerRequest {}))
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until a running node reports a running leader that reports itself leader.
    pub async fn wait_for_leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for id in self.nodes.keys() {
                if let Some(info) = self.show(*id).await {
                    if let Some(leader) = info.leader_id {
                        // The leader must also say so itself: a node can name a leader before
                        // that leader has finished taking office.
                        let confirmed = info
                            .members
                            .iter()
                            .any(|m| m.id == leader && m.state == "leader");
                        if self.nodes.contains_key(&leader) && confirmed {
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

    pub async fn set(&self, via: u64, key: &str, value: &str) {
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

    pub async fn local_config(&self, id: u64) -> Option<BTreeMap<String, String>> {
        let mut client = self.client(id).await;
        client
            .get_controller_config(self.authed(GetControllerConfigRequest { local: true }))
            .await
            .ok()
            .map(|r| r.into_inner().values.into_iter().collect())
    }

    /// Waits until node `id`'s own applied state holds `key = value`.
    pub async fn wait_for_value(&self, id: u64, key: &str, value: &str) {
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

/// Routes tracing to the test output (RUST_LOG, default warn).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
