//! `agent_load`: holds N simulated machine agents against a controller node over real TLS gRPC,
//! to measure how much controller memory each connected agent costs.
//!
//! It creates a model and N machines through the Controller API (`AddMachine`, many in flight),
//! using the admin token of a registration file; then every agent opens a `Watch` stream with
//! its own credential and heartbeats at the interval the controller announces. Agents share a
//! few HTTP/2 connections (`--agents-per-connection`), or each has its own
//! (`--connections-per-agent`), as real agents do. It prints the controller node's RSS (VmRSS of
//! `--ctld-pid`) after the machines exist and again with every agent connected, the KB per
//! agent, and one JSON line. An agent whose watch fails opens it again after a pause, as
//! `agentd` does, and the connect step prints its progress every 5 s. Everything is bounded by
//! `--duration` and per-step deadlines.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use starling_cluster_tests::sim_agent::{AgentAuth, AgentConfigYaml};
use starling_cluster_tests::{controller_client, tls_channel, Registration};
use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::{HeartbeatRequest, WatchRequest};
use starling_proto::controller::{AddMachineRequest, AddModelRequest, ModelRef};
use tokio::task::JoinSet;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Hold N simulated machine agents against a controller node")]
struct Args {
    /// The controller's registration file (`ctld init` writes it).
    #[arg(long)]
    registration: PathBuf,
    /// The node to connect to (host:port); the registration's first endpoint by default.
    #[arg(long)]
    endpoint: Option<String>,
    /// How many agents to hold.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    agents_per_connection: usize,
    /// Give every agent its own connection, as real agents have.
    #[arg(long)]
    connections_per_agent: bool,
    /// The pid of the `ctld` whose memory is measured.
    #[arg(long)]
    ctld_pid: u32,
    /// Seconds to hold the agents once all are connected (bounds the run).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// AddMachine calls in flight.
    #[arg(long, default_value_t = 64)]
    add_machine_in_flight: usize,
    /// Seconds allowed for creating the machines and for connecting the agents, each.
    #[arg(long, default_value_t = 600)]
    step_timeout: u64,
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS line")
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    updates: AtomicU64,
    heartbeats: AtomicU64,
    errors: AtomicU64,
}

/// One agent: a watch stream and heartbeats until `until`.
async fn run_agent(
    channel: Channel,
    auth: AgentAuth,
    counters: Arc<Counters>,
    until: tokio::time::Instant,
) {
    let mut client = AgentClient::with_interceptor(channel, auth);
    let mut connected = false;
    // As agentd does, a failed watch is opened again after a pause (1-2 s, jittered), until
    // the run ends.
    'watch: while tokio::time::Instant::now() < until {
        if connected {
            connected = false;
            counters.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let mut stream = match client.watch(WatchRequest { known_revision: 0 }).await {
            Ok(response) => response.into_inner(),
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                retry_pause(until).await;
                continue;
            }
        };
        let mut interval = Duration::from_secs(10);
        let mut next_heartbeat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break 'watch,
                message = stream.message() => match message {
                    Ok(Some(update)) => {
                        counters.updates.fetch_add(1, Ordering::Relaxed);
                        if update.heartbeat_interval_ms > 0 {
                            interval = Duration::from_millis(update.heartbeat_interval_ms);
                        }
                        if !connected {
                            connected = true;
                            counters.connected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        retry_pause(until).await;
                        continue 'watch;
                    }
                },
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    match client.heartbeat(HeartbeatRequest {}).await {
                        Ok(_) => counters.heartbeats.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
                    };
                    next_heartbeat = tokio::time::Instant::now() + interval;
                }
            }
        }
    }
    if connected {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// 1-2 s, or less when the run ends sooner.
async fn retry_pause(until: tokio::time::Instant) {
    let pause = Duration::from_millis(1000 + rand::random::<u64>() % 1000);
    tokio::time::sleep_until(until.min(tokio::time::Instant::now() + pause)).await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.agents == 0 || args.agents_per_connection == 0 {
        bail!("--agents and --agents-per-connection must be positive");
    }
    let registration = Registration::load(&args.registration)?;
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| registration.api_endpoints.first().cloned())
        .context("no endpoint")?;
    let rpc_timeout = Duration::from_secs(30);
    let step_timeout = Duration::from_secs(args.step_timeout);
    let mut admin = controller_client(
        &endpoint,
        &registration.ca_cert,
        Some(&registration.token),
        rpc_timeout,
    )?;
    let rss_start = rss_kib(args.ctld_pid)?;

    let model_name = format!("agent-load-{}", rand::random::<u32>());
    admin
        .add_model(AddModelRequest {
            name: model_name.clone(),
            ..Default::default()
        })
        .await
        .context("adding the model")?;
    eprintln!("creating {} machines in model {model_name}", args.agents);
    let started = Instant::now();
    let mut configs = Vec::with_capacity(args.agents);
    let mut in_flight = JoinSet::new();
    let mut requested = 0;
    while configs.len() < args.agents {
        if started.elapsed() > step_timeout {
            bail!("creating machines took longer than {step_timeout:?}");
        }
        while requested < args.agents && in_flight.len() < args.add_machine_in_flight {
            let mut client = admin.clone();
            let model = ModelRef {
                name: model_name.clone(),
                ..Default::default()
            };
            in_flight.spawn(async move {
                client
                    .add_machine(AddMachineRequest {
                        model: Some(model),
                        ..Default::default()
                    })
                    .await
            });
            requested += 1;
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let response = done?.context("AddMachine")?.into_inner();
        let config: AgentConfigYaml =
            serde_saphyr::from_str(std::str::from_utf8(&response.agent_config_yaml)?)
                .context("agent config")?;
        configs.push(config);
    }
    let machines_secs = started.elapsed().as_secs_f64();
    eprintln!("{} machines in {machines_secs:.1}s", configs.len());
    let rss_machines = rss_kib(args.ctld_pid)?;

    let per_connection = if args.connections_per_agent {
        1
    } else {
        args.agents_per_connection
    };
    let n_connections = args.agents.div_ceil(per_connection);
    let channels: Vec<Channel> = (0..n_connections)
        .map(|_| tls_channel(&endpoint, &registration.ca_cert, None, rpc_timeout))
        .collect::<Result<_>>()?;
    let counters = Arc::new(Counters::default());
    let connect_deadline = Instant::now() + step_timeout;
    // Agents run until the hold ends; the hold starts once every agent is connected.
    let until = tokio::time::Instant::now() + step_timeout + Duration::from_secs(args.duration);
    let mut agents = JoinSet::new();
    for (idx, config) in configs.iter().enumerate() {
        agents.spawn(run_agent(
            channels[idx / per_connection].clone(),
            AgentAuth::new(config)?,
            counters.clone(),
            until,
        ));
    }
    let connect_started = Instant::now();
    let mut last_progress = Instant::now();
    while (counters.connected.load(Ordering::Relaxed) as usize) < args.agents {
        if Instant::now() > connect_deadline {
            eprintln!(
                "only {} of {} agents connected within {step_timeout:?}",
                counters.connected.load(Ordering::Relaxed),
                args.agents
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "{:.0}s: {} of {} agents connected, {} errors",
                connect_started.elapsed().as_secs_f64(),
                counters.connected.load(Ordering::Relaxed),
                args.agents,
                counters.errors.load(Ordering::Relaxed)
            );
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "{} agents connected in {connect_secs:.1}s over {n_connections} connections; holding {}s",
        counters.connected.load(Ordering::Relaxed),
        args.duration
    );
    // Hold: sample the node's memory at the end, when every agent has heartbeat a few times.
    let hold_end = Instant::now() + Duration::from_secs(args.duration);
    let mut rss_peak = 0;
    while Instant::now() < hold_end {
        rss_peak = rss_peak.max(rss_kib(args.ctld_pid)?);
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
    }
    let rss_agents = rss_kib(args.ctld_pid)?;
    let connected = counters.connected.load(Ordering::Relaxed);
    let heartbeats = counters.heartbeats.load(Ordering::Relaxed);
    let updates = counters.updates.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    agents.abort_all();
    while agents.join_next().await.is_some() {}

    let kib_per_agent = rss_agents.saturating_sub(rss_machines) as f64 / args.agents as f64;
    println!("agents            {}", args.agents);
    println!("connected         {connected}");
    println!("connections       {n_connections}");
    println!("heartbeats        {heartbeats}");
    println!("watch updates     {updates}");
    println!("errors            {errors}");
    println!("rss start         {rss_start} KiB");
    println!("rss with machines {rss_machines} KiB");
    println!("rss with agents   {rss_agents} KiB (peak {rss_peak} KiB)");
    println!("KiB per agent     {kib_per_agent:.1}");
    println!(
        "{}",
        serde_json::json!({
            "agents": args.agents,
            "connected": connected,
            "connections": n_connections,
            "heartbeats": heartbeats,
            "errors": errors,
            "rss_start_kib": rss_start,
            "rss_machines_kib": rss_machines,
            "rss_agents_kib": rss_agents,
            "rss_peak_kib": rss_peak,
            "kib_per_agent": kib_per_agent,
            "machines_secs": machines_secs,
            "connect_secs": connect_secs,
        })
    );
    Ok(())
}
