//! `migration_bench`: migrates a model of N units between two running controllers and measures
//! it. It creates the model on the source (machines through `AddMachine`, a charm uploaded and
//! deployed, units added in batches), holds one simulated agent per machine (watch, heartbeat,
//! and the agents' side of a migration: validation login to the target in CATCHUP, switch on
//! the redirect), runs `--writers` clients that each write to the model continuously (following
//! the redirect), and migrates the model `--migrations` times, back and forth, following each
//! migration to its end and until every agent is on its target.
//!
//! Reported for each migration: total time (record start to DONE), each phase's duration, the
//! import's throughput, the write pause (the longest gap between two acknowledged writes of any
//! one writer, from the migration's start until its agents and writers are on the target) and
//! where it went, and the time from SUCCESS until every agent receives updates from the target
//! (a `MIGRATION_RUN_JSON` line each); then the write pause's p50, p99 and maximum over all the
//! migrations and one `MIGRATION_BENCH_JSON` line (the first migration's figures and those).
//! Every step is bounded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use sha2::{Digest, Sha256};
use starling_cluster_tests::client::retry_on_target;
use starling_cluster_tests::sim_agent::{
    run_migrating_agent, shared_channels, AgentAuth, AgentConfigYaml, MigrationCounters,
};
use starling_cluster_tests::{controller_client, AuthedControllerClient, Registration};
use starling_proto::controller::{
    AddMachineRequest, AddModelRequest, AddUnitRequest, CharmChunk, DeployRequest, MigrateRequest,
    MigrationStatusRequest, ModelRef, SetControllerConfigRequest, SetModelConfigRequest,
};
use starling_proto::limits::BLOB_CHUNK_BYTES_MAX;
use starling_proto::migration::TargetController;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "Measure a live migration of an N-unit model between two controllers")]
struct Args {
    /// The source controller's registration file.
    #[arg(long)]
    source: PathBuf,
    /// The target controller's registration file.
    #[arg(long)]
    target: PathBuf,
    /// Units in the model.
    #[arg(long, default_value_t = 1000)]
    units: usize,
    /// Machines (one simulated agent each); units are spread round-robin.
    #[arg(long, default_value_t = 100)]
    machines: usize,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 50)]
    agents_per_connection: usize,
    /// Seconds allowed for each step (setup, agents, the migration).
    #[arg(long, default_value_t = 600)]
    step_timeout: u64,
    /// MiB of incompressible payload in the charm (the target lacks it, so it is staged too).
    #[arg(long, default_value_t = 0)]
    charm_mib: usize,
    /// Migrations, back and forth between the two controllers; the write pause is reported
    /// for each and as percentiles over all of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    migrations: u64,
    /// Clients writing to the model continuously, each one write at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    writers: u64,
}

const UNITS_PER_CALL: usize = 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A tar.gz holding a charm whose workload does nothing (the agents are simulated), with
/// `payload_mib` MiB of pseudo-random bytes beside its metadata.
fn charm_archive(payload_mib: usize) -> Result<Vec<u8>> {
    let metadata =
        b"name: idle\nsummary: does nothing (migration benchmark)\ncommand: sleep 3600\n";
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "metadata.yaml", &metadata[..])?;
    if payload_mib > 0 {
        // xorshift64: incompressible, and the same archive every run.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let payload: Vec<u8> = (0..payload_mib * 1024 * 1024 / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let mut header = tar::Header::new_gnu();
        header.set_size(payload.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "payload.bin", &payload[..])?;
    }
    let gz = tar.into_inner()?;
    Ok(gz.finish()?)
}

async fn admin(registration: &Registration) -> Result<AuthedControllerClient> {
    controller_client(
        registration.api_endpoints.first().context("no endpoint")?,
        &registration.ca_cert,
        Some(&registration.token),
        Duration::from_secs(120),
    )
}

/// Acknowledged writes of the continuous writer (ms since the epoch), the refusals, and the
/// writes sent again to the target after the fence answered them with the redirect.
#[derive(Default)]
struct WriterLog {
    acked: Vec<i64>,
    /// For each acknowledged write (same order as `acked`): when it was sent and, if the fence
    /// answered it with the redirect, when that answer came (ms since the epoch).
    sent: Vec<(i64, Option<i64>)>,
    refused: u64,
    retried_on_target: u64,
}

async fn writer(
    model: String,
    mut clients: BTreeMap<String, AuthedControllerClient>,
    mut current: String,
    log: Arc<Mutex<WriterLog>>,
    until: tokio::time::Instant,
) {
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        n += 1;
        let client = clients.get_mut(&current).expect("known controller");
        let request = SetModelConfigRequest {
            model: Some(ModelRef {
                name: model.clone(),
                uuid: String::new(),
            }),
            values: [(format!("bench-{}", n % 64), n.to_string())].into(),
            request_id: format!("bench-writer-{n}-{}", rand::random::<u32>()),
        };
        let sent = now_ms();
        let mut redirected = None;
        let mut outcome = client.set_model_config(request.clone()).await;
        // A write the fence held and the migration then moved: once more, on the target,
        // under the same request id (as ctl does).
        if let Some(target) = outcome.as_ref().err().and_then(retry_on_target) {
            if clients.contains_key(&target) {
                redirected = Some(now_ms());
                log.lock().expect("lock").retried_on_target += 1;
                current = target;
                let client = clients.get_mut(&current).expect("known controller");
                outcome = client.set_model_config(request).await;
            }
        }
        match outcome {
            Ok(_) => {
                let mut log = log.lock().expect("lock");
                log.acked.push(now_ms());
                log.sent.push((sent, redirected));
            }
            Err(status) => {
                eprintln!(
                    "write refused ({} ms after it was sent{}): {:?} {}",
                    now_ms() - sent,
                    if redirected.is_some() {
                        ", retried on the target"
                    } else {
                        ""
                    },
                    status.code(),
                    status.message()
                );
                log.lock().expect("lock").refused += 1;
                if let Some(rest) = status.message().split("migrated to controller \"").nth(1) {
                    let next = rest.split('"').next().unwrap_or_default().to_owned();
                    if clients.contains_key(&next) {
                        current = next;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.units > 0 && args.machines > 0,
        "--units and --machines must be positive"
    );
    let step_timeout = Duration::from_secs(args.step_timeout);
    let source = Registration::load(&args.source)?;
    let target = Registration::load(&args.target)?;
    let mut src = admin(&source).await?;
    let mut dst = admin(&target).await?;
    for client in [&mut src, &mut dst] {
        client
            .set_controller_config(SetControllerConfigRequest {
                values: [("agent-heartbeat-interval".to_owned(), "2s".to_owned())].into(),
                request_id: String::new(),
            })
            .await
            .context("setting the heartbeat interval")?;
    }
    let model = format!("bench-{}", rand::random::<u32>());
    let model_ref = || {
        Some(ModelRef {
            name: model.clone(),
            uuid: String::new(),
        })
    };
    src.add_model(AddModelRequest {
        name: model.clone(),
        ..Default::default()
    })
    .await
    .context("adding the model")?;

    eprintln!("creating {} machines", args.machines);
    let setup_started = Instant::now();
    let mut configs = Vec::with_capacity(args.machines);
    let mut in_flight = JoinSet::new();
    for _ in 0..args.machines {
        let mut client = src.clone();
        let model = model_ref();
        in_flight.spawn(async move {
            client
                .add_machine(AddMachineRequest {
                    model,
                    ..Default::default()
                })
                .await
        });
        if in_flight.len() >= 64 {
            let done = in_flight
                .join_next()
                .await
                .context("a task")???
                .into_inner();
            configs.push(serde_saphyr::from_str::<AgentConfigYaml>(
                std::str::from_utf8(&done.agent_config_yaml)?,
            )?);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        let done = done??.into_inner();
        configs.push(serde_saphyr::from_str::<AgentConfigYaml>(
            std::str::from_utf8(&done.agent_config_yaml)?,
        )?);
    }
    configs.sort_by_key(|c| c.machine_id.parse::<u64>().unwrap_or(0));

    let archive = charm_archive(args.charm_mib)?;
    let digest = hex::encode(Sha256::digest(&archive));
    let size = archive.len() as u64;
    let chunks: Vec<CharmChunk> = archive
        .chunks(BLOB_CHUNK_BYTES_MAX)
        .enumerate()
        .map(|(i, data)| CharmChunk {
            digest: digest.clone(),
            size,
            offset: (i * BLOB_CHUNK_BYTES_MAX) as u64,
            data: data.to_vec(),
        })
        .collect();
    src.upload_charm(futures::stream::iter(chunks))
        .await
        .context("uploading the charm")?;
    let placement: Vec<String> = (0..args.units)
        .map(|i| configs[i % configs.len()].machine_id.clone())
        .collect();
    for (batch, machines) in placement.chunks(UNITS_PER_CALL).enumerate() {
        if batch == 0 {
            src.deploy(DeployRequest {
                model: model_ref(),
                application: "idle".into(),
                charm_digest: digest.clone(),
                to: machines.to_vec(),
                ..Default::default()
            })
            .await
            .context("deploying")?;
        } else {
            src.add_unit(AddUnitRequest {
                model: model_ref(),
                application: "idle".into(),
                to: machines.to_vec(),
                ..Default::default()
            })
            .await
            .context("adding units")?;
        }
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} units on {} machines in {setup_secs:.1}s",
        args.units, args.machines
    );

    // The agents, sharing connections, and the writer.
    let counters = Arc::new(MigrationCounters::default());
    let channels = shared_channels(args.agents_per_connection, Duration::from_secs(60));
    let until = tokio::time::Instant::now() + 3 * step_timeout;
    let mut agents = JoinSet::new();
    for config in &configs {
        // Each agent on its own node of the controller, as agentd picks it.
        let endpoint = &source.api_endpoints[starling_proto::endpoints::first_endpoint(
            &config.model_uuid,
            &config.machine_id,
            source.api_endpoints.len(),
        )];
        agents.spawn(run_migrating_agent(
            channels(endpoint, &source.ca_cert)?,
            AgentAuth::new(config)?,
            counters.clone(),
            channels.clone(),
            until,
        ));
    }
    let deadline = Instant::now() + step_timeout;
    while (counters.connected.load(Ordering::Relaxed) as usize) < args.machines {
        ensure!(Instant::now() < deadline, "agents did not connect in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Presence is renewed every heartbeat interval; give every agent time to be seen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer_logs: Vec<_> = (0..args.writers)
        .map(|_| Arc::new(Mutex::new(WriterLog::default())))
        .collect();
    let clients = BTreeMap::from([
        (source.name.clone(), src.clone()),
        (target.name.clone(), dst.clone()),
    ]);
    let writer_until = tokio::time::Instant::now()
        + u32::try_from(args.migrations + 1).unwrap_or(u32::MAX) * step_timeout;
    let writer_tasks: Vec<_> = writer_logs
        .iter()
        .map(|log| {
            tokio::spawn(writer(
                model.clone(),
                clients.clone(),
                source.name.clone(),
                log.clone(),
                writer_until,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let bench = Bench {
        args: &args,
        model: &model,
        counters: &counters,
        writer_logs: &writer_logs,
        step_timeout,
        setup_secs,
        seen: Mutex::new((0, 0)),
    };
    let mut runs = Vec::new();
    for n in 0..args.migrations {
        // Back and forth: the odd migrations bring the model home.
        let (from, to, from_client) = if n % 2 == 0 {
            (&source, &target, &src)
        } else {
            (&target, &source, &dst)
        };
        runs.push(bench.migrate_once(n, from, to, from_client.clone()).await?);
    }
    for task in writer_tasks {
        task.abort();
    }
    agents.abort_all();

    // Over every migration: the write pause (each migration's longest gap between two
    // acknowledged writes of any one writer), refusals, totals.
    let figure =
        |key: &str| -> Vec<i64> { runs.iter().map(|r| r[key].as_i64().unwrap_or(-1)).collect() };
    let pauses = figure("write_unavailability_ms");
    let totals = figure("total_ms");
    let lock_to_active = figure("lock_to_active_ms");
    let refused: u64 = runs
        .iter()
        .map(|r| r["writes_refused"].as_u64().unwrap_or(0))
        .sum();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "over {} migration(s), {} writer(s): write pause p50 {} ms, p99 {} ms, max {} ms; \
         total p50 {} ms; writes refused {refused}",
        runs.len(),
        args.writers,
        percentile(&pauses, 50),
        percentile(&pauses, 99),
        pauses.iter().max().copied().unwrap_or(-1),
        percentile(&totals, 50),
    )?;
    let mut summary = runs[0].clone();
    let extra = serde_json::json!({
        "migrations": runs.len(),
        "writers": args.writers,
        "write_pause_ms_each": pauses,
        "write_pause_p50_ms": percentile(&pauses, 50),
        "write_pause_p99_ms": percentile(&pauses, 99),
        "write_pause_max_ms": pauses.iter().max(),
        "total_ms_each": totals,
        "total_p50_ms": percentile(&totals, 50),
        "lock_to_active_ms_each": lock_to_active,
        "writes_refused_all": refused,
    });
    if let (Some(summary), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
        summary.extend(extra.clone());
    }
    writeln!(out, "MIGRATION_BENCH_JSON {summary}")?;
    Ok(())
}

/// The `p`th percentile (nearest rank) of `values`; -1 when there are none.
fn percentile(values: &[i64], p: usize) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return -1;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What every migration of one run shares.
struct Bench<'a> {
    args: &'a Args,
    model: &'a str,
    counters: &'a Arc<MigrationCounters>,
    writer_logs: &'a [Arc<Mutex<WriterLog>>],
    step_timeout: Duration,
    setup_secs: f64,
    /// Refusals and redirect retries of all writers as last counted.
    seen: Mutex<(u64, u64)>,
}

impl Bench<'_> {
    fn model_ref(&self) -> Option<ModelRef> {
        Some(ModelRef {
            name: self.model.to_owned(),
            uuid: String::new(),
        })
    }

    /// Migration number `n` of the model from `from` to `to` (whose admin client is `src`),
    /// followed to its end and until every agent is on `to`; prints its figures and returns
    /// them as JSON.
    async fn migrate_once(
        &self,
        n: u64,
        from: &Registration,
        to: &Registration,
        mut src: AuthedControllerClient,
    ) -> Result<serde_json::Value> {
        let (args, step_timeout) = (self.args, self.step_timeout);
        self.counters.switched.store(0, Ordering::Relaxed);
        *self.counters.last_switch.lock().expect("lock") = None;
        let model = self.model;
        eprintln!("migration {n}: {model} from {} to {}", from.name, to.name);
        let started = src
            .migrate(MigrateRequest {
                model: self.model_ref(),
                target: Some(TargetController {
                    controller_uuid: to.uuid.clone(),
                    name: to.name.clone(),
                    endpoints: to.api_endpoints.clone(),
                    ca_cert: to.ca_cert.clone(),
                    ca_fingerprint: hex::encode(Sha256::digest(to.ca_cert.as_bytes())),
                    token: to.token.clone(),
                }),
                dry_run: false,
            })
            .await
            .context("starting the migration")?
            .into_inner();
        let id = started.migration_id;
        let deadline = Instant::now() + step_timeout;
        let (mut bytes, mut records) = (0u64, 0u64);
        // What the master measured: first staged byte to the import's commit, and the bytes
        // staged.
        let (mut staged_ms, mut staged_bytes) = (0u64, 0u64);
        let info = loop {
            ensure!(
                Instant::now() < deadline,
                "migration {id} did not end in time"
            );
            // Progress (bytes, records) is known only to the node that runs the master.
            for endpoint in &from.api_endpoints {
                let Ok(mut client) = controller_client(
                    endpoint,
                    &from.ca_cert,
                    Some(&from.token),
                    Duration::from_secs(5),
                ) else {
                    continue;
                };
                if let Ok(info) = client
                    .migration_status(MigrationStatusRequest {
                        model: self.model_ref(),
                    })
                    .await
                {
                    let info = info.into_inner();
                    bytes = bytes.max(info.bytes_total);
                    records = records.max(info.records_total);
                    if info.import_ms > 0 {
                        (staged_ms, staged_bytes) = (info.import_ms, info.import_bytes);
                    }
                }
            }
            let info = src
                .migration_status(MigrationStatusRequest {
                    model: self.model_ref(),
                })
                .await?
                .into_inner();
            if matches!(info.phase.as_str(), "DONE" | "ABORTDONE" | "REAPFAILED") {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if info.phase != "DONE" {
            bail!(
                "migration {id} ended in {}: {}",
                info.phase,
                info.abort_reason.unwrap_or_default()
            );
        }
        // Let the writers land on the target and the stragglers switch.
        let counters = self.counters;
        let switch_deadline = Instant::now() + step_timeout;
        while (counters.switched.load(Ordering::Relaxed) as usize) < args.machines
            && Instant::now() < switch_deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let window_end = now_ms();

        let at = |phase: &str| {
            info.history
                .iter()
                .find(|c| c.to == phase)
                .map(|c| c.at_unix_ms)
                .with_context(|| format!("no {phase} in the history"))
        };
        let (precopy, catchup, quiesce, success, logtransfer, done) = (
            at("PRECOPY")?,
            at("CATCHUP")?,
            at("QUIESCE")?,
            at("SUCCESS")?,
            at("LOGTRANSFER")?,
            at("DONE")?,
        );
        let total_ms = info.ended_unix_ms.unwrap_or(done) - info.started_unix_ms;
        let import_secs = ((catchup - precopy) as f64 / 1000.0).max(0.001);
        // Each writer's gaps from the migration's start (the model stays writable until the
        // fence) to the end of this migration's window; the pause is the longest of them.
        let mut window_ms = 0;
        let mut gap = None;
        let mut first_on_target: Option<i64> = None;
        let (mut acked, mut refused, mut retried) = (0usize, 0u64, 0u64);
        for log in self.writer_logs {
            let log = log.lock().expect("lock");
            let inside = |t: i64| t >= info.started_unix_ms && t <= window_end;
            acked += log.acked.iter().filter(|t| inside(**t)).count();
            let longest = (1..log.acked.len())
                .filter(|i| inside(log.acked[*i]))
                .max_by_key(|i| log.acked[*i] - log.acked[*i - 1]);
            if let Some(i) = longest {
                let this = log.acked[i] - log.acked[i - 1];
                if this > window_ms {
                    window_ms = this;
                    // Where the longest gap went, in ms from the lock (QUIESCE): the last
                    // acknowledged write before it, the next write's send, the fence's
                    // redirect answer, its acknowledgement.
                    let (sent, redirected) = log.sent[i];
                    gap = Some(serde_json::json!({
                        "previous_ack": log.acked[i - 1] - quiesce,
                        "sent": sent - quiesce,
                        "redirected": redirected.map(|t| t - quiesce),
                        "acked": log.acked[i] - quiesce,
                        "success": success - quiesce,
                        "active": logtransfer - quiesce,
                    }));
                }
            }
            if let Some(t) = log.acked.iter().find(|t| **t >= logtransfer) {
                first_on_target = Some(first_on_target.map_or(*t, |f| f.min(*t)));
            }
            // Refusals and retries are counted from the run's start; this migration's are
            // the increase since the last one.
            refused += log.refused;
            retried += log.retried_on_target;
        }
        let (refused, retried) = {
            let mut seen = self.seen.lock().expect("lock");
            let this = (refused - seen.0, retried - seen.1);
            *seen = (refused, retried);
            this
        };
        let switched = counters.switched.load(Ordering::Relaxed);
        let last_switch = *counters.last_switch.lock().expect("lock");
        // Instants → ms since the epoch.
        let agents_ms = last_switch.map(|t| {
            let ago = Instant::now().saturating_duration_since(t).as_millis() as i64;
            now_ms() - ago - success
        });
        let mb = bytes as f64 / (1024.0 * 1024.0);
        let mut out = std::io::stdout();
        writeln!(out, "units                      {}", args.units)?;
        writeln!(out, "machines (agents)          {}", args.machines)?;
        writeln!(
            out,
            "migration {n} ({} → {})    {id} {}",
            from.name, to.name, info.phase
        )?;
        writeln!(out, "total (start → DONE)       {total_ms} ms")?;
        writeln!(
            out,
            "  PRECHECK                 {} ms",
            precopy - info.started_unix_ms
        )?;
        writeln!(out, "  PRECOPY (copy, import)   {} ms", catchup - precopy)?;
        writeln!(out, "  CATCHUP (changes, agents) {} ms", quiesce - catchup)?;
        writeln!(out, "  QUIESCE (the fence)      {} ms", success - quiesce)?;
        writeln!(
            out,
            "  SUCCESS → activated      {} ms",
            logtransfer - success
        )?;
        writeln!(out, "  LOGTRANSFER + REAP       {} ms", done - logtransfer)?;
        writeln!(
            out,
            "lock → target active       {} ms",
            logtransfer - quiesce
        )?;
        writeln!(
            out,
            "write unavailability       {window_ms} ms (longest gap between acknowledged writes of one of {} writer(s))",
            self.writer_logs.len()
        )?;
        if let Some(gap) = &gap {
            writeln!(out, "longest gap, ms from lock  {gap}")?;
        }
        writeln!(
            out,
            "writes acked / refused     {acked} / {refused} ({retried} retried on the target after the fence)"
        )?;
        writeln!(
            out,
            "import                     {mb:.2} MB, {records} records, {:.2} MB/s, {:.0} records/s",
            mb / import_secs,
            records as f64 / import_secs
        )?;
        let staged_secs = staged_ms as f64 / 1000.0;
        let staged_mb = staged_bytes as f64 / (1024.0 * 1024.0);
        // A staging that began and ended between two of the bench's polls has no duration to
        // divide by: its rates are left out rather than made up.
        let staged_rates =
            (staged_ms > 0).then(|| (staged_mb / staged_secs, records as f64 / staged_secs));
        match staged_rates {
            Some((mb_per_s, records_per_s)) => writeln!(
                out,
                "staging + import commit    {staged_mb:.2} MB in {staged_ms} ms: {mb_per_s:.2} MB/s, {records_per_s:.0} records/s"
            )?,
            None => writeln!(
                out,
                "staging + import commit    {staged_mb:.2} MB, too quick for the bench's polls to time"
            )?,
        }
        writeln!(
            out,
            "agents on the target       {switched}/{} after {} ms from SUCCESS",
            args.machines,
            agents_ms.unwrap_or(-1)
        )?;
        let figures = serde_json::json!({
            "units": args.units,
            "machines": args.machines,
            "migration_id": id,
            "total_ms": total_ms,
            "precheck_ms": precopy - info.started_unix_ms,
            "precopy_ms": catchup - precopy,
            "catchup_ms": quiesce - catchup,
            "fence_ms": success - quiesce,
            "activate_ms": logtransfer - success,
            "logtransfer_reap_ms": done - logtransfer,
            "lock_to_active_ms": logtransfer - quiesce,
            "write_unavailability_ms": window_ms,
            "longest_gap_ms_from_lock": gap,
            "first_write_on_target_after_active_ms": first_on_target.map(|t| t - logtransfer),
            "writes_acked": acked,
            "writes_refused": refused,
            "writes_retried_on_target": retried,
            "description_bytes": bytes,
            "records": records,
            "import_mb_per_s": mb / import_secs,
            "import_records_per_s": records as f64 / import_secs,
            "charm_mib": args.charm_mib,
            "staged_bytes": staged_bytes,
            "staged_import_ms": staged_ms,
            "staged_import_mb_per_s": staged_rates.map(|r| r.0),
            "staged_import_records_per_s": staged_rates.map(|r| r.1),
            "agents_switched": switched,
            "agents_all_on_target_ms_after_success": agents_ms,
            "setup_secs": self.setup_secs,
        });
        writeln!(out, "MIGRATION_RUN_JSON {figures}")?;
        Ok(figures)
    }
}
