//! The node context: what every service of a controller node is built from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use starling_raft::RaftHandle;

use crate::identity::NodeIdentity;
use crate::load::LoadBoard;
use crate::staging::NodeStaging;

/// What the master on this node knows about a migration's progress that is not persisted:
/// bytes streamed and the current activity, for `ctl migrate --wait` and `ctl status`.
#[derive(Clone, Debug, Default)]
pub struct LiveProgress {
    /// What is happening now ("importing model (1.2 MB of 3.4 MB)").
    pub activity: String,
    /// The persisted phase the master was in when it set `activity` ("CATCHUP", ...): readers
    /// show `activity` only while the record is still in that phase, since the master sets it
    /// when an action starts and the phase can move on before the next action does.
    pub activity_phase: String,
    /// Bytes of the description staged on the target so far.
    pub bytes_sent: u64,
    /// The description's size.
    pub bytes_total: u64,
    /// Records in the description.
    pub records_total: u64,
    /// The last staging and import: milliseconds from the first staged byte to the import's
    /// commit, and the bytes staged (description and charms).
    pub import_ms: u64,
    /// See `import_ms`.
    pub import_bytes: u64,
    /// Machines whose agents must report.
    pub agents_total: u64,
    /// CATCHUP: feed entries the target has not applied yet, as last counted (`None` before
    /// the first count).
    pub lag: Option<u64>,
    /// Feed entries sent to the target so far.
    pub changes_sent: u64,
}

/// Live progress of the migrations this node's master drives, by migration id.
#[derive(Clone, Debug, Default)]
pub struct ProgressBoard {
    inner: Arc<Mutex<BTreeMap<String, LiveProgress>>>,
}

impl LiveProgress {
    /// Sets what is happening now, in persisted phase `phase`.
    pub fn set_activity(&mut self, phase: &str, text: String) {
        self.activity = text;
        phase.clone_into(&mut self.activity_phase);
    }

    /// What is happening now for a reader that sees the record in phase `record_phase`: the
    /// master's own words when they were said in that phase, `None` when they are older.
    pub fn activity_in(&self, record_phase: &str) -> Option<&str> {
        (!self.activity.is_empty() && self.activity_phase == record_phase)
            .then_some(self.activity.as_str())
    }
}

impl ProgressBoard {
    /// The progress of `id`, if this node drives it.
    pub fn get(&self, id: &str) -> Option<LiveProgress> {
        self.inner.lock().expect("progress lock").get(id).cloned()
    }

    /// Changes the progress of `id`.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut LiveProgress)) {
        let mut map = self.inner.lock().expect("progress lock");
        change(map.entry(id.to_owned()).or_default());
    }

    /// Forgets `id` (its driver stopped).
    pub fn remove(&self, id: &str) {
        self.inner.lock().expect("progress lock").remove(id);
    }
}

/// What every service and background task of a node shares: its Raft handle, who it is, its CA
/// certificate, the live progress of the migrations it drives, the bootstrap users and the
/// load it measures. Built
/// once by the node wiring (`node.rs`) and cloned into each service.
#[derive(Clone)]
pub struct NodeContext {
    /// The node's Raft handle.
    pub handle: RaftHandle,
    /// Who this node is.
    pub identity: NodeIdentity,
    /// This controller's CA certificate (PEM), handed to targets so they can call back.
    pub ca_cert: String,
    /// Progress the local master publishes.
    pub progress: ProgressBoard,
    /// The bootstrap users (`auth.yaml`), who exist besides the replicated ones.
    pub bootstrap_users: Vec<String>,
    /// Per-model load as this node measures it.
    pub load: LoadBoard,
    /// The node's staging area for bulk imports.
    pub staging: NodeStaging,
    /// Applied commands that concern migrations, for the masters to wake on.
    pub migration_changes: crate::migration::MigrationChanges,
}

impl NodeContext {
    /// This controller's client endpoints: every member's address.
    pub fn endpoints(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = self.handle.membership().1.into_values().collect();
        if endpoints.is_empty() {
            endpoints.push(self.identity.address.clone());
        }
        endpoints
    }

    /// Controller-config integer `key` (its default when no operator set it; `None` when the
    /// config cannot be read now).
    pub fn config_u64(&self, key: &str) -> Option<u64> {
        let config = self.handle.state().try_controller_config().ok()?;
        config.get(key)?.parse().ok()
    }

    /// Controller-config duration `key` in milliseconds (its default when no operator set it;
    /// `None` when the config cannot be read now).
    pub fn config_ms(&self, key: &str) -> Option<u64> {
        let config = self.handle.state().try_controller_config().ok()?;
        let duration =
            starling_storage::model::controller_config::parse_duration(config.get(key)?)?;
        Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}
