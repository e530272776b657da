//! Per-model load, measured where it happens: commands applied to a model (counted by the apply
//! observer, so every node counts the same), agent reports among them, reads (counted by the
//! node that serves them), machine agents with a watch open (on the node holding the watch),
//! and what each model occupies in the state (its records and its log, walked from the state at
//! most every few seconds while the model changes). `ctl models`, `ctl show-controller`,
//! `ctl balance`, `/metrics` and the status page read it from here.
//!
//! Rates are exponentially decayed with a one-minute time constant (like a Unix load average)
//! and bias-corrected for how long this node has watched the model: a model that arrived a few
//! seconds ago (imported by a migration, just added, or the node just started) shows its real
//! rate at once instead of ramping up over a minute. Reads and agents are per node; any node
//! sums them over its group by asking its peers (`NodeStatus` with `with_load`), at most every
//! few seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use starling_proto::command::{command::Op, command_result, Command, CommandResult};
use starling_proto::controller as pb;
use starling_proto::raft::{NodeLoad, NodeModelLoad};
use starling_raft::store::{ApplyObserver, StateView};
use starling_raft::RaftHandle;
use starling_storage::records::{model_footprint, ModelFootprint};
use tracing::warn;

/// The time constant of every decayed rate.
pub const LOAD_WINDOW: Duration = Duration::from_secs(60);
/// A rate is never computed over less than this much watching (the first events of a model
/// would read as huge rates otherwise).
const WATCHED_MIN: Duration = Duration::from_secs(5);
/// A changing model's footprint is walked again at most this often.
const FOOTPRINT_REFRESH: Duration = Duration::from_secs(5);
/// The data dir's size is measured again at most this often.
const DISK_REFRESH: Duration = Duration::from_secs(10);
/// Peers' loads are asked for again at most this often.
const PEER_LOAD_REFRESH: Duration = Duration::from_secs(2);
/// How long a peer may take to report its load.
const PEER_LOAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Rates below this are reported as 0 (and leave the peer report).
const RATE_EPSILON: f64 = 1e-3;

/// Events per second, exponentially decayed with time constant `LOAD_WINDOW`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecayedRate {
    /// The decayed count of events, as of `at`.
    value: f64,
    at: Option<Instant>,
}

impl DecayedRate {
    fn decayed(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => {
                let age = now.saturating_duration_since(at).as_secs_f64();
                self.value * (-age / LOAD_WINDOW.as_secs_f64()).exp()
            }
            None => 0.0,
        }
    }

    /// Counts `n` events at `now`.
    pub fn add(&mut self, now: Instant, n: f64) {
        self.value = self.decayed(now) + n;
        self.at = Some(now);
    }

    /// The rate at `now` for events watched since `since`: the decayed count divided by the
    /// decayed length of the watch (`window × (1 − e^(−watched/window))`), so a constant rate
    /// reads as itself however long it has been watched.
    pub fn per_second(&self, now: Instant, since: Instant) -> f64 {
        let window = LOAD_WINDOW.as_secs_f64();
        let watched = now.saturating_duration_since(since).max(WATCHED_MIN);
        let span = window * (1.0 - (-watched.as_secs_f64() / window).exp());
        let rate = self.decayed(now) / span;
        if rate < RATE_EPSILON {
            0.0
        } else {
            rate
        }
    }
}

/// What one model did on this node.
#[derive(Clone, Debug)]
struct ModelCounters {
    /// Since when this node watches the model (rates are bias-corrected for it).
    since: Instant,
    writes: DecayedRate,
    reports: DecayedRate,
    reads: DecayedRate,
    writes_total: u64,
    reports_total: u64,
    reads_total: u64,
    agents: u64,
    /// Written to since its footprint was last measured.
    changed: bool,
}

impl ModelCounters {
    fn new(since: Instant) -> Self {
        Self {
            since,
            writes: DecayedRate::default(),
            reports: DecayedRate::default(),
            reads: DecayedRate::default(),
            writes_total: 0,
            reports_total: 0,
            reads_total: 0,
            agents: 0,
            changed: true,
        }
    }
}

/// What an applied command means for the load of a model.
#[derive(Debug, PartialEq, Eq)]
enum Applied<'c> {
    /// A change of the model by a user or an agent.
    Write(&'c str),
    /// An agent's report (also a write).
    Report(&'c str),
    /// The model appeared on this controller (added, imported, activated).
    Arrived(&'c str),
    /// The model left this controller (destroyed, reaped, its import dropped).
    Left(&'c str),
    /// Controller-level state, or a migration's bookkeeping.
    Other,
}

/// The model uuid of migration id `<uuid>:<attempt>`.
fn migration_model(id: &str) -> &str {
    id.rsplit_once(':').map_or(id, |(uuid, _)| uuid)
}

fn classify(op: &Op) -> Applied<'_> {
    match op {
        Op::AddMachine(o) => Applied::Write(&o.model_uuid),
        Op::RemoveMachine(o) => Applied::Write(&o.model_uuid),
        Op::Deploy(o) => Applied::Write(&o.model_uuid),
        Op::AddUnits(o) => Applied::Write(&o.model_uuid),
        Op::RemoveUnits(o) => Applied::Write(&o.model_uuid),
        Op::RemoveApplication(o) => Applied::Write(&o.model_uuid),
        Op::Integrate(o) => Applied::Write(&o.model_uuid),
        Op::RemoveRelation(o) => Applied::Write(&o.model_uuid),
        Op::SetApplicationConfig(o) => Applied::Write(&o.model_uuid),
        Op::SetStatus(o) => Applied::Write(&o.model_uuid),
        Op::AppendLog(o) => Applied::Write(&o.model_uuid),
        Op::SetModelAccess(o) => Applied::Write(&o.model_uuid),
        Op::SetModelConfig(o) => Applied::Write(&o.model_uuid),
        Op::AgentReport(o) => Applied::Report(&o.model_uuid),
        Op::AddModel(o) => Applied::Arrived(&o.uuid),
        Op::ImportModel(o) => Applied::Arrived(migration_model(&o.migration_id)),
        Op::ActivateModel(o) => Applied::Arrived(migration_model(&o.migration_id)),
        Op::DestroyModel(o) => Applied::Left(&o.model_uuid),
        Op::ReapModel(o) => Applied::Left(migration_model(&o.migration_id)),
        Op::DropImport(o) => Applied::Left(migration_model(&o.migration_id)),
        _ => Applied::Other,
    }
}

/// The group's node-local measurements summed: per model and per node.
#[derive(Clone, Debug, Default)]
pub struct GroupLoad {
    /// Reads per second and connected agents of each model, over the nodes that answered.
    pub models: HashMap<String, (f64, u64)>,
    /// What each node that answered reported (this one always does).
    pub nodes: BTreeMap<u64, NodeLoad>,
    /// How each node that answered saw itself when it answered: its Raft state, term, the
    /// leader it knew and the last index it applied (this one's is current).
    pub views: BTreeMap<u64, MemberState>,
}

/// A node's own view of itself, as it answered a load request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberState {
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knew of.
    pub leader_id: Option<u64>,
    /// The last log index it applied.
    pub applied_index: u64,
}

impl From<&starling_proto::raft::NodeStatusResponse> for MemberState {
    fn from(status: &starling_proto::raft::NodeStatusResponse) -> Self {
        MemberState {
            state: status.state.clone(),
            term: status.term,
            leader_id: status.leader_id,
            applied_index: status.applied_index,
        }
    }
}

impl GroupLoad {
    /// Adds what node `node` reported.
    pub fn add(&mut self, node: u64, load: NodeLoad) {
        for model in &load.models {
            let entry = self.models.entry(model.model_uuid.clone()).or_default();
            entry.0 += model.reads_per_second;
            entry.1 += model.agents_connected;
        }
        self.nodes.insert(node, load);
    }

    /// Reads per second and agents of node `id`, if it answered.
    pub fn node_totals(&self, id: u64) -> Option<(f64, u64, u64)> {
        self.nodes.get(&id).map(|load| {
            let reads = load.models.iter().map(|m| m.reads_per_second).sum();
            let agents = load.models.iter().map(|m| m.agents_connected).sum();
            (reads, agents, load.disk_bytes)
        })
    }
}

#[derive(Debug)]
struct BoardState {
    /// When this node started watching: the `since` of models it found already there.
    started: Instant,
    models: HashMap<String, ModelCounters>,
    footprints: HashMap<String, (Instant, ModelFootprint)>,
    disk: Option<(Instant, u64)>,
    /// The last loads peers reported, with when they were asked.
    peers: Option<(Instant, GroupLoad)>,
}

impl BoardState {
    fn counters(&mut self, uuid: &str) -> &mut ModelCounters {
        let started = self.started;
        self.models
            .entry(uuid.to_owned())
            .or_insert_with(|| ModelCounters::new(started))
    }
}

/// This node's load measurements. Cheap to clone; std Mutex, not tokio's: nothing awaits while
/// it is held, and the apply observer calls it from the blocking pool.
#[derive(Clone)]
pub struct LoadBoard {
    state: Arc<Mutex<BoardState>>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for LoadBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBoard").finish_non_exhaustive()
    }
}

/// Keeps one agent counted as connected to a model while it lives (the agent's watch).
pub struct AgentConnection {
    board: LoadBoard,
    model_uuid: String,
}

impl Drop for AgentConnection {
    fn drop(&mut self) {
        let mut state = self.board.lock();
        if let Some(counters) = state.models.get_mut(&self.model_uuid) {
            counters.agents = counters.agents.saturating_sub(1);
        }
    }
}

impl LoadBoard {
    /// A board for a node whose data dir is `data_dir` (measured for the disk figure).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            state: Arc::new(Mutex::new(BoardState {
                started: Instant::now(),
                models: HashMap::new(),
                footprints: HashMap::new(),
                disk: None,
                peers: None,
            })),
            data_dir: data_dir.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The observer the state machine calls with every applied command.
    pub fn apply_observer(&self) -> ApplyObserver {
        let board = self.clone();
        Arc::new(move |command, result| board.applied(command, result, Instant::now()))
    }

    /// Counts `command`, applied at `now` with `result`.
    fn applied(&self, command: &Command, result: &CommandResult, now: Instant) {
        let Some(op) = &command.op else { return };
        let ok = matches!(result.result, Some(command_result::Result::Ok(_)));
        let mut state = self.lock();
        match classify(op) {
            Applied::Write(uuid) if ok => {
                let counters = state.counters(uuid);
                counters.writes.add(now, 1.0);
                counters.writes_total += 1;
                counters.changed = true;
            }
            Applied::Report(uuid) if ok => {
                let counters = state.counters(uuid);
                counters.writes.add(now, 1.0);
                counters.writes_total += 1;
                counters.reports.add(now, 1.0);
                counters.reports_total += 1;
                counters.changed = true;
            }
            Applied::Arrived(uuid) if ok => {
                // Watched from now on: its rates here start with it (agents already connected,
                // if any, stay counted).
                let agents = state.models.get(uuid).map_or(0, |c| c.agents);
                let mut counters = ModelCounters::new(now);
                counters.agents = agents;
                state.models.insert(uuid.to_owned(), counters);
                state.footprints.remove(uuid);
            }
            Applied::Left(uuid) if ok => {
                let agents = state.models.remove(uuid).map_or(0, |c| c.agents);
                if agents > 0 {
                    // Agents still watching (until they follow the redirect) stay counted.
                    state.counters(uuid).agents = agents;
                }
                state.footprints.remove(uuid);
            }
            _ => {}
        }
    }

    /// Counts one read of model `uuid` served by this node.
    pub fn read(&self, uuid: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        let counters = state.counters(uuid);
        counters.reads.add(now, 1.0);
        counters.reads_total += 1;
    }

    /// Counts an agent of model `uuid` as connected to this node until the result is dropped.
    pub fn agent_connected(&self, uuid: &str) -> AgentConnection {
        self.lock().counters(uuid).agents += 1;
        AgentConnection {
            board: self.clone(),
            model_uuid: uuid.to_owned(),
        }
    }

    /// What this node measured, for its peers: reads and agents per model, and its disk.
    pub fn node_load(&self) -> NodeLoad {
        let now = Instant::now();
        let disk_bytes = self.disk_bytes(now);
        let state = self.lock();
        let mut models: Vec<NodeModelLoad> = state
            .models
            .iter()
            .map(|(uuid, c)| NodeModelLoad {
                model_uuid: uuid.clone(),
                reads_per_second: c.reads.per_second(now, c.since),
                agents_connected: c.agents,
            })
            .filter(|m| m.reads_per_second > 0.0 || m.agents_connected > 0)
            .collect();
        models.sort_by(|a, b| a.model_uuid.cmp(&b.model_uuid));
        NodeLoad { models, disk_bytes }
    }

    /// The size of the data dir, measured at most every `DISK_REFRESH`.
    fn disk_bytes(&self, now: Instant) -> u64 {
        if let Some((at, bytes)) = self.lock().disk {
            if now.saturating_duration_since(at) < DISK_REFRESH {
                return bytes;
            }
        }
        let bytes = dir_bytes(&self.data_dir);
        self.lock().disk = Some((now, bytes));
        bytes
    }

    /// This node's and its peers' measurements, summed. Peers are asked at most every
    /// `PEER_LOAD_REFRESH` (concurrently, each for at most `PEER_LOAD_TIMEOUT`); a peer that
    /// does not answer is left out.
    pub async fn group_load(&self, handle: &RaftHandle) -> GroupLoad {
        let now = Instant::now();
        let cached = self.lock().peers.clone();
        let peers = match cached {
            Some((at, peers)) if now.saturating_duration_since(at) < PEER_LOAD_REFRESH => peers,
            _ => {
                let (_, nodes) = handle.membership();
                let own = handle.node_id();
                let answers =
                    futures::future::join_all(nodes.iter().filter(|(id, _)| **id != own).map(
                        |(id, address)| async move {
                            let status = handle
                                .peer_status(*id, address, PEER_LOAD_TIMEOUT, true)
                                .await;
                            (*id, status)
                        },
                    ))
                    .await;
                let mut peers = GroupLoad::default();
                for (id, answer) in answers {
                    if let Ok(status) = answer {
                        peers.views.insert(id, MemberState::from(&status));
                        peers.add(id, status.load.unwrap_or_default());
                    }
                }
                self.lock().peers = Some((now, peers.clone()));
                peers
            }
        };
        let mut group = peers;
        group.add(handle.node_id(), self.node_load());
        group
            .views
            .insert(handle.node_id(), MemberState::from(&handle.node_status()));
        group
    }

    /// What model `uuid` occupies, walked again when it changed and the last walk is older than
    /// `FOOTPRINT_REFRESH`.
    pub fn footprint(&self, view: &StateView, uuid: &str) -> ModelFootprint {
        let now = Instant::now();
        let cached = {
            let state = self.lock();
            let changed = state.models.get(uuid).is_none_or(|c| c.changed);
            state
                .footprints
                .get(uuid)
                .filter(|(at, _)| {
                    !changed || now.saturating_duration_since(*at) < FOOTPRINT_REFRESH
                })
                .map(|(_, footprint)| *footprint)
        };
        if let Some(footprint) = cached {
            return footprint;
        }
        match model_footprint(view.reader(), uuid) {
            Ok(footprint) => {
                let mut state = self.lock();
                state.footprints.insert(uuid.to_owned(), (now, footprint));
                if let Some(counters) = state.models.get_mut(uuid) {
                    counters.changed = false;
                }
                footprint
            }
            Err(e) => {
                warn!(model = uuid, error = %e, "cannot measure the model");
                ModelFootprint::default()
            }
        }
    }

    /// Commands and agent reports applied to model `uuid` per second.
    pub fn write_rates(&self, uuid: &str) -> (f64, f64) {
        let now = Instant::now();
        let state = self.lock();
        state.models.get(uuid).map_or((0.0, 0.0), |c| {
            (
                c.writes.per_second(now, c.since),
                c.reports.per_second(now, c.since),
            )
        })
    }

    /// Model `uuid`'s load as its controller sees it (`group` sums reads and agents).
    pub fn model_load(&self, view: &StateView, uuid: &str, group: &GroupLoad) -> pb::ModelLoad {
        let (writes, reports) = self.write_rates(uuid);
        let (reads, agents) = group.models.get(uuid).copied().unwrap_or_default();
        let footprint = self.footprint(view, uuid);
        pb::ModelLoad {
            writes_per_second: writes,
            reports_per_second: reports,
            reads_per_second: reads,
            agents_connected: agents,
            records: footprint.records,
            size_bytes: footprint.bytes,
            log_records: footprint.log_records,
            log_bytes: footprint.log_bytes,
        }
    }

    /// The per-model families of `/metrics` for `models` (uuid, `owner/name`, migration phase if
    /// one is in flight): one series per model and family, never per unit. Rates, totals, reads
    /// and agents are this node's own (Prometheus sums nodes); sizes are the model's.
    pub fn render_metrics(
        &self,
        view: &StateView,
        models: &[(String, String, Option<String>)],
    ) -> String {
        let footprints: Vec<ModelFootprint> = models
            .iter()
            .map(|(uuid, _, _)| self.footprint(view, uuid))
            .collect();
        let now = Instant::now();
        let state = self.lock();
        let idle = ModelCounters::new(state.started);
        let counters: Vec<&ModelCounters> = models
            .iter()
            .map(|(uuid, _, _)| state.models.get(uuid).unwrap_or(&idle))
            .collect();
        let mut out = String::new();
        type Value<'a> = &'a dyn Fn(&ModelCounters, &ModelFootprint) -> f64;
        let families: [(&str, &str, &str, Value); 11] = [
            ("starling_model_writes_total", "counter", "Commands applied to the model by this node since it started, agent reports included.", &|c, _| c.writes_total as f64),
            ("starling_model_agent_reports_total", "counter", "Agent reports applied to the model by this node since it started.", &|c, _| c.reports_total as f64),
            ("starling_model_reads_total", "counter", "Reads of the model this node served since it started.", &|c, _| c.reads_total as f64),
            ("starling_model_writes_per_second", "gauge", "Commands applied to the model per second (decayed over about a minute).", &|c, _| c.writes.per_second(now, c.since)),
            ("starling_model_agent_reports_per_second", "gauge", "Agent reports applied to the model per second (decayed over about a minute).", &|c, _| c.reports.per_second(now, c.since)),
            ("starling_model_reads_per_second", "gauge", "Reads of the model this node served per second (decayed over about a minute).", &|c, _| c.reads.per_second(now, c.since)),
            ("starling_model_agents_connected", "gauge", "Machine agents of the model with a watch open on this node.", &|c, _| c.agents as f64),
            ("starling_model_records", "gauge", "Records of the model (its description), its log excluded.", &|_, f| f.records as f64),
            ("starling_model_size_bytes", "gauge", "Key and value bytes of the model's records, its log excluded.", &|_, f| f.bytes as f64),
            ("starling_model_log_records", "gauge", "Records in the model's log.", &|_, f| f.log_records as f64),
            ("starling_model_log_bytes", "gauge", "Key and value bytes of the model's log.", &|_, f| f.log_bytes as f64),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (((uuid, label, _), c), f) in models.iter().zip(&counters).zip(&footprints) {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\",model_uuid=\"{}\"}} {}",
                    escape_label(label),
                    escape_label(uuid),
                    value(c, f)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP starling_model_migrating 1 while a migration of the model from this controller is in flight, by phase.\n# TYPE starling_model_migrating gauge"
        );
        for (uuid, label, phase) in models {
            if let Some(phase) = phase {
                let _ = writeln!(
                    out,
                    "starling_model_migrating{{model=\"{}\",model_uuid=\"{}\",phase=\"{}\"}} 1",
                    escape_label(label),
                    escape_label(uuid),
                    escape_label(phase)
                );
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Bytes of the regular files under `dir` (not following links); unreadable entries count 0.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::command as cmd;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    /// Events at `rate` per second for `seconds`, counted at `start + i / rate`.
    fn steady(rate: f64, seconds: f64, start: Instant) -> (DecayedRate, Instant) {
        let mut r = DecayedRate::default();
        let n = (rate * seconds) as u64;
        for i in 0..n {
            r.add(start + secs(i as f64 / rate), 1.0);
        }
        (r, start + secs(seconds))
    }

    #[test]
    fn a_steady_rate_reads_as_itself_early_and_late() {
        let start = Instant::now();
        for seconds in [10.0, 30.0, 120.0, 600.0] {
            let (r, now) = steady(20.0, seconds, start);
            let rate = r.per_second(now, start);
            assert!((rate - 20.0).abs() < 1.0, "{rate} after {seconds}s");
        }
    }

    #[test]
    fn a_stopped_rate_decays_with_the_window() {
        let start = Instant::now();
        let (r, end) = steady(10.0, 600.0, start);
        let after = |s: f64| r.per_second(end + secs(s), start);
        assert!((after(0.0) - 10.0).abs() < 0.5);
        // One time constant later: e^-1 of it.
        let one = after(LOAD_WINDOW.as_secs_f64());
        assert!((one - 10.0 / std::f64::consts::E).abs() < 0.3, "{one}");
        assert_eq!(after(3600.0), 0.0, "tiny rates read as 0");
    }

    #[test]
    fn a_first_event_is_not_a_huge_rate() {
        let start = Instant::now();
        let mut r = DecayedRate::default();
        r.add(start, 1.0);
        // Counted as if watched for `WATCHED_MIN` (5 s): about 0.2 per second, not 100.
        let rate = r.per_second(start + secs(0.01), start);
        assert!((0.19..0.22).contains(&rate), "{rate}");
    }

    fn command(op: Op) -> Command {
        Command {
            op: Some(op),
            ..Default::default()
        }
    }

    fn ok() -> CommandResult {
        starling_storage::apply::ok_result()
    }

    fn refused() -> CommandResult {
        starling_storage::apply::error_result(cmd::command_error::Code::FailedPrecondition, "no")
    }

    #[test]
    fn applied_commands_count_for_their_model() {
        let board = LoadBoard::new(Path::new("/nonexistent"));
        let start = board.lock().started;
        let config = |uuid: &str| {
            command(Op::SetModelConfig(cmd::SetModelConfig {
                model_uuid: uuid.into(),
                values: Default::default(),
            }))
        };
        let report = command(Op::AgentReport(cmd::AgentReport {
            model_uuid: "a".into(),
            ..Default::default()
        }));
        for i in 0..100 {
            let at = start + secs(i as f64 * 0.1);
            board.applied(&config("a"), &ok(), at);
            board.applied(&report, &ok(), at);
            // Refused commands and controller-level ones change nothing.
            board.applied(&config("b"), &refused(), at);
            board.applied(
                &command(Op::SetControllerConfig(Default::default())),
                &ok(),
                at,
            );
        }
        let state = board.lock();
        let a = &state.models["a"];
        assert_eq!((a.writes_total, a.reports_total), (200, 100));
        let now = start + secs(10.0);
        assert!((a.writes.per_second(now, a.since) - 20.0).abs() < 1.0);
        assert!((a.reports.per_second(now, a.since) - 10.0).abs() < 0.5);
        assert!(!state.models.contains_key("b"));
    }

    #[test]
    fn a_model_that_arrives_is_watched_from_then_and_forgotten_when_it_leaves() {
        let board = LoadBoard::new(Path::new("/nonexistent"));
        let start = board.lock().started;
        let arrived = start + secs(600.0);
        let id = "m:1".to_string();
        board.applied(
            &command(Op::ImportModel(cmd::ImportModel {
                migration_id: id.clone(),
                ..Default::default()
            })),
            &ok(),
            arrived,
        );
        let agent = board.agent_connected("m");
        for i in 0..100 {
            let write = command(Op::SetModelConfig(cmd::SetModelConfig {
                model_uuid: "m".into(),
                values: Default::default(),
            }));
            board.applied(&write, &ok(), arrived + secs(i as f64 * 0.1));
        }
        {
            let state = board.lock();
            let m = &state.models["m"];
            // 10 writes per second since it arrived, not since the node started.
            let rate = m.writes.per_second(arrived + secs(10.0), m.since);
            assert!((rate - 10.0).abs() < 0.5, "{rate}");
            assert_eq!(m.agents, 1);
        }
        board.applied(
            &command(Op::ReapModel(cmd::ReapModel {
                migration_id: id,
                max_records: 0,
            })),
            &ok(),
            arrived + secs(20.0),
        );
        assert_eq!(board.lock().models["m"].writes_total, 0, "rates forgotten");
        assert_eq!(
            board.lock().models["m"].agents,
            1,
            "the watching agent still counts"
        );
        drop(agent);
        assert_eq!(board.lock().models["m"].agents, 0);
    }

    #[test]
    fn metrics_have_one_series_per_model_and_escape_labels() {
        let board = LoadBoard::new(Path::new("/nonexistent"));
        board.read("u1");
        let (_, _, view) = starling_raft::store::open_memory();
        let text = board.render_metrics(
            &view,
            &[
                ("u1".into(), "admin/web".into(), Some("QUIESCE".into())),
                ("u2".into(), "bob/a\"b".into(), None),
            ],
        );
        assert!(
            text.contains("starling_model_reads_total{model=\"admin/web\",model_uuid=\"u1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "starling_model_writes_total{model=\"bob/a\\\"b\",model_uuid=\"u2\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "starling_model_migrating{model=\"admin/web\",model_uuid=\"u1\",phase=\"QUIESCE\"} 1\n"
        ));
        assert_eq!(text.matches("starling_model_migrating{").count(), 1);
        assert_eq!(text.matches("starling_model_size_bytes{").count(), 2);
    }
}
