//! What each machine of a model should run: the units placed on it, with their charm, their
//! effective config (set values over the charm's defaults) and their relations as the agent
//! sees them. A pure function of the model's description, computed once per applied index for
//! all of a model's watching agents.

use std::collections::{BTreeMap, HashMap, HashSet};

use starling_proto::agent as pb;
use starling_proto::model::{ModelDescription, Role};

use super::deployment::effective_config;
use crate::{keys, records, StateRead, StorageError};

/// The parts of model `uuid`'s description the desired state depends on (the model, its
/// machines, applications, units and relations), without the status history and the agents'
/// report numbers an export also reads: the watch reads this at every applied index, and the
/// history grows with every status change. `None` when the model does not exist.
pub fn read_desired_inputs(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
) -> Result<Option<ModelDescription>, StorageError> {
    let Some(model) = records::read_model(state, uuid)? else {
        return Ok(None);
    };
    Ok(Some(ModelDescription {
        model: Some(model),
        machines: records::read_records(state, &keys::machine_prefix(uuid))?,
        applications: records::read_records(state, &keys::application_prefix(uuid))?,
        units: records::read_records(state, &keys::unit_prefix(uuid))?,
        relations: records::read_records(state, &keys::relation_prefix(uuid))?,
        ..Default::default()
    }))
}

/// The desired state of every machine of one model at one applied index, shared by all the
/// model's watchers on this node (computed once per index, not once per agent).
#[derive(Debug, Default)]
pub struct ModelDesired {
    /// Whether the model exists.
    pub model_exists: bool,
    /// The machines that exist.
    pub machines: HashSet<String>,
    /// Unit specs by machine id (machines without units are absent).
    pub units_by_machine: HashMap<String, Vec<pb::UnitSpec>>,
    /// The agents' heartbeat period.
    pub heartbeat_interval_ms: u64,
}

impl ModelDesired {
    /// Computes every machine's desired state from a model's description.
    pub fn compute(description: Option<&ModelDescription>, heartbeat_interval_ms: u64) -> Self {
        let Some(description) = description else {
            return ModelDesired {
                heartbeat_interval_ms,
                ..Default::default()
            };
        };
        let applications: BTreeMap<&str, _> = description
            .applications
            .iter()
            .map(|a| (a.name.as_str(), a))
            .collect();
        let mut units_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for unit in &description.units {
            units_of
                .entry(unit.application.as_str())
                .or_default()
                .push(unit.name.as_str());
        }
        let mut units_by_machine: HashMap<String, Vec<pb::UnitSpec>> = HashMap::new();
        for unit in &description.units {
            let application = applications.get(unit.application.as_str());
            let charm = application.and_then(|a| a.charm.clone());
            let defaults = charm
                .as_ref()
                .map(|c| c.config_defaults.clone())
                .unwrap_or_default();
            let stored = application.map(|a| a.config.clone()).unwrap_or_default();
            let relations = description
                .relations
                .iter()
                .filter_map(|relation| {
                    let ours = relation
                        .endpoints
                        .iter()
                        .position(|e| e.application == unit.application)?;
                    let endpoint = &relation.endpoints[ours];
                    let peer = relation.endpoints.len() == 1 || endpoint.role == Role::Peer as i32;
                    let remote_application = if peer {
                        unit.application.clone()
                    } else {
                        relation.endpoints[1 - ours.min(1)].application.clone()
                    };
                    let remote_units = units_of
                        .get(remote_application.as_str())
                        .map(|names| {
                            names
                                .iter()
                                .filter(|n| **n != unit.name)
                                .map(|n| n.to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(pb::RelationSpec {
                        id: relation.id,
                        endpoint: endpoint.endpoint.clone(),
                        interface: relation.interface.clone(),
                        remote_application,
                        remote_units,
                    })
                })
                .collect();
            units_by_machine
                .entry(unit.machine.clone())
                .or_default()
                .push(pb::UnitSpec {
                    name: unit.name.clone(),
                    application: unit.application.clone(),
                    charm_digest: application
                        .map(|a| a.charm_digest.clone())
                        .unwrap_or_default(),
                    charm,
                    config: effective_config(&defaults, &stored),
                    relations,
                    leader: unit.leader,
                });
        }
        ModelDesired {
            model_exists: true,
            machines: description.machines.iter().map(|m| m.id.clone()).collect(),
            units_by_machine,
            heartbeat_interval_ms,
        }
    }

    /// The units machine `machine_id` should run (none for a machine without units).
    pub fn units_for(&self, machine_id: &str) -> &[pb::UnitSpec] {
        self.units_by_machine
            .get(machine_id)
            .map_or(&[], Vec::as_slice)
    }

    /// Whether machine `machine_id` (or its model) is gone.
    pub fn machine_removed(&self, machine_id: &str) -> bool {
        !self.model_exists || !self.machines.contains(machine_id)
    }

    /// What machine `machine_id` should be, at `revision`.
    pub fn update_for(&self, machine_id: &str, revision: u64) -> pb::AgentUpdate {
        pb::AgentUpdate {
            revision,
            units: self.units_for(machine_id).to_vec(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            redirect: None,
            migration: None,
            machine_removed: self.machine_removed(machine_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::model::{
        Application, CharmMeta, Endpoint, Machine, Relation, RelationEndpoint, Unit,
    };

    fn unit(name: &str, application: &str, machine: &str, leader: bool) -> Unit {
        Unit {
            name: name.into(),
            application: application.into(),
            machine: machine.into(),
            leader,
            ..Default::default()
        }
    }

    fn application(name: &str, endpoint: &str, role: Role) -> Application {
        Application {
            name: name.into(),
            charm_digest: format!("{name}-digest"),
            config: [("port".to_owned(), "81".to_owned())].into(),
            charm: Some(CharmMeta {
                name: name.into(),
                endpoints: vec![Endpoint {
                    name: endpoint.into(),
                    interface: "pg".into(),
                    role: role as i32,
                }],
                config_defaults: [
                    ("port".to_owned(), "80".to_owned()),
                    ("mode".to_owned(), "fast".to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn description() -> ModelDescription {
        ModelDescription {
            machines: ["0", "1"]
                .iter()
                .map(|id| Machine {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            applications: vec![
                application("web", "db", Role::Requires),
                application("pg", "db", Role::Provides),
            ],
            units: vec![
                unit("web/0", "web", "0", true),
                unit("web/1", "web", "1", false),
                unit("pg/0", "pg", "1", true),
            ],
            relations: vec![Relation {
                id: 4,
                endpoints: vec![
                    RelationEndpoint {
                        application: "web".into(),
                        endpoint: "db".into(),
                        role: Role::Requires as i32,
                    },
                    RelationEndpoint {
                        application: "pg".into(),
                        endpoint: "db".into(),
                        role: Role::Provides as i32,
                    },
                ],
                interface: "pg".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn desired_state_has_the_machines_units_with_config_and_relations() {
        let desired = ModelDesired::compute(Some(&description()), 200);
        let update = desired.update_for("0", 9);
        assert_eq!((update.revision, update.heartbeat_interval_ms), (9, 200));
        assert!(!update.machine_removed);
        assert_eq!(update.units.len(), 1);
        let web0 = &update.units[0];
        assert_eq!(web0.name, "web/0");
        assert!(web0.leader);
        assert_eq!(web0.charm_digest, "web-digest");
        assert_eq!(web0.config["port"], "81");
        assert_eq!(web0.config["mode"], "fast");
        assert_eq!(web0.relations.len(), 1);
        assert_eq!(web0.relations[0].remote_application, "pg");
        assert_eq!(web0.relations[0].remote_units, ["pg/0"]);
        let on_1: Vec<String> = desired
            .update_for("1", 9)
            .units
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(on_1, ["web/1", "pg/0"]);
        let pg0 = &desired.update_for("1", 9).units[1];
        assert_eq!(pg0.relations[0].remote_units, ["web/0", "web/1"]);
        assert!(desired.update_for("7", 9).machine_removed);
        assert!(
            ModelDesired::compute(None, 200)
                .update_for("0", 1)
                .machine_removed
        );
    }
}
