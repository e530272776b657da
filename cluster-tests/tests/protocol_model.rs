//! Exhaustive checks of the migration protocol model (`protocol_model`): in every scenario the
//! protocol keeps every property within the budgets, every path of it ends, and each planted
//! bug is caught by the property meant to catch it.
//!
//! The scenarios' budgets keep each check to seconds in a debug build. Larger budgets apply to
//! every scenario with `STARLING_PROTOCOL_MODEL=faults=3,migrations=3 cargo test --release -p
//! starling-cluster-tests --test protocol_model keep_every_property`.

use std::collections::BTreeSet;
use std::time::Instant;

use starling_cluster_tests::protocol_model::{
    Action, Body, Bugs, Phase, ProtocolModel, Scenario, State, ABORT_RESTORES_SOURCE,
    ACTIVATE_ANSWERED, AT_MOST_ONE_OWNER, EVERY_MIGRATION_ENDS, LOGS_KEPT, NEVER_LOST,
    ONE_DECISION, REFUSED_COMMIT_NOT_REPEATED, RESTORE_NEVER_ACTIVATES, SAFETY,
    UNDISTURBED_SUCCEEDS,
};
use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// `scenario` with the budgets from `STARLING_PROTOCOL_MODEL` if set, e.g.
/// `faults=3,migrations=3` (keys: controllers, faults, migrations, destroys, recreates,
/// backups, restores, writes, logs).
fn with_env_budget(mut scenario: Scenario) -> Scenario {
    let Ok(spec) = std::env::var("STARLING_PROTOCOL_MODEL") else {
        return scenario;
    };
    for item in spec.split(',').filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("STARLING_PROTOCOL_MODEL: {item:?} is not key=value"));
        let value: u8 = value
            .parse()
            .unwrap_or_else(|_| panic!("STARLING_PROTOCOL_MODEL: {item:?} is not a small number"));
        let budget = &mut scenario.budget;
        let slot = match key {
            "controllers" => &mut scenario.controllers,
            "faults" => &mut scenario.faults,
            "migrations" => &mut budget.migrations,
            "destroys" => &mut budget.destroys,
            "recreates" => &mut budget.recreates,
            "backups" => &mut budget.backups,
            "restores" => &mut budget.restores,
            "writes" => &mut budget.writes,
            "logs" => &mut budget.logs,
            _ => panic!("STARLING_PROTOCOL_MODEL: unknown key {key:?}"),
        };
        *slot = value;
    }
    scenario
}

/// Checks every property of the correct protocol in `scenario`, which must have at least
/// `states_min` states (far below it, the model has lost behaviour and proves little).
fn keeps_every_property(name: &str, scenario: Scenario, states_min: usize) {
    let model = ProtocolModel::new(with_env_budget(scenario));
    println!("{name}: {:?}", model.scenario);
    let examples = model.scenario.examples();
    let started = Instant::now();
    let checker = model.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!(
        "{name}: {states} states ({} generated), depth {}, in {:.2?}",
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    for property in SAFETY.into_iter().chain([EVERY_MIGRATION_ENDS]) {
        if let Some(path) = checker.discovery(property) {
            panic!(
                "{name}: {property:?} fails:\n{}",
                steps(&path.into_actions())
            );
        }
    }
    for example in examples {
        assert!(
            checker.discovery(example).is_some(),
            "{name}: no run shows {example:?}"
        );
    }
    assert!(states >= states_min, "{name}: only {states} states");
}

/// Checks that `scenario`'s state graph has no cycle, so `eventually` is checked on every
/// path's last state.
fn every_path_ends(name: &str, scenario: Scenario) {
    let started = Instant::now();
    let states = ProtocolModel::new(with_env_budget(scenario))
        .find_cycle()
        .unwrap_or_else(|path| panic!("{name}: a cycle:\n{}", steps(&path)));
    println!(
        "{name}: acyclic, {states} states in {:.2?}",
        started.elapsed()
    );
}

#[test]
fn retries_keep_every_property() {
    keeps_every_property("retries", Scenario::retries(), 70_000);
}

#[test]
fn onward_and_back_keep_every_property() {
    keeps_every_property("onward", Scenario::onward(), 80_000);
}

#[test]
fn destroy_and_recreate_keep_every_property() {
    keeps_every_property("destroy", Scenario::destroy(), 70_000);
}

#[test]
fn backups_and_restores_keep_every_property() {
    keeps_every_property("restore", Scenario::restore(), 150_000);
}

#[test]
fn every_path_ends_in_every_scenario() {
    // stateright checks `eventually` on the last state of each path; a cycle would hide a
    // migration that never ends.
    for (name, scenario) in [
        ("retries", Scenario::retries()),
        ("onward", Scenario::onward()),
        ("destroy", Scenario::destroy()),
        ("restore", Scenario::restore()),
    ] {
        every_path_ends(name, scenario);
    }
}

#[test]
fn an_onward_migration_waits_for_the_inbound_log_transfer() {
    // S→T reaches LOGTRANSFER with a log record on its way; T may not migrate the model on
    // to U until the record has arrived, and then may.
    let model = ProtocolModel::new(Scenario::onward());
    let mut s = model.init_states().remove(0);
    let act = |s: &mut _, action: Action| {
        *s = model
            .next_state(s, action)
            .unwrap_or_else(|| panic!("{action:?} changes nothing"));
    };
    act(&mut s, Action::Log(0));
    act(&mut s, Action::Migrate { uuid: 0, to: 1 });
    // Run the migration until the source is in LOGTRANSFER with the log on its way.
    let in_log_transfer = |s: &State| s.controllers[0].records[0].phase == Phase::LogTransfer;
    while !in_log_transfer(&s) {
        if let Some(step) = model.master_step(&s, 0, 0) {
            act(
                &mut s,
                Action::Master {
                    at: 0,
                    uuid: 0,
                    step,
                },
            );
            continue;
        }
        let msg = *s.network.iter().next().expect("a message is in flight");
        act(&mut s, Action::Deliver(msg));
    }
    assert_eq!(s.owner(0), Some(1), "the target activated the model");
    assert!(
        !model.can_migrate(&s, 0, 2),
        "an onward migration is refused while the log transfer is open"
    );
    let logs = *s
        .network
        .iter()
        .find(|m| matches!(m.body, Body::Logs { .. }))
        .expect("the log is on its way");
    act(&mut s, Action::Deliver(logs));
    assert!(
        model.can_migrate(&s, 0, 2),
        "once the log arrived the model may move on"
    );
    let planted = ProtocolModel::with_bugs(
        Scenario::onward(),
        Bugs {
            onward_during_log_transfer: true,
            ..Bugs::default()
        },
    );
    assert!(planted.can_migrate(&s, 0, 2));
}

/// Checks `scenario` with `bugs` until `expected` fails, and prints the counterexample (up to
/// the first state that breaks a safety property).
fn caught(scenario: Scenario, bugs: Bugs, expected: &'static str) {
    let started = Instant::now();
    let checker = ProtocolModel::with_bugs(scenario, bugs)
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([expected])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(expected)
        .unwrap_or_else(|| panic!("{bugs:?}: {expected:?} holds"))
        .into_vec();
    let model = checker.model();
    let property = model.property(expected);
    let end = match property.expectation {
        Expectation::Always => path
            .iter()
            .position(|(state, _)| !(property.condition)(model, state))
            .expect("a counterexample ends in a state that breaks the property"),
        _ => path.len() - 1,
    };
    let actions: Vec<Action> = path[..end]
        .iter()
        .filter_map(|(_, action)| *action)
        .collect();
    println!(
        "{bugs:?}: {expected:?} fails after {} steps ({} states, {:.2?}):\n{}",
        actions.len(),
        checker.unique_state_count(),
        started.elapsed(),
        steps(&actions)
    );
}

/// A path, one action a line.
fn steps(actions: &[Action]) -> String {
    actions
        .iter()
        .enumerate()
        .map(|(n, action)| format!("  {:>2}. {action:?}\n", n + 1))
        .collect()
}

#[test]
fn a_target_that_activates_before_the_decision_makes_two_owners() {
    let bugs = Bugs {
        activate_before_decision: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, AT_MOST_ONE_OWNER);
}

#[test]
fn an_abort_after_success_makes_two_decisions() {
    let bugs = Bugs {
        abort_after_success: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, ONE_DECISION);
}

#[test]
fn a_source_that_forgets_its_phase_on_a_crash_makes_two_decisions() {
    let bugs = Bugs {
        forget_phase_on_crash: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, ONE_DECISION);
}

#[test]
fn a_target_that_drops_its_import_on_silence_loses_the_model() {
    let bugs = Bugs {
        drop_on_silence: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, NEVER_LOST);
}

#[test]
fn a_write_to_a_locked_model_is_caught_by_the_abort() {
    let bugs = Bugs {
        write_while_locked: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, ABORT_RESTORES_SOURCE);
}

#[test]
fn a_target_without_the_leftover_rule_never_ends_the_migration() {
    let bugs = Bugs {
        keep_leftover_imports: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, EVERY_MIGRATION_ENDS);
}

/// Issue 12 item 1: staging request ids derived from the content alone.
#[test]
fn staging_request_ids_without_the_attempt_fail_an_unchanged_retry() {
    let bugs = Bugs {
        content_request_ids: true,
        ..Bugs::default()
    };
    caught(Scenario::retries(), bugs, UNDISTURBED_SUCCEEDS);
}

/// Item 2: an onward migration while the inbound log transfer is open.
#[test]
fn an_onward_migration_during_the_log_transfer_loses_log_records() {
    let bugs = Bugs {
        onward_during_log_transfer: true,
        ..Bugs::default()
    };
    caught(Scenario::onward(), bugs, LOGS_KEPT);
}

/// Item 3 as it was: backups without the migration state, restores that ignore it.
#[test]
fn a_restore_that_ignores_migrations_makes_two_owners() {
    let bugs = Bugs {
        restore_ignores_migrations: true,
        ..Bugs::default()
    };
    caught(Scenario::restore(), bugs, RESTORE_NEVER_ACTIVATES);
    caught(Scenario::restore(), bugs, AT_MOST_ONE_OWNER);
}

/// Item 3, an exact restore: it rewinds migrations that ended after the backup.
#[test]
fn a_restore_that_rewinds_ownership_makes_two_owners() {
    let bugs = Bugs {
        restore_rewinds_ownership: true,
        ..Bugs::default()
    };
    caught(Scenario::restore(), bugs, AT_MOST_ONE_OWNER);
}

/// Item 4: the target forgets the activation once the model left it.
#[test]
fn a_target_that_forgets_an_activation_leaves_the_source_in_success() {
    let bugs = Bugs {
        forget_activation_when_gone: true,
        ..Bugs::default()
    };
    caught(Scenario::destroy(), bugs, ACTIVATE_ANSWERED);
    caught(Scenario::destroy(), bugs, EVERY_MIGRATION_ENDS);
}

/// Item 5: a refused lock proposed again and again.
#[test]
fn a_refused_lock_that_is_not_observed_spins() {
    let bugs = Bugs {
        retry_refused_commit: true,
        ..Bugs::default()
    };
    caught(Scenario::destroy(), bugs, REFUSED_COMMIT_NOT_REPEATED);
}
