//! Applying committed commands to the replicated state, shared by every backend: an
//! `ApplyBatch` reads through to the backend, keeps its own writes in an overlay (so later
//! commands in the batch see earlier ones), and yields one `WriteSet` to commit atomically.
//! Deterministic: the same state and commands give the same writes on every node.

use std::collections::BTreeMap;

use prost::Message;
use starling_proto::command::{self as cmd, Command, CommandResult};
use starling_proto::migration::FeedPosition;
use starling_proto::raft as pb;

use crate::feed;
use crate::keys;
use crate::model::migration::MigrationError;
use crate::model::{controller_config, ErrorKind, ModelError};
use crate::staging::{StagedFiles, StagingEvent};
use crate::state::{KeyValues, Overlay, StateRead, WriteSet};
use crate::StorageError;

mod authority;
mod models;

/// Bounds on what applying keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Most idempotency records kept; the oldest (by log index) are evicted beyond it.
    pub request_records_max: u64,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            request_records_max: 100_000,
        }
    }
}

/// A successful result.
pub fn ok_result() -> CommandResult {
    ok_result_with(cmd::Ok::default())
}

/// A successful result carrying what the command created.
pub fn ok_result_with(ok: cmd::Ok) -> CommandResult {
    CommandResult {
        result: Some(cmd::command_result::Result::Ok(ok)),
        ..Default::default()
    }
}

/// The status code a broken model rule is reported with.
pub fn error_code(error: &ModelError) -> cmd::command_error::Code {
    use cmd::command_error::Code;
    match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// A refused command's result for a broken model rule. A refusal by a migration's lock, by
/// an import that is not active yet, or of a lock because a machine's agent has not validated
/// yet is marked transient (not kept as the request's result); a refusal because the model
/// migrated away is marked `migrated` (the client may send the request to the target).
pub fn model_error_result(error: &ModelError) -> CommandResult {
    let mut result = error_result(error_code(error), error.to_string());
    if let Some(cmd::command_result::Result::Error(e)) = result.result.as_mut() {
        match error {
            ModelError::ModelLocked { migration_id, .. } => {
                e.transient = true;
                e.locked_by = migration_id.clone();
            }
            ModelError::ModelImporting { .. } => e.transient = true,
            ModelError::ModelMigrated { .. } => e.migrated = true,
            // A machine added since the master last looked: it validates, then the lock is
            // proposed again under a new request id.
            ModelError::Migration(MigrationError::AgentsNotValidated { .. }) => e.transient = true,
            _ => {}
        }
    }
    result
}

/// Whether `result` is a passing refusal (`CommandError.transient`).
pub fn is_transient(result: &CommandResult) -> bool {
    matches!(&result.result, Some(cmd::command_result::Result::Error(e)) if e.transient)
}

/// A refused command's result.
pub fn error_result(code: cmd::command_error::Code, message: impl Into<String>) -> CommandResult {
    CommandResult {
        result: Some(cmd::command_result::Result::Error(cmd::CommandError {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One batch of committed entries being applied over a backend.
pub struct ApplyBatch<'r, R: StateRead + ?Sized> {
    overlay: Overlay<'r, R>,
    limits: ApplyLimits,
    staged: Option<&'r dyn StagedFiles>,
    events: Vec<StagingEvent>,
}

impl<'r, R: StateRead + ?Sized> ApplyBatch<'r, R> {
    /// Starts a batch over `base`.
    pub fn new(base: &'r R, limits: ApplyLimits) -> Self {
        ApplyBatch {
            overlay: Overlay::new(base),
            limits,
            staged: None,
            events: Vec::new(),
        }
    }

    /// Reads the files of bulk imports from `staged`. Without it, applying such an import is a
    /// storage failure.
    pub fn with_staged_files(mut self, staged: &'r dyn StagedFiles) -> Self {
        self.staged = Some(staged);
        self
    }

    /// What the batch did to imports, for the staging area once the batch is durable.
    pub fn staging_events(&self) -> &[StagingEvent] {
        &self.events
    }

    /// Applies one command carried by the log entry at `log_index`. A command whose request id
    /// was already applied returns the first result and changes nothing.
    pub fn apply_command(
        &mut self,
        log_index: u64,
        command: &Command,
    ) -> Result<CommandResult, StorageError> {
        self.apply_command_at(log_index, 0, command)
    }

    /// Applies the commands of a batch carried by the entry at `log_index`, in order, each exactly
    /// as if it were its own entry (its own idempotency record; a refused one leaves the others
    /// applied). The result is `ok` with one result per command in `batch_results`.
    pub fn apply_command_batch(
        &mut self,
        log_index: u64,
        batch: &cmd::CommandBatch,
    ) -> Result<CommandResult, StorageError> {
        let mut results = Vec::with_capacity(batch.commands.len());
        for (position, command) in batch.commands.iter().enumerate() {
            let position = u32::try_from(position).expect("a batch holds under 2^32 commands");
            results.push(self.apply_command_at(log_index, position, command)?);
        }
        Ok(CommandResult {
            batch_results: results,
            ..ok_result()
        })
    }

    /// `position` is the command's place in its entry's batch (0 for a lone command).
    fn apply_command_at(
        &mut self,
        log_index: u64,
        position: u32,
        command: &Command,
    ) -> Result<CommandResult, StorageError> {
        let request_id = command.request_id.as_str();
        if !request_id.is_empty() {
            let key = keys::request_key(request_id);
            if let Some(bytes) = self.get(&key)? {
                return CommandResult::decode(bytes.as_slice())
                    .map_err(|e| StorageError::corrupt("state", &key, e));
            }
        }
        let result = self.execute(log_index, position, command)?;
        // A passing refusal (a migration's fence, an import not active yet) is not the
        // request's result: the same request may apply later, here after an abort or on the
        // target after SUCCESS.
        if !request_id.is_empty() && !is_transient(&result) {
            let mut index_key = keys::request_index_key(log_index);
            if position > 0 {
                index_key.extend_from_slice(&position.to_be_bytes());
            }
            self.record_request(index_key, request_id, result.encode_to_vec())?;
        }
        Ok(result)
    }

    /// Records the log id of the last entry of the batch.
    pub fn set_last_applied(&mut self, log_id: &pb::LogId) {
        self.put(keys::LAST_APPLIED.to_vec(), log_id.encode_to_vec());
    }

    /// Records a membership carried by an entry of the batch.
    pub fn set_last_membership(&mut self, membership: &pb::StoredMembership) {
        self.put(keys::LAST_MEMBERSHIP.to_vec(), membership.encode_to_vec());
    }

    /// The writes to commit as one atomic batch.
    pub fn into_writes(self) -> WriteSet {
        self.overlay.into_writes()
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.put(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.overlay.delete(key);
    }

    fn execute(
        &mut self,
        log_index: u64,
        position: u32,
        command: &Command,
    ) -> Result<CommandResult, StorageError> {
        use cmd::command::Op;
        use cmd::command_error::Code;
        if let Err(refusal) = authority::check(&self.overlay, command)? {
            return Ok(model_error_result(&refusal));
        }
        match &command.op {
            Some(Op::SetControllerConfig(set)) => {
                // Sorted, so every node reports the same first error.
                let values: BTreeMap<String, String> = set
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                match controller_config::check_update(&values) {
                    Ok(writes) => {
                        for write in writes {
                            let key = keys::config_key(&write.key);
                            match write.value {
                                Some(value) => self.put(key, value.into_bytes()),
                                None => self.delete(key),
                            }
                        }
                        Ok(ok_result())
                    }
                    Err(e) => Ok(error_result(Code::InvalidArgument, e.to_string())),
                }
            }
            Some(op) => {
                // Each model command runs in its own overlay: a refusal leaves the batch as it was.
                let at = FeedPosition {
                    index: log_index,
                    position,
                };
                let context = models::ApplyContext {
                    log_index,
                    staged: self.staged,
                };
                let applied = models::apply_model_op(&self.overlay, at, command, op, &context)?;
                // A migrating model's feed records what the command changed, in the same write
                // set (old values read before the command's writes land).
                let fed = feed::record_changes(
                    &self.overlay,
                    at,
                    command,
                    &applied.result,
                    &applied.writes,
                )?;
                self.overlay.extend(applied.writes);
                self.overlay.extend(fed);
                self.events.extend(applied.events);
                // Requests a migrating model's source applied, carried by its feed: this
                // controller answers their retries from its cache instead of applying them.
                for (sub, (request_id, result)) in applied.requests.into_iter().enumerate() {
                    if self.get(&keys::request_key(&request_id))?.is_some() {
                        continue;
                    }
                    let mut index_key = keys::request_index_key(log_index);
                    index_key.extend_from_slice(&position.to_be_bytes());
                    let sub = u32::try_from(sub).expect("under 2^32 requests per command") + 1;
                    index_key.extend_from_slice(&sub.to_be_bytes());
                    self.record_request(index_key, &request_id, result)?;
                }
                Ok(applied.result)
            }
            None => Ok(error_result(
                Code::InvalidArgument,
                "command has no operation (written by a newer version?)",
            )),
        }
    }

    /// Keeps `result` (encoded) as request `request_id`'s, indexed by `index_key`: the entry's
    /// log index, then for a batch's later commands their position, then for requests a feed
    /// carried their place in it, so the keys stay unique and in apply order (oldest evicted
    /// first).
    fn record_request(
        &mut self,
        index_key: Vec<u8>,
        request_id: &str,
        result: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.put(keys::request_key(request_id), result);
        self.put(index_key, request_id.as_bytes().to_vec());
        let mut count = match self.get(keys::REQUEST_RECORDS)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                StorageError::corrupt("state", keys::REQUEST_RECORDS, "not a be u64")
            })?),
            None => 0,
        } + 1;
        if count > self.limits.request_records_max {
            let excess =
                usize::try_from(count - self.limits.request_records_max).unwrap_or(usize::MAX);
            for (index_key, old_id) in self.scan_prefix(keys::REQUEST_INDEX_PREFIX, excess)? {
                self.delete(keys::join(keys::REQUEST_PREFIX, &old_id));
                self.delete(index_key);
                count -= 1;
            }
        }
        self.put(keys::REQUEST_RECORDS.to_vec(), count.to_be_bytes().to_vec());
        Ok(())
    }
}

impl<R: StateRead + ?Sized> StateRead for ApplyBatch<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.overlay.get(key)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StorageError> {
        self.overlay.scan_prefix_from(prefix, start, limit)
    }

    fn scan_prefix_last(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, StorageError> {
        self.overlay.scan_prefix_last(prefix, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;
    use crate::state::read_stored_config;
    use crate::StateBackend;
    use starling_proto::command::SetControllerConfig;

    fn set(request_id: &str, values: &[(&str, &str)]) -> Command {
        Command {
            request_id: request_id.into(),
            op: Some(cmd::command::Op::SetControllerConfig(SetControllerConfig {
                values: values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
            ..Default::default()
        }
    }

    fn apply(
        store: &MemStore,
        limits: ApplyLimits,
        index: u64,
        command: &Command,
    ) -> CommandResult {
        let mut batch = ApplyBatch::new(store, limits);
        let result = batch.apply_command(index, command).expect("applies");
        store.state_commit(batch.into_writes()).expect("commits");
        result
    }

    fn is_ok(result: &CommandResult) -> bool {
        matches!(result.result, Some(cmd::command_result::Result::Ok(_)))
    }

    #[test]
    fn invalid_update_changes_nothing() {
        let store = MemStore::new();
        let result = apply(
            &store,
            ApplyLimits::default(),
            1,
            &set("", &[("backups-to-keep", "3"), ("nope", "1")]),
        );
        match result.result {
            Some(cmd::command_result::Result::Error(e)) => {
                assert_eq!(e.code, cmd::command_error::Code::InvalidArgument as i32);
                assert!(e.message.contains("unknown controller-config key \"nope\""));
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(read_stored_config(&store).expect("reads").is_empty());
    }

    #[test]
    fn repeated_request_id_returns_first_result_and_changes_nothing() {
        let store = MemStore::new();
        let limits = ApplyLimits::default();
        assert!(is_ok(&apply(
            &store,
            limits,
            1,
            &set("r1", &[("custom.a", "1")])
        )));
        // A different payload under the same id is not applied.
        assert!(is_ok(&apply(
            &store,
            limits,
            2,
            &set("r1", &[("custom.a", "2")])
        )));
        assert_eq!(read_stored_config(&store).expect("reads")["custom.a"], "1");
        // The refusal of a bad command is remembered too.
        let bad = apply(&store, limits, 3, &set("r2", &[("x", "1")]));
        assert!(!is_ok(&bad));
        assert_eq!(
            apply(&store, limits, 4, &set("r2", &[("custom.b", "1")])),
            bad
        );
        assert!(!read_stored_config(&store)
            .expect("reads")
            .contains_key("custom.b"));
        // No request id: applied every time.
        assert!(is_ok(&apply(
            &store,
            limits,
            5,
            &set("", &[("custom.a", "3")])
        )));
        assert!(is_ok(&apply(
            &store,
            limits,
            6,
            &set("", &[("custom.a", "4")])
        )));
        assert_eq!(read_stored_config(&store).expect("reads")["custom.a"], "4");
    }

    #[test]
    fn later_commands_in_a_batch_see_earlier_ones() {
        let store = MemStore::new();
        let mut batch = ApplyBatch::new(&store, ApplyLimits::default());
        let first = batch
            .apply_command(1, &set("r", &[("custom.a", "1")]))
            .expect("applies");
        let second = batch
            .apply_command(2, &set("r", &[("custom.a", "2")]))
            .expect("applies");
        assert_eq!(first, second);
        store.state_commit(batch.into_writes()).expect("commits");
        assert_eq!(read_stored_config(&store).expect("reads")["custom.a"], "1");
    }

    #[test]
    fn idempotency_records_are_bounded_oldest_first() {
        let store = MemStore::new();
        let limits = ApplyLimits {
            request_records_max: 3,
        };
        // Half in single batches, half in one batch, to exercise the overlay scan.
        for index in 1..=4 {
            apply(&store, limits, index, &set(&format!("r{index}"), &[]));
        }
        let mut batch = ApplyBatch::new(&store, limits);
        for index in 5..=8 {
            batch
                .apply_command(index, &set(&format!("r{index}"), &[]))
                .expect("applies");
        }
        store.state_commit(batch.into_writes()).expect("commits");
        let ids: Vec<String> = store
            .scan_prefix(keys::REQUEST_INDEX_PREFIX, usize::MAX)
            .expect("scans")
            .into_iter()
            .map(|(_, id)| String::from_utf8(id).expect("utf-8"))
            .collect();
        assert_eq!(ids, ["r6", "r7", "r8"]);
        let records = store
            .scan_prefix(keys::REQUEST_PREFIX, usize::MAX)
            .expect("scans");
        assert_eq!(records.len(), 3);
        assert_eq!(
            store.get(keys::REQUEST_RECORDS).expect("reads"),
            Some(3u64.to_be_bytes().to_vec())
        );
        // An evicted id is applied again (the bound is the documented trade-off).
        assert!(store
            .get(&keys::request_key("r1"))
            .expect("reads")
            .is_none());
    }

    fn batch_of(commands: Vec<Command>) -> cmd::CommandBatch {
        cmd::CommandBatch { commands }
    }

    #[test]
    fn a_batch_applies_each_command_in_order_as_if_alone() {
        let store = MemStore::new();
        let limits = ApplyLimits::default();
        assert!(is_ok(&apply(
            &store,
            limits,
            1,
            &set("r0", &[("custom.a", "0")])
        )));
        let mut batch = ApplyBatch::new(&store, limits);
        let result = batch
            .apply_command_batch(
                2,
                &batch_of(vec![
                    set("r1", &[("custom.a", "1")]),
                    // Refused: the others still apply.
                    set("r2", &[("nope", "1")]),
                    // Already applied at index 1: its first result, no change.
                    set("r0", &[("custom.a", "x")]),
                    // Sees the writes of the commands before it.
                    set("", &[("custom.b", "2")]),
                    set("r3", &[("custom.a", "3")]),
                ]),
            )
            .expect("applies");
        store.state_commit(batch.into_writes()).expect("commits");
        assert!(is_ok(&result));
        let results = &result.batch_results;
        assert_eq!(results.len(), 5);
        assert!(is_ok(&results[0]));
        assert!(!is_ok(&results[1]));
        assert!(is_ok(&results[2]) && is_ok(&results[3]) && is_ok(&results[4]));
        let config = read_stored_config(&store).expect("reads");
        assert_eq!(config["custom.a"], "3");
        assert_eq!(config["custom.b"], "2");
        assert!(!config.contains_key("nope"));
        // Each inner request id has its own record: retried alone, each answers its first result.
        assert_eq!(
            apply(&store, limits, 3, &set("r2", &[("custom.c", "1")])),
            results[1]
        );
        assert!(is_ok(&apply(
            &store,
            limits,
            4,
            &set("r1", &[("custom.a", "9")])
        )));
        assert_eq!(read_stored_config(&store).expect("reads")["custom.a"], "3");
        assert!(!read_stored_config(&store)
            .expect("reads")
            .contains_key("custom.c"));
    }

    #[test]
    fn batched_idempotency_records_are_bounded_oldest_first() {
        let store = MemStore::new();
        let limits = ApplyLimits {
            request_records_max: 3,
        };
        apply(&store, limits, 1, &set("a", &[]));
        for (index, ids) in [(2, ["b", "c"]), (3, ["d", "e"])] {
            let mut batch = ApplyBatch::new(&store, limits);
            let commands = ids.iter().map(|id| set(id, &[])).collect();
            batch
                .apply_command_batch(index, &batch_of(commands))
                .expect("applies");
            store.state_commit(batch.into_writes()).expect("commits");
        }
        let ids: Vec<String> = store
            .scan_prefix(keys::REQUEST_INDEX_PREFIX, usize::MAX)
            .expect("scans")
            .into_iter()
            .map(|(_, id)| String::from_utf8(id).expect("utf-8"))
            .collect();
        assert_eq!(ids, ["c", "d", "e"]);
        assert_eq!(
            store
                .scan_prefix(keys::REQUEST_PREFIX, usize::MAX)
                .expect("scans")
                .len(),
            3
        );
    }
}
