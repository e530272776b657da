//! `AgentState`: what the machine agent persists in `<data>/state.json` — the next report seq,
//! and per unit the spec it last applied, the hooks already run and its workload's pid and
//! process start time (so a restarted agent adopts its workloads). `OutboxStore`: the queued
//! status reports and model-log records in `<data>/outbox.pb`. Both are rewritten atomically:
//! temp file, fsync, rename, fsync of the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;
use serde::{Deserialize, Serialize};
use starling_proto::agent::{ReportRequest, UnitSpec};

use starling_daemon::files::write_file_atomic;

/// The file name under the data dir.
pub const STATE_FILE: &str = "state.json";

/// The persisted state of the whole agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentState {
    /// The `seq` the next status report gets.
    #[serde(default)]
    pub next_seq: u64,
    /// Units by name ("web/0").
    #[serde(default)]
    pub units: BTreeMap<String, UnitRecord>,
}

/// What the agent has done for one unit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UnitRecord {
    /// The last spec the controller sent for the unit, protobuf-encoded then hex (lets a
    /// restarted agent supervise its units before it reaches the controller).
    #[serde(default)]
    pub spec_hex: String,
    /// Digest of the charm the unit's hooks and workload run from.
    #[serde(default)]
    pub charm_digest: String,
    /// One-shot hooks already run ("install", "start"; "upgrade-charm" is tracked by digest).
    #[serde(default)]
    pub hooks_run: BTreeSet<String>,
    /// The config `config-changed` last ran with; `None` when it never ran.
    #[serde(default)]
    pub applied_config: Option<BTreeMap<String, String>>,
    /// Relation id → remote units its hooks last saw.
    #[serde(default)]
    pub relations: BTreeMap<u64, Vec<String>>,
    /// The running workload, when there is one.
    #[serde(default)]
    pub workload: Option<WorkloadRecord>,
    /// What the running workload was started with (charm, command, environment).
    #[serde(default)]
    pub workload_fingerprint: String,
}

impl UnitRecord {
    /// The spec stored with [`UnitRecord::set_spec`].
    pub fn spec(&self) -> Option<UnitSpec> {
        let bytes = hex::decode(&self.spec_hex).ok()?;
        UnitSpec::decode(bytes.as_slice()).ok()
    }

    /// Stores `spec`.
    pub fn set_spec(&mut self, spec: &UnitSpec) {
        self.spec_hex = hex::encode(spec.encode_to_vec());
    }
}

/// A workload process: its pid (also its process group) and start time (field 22 of
/// `/proc/<pid>/stat`, in clock ticks since boot), which together name it uniquely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WorkloadRecord {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Where the state lives.
#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// The state file of the data dir `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(STATE_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is the empty state.
    pub fn load(&self) -> Result<AgentState> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("malformed agent state {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read agent state {}", self.path.display()))
            }
        }
    }

    /// Rewrites the state atomically.
    pub fn save(&self, state: &AgentState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).context("cannot encode the agent state")?;
        write_file_atomic(&self.path, &bytes, 0o600)
    }
}

/// The outbox file's name under the data dir.
pub const OUTBOX_FILE: &str = "outbox.pb";

/// The outbox on disk: a `ReportRequest` holding every queued report and log record.
#[derive(Clone, Debug)]
pub struct OutboxStore {
    path: PathBuf,
}

impl OutboxStore {
    /// The outbox file of the data dir `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(OUTBOX_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a previous run left queued; a missing file is an empty outbox. A file that does
    /// not decode is moved aside to `outbox.pb.malformed` (the agent goes on without it rather
    /// than leave its workloads unsupervised) and reported as `Err` with the empty outbox.
    pub fn load(&self) -> std::result::Result<ReportRequest, (ReportRequest, anyhow::Error)> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ReportRequest::default())
            }
            Err(e) => {
                let error = anyhow::Error::new(e)
                    .context(format!("cannot read the outbox {}", self.path.display()));
                return Err((ReportRequest::default(), error));
            }
        };
        ReportRequest::decode(bytes.as_slice()).map_err(|e| {
            let aside = self.path.with_extension("pb.malformed");
            let moved = std::fs::rename(&self.path, &aside);
            let error = anyhow::anyhow!(
                "malformed outbox {} ({e}); {}",
                self.path.display(),
                match moved {
                    Ok(()) => format!("moved to {}", aside.display()),
                    Err(e) => format!("could not move it aside: {e}"),
                }
            );
            (ReportRequest::default(), error)
        })
    }

    /// Rewrites the outbox atomically.
    pub fn save(&self, pending: &ReportRequest) -> Result<()> {
        write_file_atomic(&self.path, &pending.encode_to_vec(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::agent::StatusReport;
    use starling_proto::model::LogRecord;

    #[test]
    fn the_outbox_round_trips_and_a_malformed_one_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutboxStore::new(dir.path());
        assert_eq!(store.load().unwrap(), ReportRequest::default());
        let pending = ReportRequest {
            reports: vec![StatusReport {
                seq: 9,
                entity: "unit-web-0".into(),
                kind: "workload".into(),
                status: None,
            }],
            logs: vec![LogRecord {
                message: "workload exited".into(),
                ..LogRecord::default()
            }],
        };
        store.save(&pending).unwrap();
        assert_eq!(store.load().unwrap(), pending);

        std::fs::write(store.path(), b"\xff\xff\xff not protobuf").unwrap();
        let (empty, error) = store.load().unwrap_err();
        assert_eq!(empty, ReportRequest::default());
        assert!(error.to_string().contains("malformed outbox"), "{error}");
        assert!(!store.path().exists());
        assert!(dir.path().join("outbox.pb.malformed").exists());
        assert_eq!(store.load().unwrap(), ReportRequest::default());
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), AgentState::default());
    }

    #[test]
    fn rewrite_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = AgentState {
            next_seq: 42,
            ..AgentState::default()
        };
        let mut record = UnitRecord::default();
        record.set_spec(&UnitSpec {
            name: "web/0".into(),
            application: "web".into(),
            ..UnitSpec::default()
        });
        record.hooks_run.insert("install".into());
        record.workload = Some(WorkloadRecord {
            pid: 1234,
            start_time: 99,
        });
        state.units.insert("web/0".into(), record);
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert_eq!(
            store.load().unwrap().units["web/0"].spec().unwrap().name,
            "web/0"
        );

        state.next_seq = 43;
        state.units.clear();
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // Nothing but the state file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![STATE_FILE.to_string()]);
    }

    #[test]
    fn malformed_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(store.load().is_err());
    }
}
