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

    /// Up to `limit` pairs whose key starts with `prefix`, the last ones: in descending key
    /// order. Deleting a large range from its end keeps sled merging the emptied nodes into
    /// their neighbours inside the range; from its start, each merge rewrites the node before
    /// the range, which may hold megabytes of blob data.
    fn scan_prefix_last(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError>;
}

/// The first key after every key that starts with `prefix`; `None` when there is none (the
/// prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
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
        let (pending, deletes) = self.pending(prefix, start);
        // Enough base rows that, after dropping the ones deleted here, `limit` remain if they exist.
        let base = self
            .base
            .scan_prefix_from(prefix, start, limit.saturating_add(deletes))?;
        Ok(merge(base, pending).into_iter().take(limit).collect())
    }

    fn scan_prefix_last(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError> {
        let (pending, deletes) = self.pending(prefix, prefix);
        let base = self
            .base
            .scan_prefix_last(prefix, limit.saturating_add(deletes))?;
        Ok(merge(base, pending).into_iter().rev().take(limit).collect())
    }
}

/// An overlay's writes to keys of one prefix, in key order.
type Pending<'w> = Vec<(&'w Vec<u8>, &'w Option<Vec<u8>>)>;

impl<R: StateRead + ?Sized> Overlay<'_, R> {
    /// This overlay's writes to keys of `prefix` from `start` on, and how many are deletes.
    fn pending(&self, prefix: &[u8], start: &[u8]) -> (Pending<'_>, usize) {
        let pending: Pending<'_> = self
            .writes
            .range(start.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .collect();
        let deletes = pending.iter().filter(|(_, v)| v.is_none()).count();
        (pending, deletes)
    }
}

/// `base` rows with `pending` writes on top.
fn merge(base: KeyValues, pending: Pending<'_>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
    for (key, value) in pending {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    merged
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

    #[test]
    fn a_prefix_ends_past_its_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"m/"), Some(b"m0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn the_last_rows_of_a_prefix_come_newest_first_through_an_overlay() {
        use crate::backend::StateBackend;
        let store = crate::mem::MemStore::new();
        let rows = ["a", "m/1", "m/2", "m/3", "m/4", "m/~", "m0", "z"];
        store
            .state_commit(
                rows.iter()
                    .map(|k| (k.as_bytes().to_vec(), Some(k.as_bytes().to_vec())))
                    .collect(),
            )
            .expect("commits");
        let keys = |rows: KeyValues| {
            rows.into_iter()
                .map(|(k, _)| String::from_utf8(k).expect("utf-8"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(store.scan_prefix_last(b"m/", 3).expect("scans")),
            ["m/~", "m/4", "m/3"]
        );
        let mut overlay = Overlay::new(&store);
        overlay.delete(b"m/~".to_vec());
        overlay.delete(b"m/4".to_vec());
        overlay.put(b"m/25".to_vec(), b"new".to_vec());
        assert_eq!(
            keys(overlay.scan_prefix_last(b"m/", 3).expect("scans")),
            ["m/3", "m/25", "m/2"]
        );
        let mut forward = keys(overlay.scan_prefix(b"m/", usize::MAX).expect("scans"));
        forward.reverse();
        assert_eq!(
            keys(overlay.scan_prefix_last(b"m/", usize::MAX).expect("scans")),
            forward
        );
    }
}
