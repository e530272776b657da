//! Write-load generator for `scripts/bench.sh`, for Starling and for etcd through the same code:
//! one tokio runtime, N writer tasks sharing C HTTP/2 connections, fixed-size values, the same
//! warm-up, timing and percentiles; only the put differs (Starling: `SetControllerConfig` of
//! `custom.<prefix>-<i>` over TLS with the registration's admin token; etcd: `KV.Put` of
//! `<prefix>-<i>`). Also the leader-failover probe (SIGKILL the leader, time the next committed
//! write) and the pause probe (one writer that moves to another endpoint at the first error and
//! reports its longest wait between two commits, for rolling restarts).
//! Prints one JSON line per run. Talks only to the (loopback) endpoints it is given.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use starling_cluster_tests::{controller_client, AuthedControllerClient, Registration};
use starling_proto::controller::{SetControllerConfigRequest, ShowControllerRequest};

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// A new failover probe write starts this often until one commits.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Bound on overlapping failover probe writes.
const PROBES_IN_FLIGHT_MAX: usize = 256;

/// Write-load generator for Starling and etcd.
#[derive(Parser, Debug)]
struct Args {
    /// A Starling controller's registration file (`ctld init` writes it).
    #[arg(long, conflicts_with = "etcd", required_unless_present = "etcd")]
    registration: Option<std::path::PathBuf>,
    /// An etcd cluster instead: its client endpoints, host:port, comma-separated (plaintext).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints the leader's id, client endpoint and term as JSON.
    Leader,
    /// Runs CONCURRENCY writers for DURATION and reports writes/s and latency.
    Write {
        /// Writes in flight.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Seconds to run (after a short warm-up).
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Bytes per value.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// HTTP/2 connections the writers share.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Distinct keys written (`<prefix>-<i % keys>`).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Key prefix.
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// `leader` sends every write to the leader; `all` spreads them over every endpoint.
        #[arg(long, default_value = "leader")]
        target: String,
    },
    /// SIGKILLs PID (the leader) and times the next committed write through the other endpoints.
    Failover {
        /// The leader's pid.
        #[arg(long)]
        kill_pid: i32,
        /// The leader's endpoint (not used for the probe writes).
        #[arg(long)]
        kill_endpoint: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout_secs: f64,
    },
    /// One writer for DURATION that moves to the next endpoint at the first failed write;
    /// reports the longest time between two commits (run it across a rolling restart).
    Pauses {
        /// Seconds to run.
        #[arg(long)]
        duration_secs: f64,
        /// Stop early once this file exists (the restart driver creates it when done).
        #[arg(long)]
        stop_file: Option<std::path::PathBuf>,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let system = match &args.registration {
        Some(path) => System::Starling(Registration::load(path)?),
        None => System::Etcd(args.etcd.clone()),
    };
    let report = match args.command {
        Cmd::Leader => {
            let leader = system.find_leader().await?;
            serde_json::json!({"leader": leader.id, "address": leader.address, "term": leader.term})
        }
        Cmd::Write {
            concurrency,
            duration_secs,
            value_bytes,
            conns,
            keys,
            prefix,
            target,
        } => {
            let endpoints = match target.as_str() {
                "leader" => vec![system.find_leader().await?.address],
                "all" => system.endpoints(),
                other => bail!("--target must be leader or all, not {other:?}"),
            };
            let load = Load {
                concurrency: concurrency.max(1),
                duration: Duration::from_secs_f64(duration_secs),
                value: random_value(value_bytes),
                keys: keys.max(1),
                prefix,
            };
            let clients = (0..conns.max(1))
                .map(|i| system.client(&endpoints[i % endpoints.len()], RPC_TIMEOUT))
                .collect::<Result<Vec<_>>>()?;
            let mut report = run_load(clients, &load).await?;
            report["endpoints"] = serde_json::json!(endpoints);
            report["client"] = serde_json::json!(system.client_name());
            report
        }
        Cmd::Failover {
            kill_pid,
            kill_endpoint,
            timeout_secs,
        } => {
            let survivors: Vec<String> = system
                .endpoints()
                .into_iter()
                .filter(|e| *e != kill_endpoint)
                .collect();
            if survivors.is_empty() {
                bail!("no endpoint besides {kill_endpoint}");
            }
            let clients = survivors
                .iter()
                .map(|e| system.client(e, PROBE_ATTEMPT_TIMEOUT))
                .collect::<Result<Vec<_>>>()?;
            failover(clients, kill_pid, Duration::from_secs_f64(timeout_secs)).await?
        }
        Cmd::Pauses {
            duration_secs,
            stop_file,
        } => {
            let clients = system
                .endpoints()
                .iter()
                .map(|e| system.client(e, PROBE_ATTEMPT_TIMEOUT))
                .collect::<Result<Vec<_>>>()?;
            pauses(
                clients,
                Duration::from_secs_f64(duration_secs),
                stop_file.as_deref(),
            )
            .await?
        }
    };
    println!("{report}");
    Ok(())
}

/// The cluster under load.
enum System {
    Starling(Registration),
    Etcd(Vec<String>),
}

impl System {
    fn endpoints(&self) -> Vec<String> {
        match self {
            System::Starling(r) => r.api_endpoints.clone(),
            System::Etcd(endpoints) => endpoints.clone(),
        }
    }

    fn client_name(&self) -> &'static str {
        match self {
            System::Starling(_) => "rust tonic (TLS, bearer token)",
            System::Etcd(_) => "rust tonic (etcdserverpb.KV/Put, plaintext)",
        }
    }

    /// A client on its own HTTP/2 connection to `endpoint`.
    fn client(&self, endpoint: &str, timeout: Duration) -> Result<Client> {
        Ok(match self {
            System::Starling(r) => Client::Starling(controller_client(
                endpoint,
                &r.ca_cert,
                Some(&r.token),
                timeout,
            )?),
            System::Etcd(_) => Client::Etcd(etcd::KvClient::connect_lazy(endpoint, timeout)?),
        })
    }

    /// Asks the endpoints in turn who leads.
    async fn find_leader(&self) -> Result<Leader> {
        let mut last_error = None;
        for endpoint in self.endpoints() {
            let found = match self {
                System::Starling(r) => starling_leader(r, &endpoint).await,
                System::Etcd(_) => etcd_leader(&endpoint).await,
            };
            match found {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) => last_error = Some(format!("{endpoint}: not the leader or none known")),
                Err(e) => last_error = Some(format!("{endpoint}: {e:#}")),
            }
        }
        bail!("no leader found: {}", last_error.unwrap_or_default())
    }
}

/// Who leads: its id, its client endpoint and the term.
struct Leader {
    id: u64,
    address: String,
    term: u64,
}

async fn starling_leader(registration: &Registration, endpoint: &str) -> Result<Option<Leader>> {
    let mut c = controller_client(
        endpoint,
        &registration.ca_cert,
        Some(&registration.token),
        Duration::from_secs(3),
    )?;
    let info = c
        .show_controller(ShowControllerRequest {})
        .await?
        .into_inner();
    let Some(id) = info.leader_id else {
        return Ok(None);
    };
    let term = info.members.iter().map(|m| m.term).max().unwrap_or(0);
    // The client endpoint is the member's peer address: one port serves both.
    Ok(info.members.iter().find(|m| m.id == id).map(|m| Leader {
        id,
        address: m.address.clone(),
        term,
    }))
}

/// The leader if `endpoint` is it: etcd's Maintenance.Status names the leader by member id.
async fn etcd_leader(endpoint: &str) -> Result<Option<Leader>> {
    let mut c = etcd::KvClient::connect_lazy(endpoint, Duration::from_secs(3))?;
    let status = c.status().await?;
    let header = status.header.unwrap_or_default();
    Ok(
        (status.leader != 0 && status.leader == header.member_id).then(|| Leader {
            id: status.leader,
            address: endpoint.to_owned(),
            term: header.raft_term,
        }),
    )
}

/// A writer's connection, to either system.
#[derive(Clone)]
enum Client {
    Starling(AuthedControllerClient),
    Etcd(etcd::KvClient),
}

impl Client {
    /// Writes `value` under `key`; resolves once the write is committed.
    fn put(&self, key: String, value: String) -> impl Future<Output = Result<()>> + Send {
        let mut client = self.clone();
        async move {
            match &mut client {
                Client::Starling(c) => {
                    c.set_controller_config(SetControllerConfigRequest {
                        values: [(format!("custom.{key}"), value)].into(),
                        request_id: String::new(),
                    })
                    .await?;
                }
                Client::Etcd(c) => {
                    c.put(key.into_bytes(), value.into_bytes()).await?;
                }
            }
            Ok(())
        }
    }
}

fn random_value(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}

struct Load {
    concurrency: usize,
    duration: Duration,
    value: String,
    keys: u64,
    prefix: String,
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[idx - 1] as f64 / 1000.0
}

async fn run_load(clients: Vec<Client>, load: &Load) -> Result<serde_json::Value> {
    // Warm-up: connections established and the leader's path hot before timing.
    for (i, c) in clients.iter().enumerate() {
        c.put(format!("{}-{i}", load.prefix), load.value.clone())
            .await
            .context("warm-up write")?;
    }
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut tasks = Vec::new();
    for worker_idx in 0..load.concurrency {
        let c = clients[worker_idx % clients.len()].clone();
        let counter = counter.clone();
        let errors = errors.clone();
        let value = load.value.clone();
        let (prefix, keys) = (load.prefix.clone(), load.keys);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            while Instant::now() < deadline {
                let key_idx = counter.fetch_add(1, Ordering::Relaxed);
                let key = format!("{prefix}-{}", key_idx % keys);
                let t = Instant::now();
                match c.put(key, value.clone()).await {
                    Ok(()) => latencies_us.push(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies_us
        }));
    }
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let mean_ms = if latencies_us.is_empty() {
        0.0
    } else {
        latencies_us.iter().sum::<u64>() as f64 / latencies_us.len() as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "concurrency": load.concurrency,
        "conns": clients.len(),
        "writes": latencies_us.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed,
        "writes_per_s": latencies_us.len() as f64 / elapsed,
        "mean_ms": mean_ms,
        "p50_ms": percentile_ms(&latencies_us, 0.50),
        "p99_ms": percentile_ms(&latencies_us, 0.99),
        "max_ms": percentile_ms(&latencies_us, 1.0),
        "value_bytes": load.value.len(),
    }))
}

async fn failover(
    clients: Vec<Client>,
    kill_pid: i32,
    timeout: Duration,
) -> Result<serde_json::Value> {
    // The survivors must be writable before the kill, so the timing starts from a healthy group.
    for c in &clients {
        c.put("failover-probe".into(), "0".into())
            .await
            .context("write before the kill")?;
    }
    // Attempts overlap (a new one every PROBE_INTERVAL, each bounded by PROBE_ATTEMPT_TIMEOUT)
    // so an attempt stuck on the dead leader does not delay noticing the first commit.
    let start = Instant::now();
    kill(Pid::from_raw(kill_pid), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL {kill_pid}"))?;
    let mut attempts = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if start.elapsed() >= timeout {
                    bail!("no committed write within {timeout:?} of the kill ({attempts} attempts)");
                }
                if in_flight.len() < PROBES_IN_FLIGHT_MAX {
                    let c = clients[(attempts as usize) % clients.len()].clone();
                    attempts += 1;
                    let put = c.put("failover-probe".into(), attempts.to_string());
                    in_flight.spawn(async move { put.await.is_ok() });
                }
            }
            Some(done) = in_flight.join_next() => {
                if done.unwrap_or(false) {
                    let ms = start.elapsed().as_secs_f64() * 1000.0;
                    in_flight.abort_all();
                    return Ok(serde_json::json!({"failover_ms": ms, "attempts": attempts}));
                }
            }
        }
    }
}

async fn pauses(
    clients: Vec<Client>,
    duration: Duration,
    stop_file: Option<&std::path::Path>,
) -> Result<serde_json::Value> {
    let value = random_value(256);
    let start = Instant::now();
    let mut last_commit = Instant::now();
    let mut longest = Duration::ZERO;
    let (mut writes, mut errors, mut endpoint) = (0u64, 0u64, 0usize);
    let mut pauses_over_50ms = Vec::new();
    while start.elapsed() < duration && !stop_file.is_some_and(|f| f.exists()) {
        let put = clients[endpoint].put(format!("pauses-{}", writes % 1000), value.clone());
        match put.await {
            Ok(()) => {
                let gap = last_commit.elapsed();
                if gap > Duration::from_millis(50) {
                    pauses_over_50ms.push((gap.as_secs_f64() * 1000.0).round());
                }
                longest = longest.max(gap);
                last_commit = Instant::now();
                writes += 1;
            }
            Err(_) => {
                errors += 1;
                endpoint = (endpoint + 1) % clients.len();
            }
        }
    }
    Ok(serde_json::json!({
        "writes": writes,
        "errors": errors,
        "seconds": start.elapsed().as_secs_f64(),
        "longest_pause_ms": longest.as_secs_f64() * 1000.0,
        "pauses_over_50ms": pauses_over_50ms,
    }))
}

/// A minimal etcd v3 client: the two calls the benchmark needs, `KV.Put` and
/// `Maintenance.Status`, as hand-written prost messages carrying etcd's field numbers, over a
/// tonic channel built like the Starling client's (one HTTP/2 connection, TCP_NODELAY).
mod etcd {
    use std::time::Duration;

    use anyhow::{Context, Result};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::{Channel, Endpoint};

    /// `etcdserverpb.ResponseHeader`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    /// `etcdserverpb.PutRequest` (key and value; no lease, no prev_kv).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// `etcdserverpb.PutResponse` (the header; prev_kv is never asked for).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    /// `etcdserverpb.StatusRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    /// `etcdserverpb.StatusResponse` (the fields read here).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }

    /// One connection to one etcd member.
    #[derive(Clone)]
    pub struct KvClient {
        grpc: tonic::client::Grpc<Channel>,
    }

    impl KvClient {
        /// A lazily connecting plaintext channel to `endpoint` (host:port).
        pub fn connect_lazy(endpoint: &str, timeout: Duration) -> Result<Self> {
            let channel = Endpoint::from_shared(format!("http://{endpoint}"))
                .with_context(|| format!("bad endpoint {endpoint}"))?
                .connect_timeout(starling_cluster_tests::client::CONNECT_TIMEOUT)
                .timeout(timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            Ok(Self {
                grpc: tonic::client::Grpc::new(channel),
            })
        }

        async fn unary<Q, R>(&mut self, path: &'static str, request: Q) -> Result<R, tonic::Status>
        where
            Q: prost::Message + Send + Sync + 'static,
            R: prost::Message + Default + Send + Sync + 'static,
        {
            self.grpc
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("etcd connection: {e}")))?;
            let codec = tonic_prost::ProstCodec::<Q, R>::default();
            self.grpc
                .unary(
                    tonic::Request::new(request),
                    PathAndQuery::from_static(path),
                    codec,
                )
                .await
                .map(tonic::Response::into_inner)
        }

        /// `KV.Put`: returns once etcd committed the write.
        pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse> {
            Ok(self
                .unary("/etcdserverpb.KV/Put", PutRequest { key, value })
                .await?)
        }

        /// `Maintenance.Status` of the member this client talks to.
        pub async fn status(&mut self) -> Result<StatusResponse> {
            Ok(self
                .unary("/etcdserverpb.Maintenance/Status", StatusRequest {})
                .await?)
        }
    }
}
