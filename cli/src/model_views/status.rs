//! The views of `ctl status`, `show-status-log` and `debug-log` lines.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use starling_proto::controller::{FullStatus, StatusLogResponse};
use starling_proto::model::{LogRecord, Role, Status};

use super::{short, StatusItem};
use crate::format::{level_name, life_name, natural_cmp, rfc3339, NaturalMap};
use crate::render::{cloud_region, or_dash, structured, table, Format};

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

/// `ctl show-status-log ENTITY`: one row per kept status, oldest first. YAML and JSON are a
/// list of `{time, type, status, message}`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct StatusLogView {
    /// The entries.
    pub entries: Vec<StatusLogRow>,
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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::model_views::fixtures::*;
    use starling_proto::model::LogLevel;

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
    fn log_lines() {
        let record = LogRecord {
            seq: 1,
            time_unix_ms: T0,
            entity: "unit-web-0".into(),
            level: LogLevel::Warning as i32,
            module: "starling.workload".into(),
            message: "two\nlines".into(),
            agent_seq: 0,
        };
        assert_eq!(
            log_line(&record),
            "unit-web-0: 2023-11-14T22:13:20.000Z WARNING starling.workload two\\nlines\n"
        );
    }
}
