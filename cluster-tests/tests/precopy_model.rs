//! Exhaustive checks of the pre-copy protocol model (`precopy_model`): the protocol keeps
//! every property within the fault budget, every path of it ends, and each planted bug is
//! caught by the property meant to catch it.
//!
//! The default bounds (2 attempts, 2 faults, 1 client write) keep each check to a few seconds in
//! a debug build. `STARLING_PROTOCOL_MODEL_FAULTS=4 cargo test --release -p
//! starling-cluster-tests --test precopy_model` checks the correct protocol with a larger
//! fault budget (about 1.3 million states).

use std::collections::BTreeSet;
use std::time::Instant;

use starling_cluster_tests::precopy_model::{
    Action, Bugs, ProtocolModel, ABORT_RESTORES_SOURCE, AT_MOST_ONE_OWNER, EVERY_MIGRATION_ENDS,
    EXAMPLES, NEVER_LOST, NO_LOST_WRITE, ONE_DECISION, SAFETY,
};
use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// The smallest state space the default bounds may have; far below it, the model has lost
/// behaviour and the checks below prove little.
const STATES_MIN: usize = 20_000;

/// The model without bugs, with the fault budget from `STARLING_PROTOCOL_MODEL_FAULTS` if set.
fn correct_model() -> ProtocolModel {
    let mut model = ProtocolModel::default();
    if let Ok(faults) = std::env::var("STARLING_PROTOCOL_MODEL_FAULTS") {
        model.fault_budget = faults
            .parse()
            .expect("STARLING_PROTOCOL_MODEL_FAULTS is a small number");
    }
    model
}

#[test]
fn the_protocol_keeps_every_property_within_the_fault_budget() {
    let model = correct_model();
    println!("{model:?}");
    let started = Instant::now();
    let checker = model.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!(
        "no bugs: {states} states ({} generated), depth {}, in {:.2?}",
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    for name in SAFETY.into_iter().chain([EVERY_MIGRATION_ENDS]) {
        if let Some(path) = checker.discovery(name) {
            panic!("{name:?} fails:\n{}", steps(&path.into_actions()));
        }
    }
    for name in EXAMPLES {
        assert!(checker.discovery(name).is_some(), "no run shows {name:?}");
    }
    assert!(states >= STATES_MIN, "only {states} states");
}

#[test]
fn every_path_ends_so_eventually_is_checked_on_every_path() {
    // stateright checks `eventually` on the last state of each path; a cycle would hide a
    // migration that never ends.
    let started = Instant::now();
    let states = correct_model()
        .find_cycle()
        .unwrap_or_else(|path| panic!("a cycle: {path:#?}"));
    println!("acyclic: {states} states in {:.2?}", started.elapsed());
    assert!(states >= STATES_MIN, "only {states} states");
}

/// Checks the model with `bugs` until `expected` fails, and prints the counterexample (up to
/// the first state that breaks a safety property).
fn caught(bugs: Bugs, expected: &'static str) {
    let started = Instant::now();
    let checker = ProtocolModel::with_bugs(bugs)
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
    caught(bugs, AT_MOST_ONE_OWNER);
}

#[test]
fn an_abort_after_success_makes_two_decisions() {
    let bugs = Bugs {
        abort_after_success: true,
        ..Bugs::default()
    };
    caught(bugs, ONE_DECISION);
}

#[test]
fn a_source_that_forgets_its_phase_on_a_crash_makes_two_decisions() {
    let bugs = Bugs {
        forget_phase_on_crash: true,
        ..Bugs::default()
    };
    caught(bugs, ONE_DECISION);
}

#[test]
fn a_target_that_drops_its_import_on_silence_loses_the_model() {
    let bugs = Bugs {
        drop_on_silence: true,
        ..Bugs::default()
    };
    caught(bugs, NEVER_LOST);
}

#[test]
fn a_write_to_a_locked_model_is_caught_by_the_abort() {
    let bugs = Bugs {
        write_while_locked: true,
        ..Bugs::default()
    };
    caught(bugs, ABORT_RESTORES_SOURCE);
}

#[test]
fn a_target_without_the_leftover_rule_never_ends_the_migration() {
    let bugs = Bugs {
        keep_leftover_imports: true,
        ..Bugs::default()
    };
    caught(bugs, EVERY_MIGRATION_ENDS);
}

#[test]
fn a_fence_that_seals_before_the_last_change_loses_a_write() {
    let bugs = Bugs {
        fence_before_last_change: true,
        ..Bugs::default()
    };
    caught(bugs, NO_LOST_WRITE);
}
