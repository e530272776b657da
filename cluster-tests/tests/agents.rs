//! Machine agents against a real controller (issue "Machine agents"): three real `agentd`
//! processes run six `counter` workloads (two per machine) for a 3-node controller, and the
//! workloads never notice the controller's trouble.
//!
//! Phases: every workload runs and status says so; the controller leader is SIGKILLed (same
//! workload pids, agents reconnect, a config change made afterwards reaches the workloads); the
//! whole controller is SIGKILLed while a workload is killed (the agent restarts it, is itself
//! SIGKILLed and restarted, and the queued reports arrive from its outbox file once the
//! controller is back); one `agentd` is SIGKILLed and restarted
//! (its workloads are adopted, not duplicated); the agents are stopped with SIGTERM and leave
//! their workloads running.
//!
//! Everything is driven through `ctl` where the contract (docs/ctl.md) says what it prints, and
//! through the `Controller` gRPC API where a check needs a status' `since` or a log record's
//! time. Every agent and every workload process group the test caused is killed on drop, by
//! pid, even when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use starling_cluster_tests::fleet::{
    counter_groups, has_env, rotate_endpoints, running, wait_for, Ctl, Fleet, Machine, WorkloadId,
    CONDITION_WAIT,
};
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{ClusterOptions, LocalCluster};
use starling_proto::controller::{DebugLogRequest, FullStatus, ModelRef, StatusRequest};
use starling_proto::model::{LogLevel, LogRecord};
use tokio::runtime::Runtime;
use tracing::info;

/// The controller's name in the client store.
const CONTROLLER: &str = "agents";
/// The model's short name.
const MODEL: &str = "fleet";
/// `-m` argument of model-scoped `ctl` commands.
const MODEL_ARG: &str = "agents:fleet";
/// The application the counter charm becomes.
const APP: &str = "counter";
/// Machines, and the machine of each unit in deploy order.
const N_MACHINES: usize = 3;
const PLACEMENT: &str = "0,0,1,1,2,2";
const N_UNITS: usize = 6;
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- ctl

/// `ctl status --format json` of the model.
fn status(ctl: &Ctl) -> Result<Value> {
    let stdout = ctl.ok(&["status", "-m", MODEL_ARG, "--format", "json"])?;
    serde_json::from_str(&stdout).with_context(|| format!("status is not JSON:\n{stdout}"))
}

/// Checks `ctl status --format json`: the application has `N_UNITS` units, every unit's
/// workload is `active` and every machine's agent `started`. Returns unit → machine.
fn all_active_and_started(status: &Value) -> Result<BTreeMap<String, String>> {
    let machines = status["machines"]
        .as_object()
        .context("no machines in status")?;
    ensure!(machines.len() == N_MACHINES, "machines: {machines:?}");
    for (id, machine) in machines {
        let current = &machine["agent-status"]["current"];
        ensure!(current == "started", "machine {id} agent-status {current}");
    }
    let units = status["applications"][APP]["units"]
        .as_object()
        .with_context(|| format!("no units of {APP} in status"))?;
    ensure!(units.len() == N_UNITS, "{} units", units.len());
    let mut placement = BTreeMap::new();
    for (name, unit) in units {
        let workload = &unit["workload-status"];
        ensure!(
            workload["current"] == "active",
            "{name} workload-status {workload}"
        );
        let machine = unit["machine"].as_str().context("unit without machine")?;
        placement.insert(name.clone(), machine.to_owned());
    }
    Ok(placement)
}

// ---------------------------------------------------------------- gRPC reads

fn model_ref() -> Option<ModelRef> {
    Some(ModelRef {
        name: MODEL.to_owned(),
        uuid: String::new(),
    })
}

/// The model's status as node `node_id` answers it.
fn grpc_status(rt: &Runtime, cluster: &LocalCluster, node_id: u64) -> Result<FullStatus> {
    rt.block_on(async {
        let mut client =
            cluster.client_with(node_id, Some(&cluster.registration().token), RPC_TIMEOUT)?;
        let status = client
            .status(StatusRequest { model: model_ref() })
            .await?
            .into_inner();
        Ok(status)
    })
}

/// Every record of the model's log about `entity`, oldest first, as node `node_id` has them.
fn grpc_log(
    rt: &Runtime,
    cluster: &LocalCluster,
    node_id: u64,
    entity: &str,
) -> Result<Vec<LogRecord>> {
    rt.block_on(async {
        let mut client =
            cluster.client_with(node_id, Some(&cluster.registration().token), RPC_TIMEOUT)?;
        let mut stream = client
            .debug_log(DebugLogRequest {
                model: model_ref(),
                replay: true,
                tail: 0,
                follow: false,
                level: LogLevel::Info as i32,
                include: vec![entity.to_owned()],
                exclude: Vec::new(),
            })
            .await?
            .into_inner();
        let mut records = Vec::new();
        while let Some(record) = stream.message().await? {
            records.push(record);
        }
        Ok(records)
    })
}

/// Every machine is `started` with a heartbeat seen after `after_unix_ms`, as `node_id` says.
fn machines_heartbeat_after(
    rt: &Runtime,
    cluster: &LocalCluster,
    node_id: u64,
    after_unix_ms: i64,
) -> Result<()> {
    let status = grpc_status(rt, cluster, node_id)?;
    ensure!(status.machines.len() == N_MACHINES, "{:?}", status.machines);
    for machine in &status.machines {
        let agent = machine.agent_status.clone().unwrap_or_default();
        ensure!(
            agent.current == "started" && agent.since_unix_ms > after_unix_ms,
            "machine {}: {} since {} (want started since after {after_unix_ms})",
            machine.id,
            agent.current,
            agent.since_unix_ms
        );
    }
    Ok(())
}

/// The workload status of `unit` (current, since) as `node_id` says.
fn unit_workload(
    rt: &Runtime,
    cluster: &LocalCluster,
    node_id: u64,
    unit: &str,
) -> Result<(String, i64)> {
    let status = grpc_status(rt, cluster, node_id)?;
    let found = status
        .units
        .iter()
        .find(|u| u.name == unit)
        .with_context(|| format!("no {unit} in status"))?;
    let workload = found.workload_status.clone().unwrap_or_default();
    Ok((workload.current, workload.since_unix_ms))
}

// ---------------------------------------------------------------- processes

// ---------------------------------------------------------------- the agents

// ---------------------------------------------------------------- the test

/// What every phase uses.
struct Env<'a> {
    rt: &'a Runtime,
    cluster: &'a mut LocalCluster,
    fleet: &'a mut Fleet,
    ctl: &'a Ctl,
}

/// Workloads by unit.
type Workloads = BTreeMap<String, WorkloadId>;

#[test]
fn workloads_outlive_controller_failures_and_agent_restarts() -> Result<()> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut cluster = rt.block_on(LocalCluster::start(ClusterOptions::new(CONTROLLER, 3)))?;
    let work = tempfile::Builder::new()
        .prefix("starling-agents-")
        .tempdir()?;
    let root = work.path().canonicalize()?;
    let ctl = Ctl::new(cluster.bins(), &root);
    // Declared last, so dropped first: every process is swept before the files and the
    // cluster go.
    let mut fleet = Fleet::new(cluster.bins(), root.clone())?;
    let mut env = Env {
        rt: &rt,
        cluster: &mut cluster,
        fleet: &mut fleet,
        ctl: &ctl,
    };
    let result = scenario(&mut env);
    if result.is_err() {
        fleet.dump_log_tails(40);
        cluster.dump_log_tails(30);
        if std::env::var_os("STARLING_KEEP_WORK").is_some() {
            eprintln!("kept the agents' files in {}", work.keep().display());
        }
    }
    result
}

fn scenario(env: &mut Env) -> Result<()> {
    deploy(env)?;
    let (placement, workloads) = everything_runs(env)?;
    let units: Vec<String> = placement.keys().cloned().collect();
    let workloads = leader_killed(env, &units, workloads)?;
    let (leader, workloads) = controller_down(env, &units, workloads)?;
    agent_restarted(env, leader, &placement, &workloads)?;
    agents_stopped(env, &workloads)
}

/// A model with three machines, their running agents, and the counter charm on six units.
fn deploy(env: &mut Env) -> Result<()> {
    info!("--- a model with three machines, their agents and six counter units");
    let ctl = env.ctl;
    let registration = env.cluster.root().join("registration.yaml");
    ctl.ok(&["register", registration.to_str().context("path")?])?;
    ctl.ok(&[
        "controller-config",
        "-c",
        CONTROLLER,
        "agent-heartbeat-interval=500ms",
    ])?;
    ctl.ok(&["add-model", MODEL, "-c", CONTROLLER])?;
    for idx in 0..N_MACHINES {
        let dir = env.fleet.root.join(format!("machine-{idx}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("agent.yaml");
        let id = ctl.ok(&[
            "add-machine",
            "-m",
            MODEL_ARG,
            "--agent-config",
            config.to_str().context("path")?,
        ])?;
        ensure!(id.trim() == idx.to_string(), "machine id {id:?}");
        rotate_endpoints(&config, idx)?;
        env.fleet.machines.push(Machine {
            id: idx.to_string(),
            data_dir: dir.join("data"),
            log: dir.join("agentd.log"),
            dir,
            config,
            agentd: None,
        });
        env.fleet.start(idx)?;
    }
    let charm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/charms/counter");
    ctl.ok(&[
        "deploy",
        "-m",
        MODEL_ARG,
        charm.to_str().context("path")?,
        "--to",
        PLACEMENT,
    ])?;
    Ok(())
}

/// Every workload runs, writes, and status says so. Returns unit → machine and the workloads.
fn everything_runs(env: &mut Env) -> Result<(BTreeMap<String, String>, Workloads)> {
    info!("--- every workload runs, and status says so");
    let fleet = &*env.fleet;
    let placement = wait_for("every unit active and every machine started", || {
        all_active_and_started(&status(env.ctl)?)
    })?;
    for (unit, machine_id) in &placement {
        let machine = fleet.machine_of(unit)?;
        ensure!(
            &machine.id == machine_id,
            "{unit} runs in machine {}'s data dir but status places it on {machine_id}",
            machine.id
        );
    }
    let workloads = wait_for("a running workload for every unit", || {
        let workloads = fleet.recorded_workloads()?;
        ensure!(workloads.len() == N_UNITS, "recorded: {workloads:?}");
        for (unit, workload) in &workloads {
            ensure!(running(*workload), "{unit}: {workload:?} is not running");
        }
        Ok(workloads)
    })?;
    for machine in &fleet.machines {
        let recorded: BTreeSet<u32> = machine
            .recorded_workloads()?
            .values()
            .map(|w| w.pid)
            .collect();
        ensure!(recorded.len() == 2, "machine {}: {recorded:?}", machine.id);
        let groups = counter_groups(&machine.data_dir);
        ensure!(
            groups == recorded,
            "machine {}: counter process groups {groups:?}, recorded {recorded:?}",
            machine.id,
        );
    }
    let units: Vec<String> = placement.keys().cloned().collect();
    fleet.wait_counters_grow(&fleet.counter_lines(&units)?, 2)?;
    info!(?workloads, "every workload runs");
    Ok((placement, workloads))
}

/// The leader is SIGKILLed: the workloads keep their pids, the agents reconnect, and a config
/// change made afterwards restarts every workload with the new value. Then the node comes back.
/// Returns the new workloads.
fn leader_killed(env: &mut Env, units: &[String], workloads: Workloads) -> Result<Workloads> {
    info!("--- SIGKILL the controller leader: workloads keep their pids and keep writing");
    let rt = env.rt;
    let leader = rt.block_on(env.cluster.wait_for_leader(CONDITION_WAIT))?;
    let before = env.fleet.counter_lines(units)?;
    let leader_addr = env.cluster.grpc_addr(leader).to_owned();
    let leader_agents: Vec<usize> = (0..N_MACHINES)
        .filter(|idx| env.fleet.machines[*idx].endpoint().as_deref() == Some(leader_addr.as_str()))
        .collect();
    ensure!(
        !leader_agents.is_empty(),
        "no agent is connected to the leader {leader} ({leader_addr})"
    );
    let log_offsets: Vec<usize> = env
        .fleet
        .machines
        .iter()
        .map(|m| m.log_text().len())
        .collect();
    let killed_at = now_unix_ms();
    env.cluster.kill(leader)?;
    let new_leader = rt.block_on(
        env.cluster
            .wait_for_leader_other_than(Some(leader), CONDITION_WAIT),
    )?;
    info!(leader, new_leader, ?leader_agents, "new leader");
    let fleet = &*env.fleet;
    let cluster = &*env.cluster;
    fleet.wait_counters_grow(&before, 2)?;
    let now = fleet.recorded_workloads()?;
    ensure!(
        now == workloads,
        "workloads changed across the failover: {workloads:?} → {now:?}"
    );
    for (unit, workload) in &workloads {
        ensure!(running(*workload), "{unit}: {workload:?} stopped");
    }

    info!("--- agents reconnect: every machine heartbeats to a live node");
    wait_for(
        "the killed leader's agents to connect to another node",
        || {
            for idx in &leader_agents {
                let log = fleet.machines[*idx].log_text();
                let since_kill = Machine::connections(&log[log_offsets[*idx]..]);
                ensure!(
                    since_kill.iter().any(|e| *e != leader_addr),
                    "machine {idx} connected to {since_kill:?} since the kill"
                );
            }
            Ok(())
        },
    )?;
    wait_for(
        "every machine started with a heartbeat after the kill",
        || machines_heartbeat_after(rt, cluster, new_leader, killed_at),
    )?;
    wait_for("status through ctl", || {
        all_active_and_started(&status(env.ctl)?)
    })?;

    info!("--- a config change after the failover reaches every workload");
    let changed_at = now_unix_ms();
    env.ctl
        .ok(&["config", "-m", MODEL_ARG, APP, "interval=2"])?;
    let value = env.ctl.ok(&["config", "-m", MODEL_ARG, APP, "interval"])?;
    ensure!(value.trim() == "2", "interval reads {value:?}");
    let changed = wait_for("every workload restarted with interval=2", || {
        let now = fleet.recorded_workloads()?;
        ensure!(now.len() == N_UNITS, "recorded: {now:?}");
        for (unit, workload) in &now {
            ensure!(
                workload.pid != workloads[unit].pid,
                "{unit} still runs the old workload"
            );
            ensure!(running(*workload), "{unit}: {workload:?} is not running");
            ensure!(
                has_env(workload.pid, "STARLING_CONFIG_interval=2"),
                "{unit}: {} runs without STARLING_CONFIG_interval=2",
                workload.pid
            );
        }
        Ok(now)
    })?;
    for unit in units {
        let hooks_log = fleet.machine_of(unit)?.unit_dir(unit).join("hooks.log");
        let hooks = std::fs::read_to_string(hooks_log)?;
        ensure!(
            hooks.contains("config-changed interval=2"),
            "{unit} hooks.log:\n{hooks}"
        );
    }
    wait_for("every unit active again after the change", || {
        for unit in units {
            let (current, since) = unit_workload(rt, cluster, new_leader, unit)?;
            ensure!(
                current == "active" && since >= changed_at,
                "{unit}: {current} since {since} (change at {changed_at})"
            );
        }
        Ok(())
    })?;
    wait_for("status through ctl", || {
        all_active_and_started(&status(env.ctl)?)
    })?;

    info!(
        node_id = leader,
        "--- restart the killed node; it catches up"
    );
    env.cluster.start_node(leader)?;
    let index = rt
        .block_on(env.cluster.local_config(new_leader))
        .map_err(|s| anyhow!("{s}"))?
        .applied_index;
    rt.block_on(env.cluster.wait_applied(leader, index, CONDITION_WAIT))?;
    Ok(changed)
}

/// Every node is SIGKILLed; the workloads keep running, and one killed meanwhile is restarted
/// by its agent, which is then SIGKILLed and restarted itself. After the controller restarts
/// the queued reports arrive (from the outbox file the agent reloaded): the unit's exit is in
/// the model log and its status is active again, reported after the error. Returns the leader
/// and the workloads.
fn controller_down(
    env: &mut Env,
    units: &[String],
    workloads: Workloads,
) -> Result<(u64, Workloads)> {
    info!("--- SIGKILL the whole controller; kill one workload meanwhile");
    let rt = env.rt;
    let before = env.fleet.counter_lines(units)?;
    env.cluster.kill_all();
    let fleet = &*env.fleet;
    let victim = units[2].clone();
    let victim_machine = fleet.machine_of(&victim)?;
    let victim_killed_at = now_unix_ms();
    let old = workloads[&victim];
    killpg(Pid::from_raw(i32::try_from(old.pid)?), Signal::SIGKILL)?;
    info!(unit = %victim, pid = old.pid, "workload process group SIGKILLed");
    let restarted = wait_for("the agent to restart the killed workload", || {
        let now = victim_machine.recorded_workloads()?;
        let workload = now.get(&victim).context("no workload recorded")?;
        ensure!(
            workload.pid != old.pid && running(*workload),
            "{victim}: {workload:?}"
        );
        Ok(*workload)
    })?;
    fleet.wait_counters_grow(&before, 3)?;
    let mut expected = workloads;
    expected.insert(victim.clone(), restarted);
    let now = fleet.recorded_workloads()?;
    ensure!(
        now == expected,
        "workloads changed while the controller was down: {expected:?} → {now:?}"
    );
    for (unit, workload) in &expected {
        ensure!(running(*workload), "{unit}: {workload:?} stopped");
    }

    // The victim's agent is SIGKILLed too, once its outbox file holds the exit record (written
    // within a moment of being queued); the restarted agent delivers what it had queued.
    let outbox = victim_machine.data_dir.join("outbox.pb");
    wait_for("the workload's exit in the agent's outbox file", || {
        let bytes = std::fs::read(&outbox).with_context(|| outbox.display().to_string())?;
        ensure!(
            bytes.windows(15).any(|w| w == b"workload exited"),
            "{} does not hold the exit yet",
            outbox.display()
        );
        Ok(())
    })?;
    let victim_idx = env
        .fleet
        .machines
        .iter()
        .position(|m| m.unit_dir(&victim).exists())
        .context("the victim's machine")?;
    info!(unit = %victim, "--- SIGKILL the victim's agentd while the controller is down; restart it");
    env.fleet.kill(victim_idx)?;
    env.fleet.start(victim_idx)?;
    let fleet = &*env.fleet;
    let victim_machine = &fleet.machines[victim_idx];
    wait_for("the restarted agent to load its outbox", || {
        ensure!(
            victim_machine
                .log_text()
                .contains("the outbox holds what the last run had not delivered"),
            "not yet"
        );
        Ok(())
    })?;
    let now = fleet.recorded_workloads()?;
    ensure!(
        now == expected,
        "an agent restarted while the controller was down changed the workloads: {expected:?} \
         → {now:?}"
    );

    info!("--- restart every node: the queued reports arrive");
    let restarted_at = now_unix_ms();
    for node_id in env.cluster.node_ids() {
        env.cluster.start_node(node_id)?;
    }
    let leader = rt.block_on(env.cluster.wait_for_leader(CONDITION_WAIT))?;
    let cluster = &*env.cluster;
    wait_for(
        "every machine started with a heartbeat after the restart",
        || machines_heartbeat_after(rt, cluster, leader, restarted_at),
    )?;
    let entity = format!("unit-{}", victim.replace('/', "-"));
    let exited = wait_for("the workload's exit in the model log", || {
        grpc_log(rt, cluster, leader, &entity)?
            .into_iter()
            .find(|r| {
                r.level == LogLevel::Error as i32
                    && r.message.starts_with("workload exited")
                    && r.time_unix_ms >= victim_killed_at
            })
            .with_context(|| format!("no workload exit of {entity} logged"))
    })?;
    info!(message = %exited.message, "the exit reached the model log");
    let since = wait_for("the killed workload's unit to be active", || {
        let (current, since) = unit_workload(rt, cluster, leader, &victim)?;
        ensure!(current == "active", "{victim}: {current}");
        Ok(since)
    })?;
    ensure!(
        since >= exited.time_unix_ms,
        "{victim} is active since {since}, before its workload exited at {}: the restart's \
         report did not arrive after the error",
        exited.time_unix_ms
    );
    // The agent's own record of what it queued, in seq order.
    let agent_log = victim_machine.log_text();
    let reported: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains(&format!("entity=\"{entity}\" kind=\"workload\"")))
        .filter_map(|l| l.split("current=").nth(1)?.split_whitespace().next())
        .collect();
    ensure!(
        reported.ends_with(&["error", "active"]),
        "{victim}'s agent reported {reported:?}"
    );
    let text = env.ctl.ok(&[
        "debug-log",
        "-m",
        MODEL_ARG,
        "--replay",
        "--no-tail",
        "--include",
        &victim,
    ])?;
    ensure!(
        text.lines().any(|l| l.starts_with(&format!("{entity}: "))
            && l.contains(" ERROR ")
            && l.contains("workload exited")),
        "ctl debug-log shows no workload exit of {victim}:\n{text}"
    );
    wait_for("status through ctl", || {
        all_active_and_started(&status(env.ctl)?)
    })?;
    Ok((leader, expected))
}

/// One agentd is SIGKILLed and started again: it adopts its two workloads (same pids, no
/// duplicate, install and start not re-run) and its units stay active.
fn agent_restarted(
    env: &mut Env,
    leader: u64,
    placement: &BTreeMap<String, String>,
    workloads: &Workloads,
) -> Result<()> {
    info!("--- SIGKILL one agentd and restart it: its workloads are adopted, not duplicated");
    let idx = 1;
    let machine_id = env.fleet.machines[idx].id.clone();
    let machine_units: Vec<String> = placement
        .iter()
        .filter(|(_, m)| **m == machine_id)
        .map(|(u, _)| u.clone())
        .collect();
    ensure!(machine_units.len() == 2, "{machine_units:?}");
    env.fleet.kill(idx)?;
    for unit in &machine_units {
        ensure!(running(workloads[unit]), "{unit} died with its agent");
    }
    let log_before = env.fleet.machines[idx].log_text().len();
    let agent_started_at = now_unix_ms();
    env.fleet.start(idx)?;
    let cluster = &*env.cluster;
    wait_for("the restarted agent to heartbeat", || {
        machines_heartbeat_after(env.rt, cluster, leader, agent_started_at)
    })?;
    let fleet = &*env.fleet;
    fleet.wait_counters_grow(&fleet.counter_lines(&machine_units)?, 2)?;
    let machine = &fleet.machines[idx];
    let now = machine.recorded_workloads()?;
    let expected: Workloads = machine_units
        .iter()
        .map(|u| (u.clone(), workloads[u]))
        .collect();
    ensure!(
        now == expected,
        "after the agent restart: {now:?}, want {expected:?}"
    );
    let groups = counter_groups(&machine.data_dir);
    let pids: BTreeSet<u32> = expected.values().map(|w| w.pid).collect();
    ensure!(
        groups == pids,
        "counter workloads of machine {machine_id}: {groups:?}, want exactly {pids:?}"
    );
    let new_log = &machine.log_text()[log_before..];
    let adopted = new_log.matches("adopted the running workload").count();
    ensure!(adopted == 2, "adopted {adopted} workloads:\n{new_log}");
    for unit in &machine_units {
        let hooks = std::fs::read_to_string(machine.unit_dir(unit).join("hooks.log"))?;
        for hook in ["install", "start"] {
            let runs = hooks
                .lines()
                .filter(|l| l.contains(&format!(" {hook} ")))
                .count();
            ensure!(runs == 1, "{unit} ran {hook} {runs} times:\n{hooks}");
        }
    }
    wait_for("status through ctl", || {
        all_active_and_started(&status(env.ctl)?)
    })?;
    Ok(())
}

/// SIGTERM stops every agent (exit 0) and leaves its workloads running; the test then kills
/// the workloads' process groups itself.
fn agents_stopped(env: &mut Env, workloads: &Workloads) -> Result<()> {
    info!("--- stop the agents with SIGTERM: the workloads outlive them");
    for idx in 0..N_MACHINES {
        let status = env.fleet.terminate(idx)?;
        ensure!(status.success(), "agentd {idx} exited {status}");
    }
    for (unit, workload) in workloads {
        ensure!(running(*workload), "{unit} stopped with its agent");
    }
    for (unit, workload) in workloads {
        killpg(Pid::from_raw(i32::try_from(workload.pid)?), Signal::SIGKILL)
            .with_context(|| format!("killing {unit}'s workload"))?;
    }
    wait_for("every workload gone", || {
        let left = counter_groups(&env.fleet.root);
        ensure!(left.is_empty(), "still running: {left:?}");
        Ok(())
    })
}
