//! The views of models and what is in them: `ctl models`, `show-model`, `status`, `config`,
//! `model-config`, `debug-log` lines and `whoami`. Like `render`, everything here returns text;
//! the JSON shapes are the contract of DESIGN.md §6 (kebab-case keys; extra keys are allowed,
//! never fewer).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use anyhow::Result;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use starling_proto::controller::{ApplicationConfig, FullStatus, ModelInfo, StatusLogResponse};
use starling_proto::model::{Access, Life, LogLevel, LogRecord, Model, Role, Status};

use crate::migration_view::models_status;
use crate::render::{cloud_region, or_dash, structured, table, Format};

/// `unix_ms` as RFC3339 UTC with millisecond precision; `None` for 0 (never set).
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time.format(&format).ok()
}

/// Compares like people count: `web/2` before `web/10`, `9` before `10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for idx in 1..=bytes.len() {
            if idx == bytes.len() || bytes[idx].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..idx]));
                start = idx;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// A map serialized in natural key order (`web/2` before `web/10`).
#[derive(Debug)]
pub struct NaturalMap<V>(Vec<(String, V)>);

impl<V> NaturalMap<V> {
    /// The map of `entries`, sorted naturally by key.
    pub fn new(mut entries: Vec<(String, V)>) -> Self {
        entries.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        Self(entries)
    }
}

impl<V: Serialize> Serialize for NaturalMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `alive`, `dying` or `dead`.
pub fn life_name(life: i32) -> String {
    Life::try_from(life)
        .map(|l| l.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("life-{life}"))
}

/// `read`, `write`, `admin`, or `""` for none.
pub fn access_name(access: i32) -> String {
    match Access::try_from(access) {
        Ok(Access::Unspecified) => String::new(),
        Ok(a) => a.as_str_name().to_lowercase(),
        Err(_) => format!("access-{access}"),
    }
}

/// `TRACE`, `DEBUG`, `INFO`, `WARNING` or `ERROR`.
pub fn level_name(level: i32) -> String {
    LogLevel::try_from(level)
        .map(|l| l.as_str_name().to_string())
        .unwrap_or_else(|_| format!("LEVEL-{level}"))
}

/// The model's name without `user/` when `user` owns it (as Juju shows names).
pub fn short_for_user(qualified: &str, user: &str) -> String {
    qualified
        .strip_prefix(&format!("{user}/"))
        .unwrap_or(qualified)
        .to_string()
}

fn qualified(model: &Model) -> String {
    if model.owner.is_empty() || model.name.contains('/') {
        model.name.clone()
    } else {
        format!("{}/{}", model.owner, model.name)
    }
}

fn short(model: &Model) -> String {
    model
        .name
        .rsplit_once('/')
        .map_or(model.name.clone(), |(_, n)| n.to_string())
}

fn empty_or(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The model status fields of `ctl models`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelsStatus {
    /// `available`, `busy`, ...
    pub current: String,
    /// The last migration's phase or outcome, if one ever ran.
    pub migration: Option<String>,
    /// When it started.
    pub migration_start: Option<String>,
    /// When it ended.
    pub migration_end: Option<String>,
}

/// One model in `ctl models`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelsItem {
    /// `owner/name`.
    pub name: String,
    /// `name`.
    pub short_name: String,
    /// The model's UUID.
    pub model_uuid: String,
    /// The controller's name in the client store.
    pub controller_name: String,
    /// The controller's UUID.
    pub controller_uuid: String,
    /// The owner.
    pub owner: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// `alive`, `dying` or `dead`.
    pub life: String,
    /// Status and migration summary.
    pub status: ModelsStatus,
    /// Machines in the model.
    pub machines: u64,
    /// Units in the model.
    pub units: u64,
    /// The client user's access, if any.
    pub access: String,
    /// The agent version.
    pub agent_version: String,
}

/// `ctl models`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelsView {
    /// The models, sorted by name.
    pub models: Vec<ModelsItem>,
    /// The current model as Juju names it (without the owner when the user owns it).
    pub current_model: Option<String>,
    /// The controller (not serialized: the items carry it).
    #[serde(skip)]
    pub controller: String,
    /// The client user (not serialized).
    #[serde(skip)]
    pub user: String,
}

impl ModelsView {
    /// The view of `models` on `controller` for `user`, whose current model is `current`.
    pub fn new(controller: &str, user: &str, current: Option<&str>, models: &[ModelInfo]) -> Self {
        let mut items: Vec<ModelsItem> = models
            .iter()
            .map(|info| {
                let model = info.model.clone().unwrap_or_default();
                let access = model
                    .users
                    .iter()
                    .find(|u| u.name == user)
                    .map(|u| access_name(u.access))
                    .unwrap_or_default();
                ModelsItem {
                    name: qualified(&model),
                    short_name: short(&model),
                    model_uuid: model.uuid.clone(),
                    controller_name: controller.to_string(),
                    controller_uuid: info.controller_uuid.clone(),
                    owner: model.owner.clone(),
                    cloud: model.cloud.clone(),
                    region: model.region.clone(),
                    life: life_name(model.life),
                    status: ModelsStatus {
                        current: model.status.clone().unwrap_or_default().current,
                        migration: empty_or(&info.migration),
                        migration_start: rfc3339(info.migration_start_unix_ms),
                        migration_end: rfc3339(info.migration_end_unix_ms),
                    },
                    machines: info.machine_count,
                    units: info.unit_count,
                    access,
                    agent_version: model.agent_version.clone(),
                }
            })
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            models: items,
            current_model: current.map(|c| short_for_user(c, user)),
            controller: controller.to_string(),
            user: user.to_string(),
        }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        let mut out = format!("Controller: {}\n\n", self.controller);
        if self.models.is_empty() {
            out.push_str("No models.\n");
            return Ok(out);
        }
        let rows: Vec<Vec<String>> = self
            .models
            .iter()
            .map(|m| {
                let mut name = short_for_user(&m.name, &self.user);
                if self.current_model.as_deref() == Some(name.as_str()) {
                    name.push('*');
                }
                let count = |n: u64| {
                    if n == 0 {
                        "-".to_string()
                    } else {
                        n.to_string()
                    }
                };
                let migration = m.status.migration.as_deref().unwrap_or_default();
                vec![
                    name,
                    cloud_region(&m.cloud, &m.region),
                    models_status(&m.status.current, migration),
                    count(m.machines),
                    count(m.units),
                    or_dash(&m.access),
                    // Starling keeps no per-user connection times.
                    "-".to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "Model",
                "Cloud/Region",
                "Status",
                "Machines",
                "Units",
                "Access",
                "Last connection",
            ],
            &rows,
            &[3, 4],
        ));
        Ok(out)
    }
}

/// A status with its time, as `show-model` and `status` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusItem {
    /// The value, e.g. `active`.
    pub current: String,
    /// The message.
    pub message: String,
    /// When it last changed.
    pub since: Option<String>,
}

impl StatusItem {
    /// The item of `status` (an absent status reads as `unknown`).
    pub fn new(status: Option<&Status>) -> Self {
        let status = status.cloned().unwrap_or_default();
        Self {
            current: if status.current.is_empty() {
                "unknown".to_string()
            } else {
                status.current
            },
            message: status.message,
            since: rfc3339(status.since_unix_ms),
        }
    }
}

/// The status of `ctl show-model`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShowModelStatus {
    /// The value.
    pub current: String,
    /// The message.
    pub message: String,
    /// When it last changed.
    pub since: Option<String>,
    /// The last migration's phase or outcome, if one ever ran.
    pub migration: Option<String>,
    /// When it started.
    pub migration_start: Option<String>,
    /// When it ended.
    pub migration_end: Option<String>,
}

/// One user of a model.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelUserItem {
    /// `read`, `write` or `admin`.
    pub access: String,
}

/// The body of `ctl show-model`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShowModelItem {
    /// `owner/name`.
    pub name: String,
    /// `name`.
    pub short_name: String,
    /// The model's UUID.
    pub model_uuid: String,
    /// The owning controller's UUID.
    pub controller_uuid: String,
    /// The controller's name in the client store.
    pub controller_name: String,
    /// The owner.
    pub owner: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// `alive`, `dying` or `dead`.
    pub life: String,
    /// The agent version.
    pub agent_version: String,
    /// Grows by one at every completed migration.
    pub ownership_epoch: u64,
    /// Status and migration summary.
    pub status: ShowModelStatus,
    /// Users by name.
    pub users: BTreeMap<String, ModelUserItem>,
    /// Machines in the model.
    pub machines: u64,
    /// Units in the model.
    pub units: u64,
    /// When the model was created.
    pub created: Option<String>,
}

/// `ctl show-model`: `{NAME: {...}}`, keyed by the short name.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShowModelView(pub BTreeMap<String, ShowModelItem>);

impl ShowModelView {
    /// The view of `info` on controller `controller`.
    pub fn new(controller: &str, info: &ModelInfo) -> Self {
        let model = info.model.clone().unwrap_or_default();
        let status = StatusItem::new(model.status.as_ref());
        let item = ShowModelItem {
            name: qualified(&model),
            short_name: short(&model),
            model_uuid: model.uuid.clone(),
            controller_uuid: info.controller_uuid.clone(),
            controller_name: controller.to_string(),
            owner: model.owner.clone(),
            cloud: model.cloud.clone(),
            region: model.region.clone(),
            life: life_name(model.life),
            agent_version: model.agent_version.clone(),
            ownership_epoch: model.ownership_epoch,
            status: ShowModelStatus {
                current: status.current,
                message: status.message,
                since: status.since,
                migration: empty_or(&info.migration),
                migration_start: rfc3339(info.migration_start_unix_ms),
                migration_end: rfc3339(info.migration_end_unix_ms),
            },
            users: model
                .users
                .iter()
                .map(|u| {
                    let access = access_name(u.access);
                    (u.name.clone(), ModelUserItem { access })
                })
                .collect(),
            machines: info.machine_count,
            units: info.unit_count,
            created: rfc3339(model.created_unix_ms),
        };
        Self(BTreeMap::from([(short(&model), item)]))
    }

    /// Renders in `format`; tabular is YAML too (there is no table for one model).
    pub fn render(&self, format: Format) -> Result<String> {
        match format {
            Format::Json => crate::render::json(self),
            Format::Yaml | Format::Tabular => crate::render::yaml(self),
        }
    }
}

/// `current` and `message` of a status.
#[derive(Debug, Serialize)]
pub struct ShortStatus {
    /// The value.
    pub current: String,
    /// The message.
    pub message: String,
}

impl ShortStatus {
    fn new(status: Option<&Status>) -> Self {
        let item = StatusItem::new(status);
        Self {
            current: item.current,
            message: item.message,
        }
    }
}

/// The `model` part of `ctl status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusModel {
    /// The model's short name.
    pub name: String,
    /// The controller's name in the client store.
    pub controller: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// The agent version.
    pub version: String,
    /// The model's status.
    pub model_status: ShortStatus,
    /// When the answering node made the status.
    pub timestamp: Option<String>,
    /// `migrating: ...` during a migration.
    pub notes: String,
}

/// A machine in `ctl status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusMachine {
    /// Agent presence as computed by the controller.
    pub agent_status: StatusItem,
    /// `alive`, `dying` or `dead`.
    pub life: String,
}

/// The agent status of a unit.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    /// The value, e.g. `idle`.
    pub current: String,
    /// The message.
    pub message: String,
}

/// A unit in `ctl status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusUnit {
    /// The machine id.
    pub machine: String,
    /// Whether it is the application's leader.
    pub leader: bool,
    /// The workload's status.
    pub workload_status: ShortStatus,
    /// The unit agent's status.
    pub agent_status: AgentStatus,
}

/// An application in `ctl status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusApplication {
    /// The charm name.
    pub charm: String,
    /// The charm revision.
    pub charm_rev: u32,
    /// The number of units.
    pub scale: usize,
    /// Whether it is exposed.
    pub exposed: bool,
    /// The application's status.
    pub application_status: ShortStatus,
    /// Units by name.
    pub units: NaturalMap<StatusUnit>,
    /// This application's endpoints → the applications related on them.
    pub relations: BTreeMap<String, Vec<String>>,
}

/// A relation in `ctl status`.
#[derive(Debug, Serialize)]
pub struct StatusRelation {
    /// `app:endpoint` of the providing side.
    pub provider: String,
    /// `app:endpoint` of the requiring side.
    pub requirer: String,
    /// The interface.
    pub interface: String,
    /// `regular` or `peer`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `ctl status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// The model.
    pub model: StatusModel,
    /// Machines by id.
    pub machines: NaturalMap<StatusMachine>,
    /// Applications by name.
    pub applications: NaturalMap<StatusApplication>,
    /// Relations, by provider then requirer.
    pub relations: Vec<StatusRelation>,
}

impl StatusView {
    /// The view of `status` on controller `controller`.
    pub fn new(controller: &str, status: &FullStatus) -> Self {
        let info = status.model.clone().unwrap_or_default();
        let model = info.model.clone().unwrap_or_default();
        let machines = status
            .machines
            .iter()
            .map(|m| {
                let item = StatusMachine {
                    agent_status: StatusItem::new(m.agent_status.as_ref()),
                    life: life_name(m.life),
                };
                (m.id.clone(), item)
            })
            .collect();
        let mut relations: Vec<StatusRelation> = status
            .relations
            .iter()
            .map(|r| {
                let name = |e: &starling_proto::model::RelationEndpoint| {
                    format!("{}:{}", e.application, e.endpoint)
                };
                let role = |e: &starling_proto::model::RelationEndpoint| e.role;
                let provider = r
                    .endpoints
                    .iter()
                    .find(|e| role(e) == Role::Provides as i32)
                    .or(r.endpoints.first());
                let requirer = r
                    .endpoints
                    .iter()
                    .find(|e| role(e) == Role::Requires as i32)
                    .or(r.endpoints.last());
                let peer = r.endpoints.len() == 1
                    || r.endpoints.iter().all(|e| role(e) == Role::Peer as i32);
                StatusRelation {
                    provider: provider.map(name).unwrap_or_default(),
                    requirer: requirer.map(name).unwrap_or_default(),
                    interface: r.interface.clone(),
                    kind: if peer { "peer" } else { "regular" }.to_string(),
                }
            })
            .collect();
        relations.sort_by(|a, b| {
            natural_cmp(&a.provider, &b.provider)
                .then_with(|| natural_cmp(&a.requirer, &b.requirer))
        });
        let applications = status
            .applications
            .iter()
            .map(|app| {
                let units: Vec<(String, StatusUnit)> = status
                    .units
                    .iter()
                    .filter(|u| u.application == app.name)
                    .map(|u| {
                        let agent = StatusItem::new(u.agent_status.as_ref());
                        let item = StatusUnit {
                            machine: u.machine.clone(),
                            leader: u.leader,
                            workload_status: ShortStatus::new(u.workload_status.as_ref()),
                            agent_status: AgentStatus {
                                current: agent.current,
                                message: agent.message,
                            },
                        };
                        (u.name.clone(), item)
                    })
                    .collect();
                let mut app_relations: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for r in &status.relations {
                    for (idx, e) in r.endpoints.iter().enumerate() {
                        if e.application != app.name {
                            continue;
                        }
                        let others: Vec<String> = if r.endpoints.len() == 1 {
                            vec![app.name.clone()]
                        } else {
                            r.endpoints
                                .iter()
                                .enumerate()
                                .filter(|(other_idx, _)| *other_idx != idx)
                                .map(|(_, o)| o.application.clone())
                                .collect()
                        };
                        let list = app_relations.entry(e.endpoint.clone()).or_default();
                        list.extend(others);
                        list.sort();
                        list.dedup();
                    }
                }
                let item = StatusApplication {
                    charm: app.charm_name.clone(),
                    charm_rev: app.charm_revision,
                    scale: units.len(),
                    exposed: app.exposed,
                    application_status: ShortStatus::new(app.status.as_ref()),
                    units: NaturalMap::new(units),
                    relations: app_relations,
                };
                (app.name.clone(), item)
            })
            .collect();
        Self {
            model: StatusModel {
                name: short(&model),
                controller: controller.to_string(),
                cloud: model.cloud.clone(),
                region: model.region.clone(),
                version: model.agent_version.clone(),
                model_status: ShortStatus::new(model.status.as_ref()),
                timestamp: rfc3339(status.now_unix_ms),
                notes: status.notes.clone(),
            },
            machines: NaturalMap::new(machines),
            applications: NaturalMap::new(applications),
            relations,
        }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        let m = &self.model;
        let mut out = table(
            &[
                "Model",
                "Controller",
                "Cloud/Region",
                "Version",
                "Timestamp",
                "Notes",
            ],
            &[vec![
                m.name.clone(),
                m.controller.clone(),
                cloud_region(&m.cloud, &m.region),
                or_dash(&m.version),
                m.timestamp.clone().unwrap_or_default(),
                m.notes.clone(),
            ]],
            &[],
        );
        if self.applications.0.is_empty() && self.machines.0.is_empty() {
            out.push_str(&format!("\nModel \"{}\" is empty.\n", m.name));
            return Ok(out);
        }
        if !self.applications.0.is_empty() {
            let rows: Vec<Vec<String>> = self
                .applications
                .0
                .iter()
                .map(|(name, a)| {
                    vec![
                        name.clone(),
                        String::new(),
                        a.application_status.current.clone(),
                        a.scale.to_string(),
                        a.charm.clone(),
                        a.charm_rev.to_string(),
                        if a.exposed { "yes" } else { "no" }.to_string(),
                        a.application_status.message.clone(),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &[
                    "App", "Version", "Status", "Scale", "Charm", "Rev", "Exposed", "Message",
                ],
                &rows,
                &[3, 5],
            ));
            let mut units: Vec<(&String, &StatusUnit)> = self
                .applications
                .0
                .iter()
                .flat_map(|(_, a)| a.units.0.iter().map(|(n, u)| (n, u)))
                .collect();
            units.sort_by(|a, b| natural_cmp(a.0, b.0));
            if !units.is_empty() {
                let rows: Vec<Vec<String>> = units
                    .iter()
                    .map(|(name, u)| {
                        vec![
                            if u.leader {
                                format!("{name}*")
                            } else {
                                name.to_string()
                            },
                            u.workload_status.current.clone(),
                            u.agent_status.current.clone(),
                            or_dash(&u.machine),
                            u.workload_status.message.clone(),
                        ]
                    })
                    .collect();
                out.push('\n');
                out.push_str(&table(
                    &["Unit", "Workload", "Agent", "Machine", "Message"],
                    &rows,
                    &[],
                ));
            }
        }
        if !self.machines.0.is_empty() {
            let rows: Vec<Vec<String>> = self
                .machines
                .0
                .iter()
                .map(|(id, machine)| {
                    vec![
                        id.clone(),
                        machine.agent_status.current.clone(),
                        machine.agent_status.message.clone(),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(&["Machine", "State", "Message"], &rows, &[]));
        }
        if !self.relations.is_empty() {
            let rows: Vec<Vec<String>> = self
                .relations
                .iter()
                .map(|r| {
                    vec![
                        r.provider.clone(),
                        r.requirer.clone(),
                        r.interface.clone(),
                        r.kind.clone(),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &["Relation provider", "Requirer", "Interface", "Type"],
                &rows,
                &[],
            ));
        }
        Ok(out)
    }
}

/// One setting in `ctl config APP`.
#[derive(Debug, Serialize)]
pub struct ConfigSetting {
    /// The effective value.
    pub value: String,
    /// `default` (the charm's) or `user` (set).
    pub source: String,
}

/// `ctl show-status-log ENTITY`: one row per kept status, oldest first. YAML and JSON are a
/// list of `{time, type, status, message}`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct StatusLogView {
    /// The entries.
    pub entries: Vec<StatusLogRow>,
}

/// One entry of [`StatusLogView`].
#[derive(Debug, Serialize)]
pub struct StatusLogRow {
    /// When the status was set (RFC 3339, UTC).
    pub time: String,
    /// `workload`, `juju-unit`, `juju-machine`, `application` or `model`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status.
    pub status: String,
    /// Its message.
    pub message: String,
}

impl StatusLogView {
    /// The view of `log`.
    pub fn new(log: &StatusLogResponse) -> Self {
        let entries = log
            .entries
            .iter()
            .map(|entry| {
                let status = entry.status.clone().unwrap_or_default();
                StatusLogRow {
                    time: rfc3339(status.since_unix_ms).unwrap_or_else(|| "-".to_owned()),
                    kind: entry.kind.clone(),
                    status: status.current,
                    message: status.message,
                }
            })
            .collect();
        Self { entries }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        if self.entries.is_empty() {
            return Ok("No status history.\n".to_owned());
        }
        let rows: Vec<Vec<String>> = self
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.time.clone(),
                    e.kind.clone(),
                    e.status.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        Ok(table(&["Time", "Type", "Status", "Message"], &rows, &[]))
    }
}

/// `ctl config APP`.
#[derive(Debug, Serialize)]
pub struct AppConfigView {
    /// The application.
    pub application: String,
    /// Settings by key.
    pub settings: BTreeMap<String, ConfigSetting>,
}

impl AppConfigView {
    /// The view of `config` of `application`.
    pub fn new(application: &str, config: &ApplicationConfig) -> Self {
        let settings = config
            .values
            .iter()
            .map(|(k, v)| {
                let source = if config.defaults.contains(k) {
                    "default"
                } else {
                    "user"
                };
                let setting = ConfigSetting {
                    value: v.clone(),
                    source: source.to_string(),
                };
                (k.clone(), setting)
            })
            .collect();
        Self {
            application: application.to_string(),
            settings,
        }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        if self.settings.is_empty() {
            return Ok(format!(
                "Application \"{}\" has no config.\n",
                self.application
            ));
        }
        let rows: Vec<Vec<String>> = self
            .settings
            .iter()
            .map(|(k, s)| vec![k.clone(), s.value.clone(), s.source.clone()])
            .collect();
        Ok(table(&["Key", "Value", "Source"], &rows, &[]))
    }
}

/// `ctl model-config` with no key: every key of a model's config. YAML and JSON are the bare
/// map of keys to values; the table has one row per key, in key order.
#[derive(Debug)]
pub struct ModelConfigView {
    /// The qualified model name, for the empty-config line.
    pub model: String,
    /// The values by key.
    pub values: BTreeMap<String, String>,
}

impl ModelConfigView {
    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, &self.values)? {
            return Ok(text);
        }
        if self.values.is_empty() {
            return Ok(format!("Model \"{}\" has no config.\n", self.model));
        }
        let rows: Vec<Vec<String>> = self
            .values
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        Ok(table(&["Key", "Value"], &rows, &[]))
    }
}

/// One `ctl debug-log` line: `ENTITY: TIME LEVEL MODULE MESSAGE`.
pub fn log_line(record: &LogRecord) -> String {
    let time = rfc3339(record.time_unix_ms).unwrap_or_else(|| "-".to_string());
    let module = if record.module.is_empty() {
        "-"
    } else {
        record.module.as_str()
    };
    // One record is one line: embedded newlines would let a workload forge records.
    let message = record.message.replace('\n', "\\n");
    format!(
        "{}: {time} {} {module} {message}\n",
        record.entity,
        level_name(record.level)
    )
}

/// `ctl whoami`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WhoAmIView {
    /// The controller's name in the client store.
    pub controller: String,
    /// The current model, if any (short when the user owns it).
    pub model: Option<String>,
    /// The user.
    pub user: String,
    /// The user's controller access as the controller reports it.
    pub controller_access: String,
}

impl WhoAmIView {
    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        Ok(format!(
            "Controller:  {}\nModel:       {}\nUser:        {}\nAccess:      {}\n",
            self.controller,
            self.model.as_deref().unwrap_or("-"),
            self.user,
            or_dash(&self.controller_access)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::model::{
        Application, Machine, ModelUser, Relation, RelationEndpoint, Unit,
    };

    const T0: i64 = 1_700_000_000_000;

    fn status(current: &str, message: &str) -> Option<Status> {
        Some(Status {
            current: current.into(),
            message: message.into(),
            since_unix_ms: T0,
        })
    }

    fn model_info() -> ModelInfo {
        ModelInfo {
            model: Some(Model {
                uuid: "11111111-2222-4333-8444-555555555555".into(),
                name: "web".into(),
                owner: "admin".into(),
                cloud: "localhost".into(),
                region: "default".into(),
                life: Life::Alive as i32,
                status: status("available", ""),
                agent_version: "0.1.0".into(),
                ownership_epoch: 2,
                users: vec![
                    ModelUser {
                        name: "admin".into(),
                        access: Access::Admin as i32,
                    },
                    ModelUser {
                        name: "bob".into(),
                        access: Access::Read as i32,
                    },
                ],
                created_unix_ms: T0,
                ..Default::default()
            }),
            controller_uuid: "uuid-alpha".into(),
            controller_name: "alpha".into(),
            machine_count: 3,
            unit_count: 4,
            migration: "done".into(),
            migration_start_unix_ms: T0 + 1000,
            migration_end_unix_ms: T0 + 61_000,
            ..Default::default()
        }
    }

    fn unit(name: &str, machine: &str, leader: bool, workload: &str) -> Unit {
        Unit {
            name: name.into(),
            application: name.split('/').next().unwrap().into(),
            machine: machine.into(),
            workload_status: status(workload, if workload == "active" { "" } else { "starting" }),
            agent_status: status("idle", ""),
            leader,
            life: Life::Alive as i32,
        }
    }

    fn app(name: &str, charm: &str) -> Application {
        Application {
            name: name.into(),
            charm_name: charm.into(),
            charm_revision: 1,
            status: status("active", ""),
            ..Default::default()
        }
    }

    fn endpoint(app: &str, ep: &str, role: Role) -> RelationEndpoint {
        RelationEndpoint {
            application: app.into(),
            endpoint: ep.into(),
            role: role as i32,
        }
    }

    pub(crate) fn full_status() -> FullStatus {
        let machine = |id: &str, current: &str| Machine {
            id: id.into(),
            agent_status: status(current, ""),
            ..Default::default()
        };
        FullStatus {
            model: Some(model_info()),
            machines: vec![
                machine("10", "down"),
                machine("0", "started"),
                machine("2", "started"),
            ],
            applications: vec![app("web", "web"), app("db", "db")],
            units: vec![
                unit("web/10", "10", false, "waiting"),
                unit("web/2", "2", true, "active"),
                unit("db/0", "0", true, "active"),
            ],
            relations: vec![
                Relation {
                    id: 0,
                    endpoints: vec![
                        endpoint("web", "db", Role::Requires),
                        endpoint("db", "db", Role::Provides),
                    ],
                    interface: "pgsql".into(),
                    life: 0,
                },
                Relation {
                    id: 1,
                    endpoints: vec![endpoint("web", "cluster", Role::Peer)],
                    interface: "web-peers".into(),
                    life: 0,
                },
            ],
            notes: "migrating: exporting".into(),
            now_unix_ms: T0 + 120_000,
        }
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["web/10", "web/2", "db/0", "web/1", "10", "9", "web/02x"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            ["9", "10", "db/0", "web/1", "web/2", "web/02x", "web/10"]
        );
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("", "a"), Ordering::Less);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(T0).as_deref(), Some("2023-11-14T22:13:20.000Z"));
    }

    #[test]
    fn status_tabular() {
        insta::assert_snapshot!(StatusView::new("alpha", &full_status())
            .render(Format::Tabular)
            .unwrap());
    }

    #[test]
    fn status_yaml() {
        insta::assert_snapshot!(StatusView::new("alpha", &full_status())
            .render(Format::Yaml)
            .unwrap());
    }

    #[test]
    fn status_json_has_the_contract_shape() {
        let text = StatusView::new("alpha", &full_status())
            .render(Format::Json)
            .unwrap();
        insta::assert_snapshot!(text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["name", "controller", "cloud", "region", "version"] {
            assert!(v["model"][key].is_string(), "{key}");
        }
        assert_eq!(v["model"]["model-status"]["current"], "available");
        assert_eq!(v["machines"]["10"]["agent-status"]["current"], "down");
        let web = &v["applications"]["web"];
        assert_eq!(web["charm"], "web");
        assert_eq!(web["scale"], 2);
        assert_eq!(web["application-status"]["current"], "active");
        assert_eq!(web["units"]["web/2"]["machine"], "2");
        assert_eq!(web["units"]["web/2"]["leader"], true);
        assert_eq!(
            web["units"]["web/10"]["workload-status"]["message"],
            "starting"
        );
        assert_eq!(web["units"]["web/10"]["agent-status"]["current"], "idle");
        assert_eq!(web["relations"]["db"][0], "db");
        assert_eq!(web["relations"]["cluster"][0], "web");
        assert_eq!(v["relations"][0]["provider"], "db:db");
        assert_eq!(v["relations"][0]["requirer"], "web:db");
        assert_eq!(v["relations"][0]["type"], "regular");
        assert_eq!(v["relations"][1]["type"], "peer");
        // Natural order in the text, not byte order.
        assert!(text.find("\"web/2\"").unwrap() < text.find("\"web/10\"").unwrap());
    }

    #[test]
    fn empty_status() {
        let s = FullStatus {
            model: Some(model_info()),
            now_unix_ms: T0,
            ..Default::default()
        };
        insta::assert_snapshot!(StatusView::new("alpha", &s)
            .render(Format::Tabular)
            .unwrap());
    }

    #[test]
    fn models_views() {
        let mut other = model_info();
        let m = other.model.as_mut().unwrap();
        m.name = "other".into();
        m.owner = "bob".into();
        other.migration = String::new();
        other.migration_start_unix_ms = 0;
        other.migration_end_unix_ms = 0;
        other.machine_count = 0;
        other.unit_count = 0;
        let view = ModelsView::new("alpha", "admin", Some("admin/web"), &[other, model_info()]);
        insta::assert_snapshot!("models_tabular", view.render(Format::Tabular).unwrap());
        let text = view.render(Format::Json).unwrap();
        insta::assert_snapshot!("models_json", text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["current-model"], "web");
        assert_eq!(v["models"][0]["name"], "admin/web");
        assert_eq!(v["models"][0]["short-name"], "web");
        assert_eq!(
            v["models"][1]["status"]["migration"],
            serde_json::Value::Null
        );
    }

    /// A model migrating now and one whose last migration aborted, as the controller lists them.
    fn migrating_models() -> Vec<ModelInfo> {
        let mut migrating = model_info();
        migrating.model.as_mut().unwrap().status = status("busy", "migrating");
        migrating.migration = "IMPORT".into();
        migrating.migration_end_unix_ms = 0;
        let mut aborted = model_info();
        let m = aborted.model.as_mut().unwrap();
        m.name = "db".into();
        m.uuid = "66666666-7777-4888-8999-000000000000".into();
        aborted.migration = "ABORTDONE: machine(s) 3 did not acknowledge the quiesce".into();
        vec![migrating, aborted]
    }

    #[test]
    fn models_show_migrations() {
        let view = ModelsView::new("alpha", "admin", None, &migrating_models());
        insta::assert_snapshot!(
            "models_tabular_migrating",
            view.render(Format::Tabular).unwrap()
        );
        let v: serde_json::Value =
            serde_json::from_str(&view.render(Format::Json).unwrap()).unwrap();
        let db = &v["models"][0]["status"];
        assert_eq!(
            db["migration"],
            "ABORTDONE: machine(s) 3 did not acknowledge the quiesce"
        );
        assert_eq!(db["migration-start"], "2023-11-14T22:13:21.000Z");
        assert_eq!(db["migration-end"], "2023-11-14T22:14:21.000Z");
        let web = &v["models"][1]["status"];
        assert_eq!(web["current"], "busy");
        assert_eq!(web["migration"], "IMPORT");
        assert_eq!(web["migration-start"], "2023-11-14T22:13:21.000Z");
        assert!(web["migration-end"].is_null());
    }

    #[test]
    fn show_model_shows_the_migration() {
        let info = &migrating_models()[1];
        let v: serde_json::Value = serde_json::from_str(
            &ShowModelView::new("alpha", info)
                .render(Format::Json)
                .unwrap(),
        )
        .unwrap();
        let status = &v["db"]["status"];
        assert_eq!(
            status["migration"],
            "ABORTDONE: machine(s) 3 did not acknowledge the quiesce"
        );
        assert_eq!(status["migration-start"], "2023-11-14T22:13:21.000Z");
        assert_eq!(status["migration-end"], "2023-11-14T22:14:21.000Z");
        let yaml = ShowModelView::new("alpha", &migrating_models()[0])
            .render(Format::Yaml)
            .unwrap();
        assert!(yaml.contains("    migration: IMPORT\n"), "{yaml}");
        assert!(
            yaml.contains("    migration-start: \"2023-11-14T22:13:21.000Z\"\n"),
            "{yaml}"
        );
    }

    #[test]
    fn show_model_views() {
        let view = ShowModelView::new("alpha", &model_info());
        insta::assert_snapshot!("show_model_yaml", view.render(Format::Yaml).unwrap());
        let text = view.render(Format::Json).unwrap();
        insta::assert_snapshot!("show_model_json", text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let m = &v["web"];
        for key in [
            "name",
            "short-name",
            "model-uuid",
            "controller-uuid",
            "controller-name",
            "cloud",
            "region",
            "life",
            "agent-version",
            "ownership-epoch",
            "status",
            "users",
        ] {
            assert!(!m[key].is_null(), "{key}");
        }
        for key in [
            "current",
            "message",
            "since",
            "migration",
            "migration-start",
            "migration-end",
        ] {
            assert!(m["status"].as_object().unwrap().contains_key(key), "{key}");
        }
        assert_eq!(m["users"]["bob"]["access"], "read");
    }

    fn model_config(values: &[(&str, &str)]) -> ModelConfigView {
        ModelConfigView {
            model: "admin/web".into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn model_config_formats() {
        let view = model_config(&[
            ("owner", "ops-team"),
            ("backup.window", "02:00-04:00"),
            ("cost-centre", "a=b c"),
        ]);
        assert_eq!(
            view.render(Format::Tabular).unwrap(),
            "Key            Value\n\
             backup.window  02:00-04:00\n\
             cost-centre    a=b c\n\
             owner          ops-team\n"
        );
        assert_eq!(
            view.render(Format::Json).unwrap(),
            "{\n  \"backup.window\": \"02:00-04:00\",\n  \"cost-centre\": \"a=b c\",\n  \
             \"owner\": \"ops-team\"\n}\n"
        );
        let yaml: BTreeMap<String, String> =
            serde_saphyr::from_str(&view.render(Format::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, view.values);
    }

    #[test]
    fn empty_model_config() {
        let view = model_config(&[]);
        assert_eq!(
            view.render(Format::Tabular).unwrap(),
            "Model \"admin/web\" has no config.\n"
        );
        assert_eq!(view.render(Format::Json).unwrap(), "{}\n");
    }

    #[test]
    fn log_lines() {
        let record = LogRecord {
            seq: 1,
            time_unix_ms: T0,
            entity: "unit-web-0".into(),
            level: LogLevel::Warning as i32,
            module: "starling.workload".into(),
            message: "two\nlines".into(),
        };
        assert_eq!(
            log_line(&record),
            "unit-web-0: 2023-11-14T22:13:20.000Z WARNING starling.workload two\\nlines\n"
        );
    }
}
