//! [`LocalCluster`]: one controller made of real `ctld` processes on loopback, in a temp dir,
//! created with `ctld init` and run with `ctld run` (the same contract the scripts use). Tests
//! kill, pause, resume and restart nodes by id and wait on conditions with deadlines.
//!
//! The children stay in the test's process group, so when nextest kills a hung test it kills
//! them too; on drop every child is SIGKILLed and reaped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use starling_proto::controller::{
    ControllerConfigResponse, ControllerInfo, GetControllerConfigRequest, ShowControllerRequest,
};
use tonic::transport::{Channel, Identity};
use tonic::Status;
use tracing::info;

use crate::bins::Bins;
use crate::client::{controller_client, tls_channel, AuthedControllerClient, RPC_TIMEOUT_DEFAULT};
use crate::registration::Registration;

/// Deadline of the status calls the harness makes while polling.
const STATUS_RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of `ctld init`.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline for a leader to appear.
pub const LEADER_WAIT_DEFAULT: Duration = Duration::from_secs(60);

/// How to make a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Controller name.
    pub name: String,
    /// Number of nodes (ids 1..=n_nodes).
    pub n_nodes: u64,
    /// `--cloud` for `ctld init`.
    pub cloud: Option<String>,
    /// `--region` for `ctld init`.
    pub region: Option<String>,
    /// `--version` for `ctld init`.
    pub version: Option<String>,
    /// `--heartbeat-ms` for `ctld run`.
    pub heartbeat_ms: Option<u64>,
    /// `--election-timeout-min-ms` for `ctld run`.
    pub election_timeout_min_ms: Option<u64>,
    /// `--election-timeout-max-ms` for `ctld run`.
    pub election_timeout_max_ms: Option<u64>,
    /// Value of `RUST_LOG` for the nodes (default `info`).
    pub rust_log: String,
    /// Extra environment of the nodes (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// One network namespace per node (node `i` on `hosts[i - 1]`, fixed ports), for
    /// partitions inside the group; empty: every node on 127.0.0.1.
    pub hosts: Vec<crate::netns::NetHost>,
}

impl ClusterOptions {
    /// A controller `name` of `n_nodes` nodes with the daemon's default timing.
    pub fn new(name: &str, n_nodes: u64) -> Self {
        Self {
            name: name.to_owned(),
            n_nodes,
            cloud: None,
            region: None,
            version: None,
            heartbeat_ms: None,
            election_timeout_min_ms: None,
            election_timeout_max_ms: None,
            rust_log: std::env::var("STARLING_NODE_LOG").unwrap_or_else(|_| "info".to_owned()),
            env: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

/// One node's process and files.
#[derive(Debug)]
struct NodeProcess {
    grpc_addr: String,
    http_addr: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// A controller of real `ctld` processes on 127.0.0.1.
#[derive(Debug)]
pub struct LocalCluster {
    options: ClusterOptions,
    bins: Bins,
    work: Option<tempfile::TempDir>,
    root: PathBuf,
    registration: Registration,
    nodes: BTreeMap<u64, NodeProcess>,
}

impl LocalCluster {
    /// Initializes the controller (`ctld init`), starts every node and waits for a leader.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let mut cluster = Self::init(options)?;
        for id in cluster.node_ids() {
            cluster.start_node(id)?;
        }
        cluster.wait_for_leader(LEADER_WAIT_DEFAULT).await?;
        Ok(cluster)
    }

    /// Only runs `ctld init` (no node started): data dirs and the registration file.
    pub fn init(options: ClusterOptions) -> Result<Self> {
        let bins = Bins::locate()?;
        let work = tempfile::Builder::new()
            .prefix(&format!("starling-{}-", options.name))
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let root = work.path().join("controller");
        if !options.hosts.is_empty() && options.hosts.len() as u64 != options.n_nodes {
            bail!(
                "{} hosts for {} nodes",
                options.hosts.len(),
                options.n_nodes
            );
        }
        // A node in its own namespace has every port to itself.
        let ports = if options.hosts.is_empty() {
            free_ports(2 * options.n_nodes as usize)?
        } else {
            (0..options.n_nodes).flat_map(|_| [17070, 17071]).collect()
        };
        let mut nodes = BTreeMap::new();
        let mut init = Command::new(&bins.ctld);
        init.arg("init")
            .arg("--name")
            .arg(&options.name)
            .arg("--out")
            .arg(&root);
        for id in 1..=options.n_nodes {
            let idx = 2 * (id as usize - 1);
            let host = options
                .hosts
                .get(id as usize - 1)
                .map_or("127.0.0.1", |h| h.ip.as_str());
            let grpc_addr = format!("{host}:{}", ports[idx]);
            let http_addr = format!("{host}:{}", ports[idx + 1]);
            init.arg("--node")
                .arg(format!("{id},{grpc_addr},{http_addr}"));
            nodes.insert(
                id,
                NodeProcess {
                    grpc_addr,
                    http_addr,
                    data_dir: root.join(format!("node-{id}")),
                    log_path: work.path().join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                },
            );
        }
        for (flag, value) in [
            ("--cloud", &options.cloud),
            ("--region", &options.region),
            ("--version", &options.version),
        ] {
            if let Some(value) = value {
                init.arg(flag).arg(value);
            }
        }
        let init_log = work.path().join("init.log");
        let status = run_bounded(&mut init, &init_log, INIT_TIMEOUT)?;
        if !status.success() {
            bail!(
                "ctld init failed ({status}): {}",
                std::fs::read_to_string(&init_log).unwrap_or_default()
            );
        }
        let registration = Registration::load(&root.join("registration.yaml"))?;
        info!(name = %options.name, uuid = %registration.uuid, dir = %work.path().display(), "controller initialized");
        Ok(Self {
            options,
            bins,
            work: Some(work),
            root,
            registration,
            nodes,
        })
    }

    /// Starts (or restarts, reusing its data dir) node `id`; its output is appended to its log.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let options = self.options.clone();
        let ctld = self.bins.ctld.clone();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        writeln!(log, "--- harness: starting node {id}")?;
        let mut command = match options.hosts.get(id as usize - 1) {
            // `ip netns exec` execs ctld, so the child's pid is the node's.
            Some(host) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &host.netns]).arg(ctld);
                command
            }
            None => Command::new(ctld),
        };
        command
            .arg("run")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("RUST_LOG", &options.rust_log)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (flag, value) in [
            ("--heartbeat-ms", options.heartbeat_ms),
            ("--election-timeout-min-ms", options.election_timeout_min_ms),
            ("--election-timeout-max-ms", options.election_timeout_max_ms),
        ] {
            if let Some(value) = value {
                command.arg(flag).arg(value.to_string());
            }
        }
        let child = command.spawn().context("spawning ctld run")?;
        info!(node_id = id, pid = child.id(), "node started");
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Replaces the extra environment of the nodes (e.g. `FAILPOINTS`); it takes effect on
    /// each node's next [`Self::start_node`].
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.options.env = env;
    }

    /// Whether node `id` is frozen (SIGSTOP) by [`Self::pause`].
    pub fn is_paused(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        child.kill().ok();
        child.wait().context("reaping a killed node")?;
        node.paused = false;
        info!(node_id = id, "node SIGKILLed");
        Ok(())
    }

    /// SIGKILLs every running node at once (a power cut), then reaps them.
    pub fn kill_all(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut() {
                child.kill().ok();
            }
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                child.wait().ok();
            }
            node.paused = false;
        }
        info!("every node SIGKILLed");
    }

    /// SIGTERMs node `id` and waits at most `timeout` for it to exit; SIGKILLs it after that
    /// and reports an error.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        if node.paused {
            signal_child(&child, Signal::SIGCONT)?;
            node.paused = false;
        }
        signal_child(&child, Signal::SIGTERM)?;
        match wait_bounded(&mut child, timeout)? {
            Some(status) => Ok(status),
            None => {
                child.kill().ok();
                child.wait().ok();
                bail!("node {id} did not exit within {timeout:?} of SIGTERM")
            }
        }
    }

    /// Freezes node `id` (SIGSTOP).
    pub fn pause(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        signal_child(child, Signal::SIGSTOP)?;
        node.paused = true;
        Ok(())
    }

    /// Thaws node `id` (SIGCONT).
    pub fn resume(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        signal_child(child, Signal::SIGCONT)?;
        node.paused = false;
        Ok(())
    }

    /// Every node id.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes that run and are not paused.
    pub fn running_ids(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, node) in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if matches!(child.try_wait(), Ok(None)) && !node.paused {
                    ids.push(*id);
                }
            }
        }
        ids
    }

    /// Whether node `id` was started and has not exited (paused counts as running).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of node `id` while it runs.
    pub fn pid(&mut self, id: u64) -> Option<u32> {
        self.is_running(id)
            .then(|| self.nodes[&id].child.as_ref().map(Child::id))
            .flatten()
    }

    /// The gRPC address of node `id`.
    pub fn grpc_addr(&self, id: u64) -> &str {
        &self.nodes[&id].grpc_addr
    }

    /// The HTTP side-port address of node `id`.
    pub fn http_addr(&self, id: u64) -> &str {
        &self.nodes[&id].http_addr
    }

    /// The data dir of node `id`.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes[&id].data_dir
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: u64) -> &Path {
        &self.nodes[&id].log_path
    }

    /// The directory `ctld init` wrote (node dirs and `registration.yaml`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registration (admin credential, CA, uuid).
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// The built binaries this cluster runs.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// An admin client of node `id`.
    pub fn client(&self, id: u64) -> Result<AuthedControllerClient> {
        self.client_with(id, Some(&self.registration.token), RPC_TIMEOUT_DEFAULT)
    }

    /// A client of node `id` sending `token` (none when `None`) with `rpc_timeout` per call.
    pub fn client_with(
        &self,
        id: u64,
        token: Option<&str>,
        rpc_timeout: Duration,
    ) -> Result<AuthedControllerClient> {
        controller_client(
            self.grpc_addr(id),
            &self.registration.ca_cert,
            token,
            rpc_timeout,
        )
    }

    /// An admin client of some running node (the lowest running id).
    pub fn client_any(&mut self) -> Result<AuthedControllerClient> {
        let id = *self
            .running_ids()
            .first()
            .ok_or_else(|| anyhow!("no node is running"))?;
        self.client(id)
    }

    /// Node `id`'s own certificate and key (`node.pem`, `node-key.pem`), to call a node as a
    /// peer would.
    pub fn node_identity(&self, id: u64) -> Result<Identity> {
        let dir = self.data_dir(id);
        let cert = std::fs::read(dir.join("node.pem"))
            .with_context(|| format!("reading {}/node.pem", dir.display()))?;
        let key = std::fs::read(dir.join("node-key.pem"))
            .with_context(|| format!("reading {}/node-key.pem", dir.display()))?;
        Ok(Identity::from_pem(cert, key))
    }

    /// A TLS channel to node `id` that trusts the controller CA and presents `identity` (a node
    /// certificate, see [`Self::node_identity`]) when given.
    pub fn channel_as(&self, id: u64, identity: Option<Identity>) -> Result<Channel> {
        tls_channel(
            self.grpc_addr(id),
            &self.registration.ca_cert,
            identity,
            RPC_TIMEOUT_DEFAULT,
        )
    }

    /// A TLS channel to node `id` that trusts the controller CA and presents no certificate.
    pub fn channel(&self, id: u64) -> Result<Channel> {
        tls_channel(
            self.grpc_addr(id),
            &self.registration.ca_cert,
            None,
            RPC_TIMEOUT_DEFAULT,
        )
    }

    /// Node `id`'s answer to ShowController.
    pub async fn show_controller(&self, id: u64) -> Result<ControllerInfo, Status> {
        let mut client = self
            .client_with(id, Some(&self.registration.token), STATUS_RPC_TIMEOUT)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(client
            .show_controller(ShowControllerRequest {})
            .await?
            .into_inner())
    }

    /// Node `id`'s own applied controller config (a `local` read).
    pub async fn local_config(&self, id: u64) -> Result<ControllerConfigResponse, Status> {
        let mut client = self
            .client_with(id, Some(&self.registration.token), STATUS_RPC_TIMEOUT)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(client
            .get_controller_config(GetControllerConfigRequest { local: true })
            .await?
            .into_inner())
    }

    /// The leader, if one running node says it leads and another running node (or itself,
    /// in a group of one) agrees.
    pub async fn leader(&mut self) -> Option<u64> {
        let running = self.running_ids();
        let mut claims = BTreeMap::<u64, u64>::new();
        for id in &running {
            if let Ok(info) = self.show_controller(*id).await {
                if let Some(leader) = info.leader_id {
                    *claims.entry(leader).or_default() += 1;
                }
                if info.leader_id == Some(*id) {
                    *claims.entry(*id).or_default() += 1;
                }
            }
        }
        let agreement_min = if self.nodes.len() == 1 { 2 } else { 3 };
        claims
            .into_iter()
            .filter(|(leader, votes)| running.contains(leader) && *votes >= agreement_min)
            .max_by_key(|(_, votes)| *votes)
            .map(|(leader, _)| leader)
    }

    /// Waits at most `timeout` for a leader (see [`Self::leader`]).
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64> {
        self.wait_for_leader_other_than(None, timeout).await
    }

    /// Waits at most `timeout` for a leader that is not `old`.
    pub async fn wait_for_leader_other_than(
        &mut self,
        old: Option<u64>,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                if Some(leader) != old {
                    return Ok(leader);
                }
            }
            if Instant::now() >= deadline {
                self.dump_log_tails(30);
                bail!(
                    "no leader (other than {old:?}) within {timeout:?}; running: {:?}",
                    self.running_ids()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits at most `timeout` until node `id` has applied at least `index`, and returns the
    /// local read that showed it.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> Result<ControllerConfigResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.local_config(id).await {
                Ok(config) if config.applied_index >= index => return Ok(config),
                Ok(config) => format!("applied index {}", config.applied_index),
                Err(status) => status.to_string(),
            };
            if Instant::now() >= deadline {
                self.dump_log_tails(30);
                bail!("node {id} did not apply index {index} within {timeout:?} (last: {last})");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of every node's log to stderr (for failures).
    pub fn dump_log_tails(&self, lines: usize) {
        for id in self.nodes.keys() {
            eprintln!(
                "----- node {id} log ({}):\n{}",
                self.log_path(*id).display(),
                self.log_tail(*id, lines)
            );
        }
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        let keep = std::env::var_os("STARLING_KEEP_WORK").is_some();
        if std::thread::panicking() {
            self.dump_log_tails(40);
        }
        if let Some(work) = self.work.take() {
            if keep {
                let path = work.keep();
                eprintln!("kept the cluster's files in {}", path.display());
            }
        }
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (all listeners are held until every port is picked).
///
/// They are drawn below the kernel's ephemeral range when there is room there: a node that is
/// restarted later binds its port again, and a port of the ephemeral range may meanwhile have
/// become the source port of any outgoing connection on the machine.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut listeners = Vec::with_capacity(n);
    if let Some((low, high)) = ports_below_ephemeral() {
        let mut rng = rand::thread_rng();
        for _ in 0..n * PORT_DRAWS_PER_PORT {
            if listeners.len() == n {
                break;
            }
            let port = rand::Rng::gen_range(&mut rng, low..high);
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(listener);
            }
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind("127.0.0.1:0").context("binding a free port")?);
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// How many random ports `free_ports` tries per port it needs before it lets the kernel pick.
const PORT_DRAWS_PER_PORT: usize = 20;
/// The lowest port `free_ports` draws from (clear of the well-known and registered services).
const DRAWN_PORTS_FROM: u16 = 10_000;

/// The ports between `DRAWN_PORTS_FROM` and the start of the ephemeral range, when there are a
/// few thousand of them.
fn ports_below_ephemeral() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (ephemeral_low >= DRAWN_PORTS_FROM + 4_096).then_some((DRAWN_PORTS_FROM, ephemeral_low))
}

/// Runs `command` to completion with its output in `log`, killing it after `timeout`.
pub fn run_bounded(command: &mut Command, log: &Path, timeout: Duration) -> Result<ExitStatus> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    match wait_bounded(&mut child, timeout)? {
        Some(status) => Ok(status),
        None => {
            child.kill().ok();
            child.wait().ok();
            bail!("{command:?} did not finish within {timeout:?}")
        }
    }
}

/// Waits at most `timeout` for `child` to exit.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal_child(child: &Child, signal: Signal) -> Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to {pid}"))
}
