//! Applying the model commands (models, machines, applications, units, relations, config,
//! status, the model log, blobs, users and access): read the records a command touches, ask
//! `storage::model`'s rules, write the changed records. Each command runs in its own overlay, so
//! a refusal writes nothing — except a `CommitBlob` whose bytes do not match its digest, which
//! discards the upload as it refuses.
//!
//! Authorization is the API layer's: it authenticates the caller and checks access
//! (`model::access`) before proposing. Applying only uses `caller` as the default model owner.

use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use starling_proto::command::{self as cmd, command::Op, Command, CommandResult};
use starling_proto::model::{
    Access, Application, Blob, BlobUpload, Life, LogRecord, Machine, Model, ModelUser,
    NodePresence, Relation, Status, StatusHistory, Unit, User,
};

use super::{model_error_result, ok_result_with};
use crate::keys;
use crate::model::agent::{self as agent_rules, Ownership};
use crate::model::deployment::{self, MODEL_LOG_MAX_RECORDS_DEFAULT, STATUS_HISTORY_SIZE_DEFAULT};
use crate::model::names::{self, Entity};
use crate::model::{access, charm, relation, ModelError};
use crate::records;
use crate::state::{read_effective_config, Overlay, StateRead, WriteSet};
use crate::StorageError;

mod migration;

/// Largest chunk of a blob upload.
pub const BLOB_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Largest blob (a charm archive).
pub const BLOB_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Most units one `Deploy` or `AddUnits` places, and most units one `RemoveUnits` names.
pub const UNITS_PER_COMMAND_MAX: usize = 1000;
/// Most records one `AppendLog` carries.
pub const LOG_RECORDS_PER_COMMAND_MAX: usize = 1000;
/// Largest model-log message.
pub const LOG_MESSAGE_BYTES_MAX: usize = 16 * 1024;
/// Largest status message.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 4096;
/// Most status reports one `AgentReport` carries.
pub const AGENT_REPORTS_PER_COMMAND_MAX: usize = 1000;
/// Most entries one `RenewPresence` carries.
pub const PRESENCE_ENTRIES_PER_COMMAND_MAX: usize = 100_000;

/// Why a model command did not succeed.
enum Refusal {
    /// A rule refused it; the command's writes are dropped.
    Rule(ModelError),
    /// A rule refused it, and the writes made so far stand (a discarded blob upload).
    RuleKeepingWrites(ModelError),
    /// Storage failed: fatal for the node.
    Storage(StorageError),
}

impl From<ModelError> for Refusal {
    fn from(e: ModelError) -> Self {
        Refusal::Rule(e)
    }
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        Refusal::Storage(e)
    }
}

type Outcome = Result<cmd::Ok, Refusal>;

/// Applies one model command over `base`: its result and the writes to keep.
pub(super) fn apply_model_op<R: StateRead + ?Sized>(
    base: &R,
    command: &Command,
    op: &Op,
) -> Result<(CommandResult, WriteSet), StorageError> {
    if let Some(applied) = crate::backup::apply_backup_op(base, command, op) {
        return applied;
    }
    let mut tx = Tx {
        state: Overlay::new(base),
        now_ms: command.proposed_unix_ms,
        caller: &command.caller,
    };
    let outcome = match op {
        Op::SetControllerConfig(_) => unreachable!("applied by ApplyBatch::execute"),
        Op::AddModel(add) => tx.add_model(add),
        Op::DestroyModel(destroy) => tx.destroy_model(destroy),
        Op::AddMachine(add) => tx.add_machine(add),
        Op::RemoveMachine(remove) => tx.remove_machine(remove),
        Op::Deploy(deploy) => tx.deploy(deploy),
        Op::AddUnits(add) => tx.add_units(add),
        Op::RemoveUnits(remove) => tx.remove_units_op(remove),
        Op::RemoveApplication(remove) => tx.remove_application(remove),
        Op::Integrate(integrate) => tx.integrate(integrate),
        Op::RemoveRelation(remove) => tx.remove_relation(remove),
        Op::SetApplicationConfig(set) => tx.set_application_config(set),
        Op::SetStatus(set) => tx.set_status(set),
        Op::AppendLog(append) => tx.append_log(append),
        Op::PutBlobChunk(put) => tx.put_blob_chunk(put),
        Op::CommitBlob(commit) => tx.commit_blob(commit),
        Op::AddUser(add) => tx.add_user(add),
        Op::SetModelAccess(set) => tx.set_model_access(set),
        Op::AgentReport(report) => tx.agent_report(report),
        Op::RenewPresence(renew) => tx.renew_presence(renew),
        Op::StartMigration(start) => tx.start_migration(start),
        Op::MigrationTransition(transition) => tx.migration_transition(transition),
        Op::MigrationProgress(progress) => tx.migration_progress(progress),
        Op::RequestMigrationAbort(request) => tx.request_migration_abort(request),
        Op::ReapModel(reap) => tx.reap_model(reap),
        Op::ImportModel(import) => tx.import_model(import),
        Op::ActivateModel(activate) => tx.activate_model(activate),
        Op::DropImport(drop) => tx.drop_import(drop),
        Op::ImportLog(import) => tx.import_log(import),
        Op::SetModelConfig(set) => tx.set_model_config(set),
        Op::CreateBackup(_) | Op::RestoreBackup(_) => {
            unreachable!("applied by backup::apply_backup_op")
        }
    };
    match outcome {
        Ok(ok) => Ok((ok_result_with(ok), tx.state.into_writes())),
        Err(Refusal::Rule(e)) => Ok((model_error_result(&e), WriteSet::new())),
        Err(Refusal::RuleKeepingWrites(e)) => Ok((model_error_result(&e), tx.state.into_writes())),
        Err(Refusal::Storage(e)) => Err(e),
    }
}

fn check_sha256_hex(what: &str, value: &str) -> Result<(), ModelError> {
    names::check_digest(value).map_err(|_| {
        ModelError::invalid(format!(
            "{what} must be a sha256 in 64 lowercase hex digits"
        ))
    })
}

/// One command's view and writes.
struct Tx<'r, 'c, R: StateRead + ?Sized> {
    state: Overlay<'r, R>,
    now_ms: i64,
    caller: &'c str,
}

impl<R: StateRead + ?Sized> Tx<'_, '_, R> {
    fn put(&mut self, key: Vec<u8>, record: &impl prost::Message) {
        self.state.put(key, record.encode_to_vec());
    }

    /// The model a command changes: refused when it is an import (invisible until activated),
    /// has migrated away (a redirect), or is locked by a migration (read-only).
    fn model(&self, uuid: &str) -> Result<Model, Refusal> {
        let not_found = || {
            Refusal::Rule(ModelError::ModelNotFound {
                model: uuid.to_owned(),
            })
        };
        if crate::migration::read_import(&self.state, uuid)?.is_some() {
            return Err(not_found());
        }
        if let Some(redirect) = crate::migration::read_redirect(&self.state, uuid)? {
            return Err(ModelError::ModelMigrated {
                model: redirect.model_name,
                controller: redirect.controller_name,
            }
            .into());
        }
        let model = records::read_model(&self.state, uuid)?.ok_or_else(not_found)?;
        if let Some(migration_id) = crate::migration::read_lock(&self.state, uuid)? {
            return Err(ModelError::ModelLocked {
                model: model.name,
                migration_id,
            }
            .into());
        }
        Ok(model)
    }

    fn application(&self, uuid: &str, name: &str) -> Result<Application, Refusal> {
        names::check_application_name(name)?;
        records::read_application(&self.state, uuid, name)?.ok_or_else(|| {
            Refusal::Rule(ModelError::ApplicationNotFound {
                application: name.to_owned(),
            })
        })
    }

    fn machine(&self, uuid: &str, id: &str) -> Result<(u64, Machine), Refusal> {
        let number = names::parse_machine_id(id)?;
        let machine = records::read_machine(&self.state, uuid, number)?.ok_or_else(|| {
            Refusal::Rule(ModelError::MachineNotFound {
                machine: id.to_owned(),
            })
        })?;
        Ok((number, machine))
    }

    fn config_number(&self, key: &str, default: u64) -> Result<u64, Refusal> {
        let config = read_effective_config(&self.state)?;
        Ok(config
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default))
    }

    fn add_model(&mut self, add: &cmd::AddModel) -> Outcome {
        names::check_uuid(&add.uuid)?;
        names::check_model_name(&add.name)?;
        let owner = if add.owner.is_empty() {
            self.caller
        } else {
            &add.owner
        };
        names::check_user_name(owner)?;
        if records::read_model(&self.state, &add.uuid)?.is_some() {
            return Err(ModelError::ModelUuidExists {
                uuid: add.uuid.clone(),
            }
            .into());
        }
        if records::read_model_uuid(&self.state, owner, &add.name)?.is_some() {
            return Err(ModelError::ModelExists {
                owner: owner.to_owned(),
                name: add.name.clone(),
            }
            .into());
        }
        let model = Model {
            uuid: add.uuid.clone(),
            name: add.name.clone(),
            owner: owner.to_owned(),
            cloud: add.cloud.clone(),
            region: add.region.clone(),
            life: Life::Alive as i32,
            status: Some(deployment::status("available", "", self.now_ms)),
            config: add.config.clone(),
            agent_version: add.agent_version.clone(),
            ownership_epoch: 0,
            // The owner is the model's first admin, as in Juju.
            users: vec![ModelUser {
                name: owner.to_owned(),
                access: Access::Admin as i32,
            }],
            created_unix_ms: self.now_ms,
            next_machine_id: 0,
            next_relation_id: 0,
            next_log_seq: 1,
        };
        self.put(keys::model_record_key(&model.uuid), &model);
        self.state.put(
            keys::model_name_key(owner, &model.name),
            model.uuid.clone().into_bytes(),
        );
        Ok(cmd::Ok::default())
    }

    fn destroy_model(&mut self, destroy: &cmd::DestroyModel) -> Outcome {
        let model = self.model(&destroy.model_uuid)?;
        let machines: Vec<String> =
            records::read_records::<Machine>(&self.state, &keys::machine_prefix(&model.uuid))?
                .into_iter()
                .map(|m| m.id)
                .collect();
        deployment::check_destroy_model(&model, machines, destroy.force)?;
        for (key, _) in self
            .state
            .scan_prefix(&keys::model_prefix(&model.uuid), usize::MAX)?
        {
            self.state.delete(key);
        }
        self.state
            .delete(keys::model_name_key(&model.owner, &model.name));
        Ok(cmd::Ok::default())
    }

    fn add_machine(&mut self, add: &cmd::AddMachine) -> Outcome {
        let mut model = self.model(&add.model_uuid)?;
        if !add.credential_sha256.is_empty() {
            check_sha256_hex("credential_sha256", &add.credential_sha256)?;
        }
        let id = model.next_machine_id;
        model.next_machine_id += 1;
        let machine = Machine {
            id: id.to_string(),
            life: Life::Alive as i32,
            agent_status: Some(deployment::status("pending", "", self.now_ms)),
            credential_sha256: add.credential_sha256.clone(),
            created_unix_ms: self.now_ms,
        };
        self.put(keys::machine_key(&model.uuid, id), &machine);
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok {
            machine_id: machine.id,
            ..Default::default()
        })
    }

    fn remove_machine(&mut self, remove: &cmd::RemoveMachine) -> Outcome {
        let model = self.model(&remove.model_uuid)?;
        let (number, machine) = self.machine(&model.uuid, &remove.machine_id)?;
        let on_machine: Vec<Unit> =
            records::read_records::<Unit>(&self.state, &keys::unit_prefix(&model.uuid))?
                .into_iter()
                .filter(|u| u.machine == machine.id)
                .collect();
        let names: Vec<String> = on_machine.iter().map(|u| u.name.clone()).collect();
        deployment::check_remove_machine(&machine.id, names, remove.force)?;
        let removed = self.remove_units(&model.uuid, &on_machine)?;
        self.state.delete(keys::machine_key(&model.uuid, number));
        self.state.delete(keys::agent_seq_key(&model.uuid, number));
        self.state.delete(keys::history_key(
            &model.uuid,
            &Entity::Machine(number).to_string(),
        ));
        Ok(cmd::Ok {
            units: removed,
            ..Default::default()
        })
    }

    /// Places one new unit of `application` per machine; the first leads if none does.
    fn place_units(
        &mut self,
        uuid: &str,
        application: &mut Application,
        machines: &[String],
    ) -> Result<Vec<String>, Refusal> {
        if machines.len() > UNITS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} units requested, at most {UNITS_PER_COMMAND_MAX} per command",
                machines.len()
            ))
            .into());
        }
        for id in machines {
            let machine = match names::parse_machine_id(id) {
                Ok(number) => records::read_machine(&self.state, uuid, number)?,
                Err(_) => None,
            };
            deployment::check_placement(id, machine.as_ref())?;
        }
        let mut need_leader = self
            .state
            .scan_prefix(&keys::application_unit_prefix(uuid, &application.name), 1)?
            .is_empty();
        let mut created = Vec::with_capacity(machines.len());
        for id in machines {
            let unit = deployment::new_unit(application, id, need_leader, self.now_ms);
            need_leader = false;
            let number = application.next_unit - 1;
            self.put(keys::unit_key(uuid, &application.name, number), &unit);
            created.push(unit.name);
        }
        Ok(created)
    }

    /// Deletes `units` (and their status histories); where a removed unit led its
    /// application, the lowest-numbered remaining unit leads. Returns the removed names.
    fn remove_units(&mut self, uuid: &str, units: &[Unit]) -> Result<Vec<String>, Refusal> {
        let mut by_application: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for unit in units {
            let (application, number) = names::parse_unit_name(&unit.name)?;
            by_application
                .entry(application)
                .or_default()
                .insert(number);
        }
        for (application, removed) in &by_application {
            let all = records::read_application_units(&self.state, uuid, application)?;
            let mut leader = None;
            let mut remaining = Vec::new();
            for unit in &all {
                let (_, number) = names::parse_unit_name(&unit.name)?;
                if unit.leader {
                    leader = Some(number);
                }
                if !removed.contains(&number) {
                    remaining.push(number);
                }
            }
            for number in removed {
                self.state
                    .delete(keys::unit_key(uuid, application, *number));
                let entity = Entity::Unit {
                    application: (*application).to_owned(),
                    number: *number,
                }
                .to_string();
                self.state.delete(keys::history_key(uuid, &entity));
                self.state
                    .delete(keys::history_key(uuid, &format!("{entity}/agent")));
            }
            let new_leader = deployment::next_leader(leader, remaining.iter().copied());
            if new_leader != leader {
                if let Some(number) = new_leader {
                    let mut unit = records::read_unit(&self.state, uuid, application, number)?
                        .ok_or_else(|| {
                            StorageError::corrupt(
                                "state",
                                &keys::unit_key(uuid, application, number),
                                "unit vanished while choosing a leader",
                            )
                        })?;
                    unit.leader = true;
                    self.put(keys::unit_key(uuid, application, number), &unit);
                }
            }
        }
        Ok(units.iter().map(|u| u.name.clone()).collect())
    }

    fn deploy(&mut self, deploy: &cmd::Deploy) -> Outcome {
        let model = self.model(&deploy.model_uuid)?;
        names::check_application_name(&deploy.application)?;
        if records::read_application(&self.state, &model.uuid, &deploy.application)?.is_some() {
            return Err(ModelError::ApplicationExists {
                application: deploy.application.clone(),
            }
            .into());
        }
        let charm_meta = deploy
            .charm
            .clone()
            .ok_or_else(|| ModelError::InvalidCharm {
                reason: "the deploy command carries no charm metadata".into(),
            })?;
        charm::check_charm_meta(&charm_meta)?;
        names::check_digest(&deploy.charm_digest)?;
        if records::read_blob(&self.state, &deploy.charm_digest)?.is_none() {
            return Err(ModelError::BlobNotFound {
                digest: deploy.charm_digest.clone(),
            }
            .into());
        }
        let config = deployment::updated_config(
            &deploy.application,
            &charm_meta.config_defaults,
            &BTreeMap::new(),
            &deploy.config,
        )?;
        let mut application = Application {
            name: deploy.application.clone(),
            charm_name: charm_meta.name.clone(),
            charm_revision: 0,
            charm_digest: deploy.charm_digest.clone(),
            config: config.into_iter().collect(),
            endpoints: charm_meta.endpoints.clone(),
            exposed: false,
            life: Life::Alive as i32,
            next_unit: 0,
            charm: Some(charm_meta),
            status: Some(deployment::status("waiting", "", self.now_ms)),
        };
        let units = self.place_units(&model.uuid, &mut application, &deploy.machines)?;
        self.put(
            keys::application_key(&model.uuid, &application.name),
            &application,
        );
        Ok(cmd::Ok {
            units,
            ..Default::default()
        })
    }

    fn add_units(&mut self, add: &cmd::AddUnits) -> Outcome {
        let model = self.model(&add.model_uuid)?;
        let mut application = self.application(&model.uuid, &add.application)?;
        if add.machines.is_empty() {
            return Err(ModelError::invalid("no machines given to place units on").into());
        }
        let units = self.place_units(&model.uuid, &mut application, &add.machines)?;
        self.put(
            keys::application_key(&model.uuid, &application.name),
            &application,
        );
        Ok(cmd::Ok {
            units,
            ..Default::default()
        })
    }

    fn remove_units_op(&mut self, remove: &cmd::RemoveUnits) -> Outcome {
        let model = self.model(&remove.model_uuid)?;
        if remove.units.is_empty() {
            return Err(ModelError::invalid("no units given to remove").into());
        }
        if remove.units.len() > UNITS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} units named, at most {UNITS_PER_COMMAND_MAX} per command",
                remove.units.len()
            ))
            .into());
        }
        let mut units = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &remove.units {
            let (application, number) = names::parse_unit_name(name)?;
            if !seen.insert(name.as_str()) {
                continue;
            }
            let unit = records::read_unit(&self.state, &model.uuid, application, number)?
                .ok_or_else(|| ModelError::UnitNotFound { unit: name.clone() })?;
            units.push(unit);
        }
        let removed = self.remove_units(&model.uuid, &units)?;
        Ok(cmd::Ok {
            units: removed,
            ..Default::default()
        })
    }

    /// Removes the application, its units (their agents stop the workloads) and every
    /// relation it is in (the other side's units see the relation depart).
    fn remove_application(&mut self, remove: &cmd::RemoveApplication) -> Outcome {
        let model = self.model(&remove.model_uuid)?;
        let application = self.application(&model.uuid, &remove.application)?;
        let units = records::read_application_units(&self.state, &model.uuid, &application.name)?;
        let removed = self.remove_units(&model.uuid, &units)?;
        for relation in records::read_relations(&self.state, &model.uuid)? {
            if relation
                .endpoints
                .iter()
                .any(|e| e.application == application.name)
            {
                self.state
                    .delete(keys::relation_key(&model.uuid, relation.id));
            }
        }
        self.state
            .delete(keys::application_key(&model.uuid, &application.name));
        let entity = Entity::Application(application.name.clone()).to_string();
        self.state.delete(keys::history_key(&model.uuid, &entity));
        Ok(cmd::Ok {
            units: removed,
            ..Default::default()
        })
    }

    fn integrate(&mut self, integrate: &cmd::Integrate) -> Outcome {
        let mut model = self.model(&integrate.model_uuid)?;
        let a = names::parse_endpoint(&integrate.endpoint_a)?;
        let b = names::parse_endpoint(&integrate.endpoint_b)?;
        let app_a = self.application(&model.uuid, &a.application)?;
        let app_b = self.application(&model.uuid, &b.application)?;
        let existing = records::read_relations(&self.state, &model.uuid)?;
        let found =
            relation::match_relation(&a, &app_a.endpoints, &b, &app_b.endpoints, &existing)?;
        let id = model.next_relation_id;
        model.next_relation_id += 1;
        let relation = Relation {
            id,
            endpoints: found.endpoints,
            interface: found.interface,
            life: Life::Alive as i32,
        };
        self.put(keys::relation_key(&model.uuid, id), &relation);
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok {
            relation_id: Some(id),
            ..Default::default()
        })
    }

    fn remove_relation(&mut self, remove: &cmd::RemoveRelation) -> Outcome {
        let model = self.model(&remove.model_uuid)?;
        let a = names::parse_endpoint(&remove.endpoint_a)?;
        let b = names::parse_endpoint(&remove.endpoint_b)?;
        let existing = records::read_relations(&self.state, &model.uuid)?;
        let id = relation::find_relation(&a, &b, &existing)?.id;
        self.state.delete(keys::relation_key(&model.uuid, id));
        Ok(cmd::Ok {
            relation_id: Some(id),
            ..Default::default()
        })
    }

    fn set_application_config(&mut self, set: &cmd::SetApplicationConfig) -> Outcome {
        let model = self.model(&set.model_uuid)?;
        let mut application = self.application(&model.uuid, &set.application)?;
        let declared = application
            .charm
            .as_ref()
            .map(|c| c.config_defaults.clone())
            .unwrap_or_default();
        let config = deployment::updated_config(
            &application.name,
            &declared,
            &application.config,
            &set.values,
        )?;
        application.config = config.into_iter().collect();
        self.put(
            keys::application_key(&model.uuid, &application.name),
            &application,
        );
        Ok(cmd::Ok::default())
    }

    fn set_status(&mut self, set: &cmd::SetStatus) -> Outcome {
        let mut model = self.model(&set.model_uuid)?;
        let uuid = model.uuid.clone();
        let entity = names::parse_entity(&set.entity)?;
        let mut status = set
            .status
            .clone()
            .ok_or_else(|| ModelError::invalid("the status report carries no status"))?;
        if status.current.is_empty() {
            return Err(ModelError::invalid("the status has no current value").into());
        }
        if status.message.len() > STATUS_MESSAGE_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "the status message is {} bytes, at most {STATUS_MESSAGE_BYTES_MAX} allowed",
                status.message.len()
            ))
            .into());
        }
        if status.since_unix_ms == 0 {
            status.since_unix_ms = self.now_ms;
        }
        let bad_kind = |allowed: &str| {
            ModelError::invalid(format!(
                "status kind {:?} does not apply to {}; use {allowed}",
                set.kind, set.entity
            ))
        };
        let mut history_entity = entity.to_string();
        // Each arm swaps the new status into its record and yields the record's key, bytes
        // and the previous status.
        let (key, bytes, old): (Vec<u8>, Vec<u8>, Option<Status>) = match &entity {
            Entity::Model => {
                if !matches!(set.kind.as_str(), "" | "workload") {
                    return Err(bad_kind("\"\"").into());
                }
                let old = model.status.replace(status.clone());
                (keys::model_record_key(&uuid), model.encode_to_vec(), old)
            }
            Entity::Machine(number) => {
                if !matches!(set.kind.as_str(), "" | "agent") {
                    return Err(bad_kind("\"agent\"").into());
                }
                let (_, mut machine) = self.machine(&uuid, &number.to_string())?;
                let old = machine.agent_status.replace(status.clone());
                (
                    keys::machine_key(&uuid, *number),
                    machine.encode_to_vec(),
                    old,
                )
            }
            Entity::Application(name) => {
                if !matches!(set.kind.as_str(), "" | "workload") {
                    return Err(bad_kind("\"workload\"").into());
                }
                let mut application = self.application(&uuid, name)?;
                let old = application.status.replace(status.clone());
                (
                    keys::application_key(&uuid, name),
                    application.encode_to_vec(),
                    old,
                )
            }
            Entity::Unit {
                application,
                number,
            } => {
                let mut unit = records::read_unit(&self.state, &uuid, application, *number)?
                    .ok_or_else(|| ModelError::UnitNotFound {
                        unit: names::unit_name(application, *number),
                    })?;
                let old = match set.kind.as_str() {
                    "" | "workload" => unit.workload_status.replace(status.clone()),
                    "agent" => {
                        history_entity.push_str("/agent");
                        unit.agent_status.replace(status.clone())
                    }
                    _ => return Err(bad_kind("\"workload\" or \"agent\"").into()),
                };
                (
                    keys::unit_key(&uuid, application, *number),
                    unit.encode_to_vec(),
                    old,
                )
            }
        };
        if !deployment::status_changed(old.as_ref(), &status) {
            return Ok(cmd::Ok::default());
        }
        self.state.put(key, bytes);
        let keep = self.config_number("status-history-size", STATUS_HISTORY_SIZE_DEFAULT as u64)?;
        let history_key = keys::history_key(&uuid, &history_entity);
        let mut history = records::read_record::<StatusHistory>(&self.state, &history_key)?
            .unwrap_or_else(|| StatusHistory {
                entity: history_entity.clone(),
                entries: Vec::new(),
            });
        deployment::push_status_history(
            &mut history,
            status,
            usize::try_from(keep).unwrap_or(usize::MAX),
        );
        self.put(history_key, &history);
        Ok(cmd::Ok::default())
    }

    fn append_log(&mut self, append: &cmd::AppendLog) -> Outcome {
        let mut model = self.model(&append.model_uuid)?;
        if append.records.is_empty() {
            return Err(ModelError::invalid("no log records given").into());
        }
        if append.records.len() > LOG_RECORDS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} log records given, at most {LOG_RECORDS_PER_COMMAND_MAX} per command",
                append.records.len()
            ))
            .into());
        }
        if let Some(big) = append
            .records
            .iter()
            .find(|r| r.message.len() > LOG_MESSAGE_BYTES_MAX)
        {
            return Err(ModelError::invalid(format!(
                "a log message is {} bytes, at most {LOG_MESSAGE_BYTES_MAX} allowed",
                big.message.len()
            ))
            .into());
        }
        let mut seq = model.next_log_seq.max(1);
        for record in &append.records {
            let stored = LogRecord {
                seq,
                time_unix_ms: if record.time_unix_ms == 0 {
                    self.now_ms
                } else {
                    record.time_unix_ms
                },
                ..record.clone()
            };
            self.put(keys::log_key(&model.uuid, seq), &stored);
            seq += 1;
        }
        model.next_log_seq = seq;
        let max = self.config_number("model-log-max-records", MODEL_LOG_MAX_RECORDS_DEFAULT)?;
        let floor = deployment::log_retention_floor(seq, max);
        if let Some(first) = records::first_log_seq(&self.state, &model.uuid)? {
            for old in first..floor {
                self.state.delete(keys::log_key(&model.uuid, old));
            }
        }
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok {
            last_log_seq: seq - 1,
            ..Default::default()
        })
    }

    fn put_blob_chunk(&mut self, put: &cmd::PutBlobChunk) -> Outcome {
        names::check_digest(&put.digest)?;
        if put.data.is_empty() || put.data.len() > BLOB_CHUNK_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "a blob chunk holds 1 to {BLOB_CHUNK_BYTES_MAX} bytes, got {}",
                put.data.len()
            ))
            .into());
        }
        if records::read_blob(&self.state, &put.digest)?.is_some() {
            // Content-addressed: the blob is complete already, nothing to stage.
            return Ok(cmd::Ok::default());
        }
        let staged = records::read_blob_upload(&self.state, &put.digest)?;
        if put.offset == 0 {
            if staged.is_some() {
                self.discard_upload(&put.digest)?;
            }
        } else {
            let next = staged.as_ref().map_or(0, |u| u.next_offset);
            if put.offset != next {
                return Err(ModelError::BlobChunkOutOfOrder {
                    digest: put.digest.clone(),
                    offset: put.offset,
                    staged: next,
                }
                .into());
            }
        }
        let next_offset = put.offset + put.data.len() as u64;
        if next_offset > BLOB_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "blob {} would exceed {BLOB_BYTES_MAX} bytes",
                put.digest
            ))
            .into());
        }
        self.state.put(
            keys::blob_data_key(&put.digest, put.offset),
            put.data.clone(),
        );
        self.put(
            keys::blob_stage_key(&put.digest),
            &BlobUpload {
                digest: put.digest.clone(),
                next_offset,
            },
        );
        Ok(cmd::Ok::default())
    }

    fn discard_upload(&mut self, digest: &str) -> Result<(), StorageError> {
        for (key, _) in self
            .state
            .scan_prefix(&keys::blob_data_prefix(digest), usize::MAX)?
        {
            self.state.delete(key);
        }
        self.state.delete(keys::blob_stage_key(digest));
        Ok(())
    }

    fn commit_blob(&mut self, commit: &cmd::CommitBlob) -> Outcome {
        names::check_digest(&commit.digest)?;
        if records::read_blob(&self.state, &commit.digest)?.is_some() {
            return Ok(cmd::Ok::default());
        }
        let upload = records::read_blob_upload(&self.state, &commit.digest)?.ok_or_else(|| {
            ModelError::BlobNotStaged {
                digest: commit.digest.clone(),
            }
        })?;
        if upload.next_offset != commit.size {
            return Err(ModelError::BlobSizeMismatch {
                digest: commit.digest.clone(),
                size: commit.size,
                staged: upload.next_offset,
            }
            .into());
        }
        // Hash page by page so a large blob is never all in memory.
        const PAGE_CHUNKS: usize = 16;
        let prefix = keys::blob_data_prefix(&commit.digest);
        let mut hasher = Sha256::new();
        let mut chunk_offsets = Vec::new();
        let mut cursor = prefix.clone();
        loop {
            let page = self.state.scan_prefix_from(&prefix, &cursor, PAGE_CHUNKS)?;
            let full = page.len() == PAGE_CHUNKS;
            for (key, chunk) in &page {
                let offset = keys::trailing_u64(key)
                    .ok_or_else(|| StorageError::corrupt("state", key, "no chunk offset"))?;
                chunk_offsets.push(offset);
                hasher.update(chunk);
            }
            match page.last() {
                Some((key, _)) if full => {
                    cursor = key.clone();
                    cursor.push(0);
                }
                _ => break,
            }
        }
        let actual = hex::encode(hasher.finalize());
        if actual != commit.digest {
            self.discard_upload(&commit.digest)?;
            return Err(Refusal::RuleKeepingWrites(ModelError::BlobDigestMismatch {
                expected: commit.digest.clone(),
                actual,
            }));
        }
        self.state.delete(keys::blob_stage_key(&commit.digest));
        self.put(
            keys::blob_key(&commit.digest),
            &Blob {
                digest: commit.digest.clone(),
                size: commit.size,
                created_unix_ms: self.now_ms,
                chunk_offsets,
            },
        );
        Ok(cmd::Ok::default())
    }

    fn add_user(&mut self, add: &cmd::AddUser) -> Outcome {
        names::check_user_name(&add.name)?;
        check_sha256_hex("token_sha256", &add.token_sha256)?;
        let controller_access = match add.controller_access.as_str() {
            "" | "login" => "login",
            "superuser" => "superuser",
            other => {
                return Err(ModelError::invalid(format!(
                    "controller access {other:?} is not \"login\" or \"superuser\""
                ))
                .into())
            }
        };
        if records::read_user(&self.state, &add.name)?.is_some() {
            return Err(ModelError::UserExists {
                user: add.name.clone(),
            }
            .into());
        }
        let user = User {
            name: add.name.clone(),
            token_sha256: add.token_sha256.clone(),
            controller_access: controller_access.to_owned(),
            created_unix_ms: self.now_ms,
        };
        self.put(keys::user_key(&user.name), &user);
        Ok(cmd::Ok::default())
    }

    /// How the agent of machine `machine` relates to `entity` (a status or log entity name).
    fn ownership(&self, uuid: &str, machine: u64, entity: &str) -> Result<Ownership, Refusal> {
        let parsed = names::parse_entity(entity)?;
        let unit_machine = match &parsed {
            Entity::Unit {
                application,
                number,
            } => records::read_unit(&self.state, uuid, application, *number)?.map(|u| u.machine),
            _ => None,
        };
        Ok(agent_rules::entity_ownership(
            &parsed,
            machine,
            unit_machine.as_deref(),
        ))
    }

    fn agent_report(&mut self, report: &cmd::AgentReport) -> Outcome {
        let model = self.model(&report.model_uuid)?;
        let (machine, _) = self.machine(&model.uuid, &report.machine_id)?;
        if report.reports.len() > AGENT_REPORTS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} status reports given, at most {AGENT_REPORTS_PER_COMMAND_MAX} per command",
                report.reports.len()
            ))
            .into());
        }
        // Every entity is checked before anything is applied, so a foreign one refuses it all.
        let entities = report
            .reports
            .iter()
            .map(|r| r.entity.as_str())
            .chain(report.logs.iter().map(|l| l.entity.as_str()));
        let mut gone = BTreeSet::new();
        for entity in entities {
            match self.ownership(&model.uuid, machine, entity)? {
                Ownership::Own => {}
                Ownership::Gone => {
                    gone.insert(entity.to_owned());
                }
                Ownership::Foreign => {
                    return Err(ModelError::NotAgentEntity {
                        machine: report.machine_id.clone(),
                        entity: entity.to_owned(),
                    }
                    .into())
                }
            }
        }
        let last = records::read_agent_seq(&self.state, &model.uuid, machine)?;
        let seqs: Vec<u64> = report.reports.iter().map(|r| r.seq).collect();
        let mut applied = last;
        for position in agent_rules::reports_to_apply(last, &seqs) {
            let status = &report.reports[position];
            applied = applied.max(status.seq);
            if gone.contains(&status.entity) {
                continue;
            }
            self.set_status(&cmd::SetStatus {
                model_uuid: model.uuid.clone(),
                entity: status.entity.clone(),
                kind: status.kind.clone(),
                status: status.status.clone(),
            })?;
        }
        if applied != last {
            self.state.put(
                keys::agent_seq_key(&model.uuid, machine),
                applied.to_be_bytes().to_vec(),
            );
        }
        let mut last_log_seq = 0;
        if !report.logs.is_empty() {
            last_log_seq = self
                .append_log(&cmd::AppendLog {
                    model_uuid: model.uuid.clone(),
                    records: report.logs.clone(),
                })?
                .last_log_seq;
        }
        Ok(cmd::Ok {
            applied_seq: applied,
            last_log_seq,
            ..Default::default()
        })
    }

    fn renew_presence(&mut self, renew: &cmd::RenewPresence) -> Outcome {
        if renew.entries.len() > PRESENCE_ENTRIES_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{} presence entries given, at most {PRESENCE_ENTRIES_PER_COMMAND_MAX} per command",
                renew.entries.len()
            ))
            .into());
        }
        let key = keys::presence_key(renew.node_id);
        // A delayed retry must not replace a newer record of the same node.
        if let Some(stored) = records::read_record::<NodePresence>(&self.state, &key)? {
            if stored.renewed_unix_ms > self.now_ms {
                return Ok(cmd::Ok::default());
            }
        }
        let record = NodePresence {
            node_id: renew.node_id,
            entries: renew.entries.clone(),
            renewed_unix_ms: self.now_ms,
        };
        self.put(key, &record);
        Ok(cmd::Ok::default())
    }

    fn set_model_config(&mut self, set: &cmd::SetModelConfig) -> Outcome {
        let mut model = self.model(&set.model_uuid)?;
        if set.values.is_empty() {
            return Err(ModelError::invalid("no model config values given").into());
        }
        for (key, value) in &set.values {
            deployment::check_model_config_entry(key, value)?;
            if value.is_empty() {
                model.config.remove(key);
            } else {
                model.config.insert(key.clone(), value.clone());
            }
        }
        if model.config.len() > deployment::MODEL_CONFIG_KEYS_MAX {
            return Err(ModelError::invalid(format!(
                "a model holds at most {} config keys",
                deployment::MODEL_CONFIG_KEYS_MAX
            ))
            .into());
        }
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok::default())
    }

    fn set_model_access(&mut self, set: &cmd::SetModelAccess) -> Outcome {
        let mut model = self.model(&set.model_uuid)?;
        names::check_user_name(&set.user)?;
        let level = Access::try_from(set.access)
            .map_err(|_| ModelError::invalid(format!("unknown access level {}", set.access)))?;
        if set.revoke {
            if level == Access::Unspecified {
                return Err(ModelError::invalid("revoke names no access level").into());
            }
            access::revoke_access(&mut model, &set.user, level)?;
            self.put(keys::model_record_key(&model.uuid), &model);
            return Ok(cmd::Ok::default());
        }
        access::set_access(&mut model, &set.user, level)?;
        if level != Access::Unspecified && records::read_user(&self.state, &set.user)?.is_none() {
            return Err(ModelError::UserNotFound {
                user: set.user.clone(),
            }
            .into());
        }
        self.put(keys::model_record_key(&model.uuid), &model);
        Ok(cmd::Ok::default())
    }
}
