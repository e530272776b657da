//! Output formats (`--format tabular|yaml|json`) and the views each command renders. Every
//! function here returns text; only `main` prints.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;
use starling_proto::controller::ControllerInfo;

use crate::format::{human_bytes, rate_cell, round_rate};
use crate::store::StoreState;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Tabular,
    /// YAML.
    Yaml,
    /// JSON (pretty-printed).
    Json,
}

/// `value` as YAML.
pub fn yaml<T: Serialize>(value: &T) -> Result<String> {
    let mut text = serde_saphyr::to_string(value).context("cannot encode YAML")?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `value` as pretty JSON with a final newline.
pub fn json<T: Serialize>(value: &T) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    Ok(text)
}

/// `value` as YAML or JSON; `None` for tabular, which each view renders itself.
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>> {
    match format {
        Format::Tabular => Ok(None),
        Format::Yaml => yaml(value).map(Some),
        Format::Json => json(value).map(Some),
    }
}

/// Columns separated by two spaces, no borders, no trailing blanks (like Juju's tabular output).
/// Columns listed in `right` are right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    for row in rows {
        t.add_row(row.iter().map(String::as_str));
    }
    let last = headers.len().saturating_sub(1);
    for (idx, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if idx == last { 0 } else { 2 }));
        column.set_constraint(ColumnConstraint::ContentWidth);
        if right.contains(&idx) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s`, or `-` when empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `cloud/region`, `cloud` without a region, `-` without a cloud.
pub fn cloud_region(cloud: &str, region: &str) -> String {
    match (cloud.is_empty(), region.is_empty()) {
        (true, _) => "-".to_string(),
        (false, true) => cloud.to_string(),
        (false, false) => format!("{cloud}/{region}"),
    }
}

/// One controller in `ctl controllers --format yaml|json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ControllerItem {
    /// The controller's UUID.
    pub uuid: String,
    /// Client endpoints.
    pub api_endpoints: Vec<String>,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// The version last seen.
    pub agent_version: String,
    /// Node count last seen.
    pub node_count: usize,
    /// The account's user.
    pub user: String,
    /// The account's access level.
    pub access: String,
    /// The current model, if any.
    pub current_model: Option<String>,
}

/// `ctl controllers --format yaml|json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ControllersView {
    /// Controllers by name.
    pub controllers: BTreeMap<String, ControllerItem>,
    /// The current controller, if any.
    pub current_controller: Option<String>,
}

impl ControllersView {
    /// The view of the local store.
    pub fn from_store(state: &StoreState) -> Self {
        let controllers = state
            .controllers
            .controllers
            .iter()
            .map(|(name, c)| {
                let account = state.accounts.controllers.get(name);
                let item = ControllerItem {
                    uuid: c.uuid.clone(),
                    api_endpoints: c.api_endpoints.clone(),
                    cloud: c.cloud.clone(),
                    region: c.region.clone(),
                    agent_version: c.agent_version.clone(),
                    node_count: c.node_count,
                    user: account.map(|a| a.user.clone()).unwrap_or_default(),
                    access: account
                        .map(|a| a.last_known_access.clone())
                        .unwrap_or_default(),
                    current_model: state.current_model(name).map(str::to_string),
                };
                (name.clone(), item)
            })
            .collect();
        Self {
            controllers,
            current_controller: state.controllers.current_controller.clone(),
        }
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        if self.controllers.is_empty() {
            return Ok("No controllers registered.\n".to_string());
        }
        let rows: Vec<Vec<String>> = self
            .controllers
            .iter()
            .map(|(name, c)| {
                let current = self.current_controller.as_deref() == Some(name.as_str());
                // Juju shows a model owned by the account's user without the owner.
                let model = c.current_model.as_deref().map(|m| {
                    m.strip_prefix(&format!("{}/", c.user))
                        .unwrap_or(m)
                        .to_string()
                });
                vec![
                    if current {
                        format!("{name}*")
                    } else {
                        name.clone()
                    },
                    or_dash(model.as_deref().unwrap_or("")),
                    or_dash(&c.user),
                    or_dash(&c.access),
                    cloud_region(&c.cloud, &c.region),
                    c.node_count.to_string(),
                    or_dash(&c.agent_version),
                ]
            })
            .collect();
        Ok(table(
            &[
                "Controller",
                "Model",
                "User",
                "Access",
                "Cloud/Region",
                "Nodes",
                "Version",
            ],
            &rows,
            &[5],
        ))
    }
}

/// One member in `ctl show-controller`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MemberItem {
    /// Node id.
    pub id: u64,
    /// Peer/client address.
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    /// The node's term.
    pub term: u64,
    /// The node's applied index.
    pub applied_index: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `unreachable`.
    pub state: String,
    /// The node's version.
    pub version: String,
    /// What the leader knows this node has replicated, when the answer came from the leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// The index of the node's last snapshot, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_index: Option<u64>,
    /// The index up to which the node's log is purged, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged_index: Option<u64>,
    /// The size of the node's data dir, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Model reads the node served per second.
    pub reads_per_second: f64,
    /// Machine agents with a watch open on the node.
    pub agents: u64,
}

/// A controller's totals and capacity figures in `ctl show-controller`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ControllerLoadItem {
    /// Models active on it, its controller model included.
    pub models: u64,
    /// Machines of those models.
    pub machines: u64,
    /// Units of those models.
    pub units: u64,
    /// Machine agents connected, over the members.
    pub agents: u64,
    /// Commands applied to its models per second (decayed over about a minute).
    pub writes_per_second: f64,
    /// Agent reports among them.
    pub agent_reports_per_second: f64,
    /// Model reads served per second, over the members.
    pub reads_per_second: f64,
    /// Bytes of the models' records (what migrating them all would move).
    pub models_bytes: u64,
    /// Bytes of the models' logs.
    pub logs_bytes: u64,
    /// The largest data dir among the members.
    pub disk_bytes: u64,
    /// Migrations from it in flight.
    pub migrations: u64,
}

/// The body of `ctl show-controller` for one controller.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShowControllerItem {
    /// The controller's UUID.
    pub uuid: String,
    /// The controller's version.
    pub version: String,
    /// Cloud.
    pub cloud: String,
    /// Region.
    pub region: String,
    /// Client endpoints of every member.
    pub api_endpoints: Vec<String>,
    /// The leader's node id, if there is one.
    pub leader: Option<u64>,
    /// The answering node's term.
    pub term: u64,
    /// Members by id.
    pub members: Vec<MemberItem>,
    /// Totals and capacity figures.
    pub load: ControllerLoadItem,
}

/// `ctl show-controller`: `{NAME: {...}}`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShowControllerView(pub BTreeMap<String, ShowControllerItem>);

impl ShowControllerView {
    /// The view of `info` for controller `name` (the client store's name for it).
    pub fn new(name: &str, info: &ControllerInfo) -> Self {
        let mut members: Vec<MemberItem> = info
            .members
            .iter()
            .map(|m| MemberItem {
                id: m.id,
                address: m.address.clone(),
                role: m.role.clone(),
                term: m.term,
                applied_index: m.applied_index,
                state: m.state.clone(),
                version: m.version.clone(),
                matched_index: m.matched_index,
                snapshot_index: m.snapshot_index,
                purged_index: m.purged_index,
                disk_bytes: m.disk_bytes,
                reads_per_second: round_rate(m.reads_per_second),
                agents: m.agents_connected,
            })
            .collect();
        let load = info.load.unwrap_or_default();
        members.sort_by_key(|m| m.id);
        let item = ShowControllerItem {
            uuid: info.uuid.clone(),
            version: info.version.clone(),
            cloud: info.cloud.clone(),
            region: info.region.clone(),
            api_endpoints: info.api_endpoints.clone(),
            leader: info.leader_id,
            term: info.term,
            members,
            load: ControllerLoadItem {
                models: load.models,
                machines: load.machines,
                units: load.units,
                agents: load.agents_connected,
                writes_per_second: round_rate(load.writes_per_second),
                agent_reports_per_second: round_rate(load.reports_per_second),
                reads_per_second: round_rate(load.reads_per_second),
                models_bytes: load.models_bytes,
                logs_bytes: load.logs_bytes,
                disk_bytes: load.disk_bytes,
                migrations: load.migrations,
            },
        };
        Self(BTreeMap::from([(name.to_string(), item)]))
    }

    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        let mut out = String::new();
        for (name, c) in &self.0 {
            let leader = c.leader.map_or("-".to_string(), |l| l.to_string());
            out.push_str(&table(
                &[
                    "Controller",
                    "UUID",
                    "Version",
                    "Cloud/Region",
                    "Leader",
                    "Term",
                ],
                &[vec![
                    name.clone(),
                    c.uuid.clone(),
                    or_dash(&c.version),
                    cloud_region(&c.cloud, &c.region),
                    leader,
                    c.term.to_string(),
                ]],
                &[],
            ));
            out.push('\n');
            let rows: Vec<Vec<String>> = c
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.address.clone(),
                        m.role.clone(),
                        m.state.clone(),
                        m.term.to_string(),
                        m.applied_index.to_string(),
                        m.agents.to_string(),
                        m.disk_bytes.map_or("-".to_string(), human_bytes),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "Id", "Address", "Role", "State", "Term", "Applied", "Agents", "Disk",
                ],
                &rows,
                &[4, 5, 6, 7],
            ));
            out.push('\n');
            let l = &c.load;
            out.push_str(&table(
                &[
                    "Models",
                    "Machines",
                    "Units",
                    "Agents",
                    "Writes/s",
                    "Reads/s",
                    "Model data",
                    "Disk",
                    "Migrating",
                ],
                &[vec![
                    l.models.to_string(),
                    l.machines.to_string(),
                    l.units.to_string(),
                    l.agents.to_string(),
                    rate_cell(l.writes_per_second),
                    rate_cell(l.reads_per_second),
                    human_bytes(l.models_bytes),
                    human_bytes(l.disk_bytes),
                    l.migrations.to_string(),
                ]],
                &[0, 1, 2, 3, 4, 5, 6, 7, 8],
            ));
        }
        Ok(out)
    }
}

/// `ctl controller-config` with no keys: all values.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ControllerConfigView(pub BTreeMap<String, String>);

impl ControllerConfigView {
    /// Renders in `format`.
    pub fn render(&self, format: Format) -> Result<String> {
        if let Some(text) = structured(format, self)? {
            return Ok(text);
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        Ok(table(&["Attribute", "Value"], &rows, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountDetails, ControllerDetails};
    use starling_proto::controller::Member;

    // `..Default::default()` keeps these literals compiling when the proto gains fields.
    #[allow(clippy::needless_update)]
    fn info() -> ControllerInfo {
        let member = |id: u64, state: &str, role: &str, applied: u64| Member {
            id,
            address: format!("127.0.0.1:1707{id}"),
            role: role.to_string(),
            state: state.to_string(),
            term: 3,
            applied_index: applied,
            matched_index: Some(applied),
            version: "0.1.0".to_string(),
            // Fields the proto gains later stay out of these snapshots.
            ..Default::default()
        };
        ControllerInfo {
            name: "alpha".to_string(),
            uuid: "6f9a3c2e-0000-4000-8000-000000000001".to_string(),
            version: "0.1.0".to_string(),
            cloud: "localhost".to_string(),
            region: "default".to_string(),
            api_endpoints: vec![
                "127.0.0.1:17071".into(),
                "127.0.0.1:17072".into(),
                "127.0.0.1:17073".into(),
            ],
            leader_id: Some(1),
            // Out of order on purpose: the view sorts by id.
            members: vec![
                member(2, "follower", "voter", 41),
                Member {
                    disk_bytes: Some(56_000_000),
                    reads_per_second: 2.5,
                    agents_connected: 11,
                    ..member(1, "leader", "voter", 42)
                },
                member(3, "learner", "learner", 7),
            ],
            term: 3,
            ca_cert: "PEM".to_string(),
            load: Some(starling_proto::controller::ControllerLoad {
                models: 4,
                machines: 12,
                units: 30,
                agents_connected: 11,
                writes_per_second: 123.456,
                reports_per_second: 40.0,
                reads_per_second: 2.5,
                models_bytes: 1_234_567,
                logs_bytes: 89_000,
                disk_bytes: 56_000_000,
                migrations: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn show_controller_tabular() {
        insta::assert_snapshot!(ShowControllerView::new("alpha", &info())
            .render(Format::Tabular)
            .unwrap());
    }

    #[test]
    fn show_controller_yaml() {
        insta::assert_snapshot!(ShowControllerView::new("alpha", &info())
            .render(Format::Yaml)
            .unwrap());
    }

    #[test]
    fn show_controller_json() {
        let text = ShowControllerView::new("alpha", &info())
            .render(Format::Json)
            .unwrap();
        insta::assert_snapshot!(text);
        // The contract's shape, checked apart from the snapshot.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let c = &v["alpha"];
        for key in [
            "uuid",
            "version",
            "cloud",
            "region",
            "api-endpoints",
            "leader",
            "members",
        ] {
            assert!(!c[key].is_null(), "{key}");
        }
        for key in [
            "id",
            "address",
            "role",
            "term",
            "applied-index",
            "state",
            "version",
        ] {
            assert!(!c["members"][0][key].is_null(), "{key}");
        }
    }

    #[test]
    fn show_controller_without_leader_has_null_leader() {
        let mut i = info();
        i.leader_id = None;
        let v: serde_json::Value = serde_json::from_str(
            &ShowControllerView::new("alpha", &i)
                .render(Format::Json)
                .unwrap(),
        )
        .unwrap();
        assert!(v["alpha"].as_object().unwrap().contains_key("leader"));
        assert!(v["alpha"]["leader"].is_null());
        insta::assert_snapshot!(ShowControllerView::new("alpha", &i)
            .render(Format::Tabular)
            .unwrap());
    }

    fn store() -> StoreState {
        let mut s = StoreState::default();
        let details = |uuid: &str, n: usize, cloud: &str| ControllerDetails {
            uuid: uuid.to_string(),
            api_endpoints: (0..n).map(|i| format!("127.0.0.1:1707{i}")).collect(),
            ca_cert: "PEM".to_string(),
            cloud: cloud.to_string(),
            region: "default".to_string(),
            agent_version: "0.1.0".to_string(),
            node_count: n,
        };
        let account = AccountDetails {
            user: "admin".to_string(),
            token: "secret-token".to_string(),
            last_known_access: "superuser".to_string(),
        };
        s.add_controller(
            "beta",
            details("uuid-beta", 1, "aws"),
            account.clone(),
            false,
        )
        .unwrap();
        s.add_controller(
            "alpha",
            details("uuid-alpha", 3, "localhost"),
            account,
            false,
        )
        .unwrap();
        s
    }

    #[test]
    fn controllers_tabular() {
        insta::assert_snapshot!(ControllersView::from_store(&store())
            .render(Format::Tabular)
            .unwrap());
    }

    #[test]
    fn controllers_yaml() {
        let text = ControllersView::from_store(&store())
            .render(Format::Yaml)
            .unwrap();
        assert!(
            !text.contains("secret-token"),
            "tokens never leave the store"
        );
        insta::assert_snapshot!(text);
    }

    #[test]
    fn controllers_json() {
        insta::assert_snapshot!(ControllersView::from_store(&store())
            .render(Format::Json)
            .unwrap());
    }

    #[test]
    fn controllers_empty() {
        let text = ControllersView::from_store(&StoreState::default())
            .render(Format::Tabular)
            .unwrap();
        assert_eq!(text, "No controllers registered.\n");
    }

    fn config() -> ControllerConfigView {
        ControllerConfigView(BTreeMap::from([
            ("snapshot-interval".to_string(), "10000".to_string()),
            ("audit-log".to_string(), "true".to_string()),
            ("motd".to_string(), "hello, world".to_string()),
        ]))
    }

    #[test]
    fn controller_config_tabular() {
        insta::assert_snapshot!(config().render(Format::Tabular).unwrap());
    }

    #[test]
    fn controller_config_yaml() {
        insta::assert_snapshot!(config().render(Format::Yaml).unwrap());
    }

    #[test]
    fn controller_config_json() {
        insta::assert_snapshot!(config().render(Format::Json).unwrap());
    }
}
