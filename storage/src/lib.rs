//! Starling's controller state: the pure model rules (`model`) and their persistence, in sled
//! (`Store`) or in memory (`MemStore`), behind the byte-level `LogBackend` and `StateBackend`
//! traits the Raft layer adapts. Nothing here knows openraft; only this crate names sled.

pub mod apply;
pub mod backend;
pub mod backup;
pub mod error;
pub mod export;
pub mod feed;
pub mod keys;
pub mod mem;
pub mod migration;
pub mod model;
pub mod precopy;
pub mod records;
pub mod staging;
pub mod state;
pub mod store;
mod wal;

pub use apply::{ApplyBatch, ApplyLimits};
pub use backend::{LogBackend, RaftMetaKey, StateBackend};
pub use error::StorageError;
pub use export::{description_digest, export_model, import_model, ImportError};
pub use mem::MemStore;
pub use state::{AppliedState, KeyValues, Overlay, StateImage, StateRead, WriteSet};
pub use store::Store;

/// Calibration of the test tiers (issue "Chaos suite"): known bugs compiled in only with the
/// `planted-bugs` feature, and armed only when `STARLING_PLANTED_BUGS` (a comma-separated list)
/// names them. A normal build has no trace of them. The tests prove each one is caught.
pub mod planted {
    /// Whether planted bug `name` is armed in this process.
    #[cfg(feature = "planted-bugs")]
    pub fn armed(name: &str) -> bool {
        static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        ARMED
            .get_or_init(|| {
                std::env::var("STARLING_PLANTED_BUGS")
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .iter()
            .any(|armed| armed == name)
    }

    /// Whether planted bug `name` is armed: never, in a build without `planted-bugs`.
    #[cfg(not(feature = "planted-bugs"))]
    pub fn armed(_name: &str) -> bool {
        false
    }
}
