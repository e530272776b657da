//! Applying the migration commands. Source side: the record's life (start, transitions with
//! their model effects, progress, abort requests) and REAP. Target side: import, activate, drop
//! and the log transfer. Every decision is `model::migration`'s; this only reads and writes.

use prost::Message;
use starling_proto::command as cmd;
use starling_proto::migration as pb;
use starling_proto::model::{Life, ModelDescription};

use super::{Outcome, Refusal, Tx};
use crate::feed;
use crate::keys;
use crate::migration::{self as stored, record_id};
use crate::model::digest::ModelDigest;
use crate::model::migration::DESCRIPTION_BYTES_MAX;
use crate::model::migration::{
    self as rules, AgentReport, CopyDigests, ImportDecision, MigrationError, MigrationId,
    MigrationRecord, ModelEffect, Phase, Progress, TargetActivate, TargetController, TargetDrop,
    TargetImport, TargetImportState, TargetModelState,
};
use crate::model::{names, ModelError};
use crate::records::{self, BLOB_RANGE_BYTES_MAX};
use crate::staging::StagingEvent;
use crate::state::StateRead;
use crate::{export, StorageError};
use starling_proto::limits::STAGED_FILE_BYTES_MAX;

/// Most files one bulk import names (its description and its charms).
const STAGED_FILES_MAX: usize = 1000;

fn parse_id(id: &str) -> Result<MigrationId, Refusal> {
    Ok(MigrationId::parse(id).map_err(ModelError::from)?)
}

fn migration_error(e: MigrationError) -> Refusal {
    Refusal::Rule(e.into())
}

impl From<MigrationError> for Refusal {
    fn from(e: MigrationError) -> Self {
        migration_error(e)
    }
}

impl<R: StateRead + ?Sized> Tx<'_, '_, R> {
    fn migration(&self, id: &MigrationId) -> Result<pb::MigrationRecord, Refusal> {
        stored::require_migration(&self.state, id)?.map_err(migration_error)
    }

    fn store_migration(&mut self, record: &pb::MigrationRecord) {
        self.put(
            keys::migration_key(&record.model_uuid, record.attempt),
            record,
        );
    }

    /// Deletes every record of model `uuid` and its name index entry (if it still names it).
    fn delete_model_records(&mut self, uuid: &str) -> Result<(), StorageError> {
        self.delete_model_records_up_to(uuid, usize::MAX)?;
        Ok(())
    }

    /// Deletes at most `limit` of model `uuid`'s records, the last ones in key order (and its
    /// name while its model record is still there, which every chunk looks at first); true when
    /// some remain.
    fn delete_model_records_up_to(
        &mut self,
        uuid: &str,
        limit: usize,
    ) -> Result<bool, StorageError> {
        if let Some(model) = records::read_model(&self.state, uuid)? {
            let name_key = keys::model_name_key(&model.owner, &model.name);
            if self.state.get(&name_key)?.as_deref() == Some(uuid.as_bytes()) {
                self.state.delete(name_key);
            }
        }
        // From the end: see `StateRead::scan_prefix_last`.
        let mut found = self
            .state
            .scan_prefix_last(&keys::model_prefix(uuid), limit.saturating_add(1))?;
        let more = found.len() > limit;
        found.truncate(limit);
        for (key, _) in found {
            self.state.delete(key);
        }
        Ok(more)
    }

    pub(super) fn start_migration(&mut self, start: &cmd::StartMigration) -> Outcome {
        let model = self.model(&start.model_uuid)?;
        if model.life != Life::Alive as i32 {
            return Err(ModelError::invalid(format!(
                "model \"{}\" is not alive; only an alive model can migrate",
                model.name
            ))
            .into());
        }
        let target = start
            .target
            .clone()
            .ok_or_else(|| ModelError::invalid("no target controller given"))?;
        if target.name.is_empty() || target.controller_uuid.is_empty() {
            return Err(
                ModelError::invalid("the target controller needs a name and a uuid").into(),
            );
        }
        if target.endpoints.is_empty() {
            return Err(ModelError::invalid("the target controller has no endpoints").into());
        }
        let migrations = stored::read_model_migrations(&self.state, &model.uuid)?;
        if let Some(running) = migrations.iter().find(|m| !stored::is_terminal(m)) {
            return Err(MigrationError::AlreadyMigrating {
                model: model.name.clone(),
                migration_id: record_id(running).to_string(),
                phase: Phase::parse(&running.phase).unwrap_or(Phase::Precheck),
            }
            .into());
        }
        // Attempts grow across controllers: a model that came here by migration continues the
        // numbering of the attempt that brought it, so ids are never reused.
        let mut attempt = migrations.last().map_or(0, |m| m.attempt);
        if let Some(by) = stored::read_activated_by(&self.state, &model.uuid)? {
            if let Ok(by) = MigrationId::parse(&by) {
                attempt = attempt.max(by.attempt);
            }
        }
        let id = MigrationId::new(model.uuid.clone(), attempt + 1);
        let mut logic = MigrationRecord::new(
            id.clone(),
            TargetController {
                controller_uuid: target.controller_uuid.clone(),
                name: target.name.clone(),
                endpoints: target.endpoints.clone(),
                ca_fingerprint: target.ca_fingerprint.clone(),
            },
            self.caller,
            model.ownership_epoch,
            self.now_ms,
        );
        // From here on the model's changes are recorded, with their request ids, for the copy
        // the target will import.
        logic.feed_from_index = self.at.index;
        self.put(
            keys::feed_key(&model.uuid),
            &feed::new_feed(&id.to_string(), self.at.index),
        );
        let base = pb::MigrationRecord {
            target: Some(target),
            model_name: model.name.clone(),
            model_owner: model.owner.clone(),
            source_secret: start.source_secret.clone(),
            ..Default::default()
        };
        self.store_migration(&stored::store_logic(&base, &logic));
        Ok(cmd::Ok {
            migration_id: id.to_string(),
            ..Default::default()
        })
    }

    pub(super) fn migration_transition(&mut self, change: &cmd::MigrationTransition) -> Outcome {
        let id = parse_id(&change.migration_id)?;
        let record = self.migration(&id)?;
        let to = Phase::parse(&change.to)
            .ok_or_else(|| ModelError::invalid(format!("unknown phase {:?}", change.to)))?;
        let mut logic = stored::to_logic(&record)?;
        let from = logic.phase;
        if to == Phase::Success && !change.target_digest.is_empty() {
            // The target's digest at the lock, recorded in the same write as SUCCESS (which
            // needs it equal to the source's).
            logic = rules::apply_progress(
                &logic,
                &Progress::TargetDigest(change.target_digest.clone()),
            )
            .map_err(migration_error)?;
        }
        let mut next = if crate::planted::armed("abort-after-success")
            && from == Phase::Success
            && to == Phase::Abort
        {
            // Planted bug: let the source take back a transfer it committed.
            let mut next = logic.clone();
            next.phase = Phase::Abort;
            next.phase_since_unix_ms = self.now_ms;
            next.aborted_from = Some(from);
            next.abort_reason = Some(change.reason.clone());
            next
        } else {
            rules::apply_transition(&logic, to, self.now_ms, &change.reason)
                .map_err(migration_error)?
        };
        let uuid = id.model_uuid.as_str();
        match rules::model_effect(from, to) {
            ModelEffect::Nothing => {}
            ModelEffect::Lock => {
                // The model must still be there and unlocked (`model()` refuses otherwise), every
                // alive machine's agent validated, and the feed recording.
                self.model(uuid)?;
                let alive = records::read_records::<starling_proto::model::Machine>(
                    &self.state,
                    &keys::machine_prefix(uuid),
                )?
                .into_iter()
                .filter(|m| m.life == Life::Alive as i32)
                .map(|m| m.id)
                .collect();
                rules::lock_check(&logic, &alive).map_err(migration_error)?;
                let feed = feed::read_feed(&self.state, uuid)?.ok_or_else(|| {
                    ModelError::invalid(format!(
                        "migration {id} cannot lock model {uuid}: its change feed is gone"
                    ))
                })?;
                let base = logic
                    .copy
                    .as_ref()
                    .and_then(|c| ModelDigest::from_hex(&c.base_digest))
                    .ok_or_else(|| {
                        StorageError::corrupt(
                            "state",
                            &keys::migration_key(uuid, id.attempt),
                            "the base digest is not a digest",
                        )
                    })?;
                // The digest at the lock index: the model at the feed's start plus every change
                // since, with no read of the model itself.
                let at_lock = base.plus(feed::feed_delta(&feed, uuid)?);
                next.lock_index = Some(self.at.index);
                next.source_digest = Some(at_lock.to_hex());
                self.state
                    .put(keys::migration_lock_key(uuid), id.to_string().into_bytes());
            }
            ModelEffect::Redirect => {
                let target = record.target.clone().unwrap_or_default();
                let machine_credentials = records::read_records::<starling_proto::model::Machine>(
                    &self.state,
                    &keys::machine_prefix(uuid),
                )?
                .into_iter()
                .map(|m| (m.id, m.credential_sha256))
                .collect();
                let redirect = pb::Redirect {
                    machine_credentials,
                    migration_id: id.to_string(),
                    model_uuid: uuid.to_owned(),
                    model_name: record.model_name.clone(),
                    model_owner: record.model_owner.clone(),
                    controller_uuid: target.controller_uuid,
                    controller_name: target.name,
                    endpoints: target.endpoints,
                    ca_cert: target.ca_cert,
                    redirected_unix_ms: self.now_ms,
                };
                self.put(keys::redirect_key(uuid), &redirect);
            }
            ModelEffect::StopFeed => {
                // Its entries are trimmed in bounded steps afterwards (`TrimFeed`).
                self.stop_feed(&id)?;
            }
            ModelEffect::Unlock => {
                if stored::read_lock(&self.state, uuid)?.as_deref() == Some(&id.to_string()) {
                    self.state.delete(keys::migration_lock_key(uuid));
                }
                self.stop_feed(&id)?;
                let (deletes, _) = feed::trim(&self.state, uuid, None, feed::TRIM_ENTRIES_MAX)?;
                self.state.extend(deletes);
            }
        }
        let mut updated = stored::store_logic(&record, &next);
        if to.is_terminal() {
            // The target's superuser token is only needed while the master may call it.
            if let Some(target) = updated.target.as_mut() {
                target.token.clear();
            }
        }
        self.store_migration(&updated);
        Ok(cmd::Ok::default())
    }

    /// Stops model `id.model_uuid`'s feed if it belongs to migration `id`.
    fn stop_feed(&mut self, id: &MigrationId) -> Result<(), StorageError> {
        let uuid = id.model_uuid.as_str();
        if let Some(feed) = feed::read_feed(&self.state, uuid)? {
            if feed.migration_id == id.to_string() {
                self.state.delete(keys::feed_key(uuid));
            }
        }
        Ok(())
    }

    pub(super) fn trim_feed(&mut self, trim: &cmd::TrimFeed) -> Outcome {
        let id = parse_id(&trim.migration_id)?;
        let record = self.migration(&id)?;
        let phase = Phase::parse(&record.phase).unwrap_or(Phase::Precheck);
        if !(phase.is_aborting() || phase.is_committed()) {
            return Err(MigrationError::WrongPhase {
                migration_id: id.to_string(),
                phase,
                what: "trimming the whole feed",
                expected: "ABORT or after SUCCESS",
            }
            .into());
        }
        let (deletes, more) =
            feed::trim(&self.state, &id.model_uuid, None, feed::TRIM_ENTRIES_MAX)?;
        self.state.extend(deletes);
        Ok(cmd::Ok {
            more,
            ..Default::default()
        })
    }

    pub(super) fn migration_progress(&mut self, progress: &cmd::MigrationProgress) -> Outcome {
        use cmd::migration_progress::Fact;
        let id = parse_id(&progress.migration_id)?;
        let record = self.migration(&id)?;
        let fact = match progress
            .fact
            .as_ref()
            .ok_or_else(|| ModelError::invalid("no progress given"))?
        {
            Fact::AgentAcked(machine) => Progress::AgentAcked {
                machine: machine.clone(),
            },
            Fact::AgentValidated(validation) => Progress::AgentValidated {
                machine: validation.machine_id.clone(),
                report: if validation.ok {
                    AgentReport::Ok
                } else {
                    AgentReport::Failed {
                        reason: validation.reason.clone(),
                    }
                },
            },
            Fact::SourceDigest(digest) => Progress::SourceDigest(digest.clone()),
            Fact::TargetDigest(digest) => Progress::TargetDigest(digest.clone()),
            Fact::LogPosition(position) => Progress::LogPosition(*position),
            Fact::Copy(copy) => {
                for digest in [&copy.copy_digest, &copy.base_digest] {
                    if ModelDigest::from_hex(digest).is_none() {
                        return Err(ModelError::invalid(format!(
                            "{digest:?} is not a model digest (64 hex digits)"
                        ))
                        .into());
                    }
                }
                Progress::Copy(CopyDigests {
                    copy_digest: copy.copy_digest.clone(),
                    base_digest: copy.base_digest.clone(),
                })
            }
            Fact::FeedAcked(position) => Progress::FeedAcked(stored::feed_position(Some(position))),
        };
        if let Progress::FeedAcked(position) = &fact {
            // What the target applied is no longer needed here.
            let (deletes, _) = feed::trim(
                &self.state,
                &id.model_uuid,
                Some(&stored::stored_position(*position)),
                feed::TRIM_ENTRIES_MAX,
            )?;
            self.state.extend(deletes);
        }
        let next =
            rules::apply_progress(&stored::to_logic(&record)?, &fact).map_err(migration_error)?;
        self.store_migration(&stored::store_logic(&record, &next));
        Ok(cmd::Ok::default())
    }

    pub(super) fn request_migration_abort(
        &mut self,
        request: &cmd::RequestMigrationAbort,
    ) -> Outcome {
        let id = parse_id(&request.migration_id)?;
        let record = self.migration(&id)?;
        let reason = if request.reason.is_empty() {
            format!("requested by {}", self.caller)
        } else {
            request.reason.clone()
        };
        let next =
            rules::request_abort(&stored::to_logic(&record)?, &reason).map_err(migration_error)?;
        self.store_migration(&stored::store_logic(&record, &next));
        Ok(cmd::Ok::default())
    }

    pub(super) fn reap_model(&mut self, reap: &cmd::ReapModel) -> Outcome {
        let id = parse_id(&reap.migration_id)?;
        let record = self.migration(&id)?;
        if record.phase != Phase::Reap.as_str() {
            return Err(MigrationError::WrongPhase {
                migration_id: id.to_string(),
                phase: Phase::parse(&record.phase).unwrap_or(Phase::Precheck),
                what: "reaping the model",
                expected: "REAP",
            }
            .into());
        }
        let uuid = id.model_uuid.as_str();
        if stored::read_redirect(&self.state, uuid)?.is_none() {
            // Only a model that became a redirect at SUCCESS is ever reaped.
            return Err(ModelError::invalid(format!(
                "model {uuid} has no redirect; refusing to delete it"
            ))
            .into());
        }
        let limit = match reap.max_records {
            0 => usize::MAX,
            max => max as usize,
        };
        let more = self.delete_model_records_up_to(uuid, limit)?;
        if !more {
            self.state.delete(keys::migration_lock_key(uuid));
        }
        Ok(cmd::Ok {
            more,
            ..Default::default()
        })
    }

    /// What this controller holds for model `uuid`, as the target's rules see it.
    fn target_state(&self, uuid: &str) -> Result<TargetModelState, Refusal> {
        if let Some(import) = stored::read_import(&self.state, uuid)? {
            let migration_id = parse_id(&import.migration_id)?;
            return Ok(TargetModelState::Importing(TargetImport {
                migration_id,
                state: TargetImportState::Imported {
                    digest: import.digest,
                    position: stored::feed_position(import.position.as_ref()),
                    sealed_index: import.sealed_index,
                },
                last_activity_unix_ms: import.imported_unix_ms,
            }));
        }
        let activated_by = stored::read_activated_by(&self.state, uuid)?
            .and_then(|by| MigrationId::parse(&by).ok());
        if records::read_model(&self.state, uuid)?.is_some() {
            return Ok(TargetModelState::Active { activated_by });
        }
        Ok(match activated_by {
            Some(activated_by) => TargetModelState::Gone { activated_by },
            None => TargetModelState::Absent,
        })
    }

    fn read_description(&self, digest: &str) -> Result<(ModelDescription, u64), Refusal> {
        names::check_digest(digest)?;
        let blob =
            records::read_blob(&self.state, digest)?.ok_or_else(|| ModelError::BlobNotFound {
                digest: digest.to_owned(),
            })?;
        if blob.size > DESCRIPTION_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "the model description is {} bytes, at most {DESCRIPTION_BYTES_MAX} allowed",
                blob.size
            ))
            .into());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(blob.size).unwrap_or(0));
        while (bytes.len() as u64) < blob.size {
            let piece = records::read_blob_range(
                &self.state,
                &blob,
                bytes.len() as u64,
                BLOB_RANGE_BYTES_MAX,
            )?;
            if piece.is_empty() {
                return Err(
                    StorageError::corrupt("state", &keys::blob_key(digest), "blob short").into(),
                );
            }
            bytes.extend_from_slice(&piece);
        }
        let description = ModelDescription::decode(bytes.as_slice()).map_err(|e| {
            ModelError::invalid(format!("the staged model description does not decode: {e}"))
        })?;
        Ok((description, blob.size))
    }

    pub(super) fn import_model(&mut self, import: &cmd::ImportModel) -> Outcome {
        let id = parse_id(&import.migration_id)?;
        let uuid = id.model_uuid.clone();
        let target_state = self.target_state(&uuid)?;
        match rules::target_import_decision(&target_state, &id).map_err(migration_error)? {
            // A repeated Import: already done.
            ImportDecision::AlreadyImported => return Ok(cmd::Ok::default()),
            ImportDecision::ReplaceLeftover => {
                let TargetModelState::Importing(held) = target_state else {
                    unreachable!("a leftover to replace is an import")
                };
                self.delete_model_records(&uuid)?;
                self.state.delete(keys::import_key(&uuid));
                // Nothing will be imported from the older attempt's files any more.
                self.events.push(StagingEvent::Ended {
                    migration_id: held.migration_id.to_string(),
                });
            }
            ImportDecision::Import => {}
        }
        let (description, description_bytes) = if import.staged.is_empty() {
            // An entry of an earlier version: the description is a blob of the state.
            self.read_description(&import.description_digest)?
        } else {
            self.read_staged_description(&id, import)?
        };
        let model = description
            .model
            .as_ref()
            .ok_or_else(|| ModelError::invalid("the model description has no model record"))?;
        if model.uuid != uuid {
            return Err(ModelError::invalid(format!(
                "the description is of model {}, not of migration {id}'s model",
                model.uuid
            ))
            .into());
        }
        for digest in &description.charm_digests {
            if records::read_blob(&self.state, digest)?.is_some() {
                continue;
            }
            match import.staged.iter().find(|f| &f.digest == digest) {
                Some(file) => {
                    let bytes = self.staged_bytes(&id, file)?;
                    self.put_blob(digest, &bytes);
                }
                None => {
                    return Err(ModelError::BlobNotFound {
                        digest: digest.clone(),
                    }
                    .into())
                }
            }
        }
        let writes = export::import_model(&self.state, &description).map_err(|e| match e {
            export::ImportError::Rule(rule) => Refusal::Rule(rule),
            export::ImportError::Storage(storage) => Refusal::Storage(storage),
        })?;
        let record_count = writes.len() as u64;
        // The digest the target confirms is of the records it writes, not of the bytes it was
        // sent; it must be the copy's as the source read it.
        let mut digest = ModelDigest::EMPTY;
        for (key, value) in &writes {
            if let (Some(owner), Some(value)) = (keys::fed_model(key), value) {
                if owner == uuid {
                    digest.add_pair(key, value);
                }
            }
        }
        if !import.copy_digest.is_empty() && digest.to_hex() != import.copy_digest {
            return Err(ModelError::invalid(format!(
                "the imported copy has model digest {digest}, not the {} the source read",
                import.copy_digest
            ))
            .into());
        }
        self.state.extend(writes);
        let record = pb::ImportRecord {
            migration_id: id.to_string(),
            source: import.source.clone(),
            digest: digest.to_hex(),
            imported_unix_ms: self.now_ms,
            description_bytes,
            record_count,
            source_epoch: model.ownership_epoch,
            copy_digest: digest.to_hex(),
            position: Some(stored::stored_position(rules::FeedPosition::new(
                import.feed_from_index,
                0,
            ))),
            sealed_index: 0,
        };
        self.put(keys::import_key(&uuid), &record);
        if import.staged.is_empty() {
            // The staged description blob has served its purpose.
            for (key, _) in self.state.scan_prefix(
                &keys::blob_data_prefix(&import.description_digest),
                usize::MAX,
            )? {
                self.state.delete(key);
            }
            self.state
                .delete(keys::blob_key(&import.description_digest));
        } else {
            self.events.push(StagingEvent::Consumed {
                migration_id: id.to_string(),
                index: self.context.log_index,
                description_digest: import.description_digest.clone(),
            });
        }
        Ok(cmd::Ok::default())
    }

    /// The description of a bulk import, read from this node's staging area.
    fn read_staged_description(
        &self,
        id: &MigrationId,
        import: &cmd::ImportModel,
    ) -> Result<(ModelDescription, u64), Refusal> {
        if import.staged.len() > STAGED_FILES_MAX {
            return Err(ModelError::invalid(format!(
                "{} staged files named, at most {STAGED_FILES_MAX}",
                import.staged.len()
            ))
            .into());
        }
        for file in &import.staged {
            names::check_digest(&file.digest)?;
            if file.size == 0 || file.size > STAGED_FILE_BYTES_MAX {
                return Err(ModelError::invalid(format!(
                    "staged file {} has size {}, outside 1..={STAGED_FILE_BYTES_MAX}",
                    file.digest, file.size
                ))
                .into());
            }
        }
        let file = import
            .staged
            .iter()
            .find(|f| f.digest == import.description_digest)
            .ok_or_else(|| {
                ModelError::invalid(format!(
                    "the description {} is not among the staged files",
                    import.description_digest
                ))
            })?;
        if file.size > DESCRIPTION_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "the model description is {} bytes, at most {DESCRIPTION_BYTES_MAX} allowed",
                file.size
            ))
            .into());
        }
        let bytes = self.staged_bytes(id, file)?;
        let description = ModelDescription::decode(bytes.as_slice()).map_err(|e| {
            ModelError::invalid(format!("the staged model description does not decode: {e}"))
        })?;
        Ok((description, file.size))
    }

    /// A staged file's bytes: every node reads the same bytes (they hash to the name), or fails.
    fn staged_bytes(&self, id: &MigrationId, file: &pb::StagedFile) -> Result<Vec<u8>, Refusal> {
        let staged = self
            .context
            .staged
            .ok_or_else(|| StorageError::StagedFileMissing {
                migration_id: id.to_string(),
                digest: file.digest.clone(),
                why: "this node has no staging area".into(),
            })?;
        Ok(staged.read(&id.to_string(), &file.digest, file.size)?)
    }

    /// Applies a batch of the source's feed entries to this migration's import: every key change
    /// of the entries it does not hold yet (the model digest follows each from the value here),
    /// their request ids as this controller's idempotency records, and the new position; seals
    /// the import at the source's lock index when asked.
    pub(super) fn apply_model_changes(&mut self, changes: &cmd::ApplyModelChanges) -> Outcome {
        let id = parse_id(&changes.migration_id)?;
        let uuid = id.model_uuid.clone();
        let positions: Vec<rules::FeedPosition> = changes
            .changes
            .iter()
            .map(|c| stored::feed_position(c.at.as_ref()))
            .collect();
        let after = stored::feed_position(changes.after.as_ref());
        let plan = rules::target_changes_decision(
            &self.target_state(&uuid)?,
            &id,
            after,
            &positions,
            changes.seal_index,
        )
        .map_err(migration_error)?;
        let mut import = stored::read_import(&self.state, &uuid)?.expect("the decision found it");
        let mut digest = ModelDigest::from_hex(&import.digest).ok_or_else(|| {
            StorageError::corrupt(
                "state",
                &keys::import_key(&uuid),
                "the digest is not a digest",
            )
        })?;
        for entry in &changes.changes[plan.skip..] {
            for change in &entry.changes {
                if keys::fed_model(&change.key) != Some(uuid.as_str()) {
                    return Err(MigrationError::BadFeedBatch {
                        migration_id: id.to_string(),
                        reason: format!(
                            "it changes {}, which is not a key of model {uuid}",
                            String::from_utf8_lossy(&change.key)
                        ),
                    }
                    .into());
                }
                let old = self.state.get(&change.key)?;
                let new = (!change.deleted).then_some(change.value.as_slice());
                digest.change(&change.key, old.as_deref(), new);
                match new {
                    Some(value) => self.state.put(change.key.clone(), value.to_vec()),
                    None => self.state.delete(change.key.clone()),
                }
            }
            if let Some((request_id, result)) = feed::entry_request(entry) {
                self.requests.push((request_id.to_owned(), result.to_vec()));
            }
        }
        if let Some(last) = positions.last().filter(|_| plan.skip < positions.len()) {
            import.position = Some(stored::stored_position(*last));
        }
        if let Some(seal) = plan.seal {
            import.sealed_index = seal;
        }
        import.digest = digest.to_hex();
        self.put(keys::import_key(&uuid), &import);
        Ok(cmd::Ok::default())
    }

    pub(super) fn activate_model(&mut self, activate: &cmd::ActivateModel) -> Outcome {
        let id = parse_id(&activate.migration_id)?;
        let uuid = id.model_uuid.clone();
        let decision = match rules::target_activate_decision(&self.target_state(&uuid)?, &id) {
            // Planted bug: activate an import the source never sealed.
            Err(MigrationError::ImportNotSealed { .. })
                if crate::planted::armed("activate-before-decision") =>
            {
                TargetActivate::Activate
            }
            decision => decision.map_err(migration_error)?,
        };
        let Some(mut model) = records::read_model(&self.state, &uuid)? else {
            // Already activated by this migration, and the model has left since (destroyed or
            // migrated on): the repeat is acknowledged all the same, so a source that never
            // recorded the first answer leaves SUCCESS.
            return Ok(cmd::Ok::default());
        };
        if decision == TargetActivate::Activate {
            self.events.push(StagingEvent::Ended {
                migration_id: id.to_string(),
            });
            let import =
                stored::read_import(&self.state, &uuid)?.expect("target_state said importing");
            model.ownership_epoch = import.source_epoch + 1;
            self.put(keys::model_record_key(&uuid), &model);
            self.state.delete(keys::import_key(&uuid));
            self.state
                .put(keys::activated_key(&uuid), id.to_string().into_bytes());
            // The source's log follows; until it has ended, the model may not migrate on (the
            // records would land in a copy that is leaving, below positions already sent). The
            // source's contact stays with it, for the sweeper to ask about a transfer that
            // stopped without its end.
            self.put(
                keys::log_transfer_key(&uuid),
                &pb::LogTransferRecord {
                    migration_id: id.to_string(),
                    source: import.source.clone(),
                    activated_unix_ms: self.now_ms,
                    last_batch_unix_ms: 0,
                },
            );
            // A model migrated back here replaces the redirect it left behind.
            self.state.delete(keys::redirect_key(&uuid));
        }
        Ok(cmd::Ok {
            ownership_epoch: model.ownership_epoch,
            ..Default::default()
        })
    }

    pub(super) fn drop_import(&mut self, drop: &cmd::DropImport) -> Outcome {
        let id = parse_id(&drop.migration_id)?;
        let uuid = id.model_uuid.clone();
        let decision = rules::target_drop_decision(&self.target_state(&uuid)?, &id)
            .map_err(migration_error)?;
        let dropped = decision == TargetDrop::Drop;
        // Whatever the decision, nothing will be imported from this attempt's files any more.
        self.events.push(StagingEvent::Ended {
            migration_id: id.to_string(),
        });
        let mut more = false;
        if dropped {
            let limit = match drop.max_records {
                0 => usize::MAX,
                max => max as usize,
            };
            more = self.delete_model_records_up_to(&uuid, limit)?;
            if !more {
                self.state.delete(keys::import_key(&uuid));
            }
        }
        Ok(cmd::Ok {
            dropped,
            more,
            ..Default::default()
        })
    }

    pub(super) fn import_log(&mut self, import: &cmd::ImportLog) -> Outcome {
        let id = parse_id(&import.migration_id)?;
        let uuid = id.model_uuid.as_str();
        if stored::read_activated_by(&self.state, uuid)?.as_deref() != Some(&id.to_string()) {
            return Err(MigrationError::NoSuchImport {
                migration_id: id.to_string(),
                state: "the model is not active here through this migration".into(),
            }
            .into());
        }
        // Only an open transfer takes records: once it has ended (the source's last batch, or
        // the sweeper after the source moved past LOGTRANSFER) the model may be migrating on,
        // and a late batch would land in a copy that is leaving.
        let Some(mut transfer) = stored::read_log_transfer(&self.state, uuid)?
            .filter(|transfer| transfer.migration_id == id.to_string())
        else {
            return Err(MigrationError::LogTransferEnded {
                migration_id: id.to_string(),
            }
            .into());
        };
        let mut model =
            records::read_model(&self.state, uuid)?.ok_or_else(|| ModelError::ModelNotFound {
                model: uuid.to_owned(),
            })?;
        if import.records.len() > super::LOG_RECORDS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} log records given, at most {} per command",
                import.records.len(),
                super::LOG_RECORDS_PER_COMMAND_MAX
            ))
            .into());
        }
        let mut position = 0;
        for record in &import.records {
            if record.seq == 0 {
                return Err(
                    ModelError::invalid("a transferred log record has no sequence number").into(),
                );
            }
            let key = keys::log_key(uuid, record.seq);
            if self.state.get(&key)?.is_none() {
                self.put(key, record);
            }
            position = position.max(record.seq);
        }
        if position >= model.next_log_seq {
            model.next_log_seq = position + 1;
            self.put(keys::model_record_key(uuid), &model);
        }
        if import.complete {
            self.state.delete(keys::log_transfer_key(uuid));
        } else {
            transfer.last_batch_unix_ms = self.now_ms;
            self.put(keys::log_transfer_key(uuid), &transfer);
        }
        Ok(cmd::Ok {
            log_position: position,
            ..Default::default()
        })
    }

    /// Ends migration `id`'s inbound log transfer without the source's last batch (the
    /// sweeper's command): only while the transfer open for the model is this migration's.
    pub(super) fn end_log_transfer(&mut self, end: &cmd::EndLogTransfer) -> Outcome {
        let id = parse_id(&end.migration_id)?;
        let uuid = id.model_uuid.as_str();
        let open = stored::read_log_transfer(&self.state, uuid)?
            .is_some_and(|transfer| transfer.migration_id == id.to_string());
        if open {
            self.state.delete(keys::log_transfer_key(uuid));
        }
        Ok(cmd::Ok {
            ended: open,
            ..Default::default()
        })
    }
}
