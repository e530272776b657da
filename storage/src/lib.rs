//! Starling's controller state: the pure model rules (`model`) and their persistence, in sled
//! (`Store`) or in memory (`MemStore`), behind the byte-level `LogBackend` and `StateBackend`
//! traits the Raft layer adapts. Nothing here knows openraft; only this crate names sled.

pub mod apply;
pub mod backend;
pub mod backup;
pub mod error;
pub mod export;
pub mod keys;
pub mod mem;
pub mod migration;
pub mod model;
pub mod records;
pub mod state;
pub mod store;

pub use apply::{ApplyBatch, ApplyLimits};
pub use backend::{LogBackend, RaftMetaKey, StateBackend};
pub use error::StorageError;
pub use export::{description_digest, export_model, import_model, ImportError};
pub use mem::MemStore;
pub use state::{AppliedState, KeyValues, Overlay, StateImage, StateRead, WriteSet};
pub use store::Store;
