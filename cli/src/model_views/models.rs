//! The views of `ctl models`, `show-model` and `whoami`.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use starling_proto::controller::ModelInfo;
use starling_proto::model::Status;

use super::{empty_or, qualified, short};
use crate::format::{
    access_name, human_bytes, life_name, rate_cell, rfc3339, round_rate, short_for_user,
};
use crate::migration_view::models_status;
use crate::render::{cloud_region, or_dash, structured, table, Format};

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

/// A model's load as its controller measures it: decayed rates per second (over about the last
/// minute), the agents connected, and what the model occupies.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoadItem {
    /// Commands applied to the model per second, agent reports included.
    pub writes_per_second: f64,
    /// Agent reports applied per second.
    pub agent_reports_per_second: f64,
    /// Reads served per second, over the controller's nodes.
    pub reads_per_second: f64,
    /// Machine agents connected, over the controller's nodes.
    pub agents: u64,
    /// Bytes of the model's records (what a migration moves), its log excluded.
    pub size_bytes: u64,
    /// The model's records, its log excluded.
    pub records: u64,
    /// Records in the model's log.
    pub log_records: u64,
}

impl LoadItem {
    /// The item of `info`'s load (zero when the controller reported none).
    pub fn new(info: &ModelInfo) -> Self {
        let load = info.load.unwrap_or_default();
        Self {
            writes_per_second: round_rate(load.writes_per_second),
            agent_reports_per_second: round_rate(load.reports_per_second),
            reads_per_second: round_rate(load.reads_per_second),
            agents: load.agents_connected,
            size_bytes: load.size_bytes,
            records: load.records,
            log_records: load.log_records,
        }
    }
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
    /// What the model does and occupies.
    #[serde(flatten)]
    pub load: LoadItem,
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
                    load: LoadItem::new(info),
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
                    rate_cell(m.load.writes_per_second),
                    count(m.load.agents),
                    human_bytes(m.load.size_bytes),
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
                "Writes/s",
                "Agents",
                "Size",
                "Access",
                "Last connection",
            ],
            &rows,
            &[3, 4, 5, 6, 7],
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
    /// What the model does and occupies.
    pub load: LoadItem,
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
            load: LoadItem::new(info),
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
    #[allow(unused_imports)]
    use crate::model_views::fixtures::*;

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
        other.load = None;
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
        // The load keys, rates rounded to what a decayed rate can claim.
        let web = &v["models"][0];
        assert_eq!(web["writes-per-second"], 12.346);
        assert_eq!(web["agent-reports-per-second"], 4.5);
        assert_eq!(web["reads-per-second"], 0.25);
        assert_eq!(web["agents"], 3);
        assert_eq!(web["size-bytes"], 23_456);
        assert_eq!(web["records"], 42);
        assert_eq!(web["log-records"], 17);
        assert_eq!(v["models"][1]["writes-per-second"], 0.0);
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
}
