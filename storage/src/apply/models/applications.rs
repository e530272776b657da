//! Applying the deployment commands: units placed and removed, applications deployed and
//! removed, relations, and application config.

use std::collections::{BTreeMap, BTreeSet};

use starling_proto::command as cmd;
use starling_proto::model::{Application, Life, Machine, Relation, Unit};

use super::{Outcome, Refusal, Tx, UNITS_PER_COMMAND_MAX};
use crate::keys;
use crate::model::deployment::{self};
use crate::model::names::{self, Entity};
use crate::model::{charm, relation, ModelError};
use crate::records;
use crate::state::StateRead;
use crate::StorageError;

impl<R: StateRead + ?Sized> Tx<'_, '_, R> {
    /// The machines for new units: `machines` when the command names some, else `spread`
    /// units on the model's machines with the fewest units.
    fn unit_machines(
        &self,
        uuid: &str,
        machines: &[String],
        spread: u32,
    ) -> Result<Vec<String>, Refusal> {
        if !machines.is_empty() || spread == 0 {
            return Ok(machines.to_vec());
        }
        let spread = usize::try_from(spread).unwrap_or(usize::MAX);
        if spread > UNITS_PER_COMMAND_MAX {
            return Err(ModelError::invalid(format!(
                "{spread} units requested, at most {UNITS_PER_COMMAND_MAX} per command"
            ))
            .into());
        }
        let mut units_on: BTreeMap<String, usize> = BTreeMap::new();
        for unit in records::read_records::<Unit>(&self.state, &keys::unit_prefix(uuid))? {
            *units_on.entry(unit.machine).or_default() += 1;
        }
        let machines: Vec<(Machine, usize)> =
            records::read_records::<Machine>(&self.state, &keys::machine_prefix(uuid))?
                .into_iter()
                .map(|machine| {
                    let units = units_on.get(&machine.id).copied().unwrap_or(0);
                    (machine, units)
                })
                .collect();
        Ok(deployment::spread_units(&machines, spread)?)
    }

    /// Places one new unit of `application` per machine; the first leads if none does.
    pub(super) fn place_units(
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
    pub(super) fn remove_units(
        &mut self,
        uuid: &str,
        units: &[Unit],
    ) -> Result<Vec<String>, Refusal> {
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

    pub(super) fn deploy(&mut self, deploy: &cmd::Deploy) -> Outcome {
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
        let machines = self.unit_machines(&model.uuid, &deploy.machines, deploy.spread_units)?;
        let units = self.place_units(&model.uuid, &mut application, &machines)?;
        self.put(
            keys::application_key(&model.uuid, &application.name),
            &application,
        );
        Ok(cmd::Ok {
            units,
            ..Default::default()
        })
    }

    pub(super) fn add_units(&mut self, add: &cmd::AddUnits) -> Outcome {
        let model = self.model(&add.model_uuid)?;
        let mut application = self.application(&model.uuid, &add.application)?;
        let machines = self.unit_machines(&model.uuid, &add.machines, add.spread_units)?;
        if machines.is_empty() {
            return Err(ModelError::invalid("no machines given to place units on").into());
        }
        let units = self.place_units(&model.uuid, &mut application, &machines)?;
        self.put(
            keys::application_key(&model.uuid, &application.name),
            &application,
        );
        Ok(cmd::Ok {
            units,
            ..Default::default()
        })
    }

    pub(super) fn remove_units_op(&mut self, remove: &cmd::RemoveUnits) -> Outcome {
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
    pub(super) fn remove_application(&mut self, remove: &cmd::RemoveApplication) -> Outcome {
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

    pub(super) fn integrate(&mut self, integrate: &cmd::Integrate) -> Outcome {
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

    pub(super) fn remove_relation(&mut self, remove: &cmd::RemoveRelation) -> Outcome {
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

    pub(super) fn set_application_config(&mut self, set: &cmd::SetApplicationConfig) -> Outcome {
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
}
