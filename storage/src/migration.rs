//! Migration state as stored: the source's `migration.MigrationRecord`s, redirects, the target's
//! import records, and their mapping onto the pure decision types of
//! [`crate::model::migration`]. The proto record is what is persisted; the pure record is what
//! the rules decide on, so a change goes proto → pure → rule → pure → proto ([`to_logic`],
//! [`store_logic`]) and keeps the fields the rules don't know (token, CA, model name).

use std::collections::BTreeMap;

use starling_proto::migration as pb;

use crate::keys;
use crate::model::migration::{
    CopyDigests, FeedPosition, MigrationError, MigrationId, MigrationRecord, Phase, PhaseChange,
    TargetController,
};
use crate::records::{read_record, read_records};
use crate::state::StateRead;
use crate::StorageError;

/// Most of a model's records one REAP or DropImport command deletes: each is one short apply
/// (tens of milliseconds), so the writes of other models (and the answers to late writes of a
/// migrated one) never queue behind the removal of a large model.
pub const REMOVAL_RECORDS_MAX: u32 = 1_024;

/// How long one DropImport call (or one pass of the leftover rule) proposes chunk after chunk;
/// what is left then stays an invisible import that the next call or pass finishes.
pub const DROP_CALL_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

fn phase(name: &str, key: &[u8]) -> Result<Phase, StorageError> {
    Phase::parse(name).ok_or_else(|| StorageError::corrupt("state", key, "unknown phase"))
}

fn phase_opt(name: &str, key: &[u8]) -> Result<Option<Phase>, StorageError> {
    if name.is_empty() {
        Ok(None)
    } else {
        phase(name, key).map(Some)
    }
}

/// The migration id of a stored record.
pub fn record_id(record: &pb::MigrationRecord) -> MigrationId {
    MigrationId::new(record.model_uuid.clone(), record.attempt)
}

/// The pure record the rules decide on.
pub fn to_logic(record: &pb::MigrationRecord) -> Result<MigrationRecord, StorageError> {
    let key = keys::migration_key(&record.model_uuid, record.attempt);
    let target = record.target.clone().unwrap_or_default();
    let mut history = Vec::with_capacity(record.history.len());
    for change in &record.history {
        history.push(PhaseChange {
            from: phase(&change.from, &key)?,
            to: phase(&change.to, &key)?,
            at_unix_ms: change.at_unix_ms,
            reason: change.reason.clone(),
        });
    }
    Ok(MigrationRecord {
        id: record_id(record),
        target: TargetController {
            controller_uuid: target.controller_uuid,
            name: target.name,
            endpoints: target.endpoints,
            ca_fingerprint: target.ca_fingerprint,
        },
        initiated_by: record.initiated_by.clone(),
        ownership_epoch: record.ownership_epoch,
        phase: phase(&record.phase, &key)?,
        phase_since_unix_ms: record.phase_since_unix_ms,
        started_unix_ms: record.started_unix_ms,
        ended_unix_ms: record.ended_unix_ms,
        aborted_from: phase_opt(&record.aborted_from, &key)?,
        abort_reason: record.abort_reason.clone(),
        abort_requested: record.abort_requested.clone(),
        source_digest: record.source_digest.clone(),
        target_digest: record.target_digest.clone(),
        feed_from_index: record.feed_from_index,
        copy: match (&record.copy_digest, &record.base_digest) {
            (Some(copy_digest), Some(base_digest)) => Some(CopyDigests {
                copy_digest: copy_digest.clone(),
                base_digest: base_digest.clone(),
            }),
            _ => None,
        },
        lock_index: (record.lock_index > 0).then_some(record.lock_index),
        feed_acked: feed_position(record.feed_acked.as_ref()),
        agents_acked: record.agents_acked.iter().cloned().collect(),
        agents_validated: record.agents_validated.iter().cloned().collect(),
        agent_failures: record
            .agent_failures
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        log_transfer_position: record.log_transfer_position,
        history,
    })
}

/// `stored` with every field the rules own replaced by `logic`'s (token, CA and model name kept).
pub fn store_logic(stored: &pb::MigrationRecord, logic: &MigrationRecord) -> pb::MigrationRecord {
    let mut next = stored.clone();
    next.model_uuid = logic.id.model_uuid.clone();
    next.attempt = logic.id.attempt;
    next.initiated_by = logic.initiated_by.clone();
    next.ownership_epoch = logic.ownership_epoch;
    next.phase = logic.phase.as_str().to_owned();
    next.phase_since_unix_ms = logic.phase_since_unix_ms;
    next.started_unix_ms = logic.started_unix_ms;
    next.ended_unix_ms = logic.ended_unix_ms;
    next.aborted_from = logic
        .aborted_from
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    next.abort_reason = logic.abort_reason.clone();
    next.abort_requested = logic.abort_requested.clone();
    next.source_digest = logic.source_digest.clone();
    next.target_digest = logic.target_digest.clone();
    next.feed_from_index = logic.feed_from_index;
    next.copy_digest = logic.copy.as_ref().map(|c| c.copy_digest.clone());
    next.base_digest = logic.copy.as_ref().map(|c| c.base_digest.clone());
    next.lock_index = logic.lock_index.unwrap_or(0);
    next.feed_acked = Some(stored_position(logic.feed_acked));
    next.agents_acked = logic.agents_acked.iter().cloned().collect();
    next.agents_validated = logic.agents_validated.iter().cloned().collect();
    next.agent_failures = logic
        .agent_failures
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    next.log_transfer_position = logic.log_transfer_position;
    next.history = logic
        .history
        .iter()
        .map(|change| pb::PhaseChange {
            from: change.from.as_str().to_owned(),
            to: change.to.as_str().to_owned(),
            at_unix_ms: change.at_unix_ms,
            reason: change.reason.clone(),
        })
        .collect();
    next
}

/// A stored feed position as the rules see it (absent: the start).
pub fn feed_position(stored: Option<&pb::FeedPosition>) -> FeedPosition {
    stored.map_or_else(FeedPosition::default, |p| {
        FeedPosition::new(p.index, p.position)
    })
}

/// A feed position as stored.
pub fn stored_position(position: FeedPosition) -> pb::FeedPosition {
    pb::FeedPosition {
        index: position.index,
        position: position.position,
    }
}

/// The record of migration `id`.
pub fn read_migration(
    state: &(impl StateRead + ?Sized),
    id: &MigrationId,
) -> Result<Option<pb::MigrationRecord>, StorageError> {
    read_record(state, &keys::migration_key(&id.model_uuid, id.attempt))
}

/// The record of migration `id`, or `UnknownMigration`.
pub fn require_migration(
    state: &(impl StateRead + ?Sized),
    id: &MigrationId,
) -> Result<Result<pb::MigrationRecord, MigrationError>, StorageError> {
    Ok(
        read_migration(state, id)?.ok_or_else(|| MigrationError::UnknownMigration {
            migration_id: id.to_string(),
        }),
    )
}

/// Every migration of model `uuid` this controller was the source of, oldest first.
pub fn read_model_migrations(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Vec<pb::MigrationRecord>, StorageError> {
    read_records(state, &keys::migration_prefix(uuid))
}

/// The latest migration of model `uuid` this controller was the source of.
pub fn latest_migration(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<pb::MigrationRecord>, StorageError> {
    Ok(read_model_migrations(state, uuid)?.pop())
}

/// Every migration record on this controller.
pub fn read_all_migrations(
    state: &(impl StateRead + ?Sized),
) -> Result<Vec<pb::MigrationRecord>, StorageError> {
    read_records(state, keys::MIGRATION_PREFIX)
}

/// Whether a stored record's phase is terminal (an unreadable phase counts as not terminal, so
/// it is looked at rather than forgotten).
pub fn is_terminal(record: &pb::MigrationRecord) -> bool {
    Phase::parse(&record.phase).is_some_and(Phase::is_terminal)
}

/// The migration id holding model `uuid`'s lock, if any.
pub fn read_lock(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<String>, StorageError> {
    read_string(state, &keys::migration_lock_key(uuid))
}

/// The migration id that activated model `uuid` here, if any.
pub fn read_activated_by(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<String>, StorageError> {
    read_string(state, &keys::activated_key(uuid))
}

/// The inbound log transfer of model `uuid` that has not ended, if any.
pub fn read_log_transfer(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<pb::LogTransferRecord>, StorageError> {
    let key = keys::log_transfer_key(uuid);
    state
        .get(&key)?
        .map(|value| decode_log_transfer(&key, value))
        .transpose()
}

/// Every inbound log transfer that has not ended: (model uuid, its record).
pub fn read_log_transfers(
    state: &(impl StateRead + ?Sized),
) -> Result<Vec<(String, pb::LogTransferRecord)>, StorageError> {
    let mut open = Vec::new();
    for (key, value) in state.scan_prefix(keys::LOG_TRANSFER_PREFIX, usize::MAX)? {
        let uuid = String::from_utf8(key[keys::LOG_TRANSFER_PREFIX.len()..].to_vec())
            .map_err(|e| StorageError::corrupt("state", &key, e))?;
        let record = decode_log_transfer(&key, value)?;
        open.push((uuid, record));
    }
    Ok(open)
}

/// A `logtransfer/` value: a `LogTransferRecord` (its first byte is field 1's tag, `\n`), or
/// the bare migration id older versions wrote (which never starts with a control character).
fn decode_log_transfer(key: &[u8], value: Vec<u8>) -> Result<pb::LogTransferRecord, StorageError> {
    use prost::Message;
    if value.first() == Some(&b'\n') {
        return pb::LogTransferRecord::decode(value.as_slice())
            .map_err(|e| StorageError::corrupt("state", key, e));
    }
    let migration_id =
        String::from_utf8(value).map_err(|e| StorageError::corrupt("state", key, e))?;
    Ok(pb::LogTransferRecord {
        migration_id,
        ..Default::default()
    })
}

fn read_string(
    state: &(impl StateRead + ?Sized),
    key: &[u8],
) -> Result<Option<String>, StorageError> {
    state
        .get(key)?
        .map(|bytes| String::from_utf8(bytes).map_err(|e| StorageError::corrupt("state", key, e)))
        .transpose()
}

/// Where model `uuid` went, if it migrated away.
pub fn read_redirect(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<pb::Redirect>, StorageError> {
    read_record(state, &keys::redirect_key(uuid))
}

/// Every redirect.
pub fn read_redirects(
    state: &(impl StateRead + ?Sized),
) -> Result<Vec<pb::Redirect>, StorageError> {
    read_records(state, keys::REDIRECT_PREFIX)
}

/// The redirect a model name means on this controller: of the redirects named `name` and
/// owned by `owner` (or by anyone when `any_owner`, the caller's own first), the newest. A
/// name has several when a model moved away, was destroyed where it went, was created here
/// again under its name and moved away too: the older redirects point at a controller where
/// the name means nothing now.
pub fn redirect_by_name(
    state: &(impl StateRead + ?Sized),
    owner: &str,
    name: &str,
    any_owner: bool,
) -> Result<Option<pb::Redirect>, StorageError> {
    Ok(read_redirects(state)?
        .into_iter()
        .filter(|r| r.model_name == name && (any_owner || r.model_owner == owner))
        .max_by_key(|r| (r.model_owner == owner, r.redirected_unix_ms)))
}

/// The import record of model `uuid`, if its records are an import.
pub fn read_import(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<pb::ImportRecord>, StorageError> {
    read_record(state, &keys::import_key(uuid))
}

/// Every import this controller holds.
pub fn read_imports(
    state: &(impl StateRead + ?Sized),
) -> Result<Vec<pb::ImportRecord>, StorageError> {
    read_records(state, keys::IMPORT_PREFIX)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{MemStore, StateBackend, WriteSet};

    fn redirect(uuid: &str, owner: &str, to: &str, at_ms: i64) -> (Vec<u8>, Option<Vec<u8>>) {
        let record = pb::Redirect {
            model_uuid: uuid.into(),
            model_name: "web".into(),
            model_owner: owner.into(),
            controller_name: to.into(),
            redirected_unix_ms: at_ms,
            ..Default::default()
        };
        (keys::redirect_key(uuid), Some(record.encode_to_vec()))
    }

    /// "web" moved to gamma, was destroyed there, was created here again and moved to alpha:
    /// the name means the newer model, whatever the order of the uuids.
    #[test]
    fn a_name_with_several_redirects_means_the_newest() {
        let store = MemStore::new();
        let writes: WriteSet = [
            redirect("0000-old", "admin", "gamma", 1_000),
            redirect("ffff-new", "admin", "alpha", 2_000),
            redirect("8888-bob", "bob", "delta", 3_000),
        ]
        .into();
        store.state_commit(writes).expect("commit");
        let found = |owner: &str, any_owner: bool| {
            redirect_by_name(&store, owner, "web", any_owner)
                .expect("read")
                .map(|r| r.controller_name)
        };
        assert_eq!(found("admin", false).as_deref(), Some("alpha"));
        // A bare name: the caller's own model first, then anyone's newest.
        assert_eq!(found("admin", true).as_deref(), Some("alpha"));
        assert_eq!(found("carol", true).as_deref(), Some("delta"));
        assert_eq!(found("carol", false), None);
        assert_eq!(
            redirect_by_name(&store, "admin", "db", true).expect("read"),
            None
        );
    }
}
