//! `StateView`: the daemon's cheap, cloneable, read-only view of the applied state, the same
//! for both backends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use starling_storage::state::read_effective_config;
use starling_storage::{StateRead, StorageError as BackendError};

/// Read-only access to the applied state. Reads see whole applied batches, never half of one.
#[derive(Clone)]
pub struct StateView {
    reader: Arc<dyn StateRead + Send + Sync>,
    applied_index: Arc<AtomicU64>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView")
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl StateView {
    pub(super) fn new(
        reader: Arc<dyn StateRead + Send + Sync>,
        applied_index: Arc<AtomicU64>,
    ) -> Self {
        StateView {
            reader,
            applied_index,
        }
    }

    /// The effective controller config (defaults merged), or the storage failure.
    pub fn try_controller_config(&self) -> Result<BTreeMap<String, String>, BackendError> {
        read_effective_config(self.reader.as_ref())
    }

    /// The effective controller config (defaults merged).
    ///
    /// # Panics
    /// If the state cannot be read: a storage failure is fatal for the node.
    pub fn controller_config(&self) -> BTreeMap<String, String> {
        self.try_controller_config()
            .unwrap_or_else(|e| panic!("cannot read the controller config from storage: {e}"))
    }

    /// The index of the last applied log entry (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }
}
