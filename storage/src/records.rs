//! Typed reads of the model records (`keys.rs` has the layout) over any `StateRead`: the
//! backends, an `ApplyBatch`, or the daemon's view. Absent records are `None`; records that do
//! not decode are `StorageError::Corrupt`.

use prost::Message;
use starling_proto::model::{
    Application, Blob, BlobUpload, LogRecord, Machine, Model, NodePresence, Relation,
    StatusHistory, Unit, User,
};

use crate::keys;
use crate::state::StateRead;
use crate::StorageError;

/// Most bytes returned by one `read_blob_range`.
pub const BLOB_RANGE_BYTES_MAX: u64 = 4 * 1024 * 1024;

fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes).map_err(|e| StorageError::corrupt("state", key, e))
}

/// The record at `key`, decoded.
pub fn read_record<M: Message + Default>(
    state: &(impl StateRead + ?Sized),
    key: &[u8],
) -> Result<Option<M>, StorageError> {
    state.get(key)?.map(|bytes| decode(key, &bytes)).transpose()
}

/// Every record under `prefix`, decoded, in key order.
pub fn read_records<M: Message + Default>(
    state: &(impl StateRead + ?Sized),
    prefix: &[u8],
) -> Result<Vec<M>, StorageError> {
    state
        .scan_prefix(prefix, usize::MAX)?
        .into_iter()
        .map(|(key, bytes)| decode(&key, &bytes))
        .collect()
}

/// A model by uuid.
pub fn read_model(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<Model>, StorageError> {
    read_record(state, &keys::model_record_key(uuid))
}

/// The uuid of `owner`'s model called `name`.
pub fn read_model_uuid(
    state: &(impl StateRead + ?Sized),
    owner: &str,
    name: &str,
) -> Result<Option<String>, StorageError> {
    let key = keys::model_name_key(owner, name);
    state
        .get(&key)?
        .map(|bytes| String::from_utf8(bytes).map_err(|e| StorageError::corrupt("state", &key, e)))
        .transpose()
}

/// Every model, ordered by owner then name.
pub fn read_models(state: &(impl StateRead + ?Sized)) -> Result<Vec<Model>, StorageError> {
    let mut models = Vec::new();
    for (key, uuid) in state.scan_prefix(keys::MODEL_NAME_PREFIX, usize::MAX)? {
        let uuid = String::from_utf8(uuid).map_err(|e| StorageError::corrupt("state", &key, e))?;
        let model = read_model(state, &uuid)?
            .ok_or_else(|| StorageError::corrupt("state", &key, "indexes a missing model"))?;
        models.push(model);
    }
    Ok(models)
}

/// One machine.
pub fn read_machine(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    id: u64,
) -> Result<Option<Machine>, StorageError> {
    read_record(state, &keys::machine_key(uuid, id))
}

/// One application.
pub fn read_application(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    name: &str,
) -> Result<Option<Application>, StorageError> {
    read_record(state, &keys::application_key(uuid, name))
}

/// One unit.
pub fn read_unit(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    application: &str,
    number: u64,
) -> Result<Option<Unit>, StorageError> {
    read_record(state, &keys::unit_key(uuid, application, number))
}

/// The units of one application, by number.
pub fn read_application_units(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    application: &str,
) -> Result<Vec<Unit>, StorageError> {
    read_records(state, &keys::application_unit_prefix(uuid, application))
}

/// The model's relations, by id.
pub fn read_relations(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Vec<Relation>, StorageError> {
    read_records(state, &keys::relation_prefix(uuid))
}

/// One entity's status history.
pub fn read_history(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    entity: &str,
) -> Result<Option<StatusHistory>, StorageError> {
    read_record(state, &keys::history_key(uuid, entity))
}

/// Up to `limit` model-log records with a sequence number above `after_seq`, oldest first.
pub fn read_log(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<LogRecord>, StorageError> {
    let Some(start) = after_seq.checked_add(1) else {
        return Ok(Vec::new());
    };
    state
        .scan_prefix_from(&keys::log_prefix(uuid), &keys::log_key(uuid, start), limit)?
        .into_iter()
        .map(|(key, bytes)| decode(&key, &bytes))
        .collect()
}

/// The lowest sequence number still in the model's log.
pub fn first_log_seq(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<u64>, StorageError> {
    let first = state.scan_prefix(&keys::log_prefix(uuid), 1)?;
    Ok(first.first().and_then(|(key, _)| keys::trailing_u64(key)))
}

/// A user.
pub fn read_user(
    state: &(impl StateRead + ?Sized),
    name: &str,
) -> Result<Option<User>, StorageError> {
    read_record(state, &keys::user_key(name))
}

/// Every user, by name.
pub fn read_users(state: &(impl StateRead + ?Sized)) -> Result<Vec<User>, StorageError> {
    read_records(state, keys::USER_PREFIX)
}

/// A complete blob's header.
pub fn read_blob(
    state: &(impl StateRead + ?Sized),
    digest: &str,
) -> Result<Option<Blob>, StorageError> {
    read_record(state, &keys::blob_key(digest))
}

/// An upload in progress.
pub fn read_blob_upload(
    state: &(impl StateRead + ?Sized),
    digest: &str,
) -> Result<Option<BlobUpload>, StorageError> {
    read_record(state, &keys::blob_stage_key(digest))
}

/// Up to `len` bytes (at most `BLOB_RANGE_BYTES_MAX`) of the complete blob `blob` from
/// `offset`; short or empty at the end.
pub fn read_blob_range(
    state: &(impl StateRead + ?Sized),
    blob: &Blob,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, StorageError> {
    let end = offset
        .saturating_add(len.min(BLOB_RANGE_BYTES_MAX))
        .min(blob.size);
    let mut out = Vec::new();
    if offset >= end {
        return Ok(out);
    }
    // The chunk holding `offset` is the last one starting at or before it.
    let first = blob.chunk_offsets.partition_point(|start| *start <= offset);
    for start in blob.chunk_offsets[first.saturating_sub(1)..]
        .iter()
        .copied()
    {
        if start >= end {
            break;
        }
        let key = keys::blob_data_key(&blob.digest, start);
        let chunk = state
            .get(&key)?
            .ok_or_else(|| StorageError::corrupt("state", &key, "blob chunk missing"))?;
        let chunk_end = start + chunk.len() as u64;
        let from = usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.min(chunk_end) - start).unwrap_or(usize::MAX);
        if from >= to || to > chunk.len() {
            return Err(StorageError::corrupt(
                "state",
                &key,
                "chunk shorter than its header says",
            ));
        }
        out.extend_from_slice(&chunk[from..to]);
    }
    Ok(out)
}

/// The last `AgentReport` sequence number (status report or log record) applied for a machine
/// (0 when none was).
pub fn read_agent_seq(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    machine: u64,
) -> Result<u64, StorageError> {
    let key = keys::agent_seq_key(uuid, machine);
    match state.get(&key)? {
        Some(bytes) => {
            Ok(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
                |_| StorageError::corrupt("state", &key, "not a be u64"),
            )?))
        }
        None => Ok(0),
    }
}

/// Every node's presence record, by node id.
pub fn read_presence(state: &(impl StateRead + ?Sized)) -> Result<Vec<NodePresence>, StorageError> {
    read_records(state, keys::PRESENCE_PREFIX)
}

/// The newest heartbeat any node recorded for each machine of model `uuid`, by machine id.
pub fn read_model_presence(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<std::collections::BTreeMap<String, i64>, StorageError> {
    let mut newest = std::collections::BTreeMap::new();
    for record in read_presence(state)? {
        for entry in record.entries.into_iter().filter(|e| e.model_uuid == uuid) {
            let seen = newest.entry(entry.machine_id).or_insert(i64::MIN);
            *seen = (*seen).max(entry.last_seen_unix_ms);
        }
    }
    Ok(newest)
}

/// What a model occupies in the state: its records (everything its description is built from)
/// and its log, counted and sized as stored (key and value bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelFootprint {
    /// Records under the model's prefix, its log excluded.
    pub records: u64,
    /// Their key and value bytes.
    pub bytes: u64,
    /// Records of the model's log.
    pub log_records: u64,
    /// Their key and value bytes.
    pub log_bytes: u64,
    /// Machines among the records.
    pub machines: u64,
    /// Units among the records.
    pub units: u64,
}

/// Pairs read per page while measuring a model: bounds the memory of one measurement.
const FOOTPRINT_PAGE: usize = 1024;

/// Measures model `uuid` by walking its keys in pages (no record is decoded).
pub fn model_footprint(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<ModelFootprint, StorageError> {
    let prefix = keys::model_prefix(uuid);
    let (log, machines, units) = (
        keys::log_prefix(uuid),
        keys::machine_prefix(uuid),
        keys::unit_prefix(uuid),
    );
    let mut footprint = ModelFootprint::default();
    let mut start = prefix.clone();
    loop {
        let page = state.scan_prefix_from(&prefix, &start, FOOTPRINT_PAGE)?;
        for (key, value) in &page {
            let bytes = (key.len() + value.len()) as u64;
            if key.starts_with(&log) {
                footprint.log_records += 1;
                footprint.log_bytes += bytes;
                continue;
            }
            footprint.records += 1;
            footprint.bytes += bytes;
            if key.starts_with(&machines) {
                footprint.machines += 1;
            } else if key.starts_with(&units) {
                footprint.units += 1;
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == FOOTPRINT_PAGE => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(footprint),
        }
    }
}
