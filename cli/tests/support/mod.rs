//! `World`: the fake controller's models, in memory, with fixed uuids and times so the output of
//! `ctl` can be compared byte for byte. Just enough behaviour to drive every command end to end.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest, Sha256};
use starling_proto::controller::*;
use starling_proto::model::*;
use tonic::Status;

/// The time every record was made.
pub const T0: i64 = 1_700_000_000_000;
/// The time `Status` answers at.
pub const NOW: i64 = T0 + 60_000;

/// One model and what is in it.
#[derive(Debug, Clone)]
pub struct FakeModel {
    pub model: Model,
    pub machines: Vec<Machine>,
    pub applications: Vec<Application>,
    pub units: Vec<Unit>,
    pub relations: Vec<Relation>,
    pub logs: Vec<LogRecord>,
}

/// A user added with AddUser.
#[derive(Debug, Clone)]
pub struct FakeUser {
    pub token: String,
    pub access: String,
}

/// Everything the fake controller knows.
#[derive(Debug, Default)]
pub struct World {
    /// Models by short name.
    pub models: BTreeMap<String, FakeModel>,
    /// Charm blobs by digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The data sizes of each UploadCharm call's chunks.
    pub uploads: Vec<Vec<usize>>,
    pub deploys: Vec<DeployRequest>,
    pub debug_log_requests: Vec<DebugLogRequest>,
    pub access_calls: Vec<SetModelAccessRequest>,
    pub users: BTreeMap<String, FakeUser>,
    /// Every Migrate call.
    pub migrate_calls: Vec<MigrateRequest>,
    /// What a Migrate precheck finds wrong (a dry run lists it, a real run is refused).
    pub precheck_failures: Vec<String>,
    /// What MigrationStatus answers, one per call; the last one is repeated. Empty: NotFound.
    pub migration_script: Vec<MigrationInfo>,
    /// How many MigrationStatus calls to answer UNAVAILABLE first (no leader).
    pub migration_status_unavailable: u32,
    /// Every AbortMigration call.
    pub abort_calls: Vec<AbortMigrationRequest>,
    /// Set: AbortMigration is refused with this (FAILED_PRECONDITION).
    pub abort_refusal: Option<String>,
    /// Every EndLogTransfer call.
    pub end_log_transfer_calls: Vec<EndLogTransferRequest>,
    /// Models that migrated away: short name → target controller.
    pub migrated: BTreeMap<String, String>,
    /// Models locked by a migration: short name → migration id. Writes to them are refused.
    pub locked: BTreeMap<String, String>,
    /// Every SetModelConfig call, including those answered UNAVAILABLE.
    pub model_config_calls: Vec<SetModelConfigRequest>,
    /// How many SetModelConfig calls to answer UNAVAILABLE first (a node that lost its leader).
    pub model_config_unavailable: u32,
}

fn status(current: &str, message: &str) -> Option<starling_proto::model::Status> {
    Some(starling_proto::model::Status {
        current: current.into(),
        message: message.into(),
        since_unix_ms: T0,
    })
}

fn log(seq: u64, entity: &str, level: LogLevel, module: &str, message: &str) -> LogRecord {
    LogRecord {
        seq,
        time_unix_ms: T0 + seq as i64 * 1000,
        entity: entity.into(),
        level: level as i32,
        module: module.into(),
        message: message.into(),
        agent_seq: 0,
    }
}

/// Severity, low to high (the enum's numbers are not in order).
fn severity(level: i32) -> u8 {
    match LogLevel::try_from(level).unwrap_or(LogLevel::Info) {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warning => 3,
        LogLevel::Error => 4,
    }
}

fn natural_key(s: &str) -> (String, u64) {
    match s.rsplit_once('/') {
        Some((a, n)) => (a.to_string(), n.parse().unwrap_or(0)),
        None => (String::new(), s.parse().unwrap_or(0)),
    }
}

impl World {
    /// A world with the `controller` model.
    pub fn new() -> Self {
        let mut world = Self::default();
        world
            .add_model(AddModelRequest {
                name: "controller".into(),
                ..Default::default()
            })
            .unwrap();
        world
    }

    pub fn model(&self, model_ref: Option<&ModelRef>) -> Result<&FakeModel, Status> {
        let name = model_ref.map(|r| r.name.as_str()).unwrap_or_default();
        let short = name.strip_prefix("admin/").unwrap_or(name);
        if let Some(target) = self.migrated.get(short) {
            return Err(Status::failed_precondition(format!(
                "model \"{short}\" has been migrated to controller \"{target}\". To access it \
                 run 'ctl switch {target}:{short}'."
            )));
        }
        self.models
            .get(short)
            .ok_or_else(|| Status::not_found(format!("model \"{name}\" not found")))
    }

    fn model_mut(&mut self, model_ref: Option<&ModelRef>) -> Result<&mut FakeModel, Status> {
        let name = self.model(model_ref)?.model.name.clone();
        Ok(self.models.get_mut(&name).unwrap())
    }

    pub fn info(&self, m: &FakeModel) -> ModelInfo {
        ModelInfo {
            model: Some(m.model.clone()),
            controller_uuid: "uuid-alpha".into(),
            controller_name: "alpha".into(),
            machine_count: m.machines.len() as u64,
            unit_count: m.units.len() as u64,
            migration: String::new(),
            migration_start_unix_ms: 0,
            migration_end_unix_ms: 0,
            ..Default::default()
        }
    }

    pub fn add_model(&mut self, r: AddModelRequest) -> Result<ModelInfo, Status> {
        if self.models.contains_key(&r.name) {
            return Err(Status::already_exists(format!(
                "model \"admin/{}\" already exists",
                r.name
            )));
        }
        let or = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
        let model = Model {
            uuid: format!("uuid-model-{}", r.name),
            name: r.name.clone(),
            owner: "admin".into(),
            cloud: or(r.cloud, "localhost"),
            region: or(r.region, "default"),
            life: Life::Alive as i32,
            status: status("available", ""),
            config: r.config,
            agent_version: "0.2.0".into(),
            ownership_epoch: 1,
            users: vec![ModelUser {
                name: "admin".into(),
                access: Access::Admin as i32,
            }],
            created_unix_ms: T0,
            ..Default::default()
        };
        let logs = vec![
            log(
                1,
                "machine-0",
                LogLevel::Info,
                "starling.agent",
                "agent started",
            ),
            log(
                2,
                "unit-web-0",
                LogLevel::Debug,
                "starling.hook",
                "running install",
            ),
            log(
                3,
                "unit-web-0",
                LogLevel::Warning,
                "starling.workload",
                "restarting",
            ),
            log(
                4,
                "unit-db-0",
                LogLevel::Error,
                "starling.workload",
                "exited with 1",
            ),
            log(
                5,
                "controller",
                LogLevel::Info,
                "starling.model",
                "unit web/0 added",
            ),
        ];
        let m = FakeModel {
            model,
            machines: Vec::new(),
            applications: Vec::new(),
            units: Vec::new(),
            relations: Vec::new(),
            logs,
        };
        let info = self.info(&m);
        self.models.insert(r.name, m);
        Ok(info)
    }

    pub fn list_models(&self) -> Vec<ModelInfo> {
        self.models.values().map(|m| self.info(m)).collect()
    }

    pub fn destroy_model(&mut self, r: DestroyModelRequest) -> Result<(), Status> {
        let m = self.model(r.model.as_ref())?;
        if !m.machines.is_empty() && !r.force {
            return Err(Status::failed_precondition(format!(
                "model \"admin/{}\" has machines; use --force",
                m.model.name
            )));
        }
        let name = m.model.name.clone();
        self.models.remove(&name);
        Ok(())
    }

    pub fn add_machine(&mut self, r: AddMachineRequest) -> Result<AddMachineResponse, Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let id = m.model.next_machine_id.to_string();
        m.model.next_machine_id += 1;
        m.machines.push(Machine {
            id: id.clone(),
            life: Life::Alive as i32,
            agent_status: status("started", ""),
            credential_sha256: String::new(),
            created_unix_ms: T0,
        });
        let yaml = format!(
            "controller-uuid: uuid-alpha\nmodel-uuid: {}\nmachine-id: \"{id}\"\ncredential: secret-{id}\n",
            m.model.uuid
        );
        Ok(AddMachineResponse {
            machine_id: id,
            agent_config_yaml: yaml.into_bytes(),
        })
    }

    pub fn remove_machine(&mut self, r: RemoveMachineRequest) -> Result<(), Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let Some(idx) = m.machines.iter().position(|x| x.id == r.machine_id) else {
            return Err(Status::not_found(format!(
                "machine {} not found",
                r.machine_id
            )));
        };
        if !r.force && m.units.iter().any(|u| u.machine == r.machine_id) {
            return Err(Status::failed_precondition(format!(
                "machine {} has units; use --force",
                r.machine_id
            )));
        }
        m.machines.remove(idx);
        m.units.retain(|u| u.machine != r.machine_id);
        Ok(())
    }

    pub fn upload(&mut self, chunks: Vec<CharmChunk>) -> Result<UploadCharmResponse, Status> {
        let first = chunks
            .first()
            .ok_or_else(|| Status::invalid_argument("no chunks"))?;
        let (digest, size) = (first.digest.clone(), first.size);
        let mut data = Vec::new();
        for chunk in &chunks {
            if chunk.offset != data.len() as u64 {
                return Err(Status::invalid_argument("chunk out of order"));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() as u64 != size || hex::encode(Sha256::digest(&data)) != digest {
            return Err(Status::invalid_argument("charm digest mismatch"));
        }
        self.uploads
            .push(chunks.iter().map(|c| c.data.len()).collect());
        let already_present = self.blobs.insert(digest.clone(), data).is_some();
        Ok(UploadCharmResponse {
            digest,
            already_present,
        })
    }

    /// The charm name in a blob's metadata.yaml (a naive `name:` line read).
    fn charm_name(blob: &[u8]) -> Result<String, Status> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
        for entry in archive
            .entries()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
        {
            let mut entry = entry.map_err(|e| Status::invalid_argument(e.to_string()))?;
            if entry.path().unwrap().to_str() == Some("metadata.yaml") {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                if let Some(name) = text.lines().find_map(|l| l.strip_prefix("name: ")) {
                    return Ok(name.trim().to_string());
                }
            }
        }
        Err(Status::invalid_argument("charm has no metadata.yaml name"))
    }

    pub fn deploy(&mut self, r: DeployRequest) -> Result<DeployResponse, Status> {
        self.deploys.push(r.clone());
        let blob = self
            .blobs
            .get(&r.charm_digest)
            .ok_or_else(|| Status::failed_precondition("charm not uploaded"))?;
        let charm_name = Self::charm_name(blob)?;
        let m = self.model_mut(r.model.as_ref())?;
        if m.applications.iter().any(|a| a.name == r.application) {
            return Err(Status::already_exists(format!(
                "application \"{}\" already exists",
                r.application
            )));
        }
        let defaults: BTreeMap<String, String> = match charm_name.as_str() {
            "counter" => BTreeMap::from([("interval".to_string(), "1".to_string())]),
            "web" => BTreeMap::from([("port".to_string(), "0".to_string())]),
            _ => BTreeMap::new(),
        };
        m.applications.push(Application {
            name: r.application.clone(),
            charm_name: charm_name.clone(),
            charm_revision: 1,
            charm_digest: r.charm_digest.clone(),
            config: r.config,
            life: Life::Alive as i32,
            charm: Some(CharmMeta {
                name: charm_name,
                config_defaults: defaults,
                ..Default::default()
            }),
            status: status("active", ""),
            ..Default::default()
        });
        let units = self.add_units(r.model.as_ref(), &r.application, &r.to)?;
        Ok(DeployResponse { units })
    }

    pub fn add_units(
        &mut self,
        model: Option<&ModelRef>,
        application: &str,
        to: &[String],
    ) -> Result<Vec<String>, Status> {
        let m = self.model_mut(model)?;
        if let Some(bad) = to
            .iter()
            .find(|id| !m.machines.iter().any(|x| &x.id == *id))
        {
            return Err(Status::not_found(format!("machine {bad} not found")));
        }
        let Some(app) = m.applications.iter_mut().find(|a| a.name == application) else {
            return Err(Status::not_found(format!(
                "application \"{application}\" not found"
            )));
        };
        let mut names = Vec::new();
        for machine in to {
            let name = format!("{application}/{}", app.next_unit);
            app.next_unit += 1;
            names.push(name.clone());
            let leader = !m.units.iter().any(|u| u.application == application);
            m.units.push(Unit {
                name,
                application: application.into(),
                machine: machine.clone(),
                workload_status: if leader {
                    status("active", "")
                } else {
                    status("waiting", "installing")
                },
                agent_status: status("idle", ""),
                leader,
                life: Life::Alive as i32,
            });
        }
        m.units.sort_by_key(|u| natural_key(&u.name));
        Ok(names)
    }

    pub fn remove_units(&mut self, r: RemoveUnitRequest) -> Result<(), Status> {
        let m = self.model_mut(r.model.as_ref())?;
        for unit in &r.units {
            if !m.units.iter().any(|u| &u.name == unit) {
                return Err(Status::not_found(format!("unit \"{unit}\" not found")));
            }
        }
        m.units.retain(|u| !r.units.contains(&u.name));
        Ok(())
    }

    /// A unit's log from its current statuses (the fake keeps no history): agent, then
    /// workload.
    pub fn status_log(&self, r: StatusLogRequest) -> Result<StatusLogResponse, Status> {
        let m = self.model(r.model.as_ref())?;
        let unit = m
            .units
            .iter()
            .find(|u| u.name == r.entity)
            .ok_or_else(|| Status::not_found(format!("{} not found", r.entity)))?;
        let entries = [
            ("juju-unit", &unit.agent_status),
            ("workload", &unit.workload_status),
        ]
        .into_iter()
        .map(|(kind, status)| StatusLogEntry {
            kind: kind.into(),
            status: status.clone(),
        })
        .collect();
        Ok(StatusLogResponse { entries })
    }

    pub fn remove_application(
        &mut self,
        r: RemoveApplicationRequest,
    ) -> Result<Vec<String>, Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let app = r.application;
        if !m.applications.iter().any(|a| a.name == app) {
            return Err(Status::not_found(format!(
                "application \"{app}\" not found"
            )));
        }
        let units = m
            .units
            .iter()
            .filter(|u| u.application == app)
            .map(|u| u.name.clone())
            .collect();
        m.applications.retain(|a| a.name != app);
        m.units.retain(|u| u.application != app);
        m.relations
            .retain(|r| r.endpoints.iter().all(|e| e.application != app));
        Ok(units)
    }

    fn endpoint(m: &FakeModel, spec: &str, other: &str) -> Result<(String, String), Status> {
        let (app, ep) = match spec.split_once(':') {
            Some((a, e)) => (a.to_string(), e.to_string()),
            None => (
                spec.to_string(),
                other.split(':').next().unwrap().to_string(),
            ),
        };
        if !m.applications.iter().any(|a| a.name == app) {
            return Err(Status::not_found(format!(
                "application \"{app}\" not found"
            )));
        }
        Ok((app, ep))
    }

    pub fn integrate(&mut self, r: IntegrateRequest) -> Result<Relation, Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let (app_a, ep_a) = Self::endpoint(m, &r.endpoint_a, &r.endpoint_b)?;
        let (app_b, ep_b) = Self::endpoint(m, &r.endpoint_b, &r.endpoint_a)?;
        let relation = Relation {
            id: m.model.next_relation_id,
            endpoints: vec![
                RelationEndpoint {
                    application: app_a,
                    endpoint: ep_a,
                    role: Role::Requires as i32,
                },
                RelationEndpoint {
                    application: app_b,
                    endpoint: ep_b,
                    role: Role::Provides as i32,
                },
            ],
            interface: "pgsql".into(),
            life: Life::Alive as i32,
        };
        m.model.next_relation_id += 1;
        m.relations.push(relation.clone());
        Ok(relation)
    }

    pub fn remove_relation(&mut self, r: RemoveRelationRequest) -> Result<(), Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let (app_a, _) = Self::endpoint(m, &r.endpoint_a, &r.endpoint_b)?;
        let (app_b, _) = Self::endpoint(m, &r.endpoint_b, &r.endpoint_a)?;
        let before = m.relations.len();
        m.relations.retain(|rel| {
            let apps: Vec<&str> = rel
                .endpoints
                .iter()
                .map(|e| e.application.as_str())
                .collect();
            !(apps.contains(&app_a.as_str()) && apps.contains(&app_b.as_str()))
        });
        if m.relations.len() == before {
            return Err(Status::not_found("relation not found"));
        }
        Ok(())
    }

    pub fn app_config(
        &self,
        model: Option<&ModelRef>,
        application: &str,
    ) -> Result<ApplicationConfig, Status> {
        let m = self.model(model)?;
        let app = m
            .applications
            .iter()
            .find(|a| a.name == application)
            .ok_or_else(|| Status::not_found(format!("application \"{application}\" not found")))?;
        let defaults = app.charm.clone().unwrap_or_default().config_defaults;
        let mut values = defaults.clone();
        values.extend(app.config.clone());
        let mut default_keys: Vec<String> = defaults
            .keys()
            .filter(|k| !app.config.contains_key(*k))
            .cloned()
            .collect();
        default_keys.sort();
        Ok(ApplicationConfig {
            values,
            defaults: default_keys,
        })
    }

    pub fn set_app_config(&mut self, r: SetApplicationConfigRequest) -> Result<(), Status> {
        let m = self.model_mut(r.model.as_ref())?;
        let app = m
            .applications
            .iter_mut()
            .find(|a| a.name == r.application)
            .ok_or_else(|| Status::not_found("application not found"))?;
        app.config.extend(r.values);
        Ok(())
    }

    /// GetModelConfig: the model's own config map.
    pub fn model_config(&self, model: Option<&ModelRef>) -> Result<ModelConfig, Status> {
        let m = self.model(model)?;
        Ok(ModelConfig {
            values: m.model.config.clone(),
        })
    }

    /// SetModelConfig, checked like the controller does: every key and value first, so a
    /// refused call changes nothing; an empty value removes its key.
    pub fn set_model_config(&mut self, r: SetModelConfigRequest) -> Result<(), Status> {
        self.model_config_calls.push(r.clone());
        if self.model_config_unavailable > 0 {
            self.model_config_unavailable -= 1;
            return Err(Status::unavailable("no leader"));
        }
        let m = self.model(r.model.as_ref())?;
        let name = format!("{}/{}", m.model.owner, m.model.name);
        if let Some(migration) = self.locked.get(&m.model.name) {
            return Err(Status::failed_precondition(format!(
                "model \"{name}\" is locked by migration {migration} and is read-only until it \
                 completes or aborts"
            )));
        }
        if r.values.is_empty() {
            return Err(Status::invalid_argument("no model config values given"));
        }
        for (key, value) in &r.values {
            let valid = key.len() <= 128
                && key
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && key.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
                });
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "invalid model config key {key:?}: use 1 to 128 lowercase letters, digits, \
                     '-', '.' or '_', starting with a letter or digit"
                )));
            }
            if value.len() > 4096 {
                return Err(Status::invalid_argument(format!(
                    "the value of model config key {key:?} is {} bytes, at most 4096 allowed",
                    value.len()
                )));
            }
        }
        let config = &mut self.model_mut(r.model.as_ref())?.model.config;
        for (key, value) in r.values {
            if value.is_empty() {
                config.remove(&key);
            } else {
                config.insert(key, value);
            }
        }
        Ok(())
    }

    pub fn status(&self, model: Option<&ModelRef>) -> Result<FullStatus, Status> {
        let m = self.model(model)?;
        Ok(FullStatus {
            model: Some(self.info(m)),
            machines: m.machines.clone(),
            applications: m.applications.clone(),
            units: m.units.clone(),
            relations: m.relations.clone(),
            notes: String::new(),
            now_unix_ms: NOW,
        })
    }

    pub fn debug_log(&mut self, r: DebugLogRequest) -> Result<Vec<LogRecord>, Status> {
        self.debug_log_requests.push(r.clone());
        let m = self.model(r.model.as_ref())?;
        let kept: Vec<LogRecord> = m
            .logs
            .iter()
            .filter(|l| severity(l.level) >= severity(r.level))
            .filter(|l| r.include.is_empty() || r.include.contains(&l.entity))
            .filter(|l| !r.exclude.contains(&l.entity))
            .cloned()
            .collect();
        if r.replay {
            return Ok(kept);
        }
        let tail = if r.tail == 0 { 10 } else { r.tail as usize };
        Ok(kept[kept.len().saturating_sub(tail)..].to_vec())
    }

    pub fn add_user(&mut self, r: AddUserRequest) -> Result<AddUserResponse, Status> {
        if self.users.contains_key(&r.name) || r.name == "admin" {
            return Err(Status::already_exists(format!(
                "user \"{}\" already exists",
                r.name
            )));
        }
        let token = format!("tok-{}", r.name);
        self.users.insert(
            r.name,
            FakeUser {
                token: token.clone(),
                access: r.controller_access,
            },
        );
        Ok(AddUserResponse { token })
    }

    pub fn set_access(&mut self, r: SetModelAccessRequest) -> Result<(), Status> {
        self.access_calls.push(r.clone());
        if !self.users.contains_key(&r.user) {
            return Err(Status::not_found(format!("user \"{}\" not found", r.user)));
        }
        let m = self.model_mut(r.model.as_ref())?;
        let had = m
            .model
            .users
            .iter()
            .find(|u| u.name == r.user)
            .map_or(Access::Unspecified as i32, |u| u.access);
        let access = if r.revoke {
            // The level below the revoked one, or what the user had if that was less.
            if had == Access::Unspecified as i32 {
                return Err(Status::not_found(format!(
                    "user \"{}\" has no access to model \"{}\"",
                    r.user, m.model.name
                )));
            }
            had.min(r.access - 1)
        } else {
            r.access
        };
        m.model.users.retain(|u| u.name != r.user);
        if access != Access::Unspecified as i32 {
            m.model.users.push(ModelUser {
                name: r.user,
                access,
            });
        }
        Ok(())
    }

    pub fn migrate(&mut self, r: MigrateRequest) -> Result<MigrateResponse, Status> {
        self.migrate_calls.push(r.clone());
        let uuid = self.model(r.model.as_ref())?.model.uuid.clone();
        if r.dry_run {
            return Ok(MigrateResponse {
                migration_id: String::new(),
                precheck_failures: self.precheck_failures.clone(),
            });
        }
        if !self.precheck_failures.is_empty() {
            return Err(Status::failed_precondition(format!(
                "migration prechecks failed: {}",
                self.precheck_failures.join("; ")
            )));
        }
        Ok(MigrateResponse {
            migration_id: format!("{uuid}:1"),
            precheck_failures: Vec::new(),
        })
    }

    pub fn migration_status(
        &mut self,
        _r: MigrationStatusRequest,
    ) -> Result<MigrationInfo, Status> {
        if self.migration_status_unavailable > 0 {
            self.migration_status_unavailable -= 1;
            return Err(Status::unavailable("no leader"));
        }
        match self.migration_script.len() {
            0 => Err(Status::not_found("model \"admin/web\" has never migrated")),
            1 => Ok(self.migration_script[0].clone()),
            _ => Ok(self.migration_script.remove(0)),
        }
    }

    pub fn abort_migration(
        &mut self,
        r: AbortMigrationRequest,
    ) -> Result<AbortMigrationResponse, Status> {
        self.abort_calls.push(r.clone());
        if let Some(refusal) = &self.abort_refusal {
            return Err(Status::failed_precondition(refusal.clone()));
        }
        let uuid = self.model(r.model.as_ref())?.model.uuid.clone();
        Ok(AbortMigrationResponse {
            migration_id: format!("{uuid}:1"),
            phase: "IMPORT".into(),
        })
    }

    /// EndLogTransfer: the model arrived from "gamma"; refused like the controller does while
    /// gamma says it still sends the log and the call has no `force`.
    pub fn end_log_transfer(
        &mut self,
        r: EndLogTransferRequest,
    ) -> Result<EndLogTransferResponse, Status> {
        self.end_log_transfer_calls.push(r.clone());
        let uuid = self.model(r.model.as_ref())?.model.uuid.clone();
        if !r.force {
            return Err(Status::failed_precondition(
                "controller \"gamma\" says the migration is in LOGTRANSFER: add --force",
            ));
        }
        Ok(EndLogTransferResponse {
            migration_id: format!("{uuid}:1"),
            source: "gamma".into(),
            source_answer: "controller \"gamma\" says the migration is in LOGTRANSFER".into(),
        })
    }
}
