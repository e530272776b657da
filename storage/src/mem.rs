//! `MemStore`: the in-memory backend (log, Raft metadata, state) for tests and the openraft
//! suite. Same byte layout and apply rules as the sled `Store`, no durability.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::{LogBackend, RaftMetaKey, StateBackend};
use crate::state::{self, KeyValues, StateImage, StateRead, WriteSet};
use crate::StorageError;

#[derive(Default)]
struct MemInner {
    log: BTreeMap<u64, Vec<u8>>,
    raft_meta: BTreeMap<RaftMetaKey, Vec<u8>>,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// An in-memory store; clones share the same data.
#[derive(Clone, Default)]
pub struct MemStore {
    // std Mutex, not tokio's: nothing awaits while it is held.
    inner: Arc<Mutex<MemInner>>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        self.inner.lock().expect("MemStore lock poisoned")
    }
}

impl LogBackend for MemStore {
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<Option<Duration>, StorageError> {
        self.lock().log.extend(entries);
        Ok(None)
    }

    fn log_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if crate::backend::is_empty_range(&range) {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .log
            .range(range)
            .map(|(index, bytes)| (*index, bytes.clone()))
            .collect())
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        Ok(self
            .lock()
            .log
            .last_key_value()
            .map(|(index, bytes)| (*index, bytes.clone())))
    }

    fn log_truncate_from(&self, index: u64) -> Result<Option<Duration>, StorageError> {
        self.lock().log.split_off(&index);
        Ok(None)
    }

    fn log_purge_through(
        &self,
        index: u64,
        last_purged: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError> {
        let mut inner = self.lock();
        inner.raft_meta.insert(RaftMetaKey::LastPurged, last_purged);
        let kept = match index.checked_add(1) {
            Some(next) => inner.log.split_off(&next),
            None => BTreeMap::new(),
        };
        inner.log = kept;
        Ok(None)
    }

    fn raft_meta_get(&self, key: RaftMetaKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().raft_meta.get(&key).cloned())
    }

    fn raft_meta_put(
        &self,
        key: RaftMetaKey,
        value: Vec<u8>,
    ) -> Result<Option<Duration>, StorageError> {
        self.lock().raft_meta.insert(key, value);
        Ok(None)
    }
}

impl StateRead for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().state.get(key).cloned())
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        Ok(self
            .lock()
            .state
            .range(start.max(prefix).to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_prefix_last(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError> {
        let end = state::prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .lock()
            .state
            .range((Bound::Included(prefix.to_vec()), end))
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl StateBackend for MemStore {
    fn state_commit(&self, writes: WriteSet) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for (key, value) in writes {
            match value {
                Some(value) => inner.state.insert(key, value),
                None => inner.state.remove(&key),
            };
        }
        Ok(())
    }

    fn export_state(&self) -> Result<StateImage, StorageError> {
        let applied = self.applied_state()?;
        let entries = self
            .lock()
            .state
            .iter()
            .filter(|(key, _)| !state::is_applied_state_key(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(StateImage { applied, entries })
    }

    fn replace_state(&self, image: &StateImage) -> Result<Option<Duration>, StorageError> {
        let mut fresh: BTreeMap<Vec<u8>, Vec<u8>> = image.entries.iter().cloned().collect();
        for (key, value) in state::applied_state_writes(&image.applied) {
            fresh.insert(key.to_vec(), value);
        }
        self.lock().state = fresh;
        Ok(None)
    }
}
