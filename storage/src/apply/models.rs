//! Applying the model commands (models, machines, applications, units, relations, config,
//! status, the model log, blobs, users and access): read the records a command touches, ask
//! `storage::model`'s rules, write the changed records. Each command runs in its own overlay, so
//! a refusal writes nothing — except a `CommitBlob` whose bytes do not match its digest, which
//! discards the upload as it refuses.
//!
//! Authorization is the API layer's: it authenticates the caller and checks access
//! (`model::access`) before proposing. Applying only uses `caller` as the default model owner.

use starling_proto::command::{self as cmd, command::Op, Command, CommandResult};
use starling_proto::migration::FeedPosition;
use starling_proto::model::{Access, Application, Life, Machine, Model, ModelUser, Unit, User};

use super::{model_error_result, ok_result_with};
use crate::keys;
use crate::model::deployment::{self};
use crate::model::names::{self, Entity};
use crate::model::{access, ModelError};
use crate::records;
use crate::staging::{StagedFiles, StagingEvent};
use crate::state::{read_effective_config, Overlay, StateRead, WriteSet};
use crate::StorageError;

mod agents;
mod applications;
mod blobs;
mod migration;

/// Most units one `Deploy` or `AddUnits` places, and most units one `RemoveUnits` names.
pub const UNITS_PER_COMMAND_MAX: usize = 1000;
/// Most records one `AppendLog` carries.
pub const LOG_RECORDS_PER_COMMAND_MAX: usize = 1000;
/// Largest model-log message.
pub const LOG_MESSAGE_BYTES_MAX: usize = 16 * 1024;
/// Largest status message.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 4096;
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

/// Where a command is applied: its log entry, and the staged files of bulk imports.
pub(super) struct ApplyContext<'s> {
    pub(super) log_index: u64,
    pub(super) staged: Option<&'s dyn StagedFiles>,
}

/// What applying one model command produced.
pub(super) struct Applied {
    /// Its result.
    pub result: CommandResult,
    /// The writes to keep.
    pub writes: WriteSet,
    /// What it did to imports (for the staging area).
    pub events: Vec<StagingEvent>,
    /// Idempotency records of another controller's requests to keep (request id, encoded
    /// result): those a migrating model's feed carried.
    pub requests: Vec<(String, Vec<u8>)>,
}

/// Applies one model command over `base`.
pub(super) fn apply_model_op<R: StateRead + ?Sized>(
    base: &R,
    at: FeedPosition,
    command: &Command,
    op: &Op,
    context: &ApplyContext<'_>,
) -> Result<Applied, StorageError> {
    if let Some(applied) = crate::backup::apply_backup_op(base, command, op) {
        let (result, writes) = applied?;
        return Ok(Applied {
            result,
            writes,
            events: Vec::new(),
            requests: Vec::new(),
        });
    }
    let mut tx = Tx {
        state: Overlay::new(base),
        at,
        now_ms: command.proposed_unix_ms,
        caller: &command.caller,
        context,
        events: Vec::new(),
        requests: Vec::new(),
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
        Op::EndLogTransfer(end) => tx.end_log_transfer(end),
        Op::SetModelConfig(set) => tx.set_model_config(set),
        Op::ApplyModelChanges(changes) => tx.apply_model_changes(changes),
        Op::TrimFeed(trim) => tx.trim_feed(trim),
        Op::CreateBackup(_) | Op::RestoreBackup(_) => {
            unreachable!("applied by backup::apply_backup_op")
        }
    };
    let (result, writes, events, requests) = match outcome {
        Ok(ok) => (
            ok_result_with(ok),
            tx.state.into_writes(),
            tx.events,
            tx.requests,
        ),
        Err(Refusal::Rule(e)) => (
            with_redirect(model_error_result(&e), &e, &tx.state)?,
            WriteSet::new(),
            Vec::new(),
            Vec::new(),
        ),
        Err(Refusal::RuleKeepingWrites(e)) => (
            model_error_result(&e),
            tx.state.into_writes(),
            Vec::new(),
            Vec::new(),
        ),
        Err(Refusal::Storage(e)) => return Err(e),
    };
    Ok(Applied {
        result,
        writes,
        events,
        requests,
    })
}

/// `result` of a refusal because the model migrated away, with the redirect the state holds
/// (without the agents' credential hashes, which can be many); any other result as it is.
fn with_redirect(
    mut result: CommandResult,
    refusal: &ModelError,
    state: &(impl StateRead + ?Sized),
) -> Result<CommandResult, StorageError> {
    let ModelError::ModelMigrated { uuid, .. } = refusal else {
        return Ok(result);
    };
    if let Some(cmd::command_result::Result::Error(e)) = result.result.as_mut() {
        e.redirect = crate::migration::read_redirect(state, uuid)?.map(|mut redirect| {
            redirect.machine_credentials.clear();
            redirect
        });
    }
    Ok(result)
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
    /// Where the command is in the log (its entry's index and its position in the batch).
    at: FeedPosition,
    now_ms: i64,
    caller: &'c str,
    context: &'c ApplyContext<'c>,
    events: Vec<StagingEvent>,
    /// Idempotency records of another controller's requests to keep (see `Applied`).
    requests: Vec<(String, Vec<u8>)>,
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
            return Err(ModelError::ModelImporting {
                model: uuid.to_owned(),
            }
            .into());
        }
        if let Some(redirect) = crate::migration::read_redirect(&self.state, uuid)? {
            return Err(ModelError::ModelMigrated {
                uuid: uuid.to_owned(),
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
        // A migrating model stays until its migration ends: its copy is on the way and its
        // feed records every change.
        let migrations = crate::migration::read_model_migrations(&self.state, &model.uuid)?;
        if let Some(running) = migrations
            .iter()
            .find(|m| !crate::migration::is_terminal(m))
        {
            return Err(crate::model::migration::MigrationError::AlreadyMigrating {
                model: model.name.clone(),
                migration_id: crate::migration::record_id(running).to_string(),
                phase: crate::model::migration::Phase::parse(&running.phase)
                    .unwrap_or(crate::model::migration::Phase::Precheck),
            }
            .into());
        }
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
