//! The byte-level persistence interface the Raft adapters are written against, implemented by
//! `Store` (sled, durable) and `MemStore` (in memory, for tests). Log entries and Raft metadata
//! are opaque bytes here; the Raft layer encodes them.
//!
//! Methods block (disk I/O, fdatasync): async callers run them on the blocking pool. Methods that
//! make data durable return `Some(duration)` of the sync they did, for the
//! `starling_storage_sync_seconds` histogram, or `None` when nothing was synced.

use std::ops::{Bound, RangeBounds};
use std::time::Duration;

use crate::state::{AppliedState, StateImage, StateRead, WriteSet};
use crate::StorageError;

/// A record of the `raft_meta` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RaftMetaKey {
    /// The vote (encoded `raft::Vote`).
    Vote,
    /// The last committed log id (encoded `raft::LogId`).
    Committed,
    /// The last purged log id (encoded `raft::LogId`).
    LastPurged,
}

impl RaftMetaKey {
    /// The key bytes in the `raft_meta` tree.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            RaftMetaKey::Vote => b"vote",
            RaftMetaKey::Committed => b"committed",
            RaftMetaKey::LastPurged => b"last_purged",
        }
    }

    /// Whether a write of this key must be on the device before it returns. The committed log
    /// id is only a lower bound for re-applying after a restart, so it rides on the next sync.
    pub fn needs_sync(self) -> bool {
        !matches!(self, RaftMetaKey::Committed)
    }
}

/// The Raft log and its metadata, as bytes keyed by log index.
pub trait LogBackend: Clone + Send + Sync + 'static {
    /// Appends entries `(index, bytes)` in one atomic batch, then makes them durable with one sync.
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<Option<Duration>, StorageError>;

    /// The entries whose index is in `range`, in index order.
    fn log_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;

    /// The entry with the highest index.
    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError>;

    /// Removes every entry with index `>= index`, durably.
    fn log_truncate_from(&self, index: u64) -> Result<Option<Duration>, StorageError>;

    /// Records `last_purged` (the encoded log id at `index`), then removes every entry with
    /// index `<= index`; durable before it returns.
    fn log_purge_through(
        &self,
        index: u64,
        last_purged: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError>;

    /// Reads a Raft metadata record.
    fn raft_meta_get(&self, key: RaftMetaKey) -> Result<Option<Vec<u8>>, StorageError>;

    /// Writes a Raft metadata record; synced before returning when `key.needs_sync()`.
    fn raft_meta_put(
        &self,
        key: RaftMetaKey,
        value: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError>;
}

/// The replicated state machine's storage.
pub trait StateBackend: StateRead + Clone + Send + Sync + 'static {
    /// Commits an applied batch atomically (a crash shows all of it or none). Not synced: the
    /// log is durable and Raft re-applies what a crash lost.
    fn state_commit(&self, writes: WriteSet) -> Result<(), StorageError>;

    /// Copies the whole state. The caller makes sure no commit runs meanwhile.
    fn export_state(&self) -> Result<StateImage, StorageError>;

    /// Replaces the whole state with `image` in one atomic batch, then syncs.
    fn replace_state(&self, image: &StateImage) -> Result<Option<Duration>, StorageError>;

    /// Where the state machine is.
    fn applied_state(&self) -> Result<AppliedState, StorageError> {
        crate::state::read_applied_state(self)
    }
}

/// Whether `range` holds no index (inverted, or `(x, x)` with an exclusive end), which
/// `BTreeMap::range` would panic on.
pub(crate) fn is_empty_range(range: &impl RangeBounds<u64>) -> bool {
    let start = match range.start_bound() {
        Bound::Included(s) => Some(*s),
        Bound::Excluded(s) => match s.checked_add(1) {
            Some(s) => Some(s),
            None => return true,
        },
        Bound::Unbounded => None,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(*e),
        Bound::Excluded(e) => match e.checked_sub(1) {
            Some(e) => Some(e),
            None => return true,
        },
        Bound::Unbounded => None,
    };
    matches!((start, end), (Some(s), Some(e)) if s > e)
}
