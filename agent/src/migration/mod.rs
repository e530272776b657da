//! Live model migration on a controller node (DESIGN.md §5, docs/migration.md).
//!
//! - [`service`]: the `Migration` peer service: what a source's master calls on this node when
//!   it is the target (prechecks, staging, import, activate, drop, log transfer), and what a
//!   target asks this node when it is the source (`SourceStatus`).
//! - [`master`]: the migration master: on the leader, one driver per migration that has not
//!   ended, deciding with `storage::model::migration::next_action` and acting.
//! - [`client_api`]: `ctl migrate`, `ctl abort-migration` and the migration fields of
//!   `show-model`, `models` and `status`.
//! - [`prechecks`]: the checks run on `ctl migrate`, on a dry run and again after QUIESCE.
//! - [`leftovers`]: the target's sweeper for imports nobody finishes.
//! - [`peer`]: dialing the other controller.

pub mod client_api;
pub mod leftovers;
pub mod master;
pub mod peer;
pub mod prechecks;
pub mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use starling_raft::RaftHandle;

use crate::identity::NodeIdentity;

/// Evaluates failpoint `name` (built with the `failpoints` feature; configured with the
/// `FAILPOINTS` environment variable, e.g. `migration.source.import=return`). Returns a reason
/// naming the failpoint when it is set to `return`, so the caller fails the step.
pub fn failpoint(name: &str) -> Option<String> {
    failpoint_value(name).map(|value| format!("failpoint {name}: {value}"))
}

/// The value of failpoint `name` when it is set to `return(VALUE)` ("failpoint" for a bare
/// `return`); `None` when it is off or the build has no failpoints. Only `return` is meant to
/// be used: `sleep` and `pause` would block an async worker thread.
pub fn failpoint_value(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        (|| {
            fail::fail_point!(name, |value| Some(
                value.unwrap_or_else(|| "failpoint".into())
            ));
            None
        })()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// What the master on this node knows about a migration's progress that is not persisted:
/// bytes streamed and the current activity, for `ctl migrate --wait` and `ctl status`.
#[derive(Clone, Debug, Default)]
pub struct LiveProgress {
    /// What is happening now ("importing model (1.2 MB of 3.4 MB)").
    pub activity: String,
    /// Bytes of the description staged on the target so far.
    pub bytes_sent: u64,
    /// The description's size.
    pub bytes_total: u64,
    /// Records in the description.
    pub records_total: u64,
    /// Machines whose agents must report.
    pub agents_total: u64,
}

/// Live progress of the migrations this node's master drives, by migration id.
#[derive(Clone, Debug, Default)]
pub struct ProgressBoard {
    inner: Arc<Mutex<BTreeMap<String, LiveProgress>>>,
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

/// What the migration parts of a node share.
#[derive(Clone)]
pub struct MigrationContext {
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
}

impl MigrationContext {
    /// This controller's client endpoints: every member's address.
    pub fn endpoints(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = self.handle.membership().1.into_values().collect();
        if endpoints.is_empty() {
            endpoints.push(self.identity.address.clone());
        }
        endpoints
    }

    /// Controller-config duration `key` in milliseconds, when an operator set it (`None` for
    /// the default, or when the config cannot be read now).
    pub fn config_ms(&self, key: &str) -> Option<u64> {
        let config = self.handle.state().try_controller_config().ok()?;
        let duration =
            starling_storage::model::controller_config::parse_duration(config.get(key)?)?;
        Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }
}
