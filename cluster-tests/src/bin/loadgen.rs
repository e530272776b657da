//! Write-load generator for `scripts/bench.sh`: SetControllerConfig of `custom.<prefix>-<i>` with a
//! fixed-size value over TLS with the registration's admin token, N in flight for a fixed time;
//! and the leader-failover probe (SIGKILL the leader, time the next committed write).
//! Prints one JSON line per run. Talks only to the registration's (loopback) endpoints.

use std::path::PathBuf;
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

/// Starling write-load generator.
#[derive(Parser, Debug)]
struct Args {
    /// The controller's registration file (`ctld init` writes it).
    #[arg(long)]
    registration: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints the leader's node id and address as JSON.
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
        /// Distinct keys written (`custom.<prefix>-<i % keys>`).
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
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let registration = Registration::load(&args.registration)?;
    match args.command {
        Cmd::Leader => {
            let (id, address) = find_leader(&registration).await?;
            println!("{}", serde_json::json!({"leader": id, "address": address}));
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
                "leader" => vec![find_leader(&registration).await?.1],
                "all" => registration.api_endpoints.clone(),
                other => bail!("--target must be leader or all, not {other:?}"),
            };
            let load = Load {
                concurrency: concurrency.max(1),
                duration: Duration::from_secs_f64(duration_secs),
                value_bytes,
                keys: keys.max(1),
                prefix,
            };
            let report = run_load(&registration, &endpoints, conns.max(1), &load).await?;
            println!("{report}");
        }
        Cmd::Failover {
            kill_pid,
            kill_endpoint,
            timeout_secs,
        } => {
            let report = failover(
                &registration,
                kill_pid,
                &kill_endpoint,
                Duration::from_secs_f64(timeout_secs),
            )
            .await?;
            println!("{report}");
        }
    }
    Ok(())
}

fn client(
    registration: &Registration,
    endpoint: &str,
    timeout: Duration,
) -> Result<AuthedControllerClient> {
    controller_client(
        endpoint,
        &registration.ca_cert,
        Some(&registration.token),
        timeout,
    )
}

/// Asks the endpoints in turn who leads; returns its id and client address.
async fn find_leader(registration: &Registration) -> Result<(u64, String)> {
    let mut last_error = None;
    for endpoint in &registration.api_endpoints {
        let mut c = client(registration, endpoint, Duration::from_secs(3))?;
        match c.show_controller(ShowControllerRequest {}).await {
            Ok(info) => {
                let info = info.into_inner();
                if let Some(leader) = info.leader_id {
                    if let Some(member) = info.members.iter().find(|m| m.id == leader) {
                        return Ok((leader, member.address.clone()));
                    }
                }
                last_error = Some(format!("{endpoint}: no leader known"));
            }
            Err(status) => last_error = Some(format!("{endpoint}: {status}")),
        }
    }
    bail!("no leader found: {}", last_error.unwrap_or_default())
}

struct Load {
    concurrency: usize,
    duration: Duration,
    value_bytes: usize,
    keys: u64,
    prefix: String,
}

fn request(prefix: &str, keys: u64, key_idx: u64, value: &str) -> SetControllerConfigRequest {
    SetControllerConfigRequest {
        values: [(
            format!("custom.{prefix}-{}", key_idx % keys),
            value.to_owned(),
        )]
        .into(),
        request_id: String::new(),
    }
}

async fn run_load(
    registration: &Registration,
    endpoints: &[String],
    conns: usize,
    load: &Load,
) -> Result<serde_json::Value> {
    let clients = (0..conns)
        .map(|i| client(registration, &endpoints[i % endpoints.len()], RPC_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    let value: String = {
        let mut rng = rand::thread_rng();
        (0..load.value_bytes)
            .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
            .collect()
    };
    // Warm-up: connections established and the leader's path hot before timing.
    for (i, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        c.set_controller_config(request(&load.prefix, load.keys, i as u64, &value))
            .await
            .context("warm-up write")?;
    }
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + load.duration;
    let mut tasks = Vec::new();
    for worker_idx in 0..load.concurrency {
        let mut c = clients[worker_idx % clients.len()].clone();
        let counter = counter.clone();
        let errors = errors.clone();
        let value = value.clone();
        let (prefix, keys) = (load.prefix.clone(), load.keys);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            while Instant::now() < deadline {
                let key_idx = counter.fetch_add(1, Ordering::Relaxed);
                let req = request(&prefix, keys, key_idx, &value);
                let t = Instant::now();
                match c.set_controller_config(req).await {
                    Ok(_) => latencies_us.push(t.elapsed().as_micros() as u64),
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
    let pct_ms = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((latencies_us.len() as f64 * p).ceil() as usize).clamp(1, latencies_us.len());
        latencies_us[idx - 1] as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "concurrency": load.concurrency,
        "writes": latencies_us.len(),
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed,
        "writes_per_s": latencies_us.len() as f64 / elapsed,
        "p50_ms": pct_ms(0.50),
        "p99_ms": pct_ms(0.99),
        "value_bytes": load.value_bytes,
        "endpoints": endpoints,
    }))
}

async fn failover(
    registration: &Registration,
    kill_pid: i32,
    kill_endpoint: &str,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let survivors: Vec<String> = registration
        .api_endpoints
        .iter()
        .filter(|e| e.as_str() != kill_endpoint)
        .cloned()
        .collect();
    if survivors.is_empty() {
        bail!("no endpoint besides {kill_endpoint}");
    }
    let clients = survivors
        .iter()
        .map(|e| client(registration, e, PROBE_ATTEMPT_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    let probe = |n: u64| SetControllerConfigRequest {
        values: [("custom.failover-probe".to_owned(), n.to_string())].into(),
        request_id: String::new(),
    };
    // The survivors must be writable before the kill, so the timing starts from a healthy group.
    for c in &clients {
        c.clone()
            .set_controller_config(probe(0))
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
                    let mut c = clients[(attempts as usize) % clients.len()].clone();
                    attempts += 1;
                    let request = probe(attempts);
                    in_flight.spawn(async move { c.set_controller_config(request).await.is_ok() });
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
