//! The real `agentd` binary against an in-process fake `Agent` server (TLS, rcgen certs): a
//! unit's workload runs, survives the controller going away and the agent being SIGKILLed
//! (adopted, not duplicated, install not re-run), status reports queued meanwhile arrive in
//! order, a removed unit's workload is stopped; a refused credential is fatal.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use starling_agent::agent_config::AgentConfig;
use starling_agent::pki;
use starling_proto::agent::agent_server::{Agent, AgentServer};
use starling_proto::agent::{
    AgentChunk, AgentDownloadRequest, AgentUpdate, HeartbeatRequest, HeartbeatResponse,
    ReportRequest, ReportResponse, StatusReport, UnitSpec, WatchRequest,
};
use starling_proto::model::CharmMeta;
use tokio::sync::watch;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(90);
const CREDENTIAL: &str = "machine-0-secret";
const MODEL_UUID: &str = "6f1c1a9e-0000-4000-8000-000000000001";

// ---------------------------------------------------------------- the fake controller

/// What the fake controller knows; outlives the servers so one can stop and another resume.
struct FakeState {
    desired: watch::Sender<AgentUpdate>,
    reports: Mutex<Vec<StatusReport>>,
    charms: Mutex<HashMap<String, Vec<u8>>>,
    credential: String,
}

impl FakeState {
    fn new(credential: &str) -> Arc<Self> {
        Arc::new(Self {
            desired: watch::channel(AgentUpdate::default()).0,
            reports: Mutex::new(Vec::new()),
            charms: Mutex::new(HashMap::new()),
            credential: credential.to_string(),
        })
    }

    fn applied_seq(&self) -> u64 {
        self.reports.lock().unwrap().last().map_or(0, |r| r.seq)
    }

    fn reports(&self) -> Vec<StatusReport> {
        self.reports.lock().unwrap().clone()
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
        self.0.check(&request)?;
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
        Ok(Response::new(HeartbeatResponse {
            heartbeat_interval_ms: 200,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        self.0.check(&request)?;
        let mut reports = self.0.reports.lock().unwrap();
        let mut applied = reports.last().map_or(0, |r| r.seq);
        for report in request.into_inner().reports {
            // Applied once, in order: a re-sent batch is skipped.
            if report.seq > applied {
                applied = report.seq;
                reports.push(report);
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
}

/// One serving fake; dropping it drops every connection (its runtime goes with it).
struct FakeServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    fn start(state: &Arc<FakeState>, node: &pki::CertKeyPem, addr: Option<SocketAddr>) -> Self {
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
struct ProcessGuard {
    root: PathBuf,
    agentd: Option<Child>,
}

impl ProcessGuard {
    fn sweep(&mut self) {
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
fn processes_under(root: &Path) -> Vec<u32> {
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
fn alive(pid: u32) -> bool {
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
fn counter_workloads(root: &Path) -> BTreeSet<u32> {
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

fn spawn_agentd(root: &Path, config: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("agentd.stderr"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("--config")
        .arg(config)
        .current_dir(root)
        .env("RUST_LOG", "info,starling_agent=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------- helpers

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Packs a charm directory like `ctl deploy` does (sorted, mtime 0, fixed modes).
fn pack(dir: &Path) -> Vec<u8> {
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

fn counter_spec(digest: &str) -> UnitSpec {
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

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    node: pki::CertKeyPem,
}

fn fixture(endpoints: &[String], ca: &pki::CertKeyPem, node: pki::CertKeyPem) -> Fixture {
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

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

fn workload_pid(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["units"]["counter/0"]["workload"]["pid"]
        .as_u64()
        .map(|p| p as u32)
}

fn statuses_of(reports: &[StatusReport], entity: &str, kind: &str) -> Vec<String> {
    reports
        .iter()
        .filter(|r| r.entity == entity && r.kind == kind)
        .map(|r| r.status.as_ref().unwrap().current.clone())
        .collect()
}

fn assert_in_order(reports: &[StatusReport]) {
    assert!(
        reports.windows(2).all(|w| w[0].seq < w[1].seq),
        "reports out of order: {:?}",
        reports.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "agentd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn workload_survives_controller_loss_and_agent_restart() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let state = FakeState::new(CREDENTIAL);
    let server = FakeServer::start(&state, &node, None);
    let addr = server.addr;
    let fx = fixture(&[addr.to_string()], &ca, node);
    let data = fx.root.join("machine-0-data");
    let unit_dir = data.join("units/counter-0");
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: None,
    };

    eprintln!("--- deploy the counter charm to counter/0");
    let charm = pack(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/charms/counter"));
    let digest = hex::encode(Sha256::digest(&charm));
    state.charms.lock().unwrap().insert(digest.clone(), charm);
    state.desired.send_replace(AgentUpdate {
        revision: 1,
        units: vec![counter_spec(&digest)],
        heartbeat_interval_ms: 200,
        ..AgentUpdate::default()
    });
    guard.agentd = Some(spawn_agentd(&fx.root, &fx.config));
    wait_for("counter.log to grow", || {
        lines(&unit_dir.join("counter.log")) >= 2
    });
    wait_for("the workload to be reported active", || {
        statuses_of(&state.reports(), "unit-counter-0", "workload").last()
            == Some(&"active".to_string())
    });
    let reports = state.reports();
    assert_in_order(&reports);
    assert!(statuses_of(&reports, "machine-0", "agent").contains(&"started".to_string()));
    let workload = statuses_of(&reports, "unit-counter-0", "workload");
    assert!(
        workload.contains(&"maintenance".to_string()),
        "{workload:?}"
    );
    let pid = workload_pid(&data).expect("workload pid persisted");
    assert!(alive(pid));
    assert_eq!(counter_workloads(&fx.root).len(), 1);

    eprintln!("--- the controller goes away: the workload keeps running");
    drop(server);
    let seen = state.applied_seq();
    let before = lines(&unit_dir.join("counter.log"));
    wait_for("counter.log to keep growing", || {
        lines(&unit_dir.join("counter.log")) >= before + 2
    });
    assert_eq!(workload_pid(&data), Some(pid));
    assert!(alive(pid));

    eprintln!("--- the workload dies while the controller is away: restarted, reports queued");
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_for("a new workload", || {
        workload_pid(&data).is_some_and(|p| p != pid && alive(p))
    });
    let pid = workload_pid(&data).unwrap();
    assert_eq!(
        state.applied_seq(),
        seen,
        "nothing reached the absent controller"
    );

    eprintln!("--- the controller returns: queued reports arrive in order");
    let server = FakeServer::start(&state, &fx.node, Some(addr));
    wait_for("the queued reports", || {
        let reports = state.reports();
        let after: Vec<_> = reports.iter().filter(|r| r.seq > seen).cloned().collect();
        let workload = statuses_of(&after, "unit-counter-0", "workload");
        workload.contains(&"error".to_string()) && workload.last() == Some(&"active".to_string())
    });
    let reports = state.reports();
    assert_in_order(&reports);
    let after: Vec<_> = reports.iter().filter(|r| r.seq > seen).cloned().collect();
    let workload = statuses_of(&after, "unit-counter-0", "workload");
    let error_at = workload.iter().position(|s| s == "error").unwrap();
    let active_at = workload.iter().rposition(|s| s == "active").unwrap();
    assert!(error_at < active_at, "{workload:?}");

    eprintln!("--- SIGKILL agentd and start it again: the workload is adopted");
    let mut agentd = guard.agentd.take().unwrap();
    agentd.kill().unwrap();
    agentd.wait().unwrap();
    assert!(alive(pid));
    let seen = state.applied_seq();
    guard.agentd = Some(spawn_agentd(&fx.root, &fx.config));
    wait_for("the restarted agent to report", || {
        let reports = state.reports();
        statuses_of(
            &reports
                .into_iter()
                .filter(|r| r.seq > seen)
                .collect::<Vec<_>>(),
            "machine-0",
            "agent",
        )
        .contains(&"started".to_string())
    });
    let before = lines(&unit_dir.join("counter.log"));
    wait_for("counter.log to keep growing", || {
        lines(&unit_dir.join("counter.log")) >= before + 2
    });
    assert_eq!(workload_pid(&data), Some(pid));
    assert!(alive(pid));
    assert_eq!(
        counter_workloads(&fx.root),
        BTreeSet::from([pid]),
        "exactly the adopted workload runs"
    );
    let hooks = std::fs::read_to_string(unit_dir.join("hooks.log")).unwrap();
    assert_eq!(
        hooks.lines().filter(|l| l.contains(" install ")).count(),
        1,
        "{hooks}"
    );
    assert_eq!(
        hooks.lines().filter(|l| l.contains(" start ")).count(),
        1,
        "{hooks}"
    );

    eprintln!("--- the unit is removed: its workload stops");
    state.desired.send_replace(AgentUpdate {
        revision: 2,
        units: vec![],
        heartbeat_interval_ms: 200,
        ..AgentUpdate::default()
    });
    wait_for("the workload to stop", || {
        !alive(pid) && counter_workloads(&fx.root).is_empty()
    });
    wait_for("the unit dir to go", || !unit_dir.exists());

    eprintln!("--- the machine is removed: agentd exits 0");
    state.desired.send_replace(AgentUpdate {
        revision: 3,
        machine_removed: true,
        ..AgentUpdate::default()
    });
    let mut agentd = guard.agentd.take().unwrap();
    let status = wait_exit(&mut agentd);
    assert!(status.success(), "{status}");
    drop(server);
}

#[test]
fn refused_credential_exits_1() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let state = FakeState::new("another-credential");
    let server = FakeServer::start(&state, &node, None);
    let fx = fixture(&[server.addr.to_string()], &ca, node);
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: None,
    };
    let mut agentd = spawn_agentd(&fx.root, &fx.config);
    let status = wait_exit(&mut agentd);
    guard.agentd = None;
    assert_eq!(status.code(), Some(1));
    let stderr = std::fs::read_to_string(fx.root.join("agentd.stderr")).unwrap();
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("ERROR ") && last.contains("refused the agent's credential"),
        "{stderr}"
    );
    guard.sweep();
}

#[test]
fn unreadable_ca_exits_1() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let fx = fixture(&["127.0.0.1:1".to_string()], &ca, node);
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let mut config: AgentConfig = serde_saphyr::from_str(&text).unwrap();
    config.ca_cert = "not a certificate".into();
    std::fs::write(&fx.config, serde_saphyr::to_string(&config).unwrap()).unwrap();
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: Some(spawn_agentd(&fx.root, &fx.config)),
    };
    let status = wait_exit(guard.agentd.as_mut().unwrap());
    assert_eq!(status.code(), Some(1));
    let stderr = std::fs::read_to_string(fx.root.join("agentd.stderr")).unwrap();
    assert!(
        stderr.contains("ERROR ") && stderr.contains("ca-cert"),
        "{stderr}"
    );
}
