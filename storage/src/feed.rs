//! A migrating model's change feed: while a model migrates (from `StartMigration` until SUCCESS
//! or ABORT), applying a command that changes the model also records what it changed, in the
//! same write set: one `migration.ModelChange` entry per command (`mchg/<uuid>/<index><pos>`,
//! every changed key's new value or deletion with the hash of the old pair, the command's
//! request id and result), and the running digest delta in the feed record (`mfeed/<uuid>`).
//! Apply is deterministic, so every node of the source holds the same feed; it survives leader
//! changes and is read by whichever node runs the migration master. The target applies entries
//! in order (`apply_changes`), remembering the last one, so a stream resumes where the target
//! stopped and a repeated entry changes nothing. Entries the target acknowledged are trimmed.
//!
//! The fed keys are the model's keys except its log (`keys::fed_model`), the same keys the
//! model digest covers (`model::digest`).

use std::collections::BTreeMap;

use prost::Message;
use starling_proto::command::{command_result, Command, CommandResult};
use starling_proto::migration::{FeedPosition, KeyChange, ModelChange, ModelFeed};

use crate::keys;
use crate::model::digest::ModelDigest;
use crate::records::read_record;
use crate::state::{StateRead, WriteSet};
use crate::StorageError;

/// Most feed entries one trim deletes (a trim is one command; this bounds its apply).
pub const TRIM_ENTRIES_MAX: usize = 10_000;

/// `(index, position)` of a feed position, for ordering.
pub fn order(at: &FeedPosition) -> (u64, u32) {
    (at.index, at.position)
}

/// A feed position.
pub fn position(index: u64, position: u32) -> FeedPosition {
    FeedPosition { index, position }
}

/// The feed of model `uuid`, if it is migrating from here and the feed still records.
pub fn read_feed(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<ModelFeed>, StorageError> {
    read_record(state, &keys::feed_key(uuid))
}

/// A new, empty feed of migration `migration_id`, recording from `from_index` on.
pub fn new_feed(migration_id: &str, from_index: u64) -> ModelFeed {
    ModelFeed {
        migration_id: migration_id.to_owned(),
        from_index,
        delta: ModelDigest::EMPTY.to_bytes().to_vec(),
        entries: 0,
        bytes: 0,
        last: Some(position(from_index, 0)),
    }
}

/// The digest delta a feed has accumulated (a malformed one reads as corrupt state).
pub fn feed_delta(feed: &ModelFeed, uuid: &str) -> Result<ModelDigest, StorageError> {
    let bytes: [u8; 32] = feed.delta.as_slice().try_into().map_err(|_| {
        StorageError::corrupt("state", &keys::feed_key(uuid), "the delta is not 32 bytes")
    })?;
    Ok(ModelDigest::from_bytes(&bytes))
}

fn hash_of(old: Option<&[u8]>, key: &[u8]) -> Option<ModelDigest> {
    old.map(|value| ModelDigest::of_pair(key, value))
}

fn old_hash(bytes: &[u8]) -> Option<ModelDigest> {
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    Some(ModelDigest::from_bytes(&bytes))
}

/// What one change adds to the model digest: the new pair's hash minus the old pair's.
pub fn change_delta(change: &KeyChange) -> ModelDigest {
    let mut delta = ModelDigest::EMPTY;
    if !change.deleted {
        delta.add_pair(&change.key, &change.value);
    }
    if let Some(old) = old_hash(&change.old_hash) {
        delta = delta.minus(old);
    }
    delta
}

/// One write of a command: the key and its new value (`None`: deleted).
type Written<'w> = (&'w Vec<u8>, &'w Option<Vec<u8>>);

/// The writes that record, in the feed of every model `writes` change that has one, what the
/// command at `at` changed. `state` is the state before the command's writes (its old values).
/// Commands that change no fed key record nothing.
pub fn record_changes(
    state: &(impl StateRead + ?Sized),
    at: FeedPosition,
    command: &Command,
    result: &CommandResult,
    writes: &WriteSet,
) -> Result<WriteSet, StorageError> {
    let mut by_model: BTreeMap<&str, Vec<Written<'_>>> = BTreeMap::new();
    for (key, value) in writes {
        if let Some(uuid) = keys::fed_model(key) {
            by_model.entry(uuid).or_default().push((key, value));
        }
    }
    let mut out = WriteSet::new();
    for (uuid, changed) in by_model {
        let Some(mut feed) = read_feed(state, uuid)? else {
            continue;
        };
        let mut delta = feed_delta(&feed, uuid)?;
        let mut changes = Vec::with_capacity(changed.len());
        for (key, value) in changed {
            let old = state.get(key)?;
            if old.as_ref() == value.as_ref() {
                continue;
            }
            let old_hash = hash_of(old.as_deref(), key);
            let change = KeyChange {
                key: key.clone(),
                value: value.clone().unwrap_or_default(),
                deleted: value.is_none(),
                old_hash: old_hash.map(|h| h.to_bytes().to_vec()).unwrap_or_default(),
            };
            delta = delta.plus(change_delta(&change));
            changes.push(change);
        }
        if changes.is_empty() {
            continue;
        }
        let entry = ModelChange {
            at: Some(at),
            changes,
            request_id: command.request_id.clone(),
            result: result.encode_to_vec(),
        };
        let bytes = entry.encode_to_vec();
        feed.delta = delta.to_bytes().to_vec();
        feed.entries += 1;
        feed.bytes += bytes.len() as u64;
        feed.last = Some(at);
        out.insert(
            keys::feed_entry_key(uuid, at.index, at.position),
            Some(bytes),
        );
        out.insert(keys::feed_key(uuid), Some(feed.encode_to_vec()));
    }
    Ok(out)
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<ModelChange, StorageError> {
    ModelChange::decode(bytes).map_err(|e| StorageError::corrupt("state", key, e))
}

/// The key right after `after` in model `uuid`'s feed (where a scan for later entries starts).
fn start_after(uuid: &str, after: &FeedPosition) -> Vec<u8> {
    let mut start = keys::feed_entry_key(uuid, after.index, after.position);
    start.push(0);
    start
}

/// Up to `limit` entries of model `uuid`'s feed after `after`, oldest first, and only those at
/// or below log index `through` when given.
pub fn entries_after(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    after: &FeedPosition,
    through: Option<u64>,
    limit: usize,
) -> Result<Vec<ModelChange>, StorageError> {
    let prefix = keys::feed_entry_prefix(uuid);
    let mut entries = Vec::new();
    for (key, bytes) in state.scan_prefix_from(&prefix, &start_after(uuid, after), limit)? {
        let entry = decode_entry(&key, &bytes)?;
        if through.is_some_and(|through| entry.at.unwrap_or_default().index > through) {
            break;
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// How many entries model `uuid`'s feed holds after `after`, counting at most `cap`.
pub fn count_after(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    after: &FeedPosition,
    cap: usize,
) -> Result<u64, StorageError> {
    let prefix = keys::feed_entry_prefix(uuid);
    Ok(state
        .scan_prefix_from(&prefix, &start_after(uuid, after), cap)?
        .len() as u64)
}

/// Deletes of up to `max` of model `uuid`'s feed entries at or before `through` (all of them
/// when `through` is `None`), and whether entries remain afterwards.
pub fn trim(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    through: Option<&FeedPosition>,
    max: usize,
) -> Result<(WriteSet, bool), StorageError> {
    let prefix = keys::feed_entry_prefix(uuid);
    let end = through.map(|t| keys::feed_entry_key(uuid, t.index, t.position));
    let rows = state.scan_prefix(&prefix, max.saturating_add(1))?;
    let mut writes = WriteSet::new();
    let mut more = false;
    for (key, _) in rows {
        if end.as_ref().is_some_and(|end| key > *end) {
            break;
        }
        if writes.len() == max {
            more = true;
            break;
        }
        writes.insert(key, None);
    }
    Ok((writes, more))
}

/// Whether model `uuid`'s feed holds any entry.
pub fn has_entries(state: &(impl StateRead + ?Sized), uuid: &str) -> Result<bool, StorageError> {
    Ok(!state
        .scan_prefix(&keys::feed_entry_prefix(uuid), 1)?
        .is_empty())
}

/// The request id and result an entry carries, when its command had a request id and a result
/// worth keeping (not a passing refusal).
pub fn entry_request(entry: &ModelChange) -> Option<(&str, &[u8])> {
    if entry.request_id.is_empty() {
        return None;
    }
    let result = CommandResult::decode(entry.result.as_slice()).ok()?;
    let transient = matches!(
        &result.result,
        Some(command_result::Result::Error(e)) if e.transient
    );
    (!transient).then_some((entry.request_id.as_str(), entry.result.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;
    use crate::StateBackend;

    fn command(request_id: &str) -> Command {
        Command {
            request_id: request_id.into(),
            ..Default::default()
        }
    }

    fn write(key: &[u8], value: Option<&[u8]>) -> WriteSet {
        [(key.to_vec(), value.map(<[u8]>::to_vec))].into()
    }

    #[test]
    fn only_models_with_a_feed_record_their_changes_and_the_delta_tracks_the_digest() {
        let store = MemStore::new();
        store
            .state_commit(
                [
                    (b"m/u1/model".to_vec(), Some(b"v0".to_vec())),
                    (
                        keys::feed_key("u1"),
                        Some(new_feed("u1:1", 5).encode_to_vec()),
                    ),
                ]
                .into(),
            )
            .unwrap();
        let before = ModelDigest::of_pairs([(b"m/u1/model".as_slice(), b"v0".as_slice())]);
        let at = position(6, 0);
        let mut writes = write(b"m/u1/model", Some(b"v1"));
        writes.insert(b"m/u1/log/1".to_vec(), Some(b"log line".to_vec()));
        writes.insert(b"m/u2/model".to_vec(), Some(b"other".to_vec()));
        writes.insert(b"m/u1/unit/a".to_vec(), Some(b"new".to_vec()));
        let recorded = record_changes(
            &store,
            at,
            &command("r1"),
            &CommandResult::default(),
            &writes,
        )
        .unwrap();
        assert_eq!(recorded.len(), 2, "one entry and the feed record");
        store.state_commit(writes).unwrap();
        store.state_commit(recorded).unwrap();
        let entries = entries_after(&store, "u1", &position(5, 0), None, 10).unwrap();
        assert_eq!(entries.len(), 1);
        let keys: Vec<&[u8]> = entries[0]
            .changes
            .iter()
            .map(|c| c.key.as_slice())
            .collect();
        assert_eq!(keys, [b"m/u1/model".as_slice(), b"m/u1/unit/a".as_slice()]);
        assert_eq!(entries[0].request_id, "r1");
        let feed = read_feed(&store, "u1").unwrap().unwrap();
        let after = ModelDigest::of_pairs([
            (b"m/u1/model".as_slice(), b"v1".as_slice()),
            (b"m/u1/unit/a".as_slice(), b"new".as_slice()),
        ]);
        assert_eq!(before.plus(feed_delta(&feed, "u1").unwrap()), after);
        assert_eq!(feed.entries, 1);
        assert!(read_feed(&store, "u2").unwrap().is_none());
        // A deletion subtracts the old pair.
        let deletion = write(b"m/u1/unit/a", None);
        let recorded = record_changes(
            &store,
            position(7, 2),
            &command(""),
            &CommandResult::default(),
            &deletion,
        )
        .unwrap();
        store.state_commit(deletion).unwrap();
        store.state_commit(recorded).unwrap();
        let feed = read_feed(&store, "u1").unwrap().unwrap();
        assert_eq!(
            before.plus(feed_delta(&feed, "u1").unwrap()),
            ModelDigest::of_pairs([(b"m/u1/model".as_slice(), b"v1".as_slice())])
        );
        assert_eq!(count_after(&store, "u1", &position(6, 0), 10).unwrap(), 1);
        assert_eq!(
            entries_after(&store, "u1", &position(5, 0), Some(6), 10)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn trims_are_bounded_and_stop_at_the_position() {
        let store = MemStore::new();
        let mut writes = WriteSet::new();
        for index in 1..=5u64 {
            writes.insert(keys::feed_entry_key("u", index, 0), Some(vec![]));
        }
        store.state_commit(writes).unwrap();
        let (deletes, more) = trim(&store, "u", Some(&position(3, 0)), 10).unwrap();
        assert_eq!(deletes.len(), 3);
        assert!(!more);
        let (deletes, more) = trim(&store, "u", None, 2).unwrap();
        assert_eq!(deletes.len(), 2);
        assert!(more);
        store.state_commit(deletes).unwrap();
        let (deletes, more) = trim(&store, "u", None, 10).unwrap();
        assert_eq!(deletes.len(), 3);
        assert!(!more);
    }
}
