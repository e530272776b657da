//! Rules for what lives in a model: destroying it, removing machines, placing and removing
//! units, unit leadership, application config, status history and the model log's bound.

use std::collections::BTreeMap;

use starling_proto::model::{Application, Life, Machine, Model, Status, StatusHistory, Unit};

use super::names;
use super::ModelError;

/// The name every controller's own model has; it is never destroyed or migrated.
pub const CONTROLLER_MODEL_NAME: &str = "controller";
/// Status-history entries kept per entity when the controller config does not say.
pub const STATUS_HISTORY_SIZE_DEFAULT: usize = 20;
/// Model-log records kept when the controller config does not say.
pub const MODEL_LOG_MAX_RECORDS_DEFAULT: u64 = 10_000;

/// How severe a workload status is, for deriving an application's status from its units
/// (Juju's order: error over blocked over maintenance over waiting over active).
fn severity(current: &str) -> u8 {
    match current {
        "error" => 5,
        "blocked" => 4,
        "maintenance" => 3,
        "waiting" => 2,
        "active" => 1,
        _ => 0,
    }
}

/// An application's status as its units make it: the most severe unit workload status (with
/// that unit's message), or `stored` when the application has no units.
pub fn derived_application_status(stored: Option<&Status>, units: &[&Unit]) -> Option<Status> {
    units
        .iter()
        .filter_map(|u| u.workload_status.as_ref())
        .max_by_key(|s| (severity(&s.current), s.since_unix_ms))
        .cloned()
        .or_else(|| stored.cloned())
}

/// Whether the model may be destroyed: never the controller model; with machines left, only
/// with `force`.
pub fn check_destroy_model(
    model: &Model,
    machines: Vec<String>,
    force: bool,
) -> Result<(), ModelError> {
    if model.name == CONTROLLER_MODEL_NAME {
        return Err(ModelError::ControllerModel);
    }
    if !machines.is_empty() && !force {
        return Err(ModelError::ModelHasMachines {
            model: model.name.clone(),
            machines,
        });
    }
    Ok(())
}

/// Whether a machine may be removed with `units_on_it` placed there: only with `force`, which
/// removes those units too. Returns the units to remove.
pub fn check_remove_machine(
    machine: &str,
    units_on_it: Vec<String>,
    force: bool,
) -> Result<Vec<String>, ModelError> {
    if !units_on_it.is_empty() && !force {
        return Err(ModelError::MachineHasUnits {
            machine: machine.to_owned(),
            units: units_on_it,
        });
    }
    Ok(units_on_it)
}

/// Whether a unit may be placed on machine `id`, found as `machine`: it must exist and be alive.
pub fn check_placement(id: &str, machine: Option<&Machine>) -> Result<(), ModelError> {
    names::parse_machine_id(id)?;
    let machine = machine.ok_or_else(|| ModelError::MachineNotFound {
        machine: id.to_owned(),
    })?;
    if machine.life() != Life::Alive {
        return Err(ModelError::MachineNotAlive {
            machine: id.to_owned(),
            life: machine.life().as_str_name().to_ascii_lowercase(),
        });
    }
    Ok(())
}

/// Where `count` new units go when the operator names no machine: each to the alive machine
/// with the fewest units at that moment, ties to the lowest machine id (the least-allocated
/// placement nomad's spread and the Kubernetes scheduler use). `machines` are every machine of
/// the model with the units on it; a dying machine takes none.
pub fn spread_units(
    machines: &[(Machine, usize)],
    count: usize,
) -> Result<Vec<String>, ModelError> {
    let mut load: Vec<(usize, u64, &str)> = machines
        .iter()
        .filter(|(machine, _)| machine.life() == Life::Alive)
        .filter_map(|(machine, units)| {
            let number = names::parse_machine_id(&machine.id).ok()?;
            Some((*units, number, machine.id.as_str()))
        })
        .collect();
    if count > 0 && load.is_empty() {
        return Err(ModelError::invalid(
            "the model has no alive machine to place units on: add one with 'ctl add-machine' \
             (or deploy with -n 0)",
        ));
    }
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let fewest = load.iter_mut().min().expect("at least one machine");
        placed.push(fewest.2.to_owned());
        fewest.0 += 1;
    }
    Ok(placed)
}

/// A new unit of `application` on `machine`, numbered from the application's `next_unit`
/// (which grows by one). The first unit of an application without units is its leader.
pub fn new_unit(application: &mut Application, machine: &str, leader: bool, now_ms: i64) -> Unit {
    let number = application.next_unit;
    application.next_unit += 1;
    Unit {
        name: names::unit_name(&application.name, number),
        application: application.name.clone(),
        machine: machine.to_owned(),
        workload_status: Some(status("waiting", "waiting for machine", now_ms)),
        agent_status: Some(status("allocating", "", now_ms)),
        leader,
        life: Life::Alive as i32,
    }
}

/// A status value.
pub fn status(current: &str, message: &str, since_unix_ms: i64) -> Status {
    Status {
        current: current.to_owned(),
        message: message.to_owned(),
        since_unix_ms,
    }
}

/// The unit number that leads after a change: the current leader if it remains, else the
/// lowest-numbered remaining unit (none when no unit remains).
pub fn next_leader(current: Option<u64>, remaining: impl IntoIterator<Item = u64>) -> Option<u64> {
    let mut lowest = None;
    for number in remaining {
        if Some(number) == current {
            return current;
        }
        lowest = Some(lowest.map_or(number, |l: u64| l.min(number)));
    }
    lowest
}

/// The application's stored config after `update`: every key must be declared by the charm; an
/// empty value removes the key (the charm's default applies again).
pub fn updated_config(
    application: &str,
    declared: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    update: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ModelError> {
    let mut config = current.clone();
    for (key, value) in update {
        if !declared.contains_key(key) {
            return Err(ModelError::UnknownConfigKey {
                application: application.to_owned(),
                key: key.clone(),
                known: declared.keys().cloned().collect(),
            });
        }
        if value.is_empty() {
            config.remove(key);
        } else {
            config.insert(key.clone(), value.clone());
        }
    }
    Ok(config)
}

/// The config an application's units see: the charm's defaults with the stored values over them.
pub fn effective_config(
    declared: &BTreeMap<String, String>,
    stored: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut config = declared.clone();
    config.extend(stored.iter().map(|(k, v)| (k.clone(), v.clone())));
    config
}

/// Whether `new` differs from `old` in what operators see (value or message).
pub fn status_changed(old: Option<&Status>, new: &Status) -> bool {
    old.is_none_or(|old| old.current != new.current || old.message != new.message)
}

/// Appends `status` to `history`, keeping only the last `keep` entries.
pub fn push_status_history(history: &mut StatusHistory, status: Status, keep: usize) {
    history.entries.push(status);
    let excess = history.entries.len().saturating_sub(keep.max(1));
    history.entries.drain(..excess);
}

/// What `ctl show-status-log` names and reads: the entity, and its status histories (the key
/// under the model's history prefix) with the type each is shown as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusLogSource {
    /// The entity `ctl` named, as the model knows it.
    pub entity: names::Entity,
    /// (history key, type) pairs: a unit has its workload and its agent (`juju-unit`).
    pub histories: Vec<(String, &'static str)>,
}

/// The status histories of `name` as `ctl show-status-log` takes it: a unit (`web/0`), an
/// application (`web`), a machine (`0`) or `model`.
pub fn status_log_source(name: &str) -> Result<StatusLogSource, ModelError> {
    use names::Entity;
    let entity = if name == "model" {
        Entity::Model
    } else if name.contains('/') {
        let (application, number) = names::parse_unit_name(name)?;
        Entity::Unit {
            application: application.to_owned(),
            number,
        }
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Entity::Machine(names::parse_machine_id(name)?)
    } else {
        names::check_application_name(name)?;
        Entity::Application(name.to_owned())
    };
    let key = entity.to_string();
    let histories = match &entity {
        Entity::Model => vec![(key, "model")],
        Entity::Machine(_) => vec![(key, "juju-machine")],
        Entity::Application(_) => vec![(key, "application")],
        Entity::Unit { .. } => vec![(format!("{key}/agent"), "juju-unit"), (key, "workload")],
    };
    Ok(StatusLogSource { entity, histories })
}

/// The entries of several histories as one log, oldest first (ties keep the order of
/// `histories`), the last `limit` of them (all when `limit` is 0).
pub fn merge_status_log<'h>(
    histories: &'h [(&'static str, StatusHistory)],
    limit: usize,
) -> Vec<(&'static str, &'h Status)> {
    let mut entries: Vec<(&'static str, &Status)> = histories
        .iter()
        .flat_map(|(kind, h)| h.entries.iter().map(move |s| (*kind, s)))
        .collect();
    entries.sort_by_key(|(_, s)| s.since_unix_ms);
    if limit > 0 {
        let excess = entries.len().saturating_sub(limit);
        entries.drain(..excess);
    }
    entries
}

/// The lowest model-log sequence number kept once the log reaches `next_seq`: records below it
/// are evicted so at most `max_records` remain.
pub fn log_retention_floor(next_seq: u64, max_records: u64) -> u64 {
    next_seq.saturating_sub(max_records.max(1))
}

/// Most keys a model's config holds.
pub const MODEL_CONFIG_KEYS_MAX: usize = 10_000;
/// Longest model config key.
pub const MODEL_CONFIG_KEY_BYTES_MAX: usize = 128;
/// Longest model config value.
pub const MODEL_CONFIG_VALUE_BYTES_MAX: usize = 4096;

/// Checks one `ctl model-config` entry: a key of lowercase letters, digits, `-`, `.` and `_`
/// starting with a letter or digit, and a bounded value.
pub fn check_model_config_entry(key: &str, value: &str) -> Result<(), ModelError> {
    let valid_key = !key.is_empty()
        && key.len() <= MODEL_CONFIG_KEY_BYTES_MAX
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'));
    if !valid_key {
        return Err(ModelError::InvalidName {
            kind: "model config key",
            name: key.to_owned(),
            reason: format!(
                "use 1 to {MODEL_CONFIG_KEY_BYTES_MAX} lowercase letters, digits, '-', '.' or '_', starting with a letter or digit"
            ),
        });
    }
    if value.len() > MODEL_CONFIG_VALUE_BYTES_MAX {
        return Err(ModelError::invalid(format!(
            "the value of model config key {key:?} is {} bytes, at most {MODEL_CONFIG_VALUE_BYTES_MAX} allowed",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_log_sources_follow_the_entity_named() {
        let unit = status_log_source("web/3").unwrap();
        assert_eq!(
            unit.histories,
            [
                ("unit-web-3/agent".to_owned(), "juju-unit"),
                ("unit-web-3".to_owned(), "workload")
            ]
        );
        assert_eq!(
            status_log_source("0").unwrap().histories,
            [("machine-0".to_owned(), "juju-machine")]
        );
        assert_eq!(
            status_log_source("web").unwrap().histories,
            [("application-web".to_owned(), "application")]
        );
        assert_eq!(
            status_log_source("model").unwrap().histories,
            [("model".to_owned(), "model")]
        );
        for bad in ["web/x", "Web", "0x", "", "/1", "web/-1"] {
            assert!(
                matches!(status_log_source(bad), Err(ModelError::InvalidName { .. })),
                "{bad:?}: {:?}",
                status_log_source(bad)
            );
        }
    }

    #[test]
    fn status_logs_merge_oldest_first_and_keep_the_last_entries() {
        let at = |current: &str, since: i64| Status {
            current: current.into(),
            message: String::new(),
            since_unix_ms: since,
        };
        let histories = vec![
            (
                "juju-unit",
                StatusHistory {
                    entity: "unit-web-0/agent".into(),
                    entries: vec![at("allocating", 1), at("executing", 3), at("idle", 5)],
                },
            ),
            (
                "workload",
                StatusHistory {
                    entity: "unit-web-0".into(),
                    entries: vec![at("waiting", 1), at("active", 4)],
                },
            ),
        ];
        let log: Vec<(&str, &str)> = merge_status_log(&histories, 0)
            .into_iter()
            .map(|(kind, s)| (kind, s.current.as_str()))
            .collect();
        assert_eq!(
            log,
            [
                ("juju-unit", "allocating"),
                ("workload", "waiting"),
                ("juju-unit", "executing"),
                ("workload", "active"),
                ("juju-unit", "idle")
            ]
        );
        let last: Vec<&str> = merge_status_log(&histories, 2)
            .into_iter()
            .map(|(_, s)| s.current.as_str())
            .collect();
        assert_eq!(last, ["active", "idle"]);
    }

    #[test]
    fn application_status_is_its_most_severe_unit() {
        let unit = |current: &str, since: i64| Unit {
            workload_status: Some(status(current, current, since)),
            ..Default::default()
        };
        let stored = status("waiting", "", 0);
        let (a, b, c) = (unit("active", 5), unit("error", 1), unit("maintenance", 9));
        let derived = derived_application_status(Some(&stored), &[&a, &b, &c]).unwrap();
        assert_eq!(derived.current, "error");
        let derived = derived_application_status(Some(&stored), &[&a]).unwrap();
        assert_eq!(derived.current, "active");
        let derived = derived_application_status(Some(&stored), &[]).unwrap();
        assert_eq!(derived.current, "waiting");
    }

    fn machine(life: Life) -> Machine {
        Machine {
            id: "0".into(),
            life: life as i32,
            ..Default::default()
        }
    }

    #[test]
    fn destroy_model() {
        let model = Model {
            name: "prod".into(),
            ..Default::default()
        };
        check_destroy_model(&model, vec![], false).expect("empty model");
        let err = check_destroy_model(&model, vec!["0".into(), "3".into()], false)
            .expect_err("machines left");
        assert_eq!(
            err.to_string(),
            "model \"prod\" still has 2 machine(s) (0, 3); remove them first or destroy with --force"
        );
        check_destroy_model(&model, vec!["0".into()], true).expect("forced");
        let controller = Model {
            name: CONTROLLER_MODEL_NAME.into(),
            ..Default::default()
        };
        assert_eq!(
            check_destroy_model(&controller, vec![], true),
            Err(ModelError::ControllerModel)
        );
    }

    #[test]
    fn remove_machine() {
        assert!(check_remove_machine("0", vec![], false)
            .expect("empty")
            .is_empty());
        let err = check_remove_machine("0", vec!["web/0".into(), "db/1".into()], false)
            .expect_err("units");
        assert_eq!(
            err,
            ModelError::MachineHasUnits {
                machine: "0".into(),
                units: vec!["web/0".into(), "db/1".into()]
            }
        );
        assert!(err.to_string().contains("web/0, db/1"));
        assert_eq!(
            check_remove_machine("0", vec!["web/0".into()], true).expect("forced"),
            ["web/0"]
        );
    }

    #[test]
    fn spread_units_fill_the_emptiest_machines_first() {
        let with_id = |id: &str, life: Life| Machine {
            id: id.into(),
            ..machine(life)
        };
        let machines = vec![
            (with_id("0", Life::Alive), 2),
            (with_id("1", Life::Alive), 0),
            (with_id("2", Life::Dying), 0),
            (with_id("10", Life::Alive), 0),
        ];
        // Ties go to the lowest id by number (1 before 10), the dying machine takes none.
        assert_eq!(
            spread_units(&machines, 5).unwrap(),
            ["1", "10", "1", "10", "0"]
        );
        assert_eq!(spread_units(&machines, 0).unwrap(), Vec::<String>::new());
        let err = spread_units(&[(with_id("0", Life::Dying), 0)], 1).unwrap_err();
        assert!(err.to_string().contains("no alive machine"), "{err}");
        assert_eq!(spread_units(&[], 0).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn placement() {
        check_placement("0", Some(&machine(Life::Alive))).expect("alive");
        assert_eq!(
            check_placement("7", None),
            Err(ModelError::MachineNotFound {
                machine: "7".into()
            })
        );
        let err = check_placement("0", Some(&machine(Life::Dying))).expect_err("dying");
        assert!(err.to_string().contains("is not alive (it is dying)"));
        assert!(matches!(
            check_placement("x", None),
            Err(ModelError::InvalidName { .. })
        ));
    }

    #[test]
    fn units_are_numbered_and_the_first_leads() {
        let mut app = Application {
            name: "web".into(),
            next_unit: 3,
            ..Default::default()
        };
        let unit = new_unit(&mut app, "1", true, 5);
        assert_eq!(unit.name, "web/3");
        assert_eq!(unit.machine, "1");
        assert!(unit.leader);
        assert_eq!(app.next_unit, 4);
        assert_eq!(unit.workload_status.expect("set").since_unix_ms, 5);
    }

    #[test]
    fn leadership_moves_to_the_lowest_remaining_unit() {
        assert_eq!(next_leader(Some(2), [5, 2, 9]), Some(2));
        assert_eq!(next_leader(Some(2), [9, 5, 7]), Some(5));
        assert_eq!(next_leader(None, [9, 5]), Some(5));
        assert_eq!(next_leader(Some(1), []), None);
    }

    #[test]
    fn config_updates() {
        let declared = BTreeMap::from([
            ("port".to_owned(), "8080".to_owned()),
            ("title".to_owned(), String::new()),
        ]);
        let current = BTreeMap::from([("port".to_owned(), "9000".to_owned())]);
        let update = BTreeMap::from([
            ("port".to_owned(), String::new()),
            ("title".to_owned(), "blog".to_owned()),
        ]);
        let config = updated_config("web", &declared, &current, &update).expect("valid");
        assert_eq!(
            config,
            BTreeMap::from([("title".to_owned(), "blog".to_owned())])
        );
        assert_eq!(effective_config(&declared, &config)["port"], "8080");
        let err = updated_config(
            "web",
            &declared,
            &current,
            &BTreeMap::from([("nope".to_owned(), "1".to_owned())]),
        )
        .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "application \"web\" has no config option \"nope\" (its charm declares: port, title)"
        );
        let err = updated_config(
            "web",
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::from([("x".to_owned(), "1".to_owned())]),
        )
        .expect_err("none declared");
        assert!(err.to_string().ends_with("(its charm declares: none)"));
    }

    #[test]
    fn status_history_is_bounded() {
        let mut history = StatusHistory::default();
        for i in 0..25 {
            push_status_history(&mut history, status("active", &i.to_string(), i), 20);
        }
        assert_eq!(history.entries.len(), 20);
        assert_eq!(history.entries[0].message, "5");
        assert_eq!(history.entries[19].message, "24");
        push_status_history(&mut history, status("idle", "", 30), 3);
        let messages: Vec<&str> = history.entries.iter().map(|s| s.message.as_str()).collect();
        assert_eq!(messages, ["23", "24", ""]);
        assert!(status_changed(None, &status("a", "", 0)));
        assert!(!status_changed(
            Some(&status("a", "m", 0)),
            &status("a", "m", 9)
        ));
        assert!(status_changed(
            Some(&status("a", "m", 0)),
            &status("a", "n", 0)
        ));
    }

    #[test]
    fn log_floor() {
        assert_eq!(log_retention_floor(5, 10_000), 0);
        assert_eq!(log_retention_floor(10_001, 10_000), 1);
        assert_eq!(log_retention_floor(20_000, 10_000), 10_000);
    }
}
