//! The replicated state as bytes: the read trait both backends implement, the write set an
//! applied batch produces, and the state image a snapshot carries (with its protobuf encoding).

use std::collections::BTreeMap;

use prost::Message;
use starling_proto::raft as pb;

use crate::keys;
use crate::model::controller_config;
use crate::StorageError;

/// Read access to the replicated state. Implemented by both backends and by the overlay an
/// `ApplyBatch` keeps, so the apply rules see their own earlier writes.
pub trait StateRead {
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError> {
        self.scan_prefix_from(prefix, prefix, limit)
    }

    /// Up to `limit` pairs whose key starts with `prefix` and is `>= start`, in key order (paging
    /// through a prefix without reading what came before).
    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError>;
}

/// Reads through to a base state, keeping its own writes on top: later reads see earlier writes.
/// `ApplyBatch` is one over the backend; each model command runs in one over the batch, so a
/// refused command leaves the batch untouched.
pub struct Overlay<'r, R: StateRead + ?Sized> {
    base: &'r R,
    writes: WriteSet,
}

impl<'r, R: StateRead + ?Sized> Overlay<'r, R> {
    /// An overlay with no writes yet.
    pub fn new(base: &'r R) -> Self {
        Overlay {
            base,
            writes: WriteSet::new(),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Adds `writes` on top of this overlay's.
    pub fn extend(&mut self, writes: WriteSet) {
        self.writes.extend(writes);
    }

    /// The writes made so far.
    pub fn into_writes(self) -> WriteSet {
        self.writes
    }
}

impl<R: StateRead + ?Sized> StateRead for Overlay<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.writes.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.base.get(key),
        }
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        let start = start.max(prefix);
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .range(start.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .collect();
        let deletes = pending.iter().filter(|(_, v)| v.is_none()).count();
        // Enough base rows that, after dropping the ones deleted here, `limit` remain if they exist.
        let base = self
            .base
            .scan_prefix_from(prefix, start, limit.saturating_add(deletes))?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
        for (key, value) in pending {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// Keys and values, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Puts (`Some`) and deletes (`None`) to commit as one atomic batch.
pub type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Where the state machine is: the last applied log id and membership, protobuf-encoded types
/// so this crate stays free of openraft.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedState {
    /// The last applied log id; `None` before anything was applied.
    pub last_applied: Option<pb::LogId>,
    /// The last applied membership; `None` before any membership was applied.
    pub last_membership: Option<pb::StoredMembership>,
}

/// The whole replicated state at one point: what a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateImage {
    /// Where the state machine was.
    pub applied: AppliedState,
    /// Every key and value except `sys/last_applied` and `sys/last_membership`, in key order.
    pub entries: KeyValues,
}

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

impl StateImage {
    /// Encodes the image as a protobuf `raft::Snapshot`.
    pub fn encode(&self) -> Vec<u8> {
        pb::Snapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            last_applied: self.applied.last_applied,
            last_membership: self.applied.last_membership.clone(),
            entries: self
                .entries
                .iter()
                .map(|(key, value)| pb::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decodes and checks a protobuf `raft::Snapshot`: known format version, keys strictly
    /// increasing, no reserved `sys/last_*` key among the entries.
    pub fn decode(bytes: &[u8]) -> Result<StateImage, StorageError> {
        let malformed = |why: String| StorageError::MalformedSnapshot { why };
        let snapshot =
            pb::Snapshot::decode(bytes).map_err(|e| malformed(format!("not a Snapshot: {e}")))?;
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(malformed(format!(
                "format version {} (this build reads {SNAPSHOT_FORMAT_VERSION})",
                snapshot.format_version
            )));
        }
        let mut entries = Vec::with_capacity(snapshot.entries.len());
        for kv in snapshot.entries {
            if kv.key == keys::LAST_APPLIED || kv.key == keys::LAST_MEMBERSHIP {
                return Err(malformed(format!(
                    "reserved key {} among the entries",
                    String::from_utf8_lossy(&kv.key)
                )));
            }
            if let Some((previous, _)) = entries.last() {
                if *previous >= kv.key {
                    return Err(malformed(format!(
                        "keys out of order at {}",
                        String::from_utf8_lossy(&kv.key)
                    )));
                }
            }
            entries.push((kv.key, kv.value));
        }
        Ok(StateImage {
            applied: AppliedState {
                last_applied: snapshot.last_applied,
                last_membership: snapshot.last_membership,
            },
            entries,
        })
    }
}

/// Reads the applied state from `sys/last_applied` and `sys/last_membership`.
pub fn read_applied_state(state: &(impl StateRead + ?Sized)) -> Result<AppliedState, StorageError> {
    let last_applied = match state.get(keys::LAST_APPLIED)? {
        Some(bytes) => Some(
            pb::LogId::decode(bytes.as_slice())
                .map_err(|e| StorageError::corrupt("state", keys::LAST_APPLIED, e))?,
        ),
        None => None,
    };
    let last_membership = match state.get(keys::LAST_MEMBERSHIP)? {
        Some(bytes) => Some(
            pb::StoredMembership::decode(bytes.as_slice())
                .map_err(|e| StorageError::corrupt("state", keys::LAST_MEMBERSHIP, e))?,
        ),
        None => None,
    };
    Ok(AppliedState {
        last_applied,
        last_membership,
    })
}

/// The controller-config values operators set (no defaults), by key.
pub fn read_stored_config(
    state: &(impl StateRead + ?Sized),
) -> Result<BTreeMap<String, String>, StorageError> {
    let mut config = BTreeMap::new();
    for (key, value) in state.scan_prefix(keys::CONFIG_PREFIX, usize::MAX)? {
        let name = std::str::from_utf8(&key[keys::CONFIG_PREFIX.len()..])
            .map_err(|e| StorageError::corrupt("state", &key, e))?;
        let value =
            String::from_utf8(value).map_err(|e| StorageError::corrupt("state", &key, e))?;
        config.insert(name.to_owned(), value);
    }
    Ok(config)
}

/// The effective controller config: stored values merged over the defaults.
pub fn read_effective_config(
    state: &(impl StateRead + ?Sized),
) -> Result<BTreeMap<String, String>, StorageError> {
    Ok(controller_config::effective_config(&read_stored_config(
        state,
    )?))
}

/// The state machine's `sys/` keys that are not part of a snapshot's entries.
pub(crate) fn is_applied_state_key(key: &[u8]) -> bool {
    key == keys::LAST_APPLIED || key == keys::LAST_MEMBERSHIP
}

/// The writes that record `applied` (used by both backends when replacing the state).
pub(crate) fn applied_state_writes(applied: &AppliedState) -> Vec<(&'static [u8], Vec<u8>)> {
    let mut writes = Vec::new();
    if let Some(log_id) = &applied.last_applied {
        writes.push((keys::LAST_APPLIED, log_id.encode_to_vec()));
    }
    if let Some(membership) = &applied.last_membership {
        writes.push((keys::LAST_MEMBERSHIP, membership.encode_to_vec()));
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_round_trips() {
        let image = StateImage {
            applied: AppliedState {
                last_applied: Some(pb::LogId {
                    term: 2,
                    leader_node_id: 1,
                    index: 9,
                }),
                last_membership: Some(pb::StoredMembership::default()),
            },
            entries: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
        };
        assert_eq!(StateImage::decode(&image.encode()).expect("decodes"), image);
    }

    #[test]
    fn garbage_and_disorder_are_refused() {
        assert!(StateImage::decode(b"\xff\xff\xff").is_err());
        let image = StateImage {
            applied: AppliedState::default(),
            entries: vec![(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])],
        };
        let err = StateImage::decode(&image.encode()).expect_err("out of order");
        assert!(err.to_string().contains("out of order"), "{err}");
        let image = StateImage {
            applied: AppliedState::default(),
            entries: vec![(keys::LAST_APPLIED.to_vec(), vec![])],
        };
        assert!(StateImage::decode(&image.encode()).is_err());
        let mut bad_version = pb::Snapshot::decode(image.encode().as_slice()).expect("decodes");
        bad_version.format_version = 99;
        bad_version.entries.clear();
        let err = StateImage::decode(&bad_version.encode_to_vec()).expect_err("version");
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
