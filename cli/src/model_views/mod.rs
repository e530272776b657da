//! The views of models and what is in them, one file per command family: `models`
//! (`ctl models`, `show-model`, `whoami`), `status` (`status`, `show-status-log`, `debug-log`
//! lines) and `config` (`config`, `model-config`). Like `render`, everything here returns text;
//! the JSON shapes are the `ctl` contract of `docs/ctl.md` (kebab-case keys; extra keys are
//! allowed, never fewer). Formatting every command shares is in `format`.

mod config;
mod models;
mod status;

pub use config::*;
pub use models::*;
pub use status::*;

use starling_proto::model::Model;

pub(crate) fn qualified(model: &Model) -> String {
    if model.owner.is_empty() || model.name.contains('/') {
        model.name.clone()
    } else {
        format!("{}/{}", model.owner, model.name)
    }
}

pub(crate) fn short(model: &Model) -> String {
    model
        .name
        .rsplit_once('/')
        .map_or(model.name.clone(), |(_, n)| n.to_string())
}

pub(crate) fn empty_or(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Shared test data of the views.
#[cfg(test)]
pub(crate) mod fixtures {
    use starling_proto::controller::{FullStatus, ModelInfo};
    use starling_proto::model::{
        Access, Application, Life, Machine, Model, ModelUser, Relation, RelationEndpoint, Role,
        Status, Unit,
    };

    pub(crate) const T0: i64 = 1_700_000_000_000;

    pub(crate) fn status(current: &str, message: &str) -> Option<Status> {
        Some(Status {
            current: current.into(),
            message: message.into(),
            since_unix_ms: T0,
        })
    }

    pub(crate) fn model_info() -> ModelInfo {
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
            load: Some(starling_proto::controller::ModelLoad {
                writes_per_second: 12.3456,
                reports_per_second: 4.5,
                reads_per_second: 0.25,
                agents_connected: 3,
                records: 42,
                size_bytes: 23_456,
                log_records: 17,
                log_bytes: 2_048,
            }),
            ..Default::default()
        }
    }

    pub(crate) fn unit(name: &str, machine: &str, leader: bool, workload: &str) -> Unit {
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

    pub(crate) fn app(name: &str, charm: &str) -> Application {
        Application {
            name: name.into(),
            charm_name: charm.into(),
            charm_revision: 1,
            status: status("active", ""),
            ..Default::default()
        }
    }

    pub(crate) fn endpoint(app: &str, ep: &str, role: Role) -> RelationEndpoint {
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
}
