//! The operation-sequence tier (see `starling_cluster_tests::chaos::sequence`): three
//! controllers under the recorded workload, a writing user, and a driver performing seeded
//! sequences of migrate onward and back, abort and retry, migrations with a leader SIGKILLed or
//! SIGSTOPped or a side partitioned, destroy and re-create under the same name, backup and
//! restore (also during a migration), revoke and grant; every outcome recorded, wrong ones
//! failing, then the final checks and the history checker (revocations and the models' logs
//! included).
//!
//! `sequence_tour` (in `scripts/test.sh`) visits every kind of step at least once with a fixed
//! seed (the targets, phases and victims drawn from it); `soak_sequences` draws random steps for
//! `STARLING_SOAK_SECS` (default 120) seconds and is run by `scripts/soak.sh --test sequences`.
//! Both print their seed and replay command; a failing run is saved under
//! `target/chaos-failures/` (or `$STARLING_CHAOS_OUT`) with `steps.txt`.

use std::time::Duration;

use anyhow::Result;
use starling_cluster_tests::chaos::sequence::{run_sequence, TOUR};
use starling_cluster_tests::chaos::{chaos_seed, replay_command, slow_steps, World, WorldOptions};

/// The step delay of a sequence world's migration masters (long enough to abort in a chosen
/// phase, short enough for the CI budget).
const STEP_MS: u64 = 150;
/// The seed of the CI tour.
const TOUR_SEED: u64 = 0x5e9;

fn world(test: &str, seed: u64) -> Result<World> {
    let mut options = WorldOptions::new(test, seed).three_controllers();
    options.clients = 2;
    for controller in options.controllers.clone() {
        options = options.failpoints(&controller, &slow_steps(STEP_MS));
    }
    World::start(options)
}

/// Every kind of step at least once, from a fixed seed unless `STARLING_CHAOS_SEED` says otherwise.
#[test]
fn sequence_tour() -> Result<()> {
    let test = "sequence_tour";
    let seed = if std::env::var_os("STARLING_CHAOS_SEED").is_some() {
        chaos_seed(test)
    } else {
        eprintln!(
            "seed={TOUR_SEED:#x} replay: {}",
            replay_command(test, TOUR_SEED)
        );
        TOUR_SEED
    };
    let mut world = world(test, seed)?;
    run_sequence(&mut world, Some(&TOUR), Duration::ZERO)?;
    Ok(())
}

/// Random steps for `STARLING_SOAK_SECS` (default 120) seconds. Run by `scripts/soak.sh`.
#[test]
#[ignore = "soak: run by scripts/soak.sh --test sequences"]
fn soak_sequences() -> Result<()> {
    let test = "soak_sequences";
    let seed = chaos_seed(test);
    let secs: u64 = std::env::var("STARLING_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut world = world(test, seed)?;
    run_sequence(&mut world, None, Duration::from_secs(secs))?;
    Ok(())
}
