//! A fake controller for the real `agentd` binary: an in-process `Agent` gRPC server (TLS with
//! rcgen certs) whose desired state the test sets, recording what the agent sends — reports,
//! logs, migration reports and validation logins. It can play a migration target that is not
//! active yet (Watch, Heartbeat and Report answer FailedPrecondition) and refuse validation.
//! Also the process helpers: spawn `agentd`, find and kill (by pid) what a test started.
//!
//! Included with `#[path = "support/fake_controller.rs"] mod fake_controller;`.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use starling_ctld::pki;
use starling_daemon::agent_config::AgentConfig;
use starling_proto::agent::agent_server::{Agent, AgentServer};
use starling_proto::agent::{
    AgentChunk, AgentDownloadRequest, AgentUpdate, HeartbeatRequest, HeartbeatResponse,
    MigrationReportRequest, MigrationReportResponse, ReportRequest, ReportResponse, StatusReport,
    UnitSpec, ValidateLoginRequest, ValidateLoginResponse, WatchRequest,
};
use starling_proto::model::{CharmMeta, LogRecord};
use tokio::sync::watch;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

/// How long any wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// The machine agent's credential.
pub const CREDENTIAL: &str = "machine-0-secret";
/// The model's uuid.
pub const MODEL_UUID: &str = "6f1c1a9e-0000-4000-8000-000000000001";
/// What a migration target answers before the model is active there.
pub const NOT_ACTIVE_YET: &str = "model default is being imported; not active yet";

// ---------------------------------------------------------------- the fake controller

/// What one fake controller knows and saw; outlives its servers so one can stop and another
/// resume.
pub struct FakeState {
    /// What Watch streams.
    pub desired: watch::Sender<AgentUpdate>,
    /// Status reports applied, in order.
    pub reports: Mutex<Vec<StatusReport>>,
    /// Model-log records received, in order.
    pub logs: Mutex<Vec<LogRecord>>,
    /// Charms by digest, for DownloadCharm.
    pub charms: Mutex<HashMap<String, Vec<u8>>>,
    /// The credential it accepts.
    pub credential: String,
    /// Watch calls (any outcome).
    pub watch_calls: AtomicUsize,
    /// Watch calls refused because the model is not active here.
    pub refused_watches: AtomicUsize,
    /// Report calls (any outcome).
    pub report_calls: AtomicUsize,
    /// The machine's last applied report number that the model's import carried (0: none), as a
    /// migration's target knows it: numbers at or below it were applied on the source.
    pub imported_seq: AtomicU64,
    /// MigrationReport calls received (authenticated), in order.
    pub migration_reports: Mutex<Vec<MigrationReportRequest>>,
    /// ValidateLogin calls (any outcome).
    pub validate_calls: AtomicUsize,
    /// Migration ids of the ValidateLogin calls accepted (credential and metadata checked).
    pub validations: Mutex<Vec<String>>,
    /// When set, ValidateLogin answers this error (after the credential check).
    pub refuse_validation: Mutex<Option<(Code, String)>>,
    /// When set, the model is "being imported": Watch, Heartbeat and Report answer
    /// FailedPrecondition, ValidateLogin still works.
    pub inactive: AtomicBool,
}

impl FakeState {
    /// A fake accepting `credential` for machine 0 of [`MODEL_UUID`].
    pub fn new(credential: &str) -> Arc<Self> {
        Arc::new(Self {
            desired: watch::channel(AgentUpdate::default()).0,
            reports: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            charms: Mutex::new(HashMap::new()),
            credential: credential.to_string(),
            watch_calls: AtomicUsize::new(0),
            refused_watches: AtomicUsize::new(0),
            report_calls: AtomicUsize::new(0),
            imported_seq: AtomicU64::new(0),
            migration_reports: Mutex::new(Vec::new()),
            validate_calls: AtomicUsize::new(0),
            validations: Mutex::new(Vec::new()),
            refuse_validation: Mutex::new(None),
            inactive: AtomicBool::new(false),
        })
    }

    /// The last applied report or log record number (0: none).
    pub fn applied_seq(&self) -> u64 {
        let reports = self.reports.lock().unwrap();
        let logs = self.logs.lock().unwrap();
        applied_of(&reports, &logs).max(self.imported_seq.load(Ordering::SeqCst))
    }

    /// The reports applied so far.
    pub fn reports(&self) -> Vec<StatusReport> {
        self.reports.lock().unwrap().clone()
    }

    /// The reports applied with a seq above `seq`.
    pub fn reports_after(&self, seq: u64) -> Vec<StatusReport> {
        self.reports().into_iter().filter(|r| r.seq > seq).collect()
    }

    /// The log records received so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.lock().unwrap().clone()
    }

    /// The MigrationReport calls received so far.
    pub fn migration_reports(&self) -> Vec<MigrationReportRequest> {
        self.migration_reports.lock().unwrap().clone()
    }

    /// The MigrationReport calls for `migration_id` in `phase`.
    pub fn migration_reports_for(
        &self,
        migration_id: &str,
        phase: &str,
    ) -> Vec<MigrationReportRequest> {
        self.migration_reports()
            .into_iter()
            .filter(|r| r.migration_id == migration_id && r.phase == phase)
            .collect()
    }

    /// Report calls so far.
    pub fn report_calls(&self) -> usize {
        self.report_calls.load(Ordering::SeqCst)
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let md = request.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
        if get("authorization") != format!("Bearer {}", self.credential)
            || get("x-model-uuid") != MODEL_UUID
            || get("x-machine-id") != "0"
        {
            return Err(Status::unauthenticated("unknown machine or bad credential"));
        }
        Ok(())
    }

    fn check_active(&self) -> Result<(), Status> {
        if self.inactive.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition(NOT_ACTIVE_YET));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct FakeAgent(Arc<FakeState>);

type UpdateStream = Pin<Box<dyn Stream<Item = Result<AgentUpdate, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<AgentChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    type WatchStream = UpdateStream;
    type DownloadCharmStream = ChunkStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        self.0.watch_calls.fetch_add(1, Ordering::SeqCst);
        self.0.check(&request)?;
        if let Err(status) = self.0.check_active() {
            self.0.refused_watches.fetch_add(1, Ordering::SeqCst);
            return Err(status);
        }
        let rx = self.0.desired.subscribe();
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let update = rx.borrow_and_update().clone();
            Some((Ok(update), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.0.check(&request)?;
        self.0.check_active()?;
        Ok(Response::new(HeartbeatResponse {
            heartbeat_interval_ms: 200,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.0.report_calls.fetch_add(1, Ordering::SeqCst);
        self.0.check(&request)?;
        self.0.check_active()?;
        let request = request.into_inner();
        let mut reports = self.0.reports.lock().unwrap();
        let mut logs = self.0.logs.lock().unwrap();
        // As the controller does: what is numbered at or below the last applied number was
        // applied already (a re-sent batch); records without a number are always appended.
        let last = applied_of(&reports, &logs).max(self.0.imported_seq.load(Ordering::SeqCst));
        let mut applied = last;
        for report in request.reports {
            if report.seq > last {
                applied = applied.max(report.seq);
                reports.push(report);
            }
        }
        for log in request.logs {
            if log.agent_seq == 0 || log.agent_seq > last {
                applied = applied.max(log.agent_seq);
                logs.push(log);
            }
        }
        Ok(Response::new(ReportResponse {
            applied_seq: applied,
        }))
    }

    async fn download_charm(
        &self,
        request: Request<AgentDownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.0.check(&request)?;
        let digest = request.into_inner().digest;
        let bytes = self
            .0
            .charms
            .lock()
            .unwrap()
            .get(&digest)
            .cloned()
            .ok_or_else(|| Status::not_found("no such charm"))?;
        let size = bytes.len() as u64;
        let chunks: Vec<Result<AgentChunk, Status>> = bytes
            .chunks(16 * 1024)
            .enumerate()
            .map(|(idx, data)| {
                Ok(AgentChunk {
                    digest: digest.clone(),
                    size,
                    offset: (idx * 16 * 1024) as u64,
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn migration_report(
        &self,
        request: Request<MigrationReportRequest>,
    ) -> Result<Response<MigrationReportResponse>, Status> {
        self.0.check(&request)?;
        self.0
            .migration_reports
            .lock()
            .unwrap()
            .push(request.into_inner());
        Ok(Response::new(MigrationReportResponse {}))
    }

    async fn validate_login(
        &self,
        request: Request<ValidateLoginRequest>,
    ) -> Result<Response<ValidateLoginResponse>, Status> {
        self.0.validate_calls.fetch_add(1, Ordering::SeqCst);
        self.0.check(&request)?;
        if let Some((code, message)) = self.0.refuse_validation.lock().unwrap().clone() {
            return Err(Status::new(code, message));
        }
        self.0
            .validations
            .lock()
            .unwrap()
            .push(request.into_inner().migration_id);
        Ok(Response::new(ValidateLoginResponse {
            model_name: "default".into(),
        }))
    }
}

/// One serving fake; dropping it drops every connection (its runtime goes with it).
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    /// Serves `state` with `node`'s certificate on `addr` (default: a free loopback port).
    pub fn start(state: &Arc<FakeState>, node: &pki::CertKeyPem, addr: Option<SocketAddr>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let identity = Identity::from_pem(&node.cert, &node.key);
        let service = AgentServer::new(FakeAgent(state.clone()));
        let addr = runtime.block_on(async {
            let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
            let listener = bind_retrying(bind).await;
            let addr = listener.local_addr().unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let server = Server::builder()
                .tls_config(ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(service)
                .serve_with_incoming(incoming);
            tokio::spawn(server);
            addr
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds `addr`, retrying while the old listener's port is still being released.
async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

// ---------------------------------------------------------------- processes

/// Kills, on drop, the agentd it holds and every process whose cwd is under `root` (the
/// workloads and hooks this test caused), by pid.
pub struct ProcessGuard {
    /// The test's directory.
    pub root: PathBuf,
    /// The running agentd.
    pub agentd: Option<Child>,
}

impl ProcessGuard {
    /// Kills everything now.
    pub fn sweep(&mut self) {
        if let Some(mut child) = self.agentd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in processes_under(&self.root) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// Pids of live processes whose working directory is under `root`.
pub fn processes_under(root: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if cwd.starts_with(root) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat[stat.rfind(')')? + 1..].to_string();
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Process groups of the live counter workloads under `root` (one per workload, whatever
/// `sh -c` forks).
pub fn counter_workloads(root: &Path) -> BTreeSet<u32> {
    processes_under(root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("counter.sh"))
                .unwrap_or(false)
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat[stat.rfind(')')? + 1..].to_string();
            rest.split_whitespace().nth(2)?.parse().ok()
        })
        .collect()
}

/// Starts the real agentd on `config`, stderr appended to `<root>/agentd.stderr`.
pub fn spawn_agentd(root: &Path, config: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("agentd.stderr"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("--config")
        .arg(config)
        .current_dir(root)
        .env("RUST_LOG", "info,starling_agentd=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------- helpers

/// Polls `cond` until it holds (panics after [`DEADLINE`]).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Packs a charm directory like `ctl deploy` does (sorted, mtime 0, fixed modes).
pub fn pack(dir: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if path.is_dir() {
                out.push((format!("{rel}/"), path.clone()));
                walk(root, &path, out);
            } else {
                out.push((rel, path));
            }
        }
    }
    let mut entries = Vec::new();
    walk(dir, dir, &mut entries);
    entries.sort();
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(encoder);
    for (rel, path) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        if rel.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &rel, std::io::empty())
                .unwrap();
        } else {
            let data = std::fs::read(&path).unwrap();
            let exec = std::fs::metadata(&path).unwrap().permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if exec { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, &rel, data.as_slice()).unwrap();
        }
    }
    let mut gz = tar.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

/// The packed `scripts/charms/counter` charm and its digest.
pub fn counter_charm() -> (Vec<u8>, String) {
    use sha2::{Digest, Sha256};
    let charm = pack(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/charms/counter"));
    let digest = hex::encode(Sha256::digest(&charm));
    (charm, digest)
}

/// The counter/0 unit of the counter charm.
pub fn counter_spec(digest: &str) -> UnitSpec {
    let hooks = [
        ("install", "hooks/install"),
        ("start", "hooks/start"),
        ("config-changed", "hooks/config-changed"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    UnitSpec {
        name: "counter/0".into(),
        application: "counter".into(),
        charm_digest: digest.to_string(),
        charm: Some(CharmMeta {
            name: "counter".into(),
            command: "./counter.sh".into(),
            hooks,
            config_defaults: [("interval".to_string(), "1".to_string())].into(),
            ..CharmMeta::default()
        }),
        config: [("interval".to_string(), "1".to_string())].into(),
        ..UnitSpec::default()
    }
}

/// A test directory with an agent config naming the controller at `endpoints`.
pub struct Fixture {
    _tmp: tempfile::TempDir,
    /// The test's directory (canonical).
    pub root: PathBuf,
    /// The agent config file.
    pub config: PathBuf,
    /// The controller node's certificate.
    pub node: pki::CertKeyPem,
}

/// A fixture whose agent config names controller "fake" at `endpoints`, trusting `ca`.
pub fn fixture(endpoints: &[String], ca: &pki::CertKeyPem, node: pki::CertKeyPem) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let config = AgentConfig {
        controller_name: "fake".into(),
        controller_uuid: "c0ffee00-0000-4000-8000-000000000000".into(),
        api_endpoints: endpoints.to_vec(),
        ca_cert: ca.cert.clone(),
        model_uuid: MODEL_UUID.into(),
        model_name: "default".into(),
        machine_id: "0".into(),
        credential: CREDENTIAL.into(),
    };
    let path = root.join("agent.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    Fixture {
        _tmp: tmp,
        root,
        config: path,
        node,
    }
}

/// The agent config file as it is on disk now.
pub fn read_agent_config(path: &Path) -> AgentConfig {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Lines in a file (0 when it is missing).
pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// The counter/0 workload pid in the agent's state file.
pub fn workload_pid(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["units"]["counter/0"]["workload"]["pid"]
        .as_u64()
        .map(|p| p as u32)
}

/// The `current` of each report of (`entity`, `kind`), in order.
pub fn statuses_of(reports: &[StatusReport], entity: &str, kind: &str) -> Vec<String> {
    reports
        .iter()
        .filter(|r| r.entity == entity && r.kind == kind)
        .map(|r| r.status.as_ref().unwrap().current.clone())
        .collect()
}

/// Asserts strictly increasing seqs.
pub fn assert_in_order(reports: &[StatusReport]) {
    assert!(
        reports.windows(2).all(|w| w[0].seq < w[1].seq),
        "reports out of order: {:?}",
        reports.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
}

/// Waits (bounded) for `child` to exit.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "agentd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The highest number among applied reports and log records.
fn applied_of(reports: &[StatusReport], logs: &[LogRecord]) -> u64 {
    reports
        .iter()
        .map(|r| r.seq)
        .chain(logs.iter().map(|l| l.agent_seq))
        .max()
        .unwrap_or(0)
}
