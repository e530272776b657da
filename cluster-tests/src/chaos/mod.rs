//! The chaos harness (issue 6): two controllers of three real `ctld` nodes, real `agentd`s
//! running a counter workload, clients writing and reading many models on whichever controller
//! owns each, an observer asking every controller who owns each model, a driver migrating
//! models back and forth, and faults: SIGKILL and SIGSTOP of a node chosen by role, a power cut
//! of a whole group, partitions through a fault-injecting TCP proxy, and failpoints at every
//! migration step on both sides (`FAILPOINTS`, set per process at start; see
//! [`World::set_failpoints`]).
//!
//! The operation-sequence tier ([`sequence`]) runs three controllers and draws, from the seed,
//! sequences of operations an operator performs (migrate onward and back, abort and retry,
//! destroy and re-create, backup and restore, revoke and grant) mixed with leader kills, leader
//! pauses and partitions, checked by the history checker (with the access changes and the
//! models' logs).
//!
//! Every run has a seed ([`chaos_seed`]) that fixes model names, which node a role picks, the
//! clients' operations and, for [`random_run`], the faults and their timing; it is printed with
//! the command that replays it. After the faults, [`World::finish`] heals everything and checks
//! liveness and safety; a failing run's history, seed and logs are saved under
//! [`failure_dir`].
//!
//! # Partitions
//!
//! Each controller sits behind a [`proxy::Link`]: one proxy port per node. The client store the
//! harness's `ctl` uses lists the proxied endpoints (the registration file is rewritten before
//! `ctl register`), and `ctl migrate` hands the target's endpoints from that store to the
//! source, so the source's migration master dials the target through the proxy: cutting the
//! target's link partitions source from target (and `ctl` and the agents' validation dials from
//! the target). Not proxied: the target's leftover sweeper asks the source at the endpoints of
//! the source's membership, the Raft traffic inside a group, and the harness's own recorded
//! clients (they dial the nodes directly, so the workload keeps running on both sides).
//!
//! With [`WorldOptions::in_namespaces`] (root, `ip` and `nft`: what CI has) every node runs in a
//! network namespace of its own on a private bridge ([`crate::netns::Lan`]); then
//! [`Fault::Isolate`] cuts one node off from the rest of its group and [`Fault::Partition`]
//! cuts the two groups apart, both with nftables rules inside the nodes' namespaces (the
//! proxies are not used: a node's 127.0.0.1 is its own).

pub mod proxy;
pub mod sequence;
pub mod workload;
pub mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::Rng;
use tracing::info;

pub use proxy::{Link, LinkMode};
pub use workload::{ownership_of, redirect_target, Clients, Workload};
pub use world::{Fault, MigrationRun, Role, World, WorldOptions, CONTROLLERS, THREE_CONTROLLERS};

/// The failpoint that slows every step of a source's master, so phases last long enough to
/// inject a fault in a chosen one.
pub fn slow_steps(ms: u64) -> String {
    format!("migration.source.step=return({ms})")
}

/// The seed of a chaos run: `STARLING_CHAOS_SEED` (decimal or 0x-hex) when set, else random.
/// Prints it with the replay command.
pub fn chaos_seed(test: &str) -> u64 {
    let seed = match std::env::var("STARLING_CHAOS_SEED") {
        Ok(text) => parse_seed(&text).unwrap_or_else(|| {
            panic!("STARLING_CHAOS_SEED={text:?} is not a u64 (decimal or 0x-hex)")
        }),
        Err(_) => rand::random(),
    };
    eprintln!("seed={seed:#x} replay: {}", replay_command(test, seed));
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The command that replays `test` with `seed`.
pub fn replay_command(test: &str, seed: u64) -> String {
    let ignored = if test.starts_with("soak") {
        " --run-ignored only"
    } else {
        ""
    };
    let binary = if test.contains("sequence") {
        "sequences"
    } else {
        "chaos"
    };
    format!(
        "STARLING_CHAOS_SEED={seed:#x} cargo nextest run -p starling-cluster-tests --test {binary}{ignored} {test}"
    )
}

/// Where a failing run is saved: `$STARLING_CHAOS_OUT/<test>-<seed>` when set, else
/// `target/chaos-failures/<test>-<seed>` in the workspace.
pub fn failure_dir(test: &str, seed: u64) -> PathBuf {
    let base = std::env::var_os("STARLING_CHAOS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-failures")
        });
    base.join(format!("{test}-{seed:#x}"))
}

/// Runs `body` on `world`, and saves the run if `body` fails (`finish` saves its own
/// failures).
pub fn run_scenario(world: &mut World, body: impl FnOnce(&mut World) -> Result<()>) -> Result<()> {
    let result = body(world);
    if let Err(e) = &result {
        world.save_failure(&format!("{e:#}"));
    }
    result
}

/// The failpoints [`random_run`] may set on a source (count-limited, so retried steps pass).
const RANDOM_SOURCE_FAILPOINTS: [&str; 11] = [
    "migration.source.precopy=20%return",
    "migration.source.catchup=20%return",
    "migration.source.quiesce=20%return",
    "migration.source.success=2*return",
    "migration.source.logtransfer=2*return",
    "migration.source.reap=2*return",
    "migration.source.stream=2*return",
    "migration.source.stream-changes=2*return",
    "migration.source.seal=2*return",
    "migration.source.commit-success=2*return",
    "migration.source.activate=2*return",
];

/// The failpoints [`random_run`] may set on a target.
const RANDOM_TARGET_FAILPOINTS: [&str; 6] = [
    "migration.target.stage=2*return",
    "migration.target.import=2*return",
    "migration.target.apply-changes=2*return",
    "migration.target.seal=2*return",
    "migration.target.activate=2*return",
    "migration.target.drop=2*return",
];

/// The `FAILPOINTS` of a random run's controller: slowed steps plus a few random failpoints
/// of both sides (each controller is source of some migrations and target of others).
pub fn random_failpoints(rng: &mut impl Rng) -> String {
    let mut points = vec![slow_steps(rng.gen_range(100..500))];
    for point in RANDOM_SOURCE_FAILPOINTS
        .iter()
        .chain(&RANDOM_TARGET_FAILPOINTS)
    {
        if rng.gen_bool(0.2) {
            points.push((*point).to_owned());
        }
    }
    points.join(";")
}

/// A random fault on one of `controllers`.
pub fn random_fault(rng: &mut impl Rng, controllers: &[String]) -> Fault {
    let controller = controllers[rng.gen_range(0..controllers.len())].clone();
    let role = if rng.gen_bool(0.6) {
        Role::Leader
    } else {
        Role::Follower
    };
    match rng.gen_range(0..10) {
        0..=3 => Fault::Kill { controller, role },
        4..=5 => Fault::Pause { controller, role },
        6 => Fault::PowerCut { controller },
        7..=8 => Fault::Partition {
            controller,
            mode: LinkMode::Drop,
        },
        _ => Fault::Partition {
            controller,
            mode: LinkMode::Blackhole,
        },
    }
}

/// The soak's body: for about `duration`, rounds of migrating random models (both directions
/// at once) while injecting random faults at random moments and healing them after a random
/// while; then [`World::finish`]. Everything is drawn from the world's seeded random source.
pub fn random_run(world: &mut World, duration: Duration) -> Result<()> {
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < duration {
        round += 1;
        let n = world.rng.gen_range(1..=world.models.len().min(3));
        let mut models = world.models.clone();
        for i in 0..n {
            let j = world.rng.gen_range(i..models.len());
            models.swap(i, j);
        }
        info!(round, models = ?&models[..n], "--- soak round");
        for model in &models[..n] {
            world.migrate(model)?;
        }
        let faults = world.rng.gen_range(0..=2);
        for _ in 0..faults {
            std::thread::sleep(Duration::from_millis(world.rng.gen_range(0..3000)));
            let fault = random_fault(&mut world.rng, &world.options.controllers);
            world.inject(&fault)?;
        }
        std::thread::sleep(Duration::from_millis(world.rng.gen_range(500..5000)));
        world.heal()?;
        world.wait_migrations_end(world::MIGRATION_END_WAIT)?;
    }
    world.finish()
}
