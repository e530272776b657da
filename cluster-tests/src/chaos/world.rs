//! [`World`]: two (or three) controllers of real `ctld` nodes behind fault-injecting proxies, a client
//! store that knows them through the proxies, agents running a counter workload, the recorded
//! [`Workload`], a migration driver, fault injection and healing, and the final checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use starling_proto::controller::{
    GetModelConfigRequest, MigrationInfo, MigrationStatusRequest, ModelRef,
};
use tokio::runtime::Runtime;
use tracing::info;

use super::proxy::{Link, LinkMode};
use super::workload::{
    observe, Clients, Workload, CALL_TIMEOUT, DRIVER_PROCESS, FINAL_READ_PROCESS,
};
use crate::fleet::{running, Ctl, Fleet, Machine, WorkloadId};
use crate::history::{MigrationResult, OpId, OpKind, Outcome, Ownership, Recorder};
use crate::{ClusterOptions, LocalCluster};

/// How long a migration may take to end after the faults are healed (2 loaded cores).
pub const MIGRATION_END_WAIT: Duration = Duration::from_secs(150);
/// How long the cluster may take to settle (a leader, one owner per model, writes accepted).
pub const SETTLE_WAIT: Duration = Duration::from_secs(90);
/// The controllers of a world unless [`WorldOptions::controllers`] names others.
pub const CONTROLLERS: [&str; 2] = ["alpha", "beta"];
/// The controllers of a world of three ([`WorldOptions::three_controllers`]).
pub const THREE_CONTROLLERS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Phases in protocol order.
pub const PHASES: [&str; 8] = [
    "PRECHECK",
    "PRECOPY",
    "CATCHUP",
    "QUIESCE",
    "SUCCESS",
    "LOGTRANSFER",
    "REAP",
    "DONE",
];
/// Terminal phases.
pub const TERMINAL: [&str; 3] = ["DONE", "ABORTDONE", "REAPFAILED"];

/// What a chaos world is made of.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    /// The test's name (for the replay line and the failure directory).
    pub test: String,
    /// The run's seed.
    pub seed: u64,
    /// The controllers, by name (each a group of three nodes).
    pub controllers: Vec<String>,
    /// `FAILPOINTS` of each controller's nodes, by controller name.
    pub failpoints: BTreeMap<String, String>,
    /// Models without machines, per controller.
    pub plain_models: usize,
    /// Whether each controller also gets a model with one machine running the counter charm.
    pub machine_models: bool,
    /// Writing and reading clients.
    pub clients: u64,
    /// Run every node in its own network namespace (root only), so nodes of one group can be
    /// partitioned from each other ([`Fault::Isolate`]).
    pub netns: bool,
}

impl WorldOptions {
    /// Two controllers, one machine model and one plain model each, three clients.
    pub fn new(test: &str, seed: u64) -> Self {
        WorldOptions {
            test: test.to_owned(),
            seed,
            controllers: CONTROLLERS.iter().map(|c| (*c).to_owned()).collect(),
            failpoints: BTreeMap::new(),
            plain_models: 1,
            machine_models: true,
            clients: 3,
            netns: false,
        }
    }

    /// Three controllers instead of two (models can move onward, A→B→C, and back).
    pub fn three_controllers(mut self) -> Self {
        self.controllers = THREE_CONTROLLERS.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Sets `FAILPOINTS` of `controller`.
    pub fn failpoints(mut self, controller: &str, spec: &str) -> Self {
        self.failpoints
            .insert(controller.to_owned(), spec.to_owned());
        self
    }

    /// Runs every node in its own network namespace (see [`Fault::Isolate`]).
    pub fn in_namespaces(mut self) -> Self {
        self.netns = true;
        self
    }
}

/// Which node of a controller a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Raft leader (where the migration master runs on a source).
    Leader,
    /// A follower.
    Follower,
}

/// A fault the harness injects; [`World::heal`] undoes every one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one node (restarted on heal).
    Kill {
        /// The controller.
        controller: String,
        /// Which node.
        role: Role,
    },
    /// SIGSTOP one node (SIGCONT on heal).
    Pause {
        /// The controller.
        controller: String,
        /// Which node.
        role: Role,
    },
    /// SIGKILL every node of a controller at once (restarted on heal).
    PowerCut {
        /// The controller.
        controller: String,
    },
    /// Cut one node off from the other nodes of its group (both ways; nftables inside the
    /// nodes' namespaces, so the world must run with `netns`). Clients and agents still reach it.
    Isolate {
        /// The controller.
        controller: String,
        /// Which node.
        role: Role,
    },
    /// Partition the controller from everything that reaches it through the proxy: the
    /// other controller's migration master, `ctl` and the agents' validation dials.
    Partition {
        /// The controller cut off.
        controller: String,
        /// Drop (resets) or blackhole (silence).
        mode: LinkMode,
    },
}

/// One migration the driver started.
#[derive(Clone, Debug)]
pub struct MigrationRun {
    /// The model.
    pub model: String,
    /// Source controller.
    pub from: String,
    /// Target controller.
    pub to: String,
    /// The migration id.
    pub id: String,
    /// Its op in the history.
    op: OpId,
    /// The terminal phase, once seen.
    pub end: Option<String>,
    /// Why it aborted, when it did.
    pub abort_reason: Option<String>,
}

/// Two or three controllers, a client store, agents, the recorded workload and the driver.
pub struct World {
    /// The runtime every client runs on.
    pub rt: Runtime,
    /// The options the world was made with.
    pub options: WorldOptions,
    /// The run's random source (derived from the seed).
    pub rng: StdRng,
    /// The controllers by name.
    pub controllers: BTreeMap<String, LocalCluster>,
    /// The proxy in front of each controller, by name.
    pub links: BTreeMap<String, Link>,
    /// `ctl` with a client store listing the proxied endpoints.
    pub ctl: Ctl,
    /// The agents.
    pub fleet: Fleet,
    /// The history.
    pub recorder: Recorder,
    /// Every model of the workload.
    pub models: Vec<String>,
    /// Where the driver believes each model lives.
    pub homes: BTreeMap<String, String>,
    /// The migrations started.
    pub migrations: Vec<MigrationRun>,
    /// Nodes killed, by controller.
    killed: BTreeMap<String, BTreeSet<u64>>,
    /// Every agent workload, as first recorded.
    workloads_before: BTreeMap<String, WorkloadId>,
    clients: Clients,
    workload: Option<Workload>,
    /// How many times the workload was started (its keys carry it, so they stay unique).
    workload_generation: u64,
    work: Option<tempfile::TempDir>,
    /// The namespaces the nodes run in (with `netns`); dropped last, after every process.
    lan: Option<crate::netns::Lan>,
}

/// The hosts of `controller`'s three nodes on `lan` (node `i` on the `i`-th).
fn group_hosts<'a>(
    lan: &'a crate::netns::Lan,
    controllers: &[String],
    controller: &str,
) -> Result<&'a [crate::netns::NetHost]> {
    let index = controllers
        .iter()
        .position(|c| *c == controller)
        .with_context(|| format!("unknown controller {controller}"))?;
    Ok(&lan.hosts()[3 * index..3 * index + 3])
}

/// Polls `probe` until it returns `Ok` or `wait` passes; the last error is reported.
pub fn wait_until<T>(
    what: &str,
    wait: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + wait;
    loop {
        let reason = match probe() {
            Ok(value) => return Ok(value),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {wait:?}; last: {reason}");
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

impl World {
    /// Starts both controllers, the proxies, the client store, the models with their agents
    /// and the workload.
    pub fn start(options: WorldOptions) -> Result<Self> {
        crate::init_tracing();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let lan = if options.netns {
            Some(crate::netns::Lan::create(3 * options.controllers.len())?)
        } else {
            None
        };
        let mut controllers = BTreeMap::new();
        for name in &options.controllers {
            let mut cluster = ClusterOptions::new(name, 3);
            if let Some(spec) = options.failpoints.get(name) {
                cluster.env = vec![("FAILPOINTS".into(), spec.clone())];
            }
            if let Some(lan) = &lan {
                cluster.hosts = group_hosts(lan, &options.controllers, name)?.to_vec();
            }
            controllers.insert(name.clone(), rt.block_on(LocalCluster::start(cluster))?);
        }
        let work = tempfile::Builder::new()
            .prefix("starling-chaos-")
            .tempdir()?;
        let root = work.path().canonicalize()?;
        let first = controllers.values().next().context("no controller")?;
        let ctl = Ctl::new(first.bins(), &root);
        let fleet = Fleet::new(first.bins(), root.clone())?;
        let mut links = BTreeMap::new();
        for (name, cluster) in &controllers {
            if lan.is_some() {
                // Nodes in namespaces have loopbacks of their own, so a proxy on the test's
                // 127.0.0.1 is out of their reach: partitions between controllers are
                // nftables rules between the groups' addresses instead (`Fault::Partition`).
                let registration = cluster.root().join("registration.yaml");
                ctl.ok(&["register", registration.to_str().context("path")?])?;
            } else {
                let upstreams: Vec<String> = cluster
                    .node_ids()
                    .into_iter()
                    .map(|id| cluster.grpc_addr(id).to_owned())
                    .collect();
                let link = rt.block_on(Link::start(&upstreams))?;
                let proxied = root.join(format!("{name}-registration.yaml"));
                rewrite_endpoints(
                    &cluster.root().join("registration.yaml"),
                    &proxied,
                    link.endpoints(),
                )?;
                ctl.ok(&["register", proxied.to_str().context("path")?])?;
                links.insert(name.clone(), link);
            }
            ctl.ok(&[
                "controller-config",
                "-c",
                name,
                "agent-heartbeat-interval=500ms",
            ])?;
        }
        let mut nodes = BTreeMap::new();
        for (name, cluster) in &controllers {
            let _guard = rt.enter();
            let token = cluster.registration().token.clone();
            let mut clients = Vec::new();
            for id in cluster.node_ids() {
                clients.push((id, cluster.client_with(id, Some(&token), CALL_TIMEOUT)?));
            }
            nodes.insert(name.clone(), clients);
        }
        let seed = options.seed;
        let mut world = World {
            rt,
            rng: StdRng::seed_from_u64(seed),
            controllers,
            links,
            ctl,
            fleet,
            recorder: Recorder::new(),
            models: Vec::new(),
            homes: BTreeMap::new(),
            migrations: Vec::new(),
            killed: BTreeMap::new(),
            workloads_before: BTreeMap::new(),
            clients: Clients { nodes },
            workload: None,
            workload_generation: 0,
            work: Some(work),
            lan,
            options,
        };
        world.add_models()?;
        world.start_workload();
        Ok(world)
    }

    fn add_models(&mut self) -> Result<()> {
        let tag = format!("{:04x}", self.options.seed & 0xffff);
        let mut machine_models = 0;
        for controller in self.options.controllers.clone() {
            let controller = controller.as_str();
            let prefix = &controller[..1];
            if self.options.machine_models {
                let name = format!("{prefix}w-{tag}");
                self.add_model(controller, &name, true)?;
                machine_models += 1;
            }
            for i in 0..self.options.plain_models {
                let name = format!("{prefix}{i}-{tag}");
                self.add_model(controller, &name, false)?;
            }
        }
        for model in self.models.clone() {
            if model.contains("w-") {
                let home = self.homes[&model].clone();
                wait_active(&self.ctl, &format!("{home}:{model}"), 1)?;
            }
        }
        self.workloads_before = wait_until("a running workload per unit", SETTLE_WAIT, || {
            let workloads = workloads_by_machine(&self.fleet)?;
            ensure!(workloads.len() == machine_models, "recorded: {workloads:?}");
            for (unit, workload) in &workloads {
                ensure!(running(*workload), "{unit}: {workload:?} is not running");
            }
            Ok(workloads)
        })?;
        Ok(())
    }

    fn add_model(&mut self, controller: &str, name: &str, machine: bool) -> Result<()> {
        self.ctl.ok(&["add-model", name, "-c", controller])?;
        self.models.push(name.to_owned());
        self.homes.insert(name.to_owned(), controller.to_owned());
        if !machine {
            return Ok(());
        }
        let model_arg = format!("{controller}:{name}");
        let dir = self.fleet.root.join(format!("{name}-machine-0"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("agent.yaml");
        let id = self.ctl.ok(&[
            "add-machine",
            "-m",
            &model_arg,
            "--agent-config",
            config.to_str().context("path")?,
        ])?;
        ensure!(id.trim() == "0", "machine id {id:?}");
        self.fleet.machines.push(Machine {
            id: format!("{name}/0"),
            data_dir: dir.join("data"),
            log: dir.join("agentd.log"),
            dir,
            config,
            agentd: None,
        });
        self.fleet.start(self.fleet.machines.len() - 1)?;
        let charm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/charms/counter");
        self.ctl.ok(&[
            "deploy",
            "-m",
            &model_arg,
            charm.to_str().context("path")?,
            "--to",
            "0",
        ])?;
        Ok(())
    }

    fn start_workload(&mut self) {
        let _guard = self.rt.enter();
        self.workload_generation += 1;
        self.workload = Some(Workload::start(
            &self.clients,
            &self.recorder,
            &self.models,
            &self.homes,
            self.options.clients,
            self.options.seed,
            self.workload_generation,
        ));
    }

    /// Stops the recorded workload (e.g. around a backup and its restore, which rewinds the
    /// controller's models: writes acknowledged in between are legitimately lost).
    pub fn pause_workload(&mut self) {
        if let Some(workload) = self.workload.take() {
            info!("--- workload paused");
            self.rt.block_on(workload.stop());
        }
    }

    /// Starts the recorded workload again after [`Self::pause_workload`] (with fresh keys, and
    /// the owners the driver knows now).
    pub fn resume_workload(&mut self) {
        if self.workload.is_none() {
            info!("--- workload resumed");
            self.start_workload();
        }
    }

    /// The cluster named `name`.
    pub fn cluster(&mut self, name: &str) -> Result<&mut LocalCluster> {
        self.controllers.get_mut(name).context("no such controller")
    }

    /// The models the driver believes live on `controller`.
    pub fn models_on(&self, controller: &str) -> Vec<String> {
        self.homes
            .iter()
            .filter(|(_, home)| *home == controller)
            .map(|(model, _)| model.clone())
            .collect()
    }

    /// The other controller of a two-controller world.
    pub fn other(controller: &str) -> &'static str {
        if controller == CONTROLLERS[0] {
            CONTROLLERS[1]
        } else {
            CONTROLLERS[0]
        }
    }

    /// Restarts every node of `controller` with `FAILPOINTS=spec` (a power cut and restart;
    /// use it between migrations).
    pub fn set_failpoints(&mut self, controller: &str, spec: &str) -> Result<()> {
        info!(controller, spec, "--- restarting with new failpoints");
        let cluster = self.cluster(controller)?;
        cluster.kill_all();
        let env = if spec.is_empty() {
            Vec::new()
        } else {
            vec![("FAILPOINTS".to_owned(), spec.to_owned())]
        };
        cluster.set_env(env);
        for id in cluster.node_ids() {
            cluster.start_node(id)?;
        }
        self.options
            .failpoints
            .insert(controller.to_owned(), spec.to_owned());
        let cluster = self.controllers.get_mut(controller).context("controller")?;
        self.rt.block_on(cluster.wait_for_leader(SETTLE_WAIT))?;
        Ok(())
    }

    /// The controller after `controller` in the world's list (the other one of two).
    pub fn next_controller(&self, controller: &str) -> String {
        let names = &self.options.controllers;
        let index = names.iter().position(|c| c == controller).unwrap_or(0);
        names[(index + 1) % names.len()].clone()
    }

    /// Starts migrating `model` from where it lives to the next controller with `ctl
    /// migrate`; the run, or `None` when `ctl` refused (e.g. a precheck failed).
    pub fn migrate(&mut self, model: &str) -> Result<Option<MigrationRun>> {
        let from = self.homes.get(model).context("unknown model")?.clone();
        let to = self.next_controller(&from);
        self.migrate_to(model, &to)
    }

    /// Starts migrating `model` from where it lives to `to` (see [`Self::migrate`]); a refusal
    /// is logged with `ctl`'s message and recorded as a failed migration.
    pub fn migrate_to(&mut self, model: &str, to: &str) -> Result<Option<MigrationRun>> {
        Ok(self.migrate_or_refusal(model, to)?.ok())
    }

    /// Like [`Self::migrate_to`], but a refusal is returned as `ctl`'s message.
    pub fn migrate_or_refusal(
        &mut self,
        model: &str,
        to: &str,
    ) -> Result<std::result::Result<MigrationRun, String>> {
        let from = self.homes.get(model).context("unknown model")?.clone();
        self.migrate_from(model, &from, to)
    }

    /// Like [`Self::migrate_or_refusal`] from `from`, which need not be where the driver last
    /// saw the model (an onward move while the move that brought it there is still ending).
    pub fn migrate_from(
        &mut self,
        model: &str,
        from: &str,
        to: &str,
    ) -> Result<std::result::Result<MigrationRun, String>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        let op = self
            .recorder
            .invoke(DRIVER_PROCESS, OpKind::migration(model, "?", &from, &to));
        // After a restart the agents take a moment to reconnect, and a healed link or a new
        // leader a moment to answer: those refusals are retried for a while.
        let deadline = Instant::now() + SETTLE_WAIT;
        let run = loop {
            let run = self
                .ctl
                .run(&["migrate", &format!("{from}:{model}"), &to])?;
            let transient = run.code != 0
                && ["not connected", "unreachable", "unavailable", "leader"]
                    .iter()
                    .any(|t| run.stderr.contains(t));
            if !transient || Instant::now() >= deadline {
                break run;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let id = run
            .stdout
            .split("Migration started with ID \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        let Some(id) = id else {
            info!(model, %from, %to, stderr = %run.stderr.trim(), "ctl migrate refused");
            self.recorder.complete(op, Outcome::Fail);
            return Ok(Err(run.stderr.trim().to_owned()));
        };
        info!(model, %from, %to, id, "--- migration started");
        let run = MigrationRun {
            model: model.to_owned(),
            from,
            to,
            id: id.to_owned(),
            op,
            end: None,
            abort_reason: None,
        };
        self.migrations.push(run.clone());
        Ok(Ok(run))
    }

    /// The latest migration of `model` as any running node of `controller` reports it.
    pub fn migration_status(&mut self, controller: &str, model: &str) -> Result<MigrationInfo> {
        let nodes = self.cluster(controller)?.running_ids();
        let mut last = None;
        for node in nodes {
            let Some(mut client) = self.client(controller, node) else {
                continue;
            };
            let answer = self.rt.block_on(async {
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.migration_status(MigrationStatusRequest {
                        model: Some(ModelRef {
                            name: model.to_owned(),
                            uuid: String::new(),
                        }),
                    }),
                )
                .await
            });
            match answer {
                Ok(Ok(info)) => return Ok(info.into_inner()),
                Ok(Err(status)) => last = Some(status.to_string()),
                Err(_) => last = Some("timeout".into()),
            }
        }
        bail!("no node of {controller} answered about {model}: {last:?}")
    }

    fn client(&self, controller: &str, node: u64) -> Option<crate::AuthedControllerClient> {
        self.clients
            .nodes
            .get(controller)?
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, c)| c.clone())
    }

    /// Waits until `run` is in `phase` (true), or has gone past it or ended (false).
    pub fn wait_phase(&mut self, run: &MigrationRun, phase: &str, wait: Duration) -> Result<bool> {
        let rank = |p: &str| PHASES.iter().position(|q| *q == p);
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(info) = self.migration_status(&run.from, &run.model) {
                if info.migration_id == run.id {
                    if info.phase == phase {
                        return Ok(true);
                    }
                    let past = match (rank(&info.phase), rank(phase)) {
                        (Some(now), Some(wanted)) => now > wanted,
                        _ => true, // ABORT, ABORTDONE, REAPFAILED
                    };
                    if past && phase != "ABORT" || TERMINAL.contains(&info.phase.as_str()) {
                        info!(wanted = phase, now = %info.phase, "phase missed");
                        return Ok(false);
                    }
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not reach {phase} within {wait:?}",
                run.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node of `controller` in `role` (the leader must be agreed on within 30 s).
    pub fn node_in_role(&mut self, controller: &str, role: Role) -> Result<u64> {
        let cluster = self.controllers.get_mut(controller).context("controller")?;
        let leader = self
            .rt
            .block_on(cluster.wait_for_leader(Duration::from_secs(30)))?;
        match role {
            Role::Leader => Ok(leader),
            Role::Follower => {
                let followers: Vec<u64> = cluster
                    .running_ids()
                    .into_iter()
                    .filter(|id| *id != leader)
                    .collect();
                ensure!(
                    !followers.is_empty(),
                    "{controller} has no running follower"
                );
                Ok(followers[self.rng.gen_range(0..followers.len())])
            }
        }
    }

    /// The node a fault aimed at `role` in `controller` hits, or `None` when the group has no
    /// leader to find (earlier faults took down, froze or cut off too many of its nodes): such a
    /// fault has no target and is skipped. Liveness is judged after the heal, not here.
    fn target(&mut self, controller: &str, role: Role) -> Result<Option<u64>> {
        let cluster = self.cluster(controller)?;
        let available = cluster
            .running_ids()
            .into_iter()
            .filter(|id| !cluster.is_paused(*id))
            .count();
        if available < 2 {
            info!(controller, available, "no quorum running: fault skipped");
            return Ok(None);
        }
        match self.node_in_role(controller, role) {
            Ok(node) => Ok(Some(node)),
            Err(e) => {
                info!(controller, error = %format!("{e:#}"), "no node in that role: fault skipped");
                Ok(None)
            }
        }
    }

    /// Injects `fault`.
    pub fn inject(&mut self, fault: &Fault) -> Result<()> {
        info!(?fault, "--- fault");
        match fault {
            Fault::Kill { controller, role } => {
                let Some(node) = self.target(controller, *role)? else {
                    return Ok(());
                };
                self.cluster(controller)?.kill(node)?;
                self.killed
                    .entry(controller.clone())
                    .or_default()
                    .insert(node);
                info!(controller, node, ?role, "node SIGKILLed");
            }
            Fault::Pause { controller, role } => {
                let Some(node) = self.target(controller, *role)? else {
                    return Ok(());
                };
                self.cluster(controller)?.pause(node)?;
                info!(controller, node, ?role, "node SIGSTOPped");
            }
            Fault::PowerCut { controller } => {
                let cluster = self.cluster(controller)?;
                cluster.kill_all();
                let ids: BTreeSet<u64> = cluster.node_ids().into_iter().collect();
                self.killed
                    .entry(controller.clone())
                    .or_default()
                    .extend(ids);
            }
            Fault::Partition { controller, mode } => match &self.lan {
                // In namespaces: every node of `controller` cut off from every node of the
                // other (packets dropped, whatever the mode).
                Some(lan) => {
                    let names = &self.options.controllers;
                    for a in group_hosts(lan, names, controller)? {
                        for other in names.iter().filter(|c| *c != controller) {
                            for b in group_hosts(lan, names, other)? {
                                lan.cut(a, b)?;
                            }
                        }
                    }
                }
                None => self.links.get(controller).context("link")?.set(*mode),
            },
            Fault::Isolate { controller, role } => {
                let Some(node) = self.target(controller, *role)? else {
                    return Ok(());
                };
                let lan = self
                    .lan
                    .as_ref()
                    .context("isolating a node needs a world started with netns")?;
                let hosts = group_hosts(lan, &self.options.controllers, controller)?;
                let me = &hosts[node as usize - 1];
                for peer in hosts.iter().filter(|h| *h != me) {
                    lan.cut(me, peer)?;
                }
                info!(controller, node, ?role, "node cut off from its group");
            }
        }
        Ok(())
    }

    /// Undoes every fault: links pass, paused nodes resume, killed nodes restart; then waits for
    /// a leader in every controller.
    pub fn heal(&mut self) -> Result<()> {
        info!("--- heal");
        for link in self.links.values() {
            link.set(LinkMode::Pass);
        }
        if let Some(lan) = &self.lan {
            lan.heal()?;
        }
        let killed = std::mem::take(&mut self.killed);
        for (name, cluster) in &mut self.controllers {
            for id in cluster.node_ids() {
                if cluster.is_paused(id) {
                    cluster.resume(id)?;
                }
            }
            for id in killed.get(name).into_iter().flatten() {
                if !cluster.is_running(*id) {
                    cluster.start_node(*id)?;
                }
            }
        }
        for cluster in self.controllers.values_mut() {
            self.rt.block_on(cluster.wait_for_leader(SETTLE_WAIT))?;
        }
        Ok(())
    }

    /// Kills the leader of `controller`, waits for another leader, and restarts the old one.
    pub fn kill_leader_and_recover(&mut self, controller: &str) -> Result<()> {
        let leader = self.node_in_role(controller, Role::Leader)?;
        let cluster = self.controllers.get_mut(controller).context("controller")?;
        cluster.kill(leader)?;
        info!(controller, leader, "leader SIGKILLed");
        self.rt
            .block_on(cluster.wait_for_leader_other_than(Some(leader), SETTLE_WAIT))?;
        cluster.start_node(leader)?;
        Ok(())
    }

    /// Waits until every started migration has ended; records the ends and updates where
    /// each model lives.
    pub fn wait_migrations_end(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        for i in 0..self.migrations.len() {
            if self.migrations[i].end.is_some() {
                continue;
            }
            let (from, model, id) = {
                let run = &self.migrations[i];
                (run.from.clone(), run.model.clone(), run.id.clone())
            };
            let (end, abort_reason) = loop {
                if let Ok(info) = self.migration_status(&from, &model) {
                    if info.migration_id != id {
                        bail!(
                            "{from} reports migration {} of {model}, not {id}",
                            info.migration_id
                        );
                    }
                    if TERMINAL.contains(&info.phase.as_str()) {
                        break (info.phase, info.abort_reason);
                    }
                }
                ensure!(
                    Instant::now() < deadline,
                    "migration {id} of {model} did not end within {wait:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            info!(model, id, end, abort_reason, "migration ended");
            let run = &mut self.migrations[i];
            let result = match end.as_str() {
                "DONE" => MigrationResult::Done,
                "ABORTDONE" => MigrationResult::AbortDone,
                _ => MigrationResult::Unknown,
            };
            self.recorder.complete_migration(run.op, result);
            if end != "ABORTDONE" {
                self.homes.insert(run.model.clone(), run.to.clone());
            }
            run.end = Some(end);
            run.abort_reason = abort_reason;
        }
        Ok(())
    }

    /// The end of migration `id` (after [`Self::wait_migrations_end`]).
    pub fn end_of(&self, id: &str) -> Option<&str> {
        self.run_of(id).and_then(|r| r.end.as_deref())
    }

    /// How migration `id` ended, for messages: `DONE`, `ABORTDONE (why)`, or `not ended`.
    pub fn ending(&self, id: &str) -> String {
        let Some(run) = self.run_of(id) else {
            return format!("unknown migration {id}");
        };
        match (&run.end, &run.abort_reason) {
            (None, _) => "not ended".to_owned(),
            (Some(end), Some(reason)) if !reason.is_empty() => format!("{end} ({reason})"),
            (Some(end), _) => end.clone(),
        }
    }

    fn run_of(&self, id: &str) -> Option<&MigrationRun> {
        self.migrations.iter().find(|r| r.id == id)
    }

    /// Asks every controller about `model` until each gives a definite answer; the answers
    /// (recorded in the history).
    pub fn owners_of(&mut self, model: &str) -> Result<BTreeMap<String, Ownership>> {
        let mut answers = BTreeMap::new();
        for controller in self.options.controllers.clone() {
            let controller = controller.as_str();
            let answer = wait_until(
                &format!("a definite answer from {controller} about {model}"),
                SETTLE_WAIT,
                || {
                    let nodes = self.controllers[controller].node_ids();
                    for node in nodes {
                        let Some(mut client) = self.client(controller, node) else {
                            continue;
                        };
                        let recorder = self.recorder.clone();
                        let observed = self.rt.block_on(observe(
                            &recorder,
                            &mut client,
                            FINAL_READ_PROCESS,
                            model,
                            controller,
                        ));
                        if let Some(observed) = observed {
                            return Ok(observed);
                        }
                    }
                    bail!("no definite answer")
                },
            )?;
            answers.insert(controller.to_owned(), answer);
        }
        Ok(answers)
    }

    /// Reads `model`'s config on `controller` (recorded as a set read).
    fn final_read(&mut self, controller: &str, model: &str) -> Result<BTreeSet<String>> {
        self.read_keys(controller, model, model)
    }

    /// Reads the keys of `model`'s config on `controller`, retrying until a node answers;
    /// recorded as a set read of `recorded_as` (a model re-created under the same name is
    /// another list to the checker).
    pub fn read_keys(
        &mut self,
        controller: &str,
        model: &str,
        recorded_as: &str,
    ) -> Result<BTreeSet<String>> {
        wait_until(
            &format!("a read of {model} on {controller}"),
            SETTLE_WAIT,
            || {
                let mut last = String::new();
                for node in self.controllers[controller].node_ids() {
                    let Some(mut client) = self.client(controller, node) else {
                        continue;
                    };
                    let id = self.recorder.invoke(
                        FINAL_READ_PROCESS,
                        OpKind::read_set(recorded_as, controller),
                    );
                    let answer = self.rt.block_on(async {
                        tokio::time::timeout(
                            CALL_TIMEOUT,
                            client.get_model_config(GetModelConfigRequest {
                                model: Some(ModelRef {
                                    name: model.to_owned(),
                                    uuid: String::new(),
                                }),
                            }),
                        )
                        .await
                    });
                    let answer = answer.map(|a| {
                        a.map(|config| {
                            config
                                .into_inner()
                                .values
                                .into_keys()
                                .filter(|k| k.starts_with('c'))
                                .collect::<BTreeSet<String>>()
                        })
                    });
                    if let Some(keys) = self.complete_recorded_read(id, answer, &mut last) {
                        return Ok(keys);
                    }
                }
                bail!("{last}")
            },
        )
    }

    /// Completes the recorded read `id` with a node's `answer`: Ok with the values read, Fail
    /// when refused (a read has no effect), Unknown on a timeout. The values, or `None` with the
    /// reason in `last`.
    fn complete_recorded_read<T>(
        &self,
        id: OpId,
        answer: std::result::Result<
            std::result::Result<T, tonic::Status>,
            tokio::time::error::Elapsed,
        >,
        last: &mut String,
    ) -> Option<T>
    where
        for<'a> &'a T: IntoIterator<Item = &'a String>,
    {
        match answer {
            Ok(Ok(values)) => {
                self.recorder
                    .complete_read(id, (&values).into_iter().cloned());
                Some(values)
            }
            Ok(Err(status)) => {
                self.recorder.complete(id, Outcome::Fail);
                *last = status.to_string();
                None
            }
            Err(_) => {
                self.recorder.complete(id, Outcome::Unknown);
                *last = "timeout".into();
                None
            }
        }
    }

    /// Reads `model`'s whole log on `controller`, retrying until a node answers; recorded as a
    /// log read of `recorded_as` listing the records agents wrote, each named
    /// `entity#agent_seq` (records of the controller itself carry no such number and are left
    /// out). Returns the names.
    pub fn read_log(
        &mut self,
        controller: &str,
        model: &str,
        recorded_as: &str,
    ) -> Result<Vec<String>> {
        wait_until(
            &format!("a log read of {model} on {controller}"),
            SETTLE_WAIT,
            || {
                let mut last = String::new();
                for node in self.controllers[controller].node_ids() {
                    let Some(mut client) = self.client(controller, node) else {
                        continue;
                    };
                    let id = self.recorder.invoke(
                        FINAL_READ_PROCESS,
                        OpKind::read_log(recorded_as, controller, Vec::<String>::new()),
                    );
                    let request = starling_proto::controller::DebugLogRequest {
                        model: Some(ModelRef {
                            name: model.to_owned(),
                            uuid: String::new(),
                        }),
                        replay: true,
                        level: starling_proto::model::LogLevel::Trace as i32,
                        ..Default::default()
                    };
                    let answer = self.rt.block_on(async {
                        tokio::time::timeout(CALL_TIMEOUT * 2, async {
                            let mut stream = client.debug_log(request).await?.into_inner();
                            let mut records = Vec::new();
                            while let Some(record) = stream.message().await? {
                                if record.agent_seq > 0 {
                                    records.push(format!("{}#{}", record.entity, record.agent_seq));
                                }
                            }
                            Ok::<_, tonic::Status>(records)
                        })
                        .await
                    });
                    if let Some(records) = self.complete_recorded_read(id, answer, &mut last) {
                        return Ok(records);
                    }
                }
                bail!("{last}")
            },
        )
    }

    /// Writes key `key` to `model` on `controller`, trying its nodes in turn with one request
    /// id until one acknowledges it or refuses it; recorded as an append to `recorded_as` by the
    /// driver. The outcome: `Fail` only when refused before any attempt could have applied it.
    pub fn write_key(
        &mut self,
        controller: &str,
        model: &str,
        recorded_as: &str,
        key: &str,
    ) -> Result<Outcome> {
        let id = self
            .recorder
            .invoke(DRIVER_PROCESS, OpKind::append(recorded_as, key, controller));
        let mut outcome = Outcome::Unknown;
        let mut ambiguous = false;
        for node in self.controllers[controller].node_ids() {
            let Some(mut client) = self.client(controller, node) else {
                continue;
            };
            let request = starling_proto::controller::SetModelConfigRequest {
                model: Some(ModelRef {
                    name: model.to_owned(),
                    uuid: String::new(),
                }),
                values: [(key.to_owned(), key.to_owned())].into(),
                request_id: format!("driver-{key}"),
            };
            let answer = self.rt.block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, client.set_model_config(request)).await
            });
            match answer {
                Ok(Ok(_)) => {
                    outcome = Outcome::Ok;
                    break;
                }
                // A refusal: not applied by this attempt (nor by an earlier one, unless one
                // was lost on the way).
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::PermissionDenied
                            | tonic::Code::InvalidArgument
                    ) =>
                {
                    if !ambiguous {
                        outcome = Outcome::Fail;
                    }
                    break;
                }
                // Unavailable, a deadline, a lost connection: maybe applied; the next node gets
                // the same request id, so it is applied at most once.
                _ => ambiguous = true,
            }
        }
        self.recorder.complete(id, outcome);
        Ok(outcome)
    }

    /// `controller`'s answer to ShowModel of `model` from the first node giving a definite one
    /// (see [`super::ownership_of`]); not recorded. `None` when no node did.
    pub fn show_model(
        &mut self,
        controller: &str,
        model: &str,
    ) -> Option<std::result::Result<starling_proto::controller::ModelInfo, tonic::Status>> {
        let nodes = self.controllers.get_mut(controller)?.running_ids();
        for node in nodes {
            let Some(mut client) = self.client(controller, node) else {
                continue;
            };
            let answer = self.rt.block_on(async {
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.show_model(ModelRef {
                        name: model.to_owned(),
                        uuid: String::new(),
                    }),
                )
                .await
            });
            let answer = match answer {
                Ok(answer) => answer.map(tonic::Response::into_inner),
                Err(_) => continue,
            };
            if super::ownership_of(&answer).is_some() {
                return Some(answer);
            }
        }
        None
    }

    /// Clients of every node of `controller` sending `token` (a user's), for a task on
    /// [`Self::rt`].
    pub fn clients_with_token(
        &self,
        controller: &str,
        token: &str,
    ) -> Result<Vec<(u64, crate::AuthedControllerClient)>> {
        let _guard = self.rt.enter();
        let cluster = &self.controllers[controller];
        cluster
            .node_ids()
            .into_iter()
            .map(|id| Ok((id, cluster.client_with(id, Some(token), CALL_TIMEOUT)?)))
            .collect()
    }

    /// Heals, waits for every migration to end, then checks: every migration DONE or
    /// ABORTDONE; every model owned by exactly one controller, the one its migrations say;
    /// every model accepting writes again; every acknowledged write present; every agent
    /// workload still running with its pid; the history checker green. On failure the
    /// history, the seed and the logs are saved (see [`super::failure_dir`]).
    pub fn finish(&mut self) -> Result<()> {
        let result = self.finish_inner();
        if let Err(e) = &result {
            self.save_failure(&format!("{e:#}"));
        }
        result
    }

    /// Waits until `model` is active on exactly the controller the driver expects, neither
    /// locked nor importing anywhere, and every redirect leads there (following redirects from
    /// any controller ends at the owner); every controller's answer.
    pub fn wait_one_owner(&mut self, model: &str) -> Result<BTreeMap<String, Ownership>> {
        let expected = self.homes[model].clone();
        let answers = wait_until(&format!("one owner of {model}"), SETTLE_WAIT, || {
            let answers = self.owners_of(model)?;
            let active: Vec<&String> = answers
                .iter()
                .filter(|(_, o)| matches!(o, Ownership::Active { .. }))
                .map(|(c, _)| c)
                .collect();
            ensure!(
                active == vec![&expected]
                    && answers
                        .values()
                        .all(|o| !matches!(o, Ownership::Locked { .. } | Ownership::Importing)),
                "{model}: {answers:?}, expected only {expected} active"
            );
            let redirecting = answers
                .iter()
                .filter(|(_, o)| matches!(o, Ownership::MigratedTo { .. }));
            for (start, _) in redirecting {
                ensure!(
                    redirects_end_at(&answers, start) == Some(expected.as_str()),
                    "{model}: the redirects from {start} do not lead to its owner {expected}: \
                     {answers:?}"
                );
            }
            Ok(answers)
        })?;
        info!(model, ?answers, "owners");
        Ok(answers)
    }

    fn finish_inner(&mut self) -> Result<()> {
        self.heal()?;
        self.wait_migrations_end(MIGRATION_END_WAIT)?;
        for run in &self.migrations {
            let end = run.end.as_deref().unwrap_or("?");
            ensure!(
                end == "DONE" || end == "ABORTDONE",
                "migration {} of {} ended {end}",
                run.id,
                run.model
            );
        }
        info!("--- liveness: one owner per model, writes accepted again");
        for model in self.models.clone() {
            self.wait_one_owner(&model)?;
        }
        let healed_at = self.recorder.now();
        wait_until(
            "an acknowledged write to every model after healing",
            SETTLE_WAIT,
            || {
                let history = self.recorder.history();
                let written: BTreeSet<&str> = history
                    .ops
                    .iter()
                    .filter(|op| op.invoke > healed_at && op.outcome == Outcome::Ok)
                    .filter_map(|op| match &op.kind {
                        OpKind::Append { model, .. } => Some(model.as_str()),
                        _ => None,
                    })
                    .collect();
                let missing: Vec<&String> = self
                    .models
                    .iter()
                    .filter(|m| !written.contains(m.as_str()))
                    .collect();
                ensure!(
                    missing.is_empty(),
                    "no write acknowledged yet for {missing:?}"
                );
                Ok(())
            },
        )?;
        if let Some(workload) = self.workload.take() {
            self.rt.block_on(workload.stop());
        }
        info!("--- every acknowledged write present");
        let history = self.recorder.history();
        for model in self.models.clone() {
            let home = self.homes[&model].clone();
            let keys = self.final_read(&home, &model)?;
            let lost: Vec<&String> = history
                .ops
                .iter()
                .filter(|op| op.outcome == Outcome::Ok)
                .filter_map(|op| match &op.kind {
                    OpKind::Append {
                        model: m, value, ..
                    } if *m == model => Some(value),
                    _ => None,
                })
                .filter(|v| !keys.contains(*v))
                .collect();
            ensure!(
                lost.is_empty(),
                "{model}: acknowledged writes missing on {home}: {lost:?}"
            );
        }
        info!("--- agent workloads kept their pids");
        let now = workloads_by_machine(&self.fleet)?;
        ensure!(
            now == self.workloads_before,
            "workloads changed: {:?} -> {now:?}",
            self.workloads_before
        );
        for (unit, workload) in &now {
            ensure!(running(*workload), "{unit}: {workload:?} is not running");
        }
        info!("--- history checker");
        let history = self.recorder.history();
        let summary = history
            .check()
            .map_err(|e| anyhow::anyhow!("checker: {e}"))?;
        info!(?summary, "history checked");
        ensure!(
            summary.appends > 0 && summary.reads > 0,
            "an empty history: {summary:?}"
        );
        Ok(())
    }

    /// Saves the history, the seed and the logs of a failed run (and prints where).
    pub fn save_failure(&self, error: &str) {
        let dir = super::failure_dir(&self.options.test, self.options.seed);
        let saved = (|| -> Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("history.json"), self.recorder.history().to_json())?;
            std::fs::write(
                dir.join("seed.txt"),
                format!(
                    "seed={:#x}\ntest={}\nreplay: {}\nerror: {error}\n",
                    self.options.seed,
                    self.options.test,
                    super::replay_command(&self.options.test, self.options.seed)
                ),
            )?;
            for (name, cluster) in &self.controllers {
                for id in cluster.node_ids() {
                    let _ = std::fs::copy(
                        cluster.log_path(id),
                        dir.join(format!("{name}-node-{id}.log")),
                    );
                }
            }
            for (i, machine) in self.fleet.machines.iter().enumerate() {
                let _ = std::fs::copy(&machine.log, dir.join(format!("agentd-{i}.log")));
            }
            Ok(())
        })();
        match saved {
            Ok(()) => eprintln!("chaos: the failing run is saved in {}", dir.display()),
            Err(e) => eprintln!(
                "chaos: could not save the failing run in {}: {e:#}",
                dir.display()
            ),
        }
        self.fleet.dump_log_tails(20);
        for cluster in self.controllers.values() {
            cluster.dump_log_tails(25);
        }
        // Last, so a report that keeps only the head and tail of the output still shows it.
        eprintln!("chaos: {} failed: {error}", self.options.test);
    }

    /// The directory of this world's files (kept with `STARLING_KEEP_WORK`).
    pub fn work_dir(&self) -> Option<PathBuf> {
        self.work.as_ref().map(|w| w.path().to_path_buf())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Stop the workload before the clusters go away, so no client waits on a dead node.
        if let Some(workload) = self.workload.take() {
            drop(workload);
        }
        self.links.clear();
        if std::env::var_os("STARLING_KEEP_WORK").is_some() {
            if let Some(work) = self.work.take() {
                eprintln!("kept the chaos world's files in {}", work.keep().display());
            }
        }
    }
}

/// Where following `answers`' redirects from `start` ends: the controller holding the model
/// active, or `None` (a controller that knows nothing of it, a loop, or an answer other than a
/// redirect or an active model).
fn redirects_end_at<'a>(
    answers: &'a BTreeMap<String, Ownership>,
    start: &'a str,
) -> Option<&'a str> {
    let mut at = start;
    for _ in 0..=answers.len() {
        match answers.get(at)? {
            Ownership::Active { .. } => return Some(at),
            Ownership::MigratedTo { controller } => at = controller,
            _ => return None,
        }
    }
    None
}

/// Every unit's workload, keyed by machine and unit (unit names repeat across models).
fn workloads_by_machine(fleet: &Fleet) -> Result<BTreeMap<String, WorkloadId>> {
    let mut out = BTreeMap::new();
    for machine in &fleet.machines {
        for (unit, workload) in machine.recorded_workloads()? {
            out.insert(format!("{} {unit}", machine.id), workload);
        }
    }
    Ok(out)
}

/// Writes a copy of the registration file `from` to `to` with its `api-endpoints` replaced.
fn rewrite_endpoints(from: &Path, to: &Path, endpoints: &[String]) -> Result<()> {
    let text = std::fs::read_to_string(from)?;
    let mut registration: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", from.display()))?;
    registration["api-endpoints"] = Value::from(endpoints.to_vec());
    std::fs::write(to, serde_saphyr::to_string(&registration)?)?;
    Ok(())
}

/// Waits until every unit of `model_arg` is active and every machine started.
fn wait_active(ctl: &Ctl, model_arg: &str, units: usize) -> Result<()> {
    wait_until(
        &format!("every unit of {model_arg} active"),
        SETTLE_WAIT,
        || crate::fleet::all_units_active(ctl, model_arg, units),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(&str, Ownership)]) -> BTreeMap<String, Ownership> {
        list.iter()
            .map(|(c, o)| ((*c).to_owned(), o.clone()))
            .collect()
    }

    fn to(controller: &str) -> Ownership {
        Ownership::MigratedTo {
            controller: controller.to_owned(),
        }
    }

    #[test]
    fn redirects_lead_to_the_owner_or_nowhere() {
        let chain = answers(&[
            ("alpha", to("beta")),
            ("beta", to("gamma")),
            ("gamma", Ownership::Active { epoch: 3 }),
        ]);
        assert_eq!(redirects_end_at(&chain, "alpha"), Some("gamma"));
        assert_eq!(redirects_end_at(&chain, "gamma"), Some("gamma"));
        let dangling = answers(&[
            ("alpha", to("beta")),
            ("beta", Ownership::Absent),
            ("gamma", Ownership::Active { epoch: 3 }),
        ]);
        assert_eq!(redirects_end_at(&dangling, "alpha"), None);
        let cycle = answers(&[("alpha", to("beta")), ("beta", to("alpha"))]);
        assert_eq!(redirects_end_at(&cycle, "alpha"), None);
        let locked = answers(&[
            ("alpha", to("beta")),
            ("beta", Ownership::Locked { epoch: 1 }),
        ]);
        assert_eq!(redirects_end_at(&locked, "alpha"), None);
        assert_eq!(redirects_end_at(&locked, "unknown"), None);
    }
}
