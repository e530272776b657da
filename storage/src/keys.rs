//! The key layout of the replicated state (the `state` tree), in one place.
//!
//! | prefix | value |
//! |---|---|
//! | `cfg/<key>` | a controller-config value (UTF-8), only keys set by an operator |
//! | `req/<request_id>` | the encoded `CommandResult` of the first command with that id |
//! | `reqidx/<be u64 log index>` | the request id recorded at that index (oldest evicted first) |
//! | `sys/last_applied` | encoded `raft::LogId` of the last applied entry |
//! | `sys/last_membership` | encoded `raft::StoredMembership` |
//! | `sys/request_records` | be u64: how many `req/` records exist |
//! | `m/<uuid>/model` | `model.Model` |
//! | `m/<uuid>/machine/<be u64 id>` | `model.Machine` |
//! | `m/<uuid>/app/<name>` | `model.Application` |
//! | `m/<uuid>/unit/<app>/<be u64 n>` | `model.Unit` (`/` ends the app name, so one app's units are one prefix) |
//! | `m/<uuid>/rel/<be u64 id>` | `model.Relation` |
//! | `m/<uuid>/hist/<entity>` | `model.StatusHistory` (`unit-web-0`, `unit-web-0/agent`, `machine-0`, ...) |
//! | `m/<uuid>/log/<be u64 seq>` | `model.LogRecord` |
//! | `m/<uuid>/agentseq/<be u64 machine>` | be u64: the last `AgentReport` `seq` (status or log) applied for the machine; exported with the model |
//! | `presence/<be u64 node id>` | `model.NodePresence`: the agents heartbeating to that node |
//! | `mname/<owner>/<name>` | the model's uuid (UTF-8): the name index |
//! | `user/<name>` | `model.User` |
//! | `blob/<digest>` | `model.Blob`: a complete, verified blob |
//! | `blobdata/<digest>/<be u64 offset>` | raw bytes of one chunk (staged or complete) |
//! | `blobstage/<digest>` | `model.BlobUpload`: an upload in progress |
//! | `mig/<uuid>/<be u64 attempt>` | `migration.MigrationRecord`: the source's record of one migration |
//! | `miglock/<uuid>` | the migration id (UTF-8) holding the model's lock (QUIESCE..SUCCESS, or until ABORTDONE) |
//! | `redirect/<uuid>` | `migration.Redirect`: where a migrated model went (kept after REAP) |
//! | `import/<uuid>` | `migration.ImportRecord`: the model's records are an import, invisible and read-only |
//! | `activated/<uuid>` | the migration id (UTF-8) that last activated the model here; kept after the model leaves (destroyed or migrated on) |
//! | `logtransfer/<uuid>` | `migration.LogTransferRecord` (older versions: the bare migration id, UTF-8) of the migration whose log transfer into this controller has not ended, with the source's contact and the times of activation and of the last batch: written at activation, deleted by the source's last `ImportLog` (`complete`) or by `EndLogTransfer` (the sweeper, once the source is past LOGTRANSFER or forgot the migration); the model may not migrate on meanwhile and later batches are refused; backups carry it and restore counts it as in flight |
//! | `mfeed/<uuid>` | `migration.ModelFeed`: the change feed of a migrating model (from the migration's start until SUCCESS or ABORT) |
//! | `mchg/<uuid>/<be u64 index><be u32 position>` | `migration.ModelChange`: what one command changed in the model, until the target acknowledged it |
//! | `backup/<id>` | `model.BackupRecord`: a backup kept on the controller (its archive is a blob) |
//!
//! Numbers are big-endian so key order is numeric order. Model and application records are
//! prost-encoded; proto maps are BTreeMaps (proto/build.rs), so equal records are equal bytes.

/// Controller-config values.
pub const CONFIG_PREFIX: &[u8] = b"cfg/";
/// Idempotency records by request id.
pub const REQUEST_PREFIX: &[u8] = b"req/";
/// Idempotency records by the log index that created them.
pub const REQUEST_INDEX_PREFIX: &[u8] = b"reqidx/";
/// Bookkeeping owned by the state machine itself.
pub const SYS_PREFIX: &[u8] = b"sys/";
/// The last applied log id.
pub const LAST_APPLIED: &[u8] = b"sys/last_applied";
/// The last applied membership.
pub const LAST_MEMBERSHIP: &[u8] = b"sys/last_membership";
/// The number of idempotency records.
pub const REQUEST_RECORDS: &[u8] = b"sys/request_records";

/// `prefix` followed by `suffix`.
pub fn join(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + suffix.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(suffix);
    key
}

/// The key of a controller-config value.
pub fn config_key(key: &str) -> Vec<u8> {
    join(CONFIG_PREFIX, key.as_bytes())
}

/// The key of an idempotency record.
pub fn request_key(request_id: &str) -> Vec<u8> {
    join(REQUEST_PREFIX, request_id.as_bytes())
}

/// The key of an idempotency record's index entry.
pub fn request_index_key(log_index: u64) -> Vec<u8> {
    join(REQUEST_INDEX_PREFIX, &log_index.to_be_bytes())
}

/// Everything of one model: `m/<uuid>/`.
pub fn model_prefix(uuid: &str) -> Vec<u8> {
    format!("m/{uuid}/").into_bytes()
}

/// `m/<uuid>/<rest>`.
fn model_key(uuid: &str, rest: &[u8]) -> Vec<u8> {
    join(&model_prefix(uuid), rest)
}

/// The model record.
pub fn model_record_key(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"model")
}

/// All machines of a model.
pub fn machine_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"machine/")
}

/// One machine.
pub fn machine_key(uuid: &str, id: u64) -> Vec<u8> {
    join(&machine_prefix(uuid), &id.to_be_bytes())
}

/// All applications of a model.
pub fn application_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"app/")
}

/// One application.
pub fn application_key(uuid: &str, name: &str) -> Vec<u8> {
    join(&application_prefix(uuid), name.as_bytes())
}

/// All units of a model.
pub fn unit_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"unit/")
}

/// All units of one application.
pub fn application_unit_prefix(uuid: &str, application: &str) -> Vec<u8> {
    let mut key = join(&unit_prefix(uuid), application.as_bytes());
    key.push(b'/');
    key
}

/// One unit.
pub fn unit_key(uuid: &str, application: &str, number: u64) -> Vec<u8> {
    join(
        &application_unit_prefix(uuid, application),
        &number.to_be_bytes(),
    )
}

/// All relations of a model.
pub fn relation_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"rel/")
}

/// One relation.
pub fn relation_key(uuid: &str, id: u64) -> Vec<u8> {
    join(&relation_prefix(uuid), &id.to_be_bytes())
}

/// All status histories of a model.
pub fn history_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"hist/")
}

/// One entity's status history.
pub fn history_key(uuid: &str, entity: &str) -> Vec<u8> {
    join(&history_prefix(uuid), entity.as_bytes())
}

/// The model's log.
pub fn log_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"log/")
}

/// One model-log record.
pub fn log_key(uuid: &str, seq: u64) -> Vec<u8> {
    join(&log_prefix(uuid), &seq.to_be_bytes())
}

/// The last applied agent-report sequence numbers of a model's machines.
pub fn agent_seq_prefix(uuid: &str) -> Vec<u8> {
    model_key(uuid, b"agentseq/")
}

/// The last applied agent-report sequence number of one machine.
pub fn agent_seq_key(uuid: &str, machine: u64) -> Vec<u8> {
    join(&agent_seq_prefix(uuid), &machine.to_be_bytes())
}

/// Every node's presence record.
pub const PRESENCE_PREFIX: &[u8] = b"presence/";

/// One node's presence record.
pub fn presence_key(node_id: u64) -> Vec<u8> {
    join(PRESENCE_PREFIX, &node_id.to_be_bytes())
}

/// The model-name index.
pub const MODEL_NAME_PREFIX: &[u8] = b"mname/";

/// One entry of the model-name index.
pub fn model_name_key(owner: &str, name: &str) -> Vec<u8> {
    join(MODEL_NAME_PREFIX, format!("{owner}/{name}").as_bytes())
}

/// Controller users.
pub const USER_PREFIX: &[u8] = b"user/";

/// One user.
pub fn user_key(name: &str) -> Vec<u8> {
    join(USER_PREFIX, name.as_bytes())
}

/// Complete blobs.
pub const BLOB_PREFIX: &[u8] = b"blob/";

/// A complete blob's header.
pub fn blob_key(digest: &str) -> Vec<u8> {
    join(BLOB_PREFIX, digest.as_bytes())
}

/// All chunks of one blob.
pub fn blob_data_prefix(digest: &str) -> Vec<u8> {
    format!("blobdata/{digest}/").into_bytes()
}

/// The chunk of a blob starting at `offset`.
pub fn blob_data_key(digest: &str, offset: u64) -> Vec<u8> {
    join(&blob_data_prefix(digest), &offset.to_be_bytes())
}

/// An upload in progress.
pub fn blob_stage_key(digest: &str) -> Vec<u8> {
    join(b"blobstage/", digest.as_bytes())
}

/// Backups kept on the controller.
pub const BACKUP_PREFIX: &[u8] = b"backup/";

/// One backup's record.
pub fn backup_key(id: &str) -> Vec<u8> {
    join(BACKUP_PREFIX, id.as_bytes())
}

/// The big-endian number that ends `key` (a machine id, unit number, sequence or offset).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[start..].try_into().ok()?))
}

/// Every migration record.
pub const MIGRATION_PREFIX: &[u8] = b"mig/";
/// Every redirect.
pub const REDIRECT_PREFIX: &[u8] = b"redirect/";
/// Every import.
pub const IMPORT_PREFIX: &[u8] = b"import/";

/// The migration records of one model.
pub fn migration_prefix(uuid: &str) -> Vec<u8> {
    format!("mig/{uuid}/").into_bytes()
}

/// One migration record.
pub fn migration_key(uuid: &str, attempt: u64) -> Vec<u8> {
    join(&migration_prefix(uuid), &attempt.to_be_bytes())
}

/// The migration lock of a model.
pub fn migration_lock_key(uuid: &str) -> Vec<u8> {
    join(MIGRATION_LOCK_PREFIX, uuid.as_bytes())
}

/// A migrated model's redirect.
pub fn redirect_key(uuid: &str) -> Vec<u8> {
    join(REDIRECT_PREFIX, uuid.as_bytes())
}

/// A model's import record.
pub fn import_key(uuid: &str) -> Vec<u8> {
    join(IMPORT_PREFIX, uuid.as_bytes())
}

/// Every activation memory.
pub const ACTIVATED_PREFIX: &[u8] = b"activated/";
/// Every migration lock.
pub const MIGRATION_LOCK_PREFIX: &[u8] = b"miglock/";
/// Every inbound log transfer that has not ended (see the table above).
pub const LOG_TRANSFER_PREFIX: &[u8] = b"logtransfer/";

/// The migration that last activated a model here.
pub fn activated_key(uuid: &str) -> Vec<u8> {
    join(ACTIVATED_PREFIX, uuid.as_bytes())
}

/// The inbound log transfer of a model that has not ended.
pub fn log_transfer_key(uuid: &str) -> Vec<u8> {
    join(LOG_TRANSFER_PREFIX, uuid.as_bytes())
}

/// A migrating model's change feed record.
pub fn feed_key(uuid: &str) -> Vec<u8> {
    join(b"mfeed/", uuid.as_bytes())
}

/// Every entry of a model's change feed.
pub fn feed_entry_prefix(uuid: &str) -> Vec<u8> {
    format!("mchg/{uuid}/").into_bytes()
}

/// The feed entry of the command at `index`, `position` in its entry's batch.
pub fn feed_entry_key(uuid: &str, index: u64, position: u32) -> Vec<u8> {
    let mut key = feed_entry_prefix(uuid);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// What a write of `key` can change in the agents' desired state (`model::desired`): the
/// machines, applications, units and relations of one model, or, for a controller-config key,
/// every model's (the agents' heartbeat interval). Everything else (the model record with its
/// config, status history, log records, agent report numbers, migration records) changes
/// nothing an agent is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredInput<'k> {
    /// A record of model `uuid` the desired state is computed from.
    Model(&'k str),
    /// A controller-config value.
    AllModels,
}

/// See [`DesiredInput`]; `None` for a key no desired state depends on.
pub fn desired_input(key: &[u8]) -> Option<DesiredInput<'_>> {
    if key.starts_with(CONFIG_PREFIX) {
        return Some(DesiredInput::AllModels);
    }
    let (uuid, rest) = model_and_rest(key)?;
    [&b"machine/"[..], b"app/", b"unit/", b"rel/"]
        .iter()
        .any(|kind| rest.starts_with(kind))
        .then_some(DesiredInput::Model(uuid))
}

/// The model whose change feed records a write of `key`: every key under `m/<uuid>/` except the
/// model's log (`m/<uuid>/log/`, transferred after SUCCESS). These are also the keys the model
/// digest covers.
pub fn fed_model(key: &[u8]) -> Option<&str> {
    let (uuid, rest) = model_and_rest(key)?;
    (!rest.starts_with(b"log/")).then_some(uuid)
}

/// `m/<uuid>/<rest>` split into the uuid and `rest`; `None` for any other key.
fn model_and_rest(key: &[u8]) -> Option<(&str, &[u8])> {
    let rest = key.strip_prefix(b"m/")?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    let uuid = std::str::from_utf8(&rest[..slash]).ok()?;
    Some((uuid, &rest[slash + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_inputs_are_the_records_agents_are_sent_and_the_controller_config() {
        let uuid = "2b6e-model";
        for key in [
            machine_key(uuid, 3),
            application_key(uuid, "web"),
            unit_key(uuid, "web", 7),
            relation_key(uuid, 1),
        ] {
            assert_eq!(
                desired_input(&key),
                Some(DesiredInput::Model(uuid)),
                "{key:?}"
            );
        }
        assert_eq!(
            desired_input(&config_key("agent-heartbeat-interval")),
            Some(DesiredInput::AllModels)
        );
        for key in [
            model_record_key(uuid),
            history_key(uuid, "unit-web-0"),
            log_key(uuid, 9),
            agent_seq_key(uuid, 3),
            migration_key(uuid, 1),
            redirect_key(uuid),
            feed_entry_key(uuid, 5, 0),
            user_key("admin"),
            model_name_key("admin", "shop"),
        ] {
            assert_eq!(desired_input(&key), None, "{key:?}");
        }
    }
}
