//! The operation-sequence tier: on a [`World`] of three controllers under the recorded
//! workload, a driver performs seeded sequences of what an operator does — migrate a model
//! onward (A→B→C) and back, abort a migration mid-flight and retry it with nothing changed,
//! migrate while a leader on either side is SIGKILLed or SIGSTOPped for about a second or while
//! the source or the target is partitioned for a few seconds (the chaos tier's faults, then
//! healed), destroy a model and re-create it under
//! the same name, back a controller up and restore it (also while a migration is in flight),
//! revoke and grant the access of a user who keeps writing — and records every step's outcome.
//! Legitimate refusals (a precheck, a restore during a migration, an abort after SUCCESS) are
//! outcomes like any other; wrong outcomes fail the run at once:
//!
//! - an accepted abort that does not end ABORTDONE, or a retry after an abort (no fault in
//!   between) that does not end DONE;
//! - a restore accepted while one of the controller's migrations was in flight before and
//!   after it;
//! - after a destroy, any controller still holding the model active, locked or importing; a
//!   destroyed incarnation (by uuid) ever active again; a re-created model active anywhere but
//!   where it was created or moved;
//!
//! The revocations and grants are operations of the recorded history ([`OpKind::Access`]), the
//! user's writes carry the user's name, and after every step the log of the models the step
//! moved (and one more) is read on its owner ([`OpKind::ReadLog`]), so the history checker
//! verifies that no write of the user invoked after a revocation returned and completed
//! before the next grant was asked for is acknowledged, and that no model-log record agents
//! wrote is lost or doubled across the migrations.
//!
//! At the end [`World::finish`] heals, waits for the migrations and checks one owner per
//! model, every acknowledged write present, and the history checker. The re-created model's
//! incarnations are separate lists to the checker (`NAME#gN`), so a value of a destroyed
//! incarnation read back from a later one is an invented value.
//!
//! What a step does next depends on the outcomes before it (a refused migration leaves the
//! model where it was), so a seed replays the same draws as long as the cluster answers the
//! same way; the steps and their outcomes are printed and saved with a failing run
//! (`steps.txt`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use starling_proto::controller::{ModelRef, SetModelConfigRequest};
use tokio::task::JoinHandle;
use tonic::Code;
use tracing::info;

use super::workload::CALL_TIMEOUT;
use super::world::{wait_until, MigrationRun, MIGRATION_END_WAIT, SETTLE_WAIT};
use super::{Fault, LinkMode, Role, World};
use crate::history::{OpKind, Outcome, Ownership, Recorder};

/// The process id of the user's writes in the history.
pub const USER_PROCESS: u64 = 1003;
/// The process id of the revocations and grants in the history.
pub const ACCESS_PROCESS: u64 = 1004;
/// How long a migration may take to reach a phase the driver waits for.
const PHASE_WAIT: Duration = Duration::from_secs(60);

/// The kinds of steps, for the fixed tour and the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StepKind {
    /// Migrate a model to a random other controller (onward, or back where it came from).
    Migrate,
    /// Migrate a model A→B and, as soon as B owns it (while the log transfer may still run),
    /// on to C; when refused, again once A→B ended.
    Onward,
    /// Migrate the model the last completed migration moved back where it came from.
    Back,
    /// Migrate while the leader of the source or the target is SIGKILLed in a random phase.
    MigrateUnderKill,
    /// Abort a migration in a random phase before SUCCESS, then retry it at once.
    AbortAndRetry,
    /// SIGKILL a controller's leader (and restart it) with nothing else going on.
    KillLeader,
    /// Migrate while the source or the target is partitioned (through its proxy: the source's
    /// master cannot reach the target, or nothing outside reaches the source) in a random
    /// phase for 1–3 s, then healed.
    MigrateUnderPartition,
    /// Migrate while the leader of the source or the target is SIGSTOPped in a random phase
    /// for about a second, then resumed.
    PauseLeader,
    /// Destroy the scratch model, or re-create it under the same name on a random controller.
    DestroyOrCreate,
    /// Back a controller up, try to restore it during a migration, restore it after.
    BackupRestore,
    /// Revoke the writing user's write access, or grant it again.
    RevokeOrGrant,
}

/// The fixed tour: every step kind at least once.
pub const TOUR: [StepKind; 15] = [
    StepKind::AbortAndRetry,
    StepKind::Onward,
    StepKind::Back,
    StepKind::RevokeOrGrant,
    StepKind::MigrateUnderKill,
    StepKind::DestroyOrCreate,
    StepKind::BackupRestore,
    StepKind::DestroyOrCreate,
    StepKind::RevokeOrGrant,
    StepKind::KillLeader,
    StepKind::MigrateUnderPartition,
    StepKind::Onward,
    StepKind::DestroyOrCreate,
    StepKind::PauseLeader,
    StepKind::DestroyOrCreate,
];

/// What a run did, for the report.
#[derive(Clone, Debug, Default)]
pub struct SequenceReport {
    /// One line per step: what was done and what came of it.
    pub steps: Vec<String>,
    /// Migrations started.
    pub migrations: usize,
    /// Leaders SIGKILLed.
    pub kills: usize,
    /// Legitimate refusals seen.
    pub refusals: usize,
}

/// A user with write access to one pinned model who writes to it without pause.
struct UserWriter {
    name: String,
    controller: String,
    model: String,
    /// Whether write access is revoked now.
    revoked: bool,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

/// The model destroyed and re-created under the same name.
struct Scratch {
    name: String,
    /// 1 for the first creation, +1 per re-creation.
    incarnation: u64,
    /// The uuid of the live incarnation, `None` while destroyed.
    uuid: Option<String>,
    /// Uuids of destroyed incarnations.
    destroyed: Vec<String>,
    /// Keys written so far (unique across incarnations).
    written: u64,
}

impl Scratch {
    fn recorded_as(&self) -> String {
        format!("{}#g{}", self.name, self.incarnation)
    }
}

/// The driver of one run.
pub struct Sequence {
    user: UserWriter,
    scratch: Scratch,
    report: SequenceReport,
    /// When the run started (the steps' times count from it).
    started: Instant,
    /// Restores accepted so far: a restore rewinds the models' logs legitimately (records
    /// acknowledged after the backup are gone), so log reads after the n-th are recorded as
    /// another list ([`Self::log_name`]).
    restores: u64,
}

async fn user_loop(
    clients: Vec<(u64, crate::AuthedControllerClient)>,
    recorder: Recorder,
    user: String,
    model: String,
    controller: String,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("cu-{n}");
        let (_, client) = &clients[rng.gen_range(0..clients.len())];
        let mut client = client.clone();
        let id = recorder.invoke(
            USER_PROCESS,
            OpKind::append_by(&model, &key, &controller, &user),
        );
        let request = SetModelConfigRequest {
            model: Some(ModelRef {
                name: model.clone(),
                uuid: String::new(),
            }),
            values: [(key.clone(), key.clone())].into(),
            request_id: format!("user-{key}"),
        };
        let outcome =
            match tokio::time::timeout(CALL_TIMEOUT, client.set_model_config(request)).await {
                Ok(Ok(_)) => Outcome::Ok,
                // Refused before or at apply: not applied.
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition
                    ) =>
                {
                    Outcome::Fail
                }
                _ => Outcome::Unknown,
            };
        recorder.complete(id, outcome);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(30..80))).await;
    }
}

impl Sequence {
    /// Sets up the writing user on a plain model of the first controller (pinned: the driver
    /// never migrates it, users belong to a controller) and the scratch model on the second.
    pub fn start(world: &mut World) -> Result<Self> {
        let controller = world.options.controllers[0].clone();
        let model = world
            .models_on(&controller)
            .into_iter()
            .find(|m| !m.contains("w-"))
            .context("the first controller has no plain model for the user")?;
        let name = format!("writer{:04x}", world.options.seed & 0xffff);
        let out = world.ctl.ok(&["add-user", "-c", &controller, &name])?;
        let token = out
            .split_whitespace()
            .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
            .with_context(|| format!("no token in {out:?}"))?
            .to_owned();
        world
            .ctl
            .ok(&["grant", "-c", &controller, &name, "write", &model])?;
        let clients = world.clients_with_token(&controller, &token)?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = world.rt.spawn(user_loop(
            clients,
            world.recorder.clone(),
            name.clone(),
            model.clone(),
            controller.clone(),
            StdRng::seed_from_u64(world.options.seed ^ 0x05e7),
            stop.clone(),
        ));
        let mut sequence = Sequence {
            user: UserWriter {
                name,
                controller,
                model,
                revoked: false,
                stop,
                task: Some(task),
            },
            scratch: Scratch {
                name: format!("s-{:04x}", world.options.seed & 0xffff),
                incarnation: 0,
                uuid: None,
                destroyed: Vec::new(),
                written: 0,
            },
            report: SequenceReport::default(),
            started: Instant::now(),
            restores: 0,
        };
        let home = world.options.controllers[1].clone();
        sequence.create_scratch(world, &home)?;
        Ok(sequence)
    }

    /// What the run did so far.
    pub fn report(&self) -> &SequenceReport {
        &self.report
    }

    fn note(&mut self, line: String) {
        let line = format!(
            "[{:>6.1}s] step {}: {line}",
            self.started.elapsed().as_secs_f64(),
            self.report.steps.len() + 1
        );
        eprintln!("sequence: {line}");
        info!(%line, "--- sequence step");
        self.report.steps.push(line);
    }

    /// Models the driver may migrate: every model but the user's, and the scratch model while
    /// it exists.
    fn movable(&self, world: &World) -> Vec<String> {
        let mut models: Vec<String> = world
            .models
            .iter()
            .filter(|m| **m != self.user.model)
            .cloned()
            .collect();
        if self.scratch.uuid.is_some() {
            models.push(self.scratch.name.clone());
        }
        models
    }

    fn pick<T: Clone>(world: &mut World, items: &[T]) -> T {
        items[world.rng.gen_range(0..items.len())].clone()
    }

    /// A random controller other than `not`.
    fn other_than(world: &mut World, not: &str) -> String {
        let others: Vec<String> = world
            .options
            .controllers
            .iter()
            .filter(|c| *c != not)
            .cloned()
            .collect();
        Self::pick(world, &others)
    }

    /// Draws a step kind at random.
    pub fn random_kind(world: &mut World) -> StepKind {
        match world.rng.gen_range(0..27) {
            0..=3 => StepKind::Migrate,
            4..=5 => StepKind::Onward,
            6..=7 => StepKind::Back,
            8..=10 => StepKind::MigrateUnderKill,
            11..=13 => StepKind::AbortAndRetry,
            14 => StepKind::KillLeader,
            15..=17 => StepKind::DestroyOrCreate,
            18..=20 => StepKind::BackupRestore,
            21..=23 => StepKind::RevokeOrGrant,
            24..=25 => StepKind::MigrateUnderPartition,
            _ => StepKind::PauseLeader,
        }
    }

    /// Performs one step of `kind`, waits until its migrations ended, and writes to the scratch
    /// model.
    pub fn step(&mut self, world: &mut World, kind: StepKind) -> Result<()> {
        let migrations_before = world.migrations.len();
        match kind {
            StepKind::Migrate => self.migrate(world)?,
            StepKind::Onward => self.onward(world)?,
            StepKind::Back => self.back(world)?,
            StepKind::MigrateUnderKill => self.migrate_under_kill(world)?,
            StepKind::MigrateUnderPartition => self.migrate_under_partition(world)?,
            StepKind::PauseLeader => self.migrate_under_pause(world)?,
            StepKind::AbortAndRetry => self.abort_and_retry(world)?,
            StepKind::KillLeader => {
                let controllers = world.options.controllers.clone();
                let controller = Self::pick(world, &controllers);
                world.kill_leader_and_recover(&controller)?;
                self.report.kills += 1;
                self.note(format!("SIGKILL the leader of {controller}: recovered"));
            }
            StepKind::DestroyOrCreate => {
                if self.scratch.uuid.is_some() {
                    self.destroy_scratch(world)?;
                } else {
                    let controllers = world.options.controllers.clone();
                    let home = Self::pick(world, &controllers);
                    self.create_scratch(world, &home)?;
                }
            }
            StepKind::BackupRestore => self.backup_restore(world)?,
            StepKind::RevokeOrGrant => self.revoke_or_grant(world)?,
        }
        world.wait_migrations_end(MIGRATION_END_WAIT)?;
        self.read_logs(world, migrations_before)?;
        self.touch_scratch(world)
    }

    /// Reads, on its owner, the log of every workload model the migrations from
    /// `migrations_before` on moved (their log transfers ended with them), and of one more.
    fn read_logs(&mut self, world: &mut World, migrations_before: usize) -> Result<()> {
        let mut models: Vec<String> = world.migrations[migrations_before..]
            .iter()
            .map(|run| run.model.clone())
            .filter(|model| world.models.contains(model))
            .collect();
        let all = world.models.clone();
        models.push(Self::pick(world, &all));
        models.sort();
        models.dedup();
        for model in models {
            let home = world.homes[&model].clone();
            world.read_log(&home, &model, &self.log_name(&model))?;
        }
        Ok(())
    }

    /// The name `model`'s log reads are recorded under: the model's, with the number of
    /// restores so far once there was one.
    fn log_name(&self, model: &str) -> String {
        match self.restores {
            0 => model.to_owned(),
            n => format!("{model}~log{n}"),
        }
    }

    /// Records a migration that ended in the note line's words.
    fn ended(world: &World, run: &MigrationRun) -> String {
        format!(
            "{} {}→{} ({}) ended {}",
            run.model,
            run.from,
            run.to,
            run.id,
            world.ending(&run.id)
        )
    }

    /// Starts migrating a random movable model to a random other controller (onward, or
    /// back where it came from); `None` when `ctl migrate` refused (noted).
    fn start_migration(&mut self, world: &mut World) -> Result<Option<MigrationRun>> {
        let movable = self.movable(world);
        let model = Self::pick(world, &movable);
        let from = world.homes[&model].clone();
        let to = Self::other_than(world, &from);
        match world.migrate_or_refusal(&model, &to)? {
            Ok(run) => {
                self.report.migrations += 1;
                Ok(Some(run))
            }
            Err(why) => {
                self.report.refusals += 1;
                self.note(format!("migrate {model} {from}→{to}: refused: {why}"));
                Ok(None)
            }
        }
    }

    fn migrate(&mut self, world: &mut World) -> Result<()> {
        if let Some(run) = self.start_migration(world)? {
            world.wait_migrations_end(MIGRATION_END_WAIT)?;
            let line = Self::ended(world, &run);
            self.note(format!("migrate {line}"));
        }
        Ok(())
    }

    fn onward(&mut self, world: &mut World) -> Result<()> {
        let Some(first) = self.start_migration(world)? else {
            return Ok(());
        };
        let model = first.model.clone();
        let third = world
            .options
            .controllers
            .iter()
            .find(|c| **c != first.from && **c != first.to)
            .cloned()
            .context("onward moves need three controllers")?;
        let phase = Self::pick(world, &["SUCCESS", "LOGTRANSFER", "REAP"][..]);
        let hit = world.wait_phase(&first, phase, PHASE_WAIT)?;
        let when = if hit { "in" } else { "after missing" };
        let early = world.migrate_from(&model, &first.to, &third)?;
        let early_line = match &early {
            Ok(run) => format!("accepted ({})", run.id),
            Err(why) => {
                self.report.refusals += 1;
                format!("refused: {why}")
            }
        };
        world.wait_migrations_end(MIGRATION_END_WAIT)?;
        let mut line = format!(
            "onward {model}: {}; {}→{third} asked with the first {when} {phase}: {early_line}",
            Self::ended(world, &first),
            first.to
        );
        let second = match early {
            Ok(run) => Some(run),
            // Asked again once the first ended, if it moved the model.
            Err(_) if world.end_of(&first.id) == Some("DONE") => {
                match world.migrate_or_refusal(&model, &third)? {
                    Ok(run) => Some(run),
                    Err(why) => {
                        self.report.refusals += 1;
                        line.push_str(&format!("; asked again: refused: {why}"));
                        None
                    }
                }
            }
            Err(_) => None,
        };
        if let Some(second) = second {
            self.report.migrations += 1;
            world.wait_migrations_end(MIGRATION_END_WAIT)?;
            line.push_str(&format!("; {}", Self::ended(world, &second)));
        }
        self.note(line);
        Ok(())
    }

    fn back(&mut self, world: &mut World) -> Result<()> {
        let movable = self.movable(world);
        let last = world
            .migrations
            .iter()
            .rev()
            .find(|r| {
                r.end.as_deref() == Some("DONE")
                    && movable.contains(&r.model)
                    && world.homes.get(&r.model) == Some(&r.to)
            })
            .cloned();
        let Some(last) = last else {
            return self.migrate(world);
        };
        match world.migrate_or_refusal(&last.model, &last.from)? {
            Ok(run) => {
                self.report.migrations += 1;
                world.wait_migrations_end(MIGRATION_END_WAIT)?;
                let line = Self::ended(world, &run);
                self.note(format!("back {line}"));
            }
            Err(why) => {
                self.report.refusals += 1;
                self.note(format!(
                    "back {} {}→{}: refused: {why}",
                    last.model, last.to, last.from
                ));
            }
        }
        Ok(())
    }

    fn migrate_under_kill(&mut self, world: &mut World) -> Result<()> {
        let Some(run) = self.start_migration(world)? else {
            return Ok(());
        };
        let phase = Self::pick(
            world,
            &["QUIESCE", "IMPORT", "VALIDATION", "SUCCESS", "REAP"][..],
        );
        let victim = if world.rng.gen_bool(0.5) {
            run.from.clone()
        } else {
            run.to.clone()
        };
        let hit = world.wait_phase(&run, phase, PHASE_WAIT)?;
        world.kill_leader_and_recover(&victim)?;
        self.report.kills += 1;
        world.wait_migrations_end(MIGRATION_END_WAIT)?;
        let line = Self::ended(world, &run);
        let when = if hit { "in" } else { "after missing" };
        self.note(format!(
            "migrate {line}; the leader of {victim} SIGKILLed {when} {phase}"
        ));
        Ok(())
    }

    /// A migration with its source or target cut off (the chaos tier's proxy fault) in a
    /// random phase for a random 1–3 s.
    fn migrate_under_partition(&mut self, world: &mut World) -> Result<()> {
        let mode = if world.rng.gen_bool(0.5) {
            LinkMode::Drop
        } else {
            LinkMode::Blackhole
        };
        let hold = Duration::from_millis(world.rng.gen_range(1000..3000));
        self.migrate_under_fault(
            world,
            &["PRECOPY", "IMPORT", "VALIDATION", "SUCCESS"],
            hold,
            |victim| Fault::Partition {
                controller: victim.to_owned(),
                mode,
            },
        )
    }

    /// A migration with the leader of its source or target SIGSTOPped (the chaos tier's pause
    /// fault) in a random phase for about a second.
    fn migrate_under_pause(&mut self, world: &mut World) -> Result<()> {
        let hold = Duration::from_millis(world.rng.gen_range(800..1300));
        self.migrate_under_fault(
            world,
            &["QUIESCE", "IMPORT", "VALIDATION", "SUCCESS"],
            hold,
            |victim| Fault::Pause {
                controller: victim.to_owned(),
                role: Role::Leader,
            },
        )
    }

    /// Starts a migration, waits for one of `phases` (drawn), injects `fault` on its source or
    /// target (drawn) for `hold`, heals, and waits for the migration's end.
    fn migrate_under_fault(
        &mut self,
        world: &mut World,
        phases: &[&'static str],
        hold: Duration,
        fault: impl FnOnce(&str) -> Fault,
    ) -> Result<()> {
        let Some(run) = self.start_migration(world)? else {
            return Ok(());
        };
        let phase = Self::pick(world, phases);
        let victim = if world.rng.gen_bool(0.5) {
            run.from.clone()
        } else {
            run.to.clone()
        };
        let fault = fault(&victim);
        let hit = world.wait_phase(&run, phase, PHASE_WAIT)?;
        world.inject(&fault)?;
        std::thread::sleep(hold);
        world.heal()?;
        world.wait_migrations_end(MIGRATION_END_WAIT)?;
        let line = Self::ended(world, &run);
        let when = if hit { "in" } else { "after missing" };
        self.note(format!(
            "migrate {line}; {fault:?} {when} {phase} for {hold:?}, then healed"
        ));
        Ok(())
    }

    fn abort_and_retry(&mut self, world: &mut World) -> Result<()> {
        let Some(run) = self.start_migration(world)? else {
            return Ok(());
        };
        let (model, from, to) = (run.model.clone(), run.from.clone(), run.to.clone());
        let phase = Self::pick(world, &["PRECHECK", "QUIESCE", "IMPORT", "VALIDATION"][..]);
        world.wait_phase(&run, phase, PHASE_WAIT)?;
        let abort = world.ctl.run(&[
            "abort-migration",
            &format!("{from}:{model}"),
            "--reason",
            "sequence",
        ])?;
        world.wait_migrations_end(MIGRATION_END_WAIT)?;
        let line = Self::ended(world, &run);
        if abort.code != 0 {
            // Refused: the migration had reached SUCCESS (or ended) before the request.
            self.report.refusals += 1;
            self.note(format!(
                "abort {model} in {phase}: refused ({}); {line}",
                abort.stderr.trim()
            ));
            ensure!(
                world.end_of(&run.id).is_some(),
                "the migration did not end: {line}"
            );
            return Ok(());
        }
        self.note(format!("abort {model} in {phase}: accepted; {line}"));
        ensure!(
            world.end_of(&run.id) == Some("ABORTDONE"),
            "wrong outcome: an accepted abort must end ABORTDONE: {line}"
        );
        match world.migrate_or_refusal(&model, &to)? {
            Ok(retry) => {
                self.report.migrations += 1;
                world.wait_migrations_end(MIGRATION_END_WAIT)?;
                let line = Self::ended(world, &retry);
                self.note(format!("retry with nothing changed: {line}"));
                ensure!(
                    world.end_of(&retry.id) == Some("DONE"),
                    "wrong outcome: a retry after an abort, with no fault, must end DONE: {line}"
                );
            }
            Err(why) => {
                self.report.refusals += 1;
                self.note(format!("retry {model} {from}→{to}: refused: {why}"));
            }
        }
        Ok(())
    }

    fn create_scratch(&mut self, world: &mut World, home: &str) -> Result<()> {
        let name = self.scratch.name.clone();
        let created = world.ctl.run(&["add-model", &name, "-c", home])?;
        if created.code != 0 {
            // E.g. `home` still holds a redirect of an earlier incarnation that moved on.
            self.report.refusals += 1;
            self.note(format!(
                "re-create {name} on {home}: refused: {}",
                created.stderr.trim()
            ));
            return Ok(());
        }
        let uuid = match world.show_model(home, &name) {
            Some(Ok(info)) => info.model.map(|m| m.uuid).unwrap_or_default(),
            other => bail!("{home} does not show the model {name} it just created: {other:?}"),
        };
        ensure!(
            !self.scratch.destroyed.contains(&uuid),
            "re-created {name} has the uuid {uuid} of a destroyed incarnation"
        );
        self.scratch.incarnation += 1;
        self.scratch.uuid = Some(uuid.clone());
        world.homes.insert(name.clone(), home.to_owned());
        self.note(format!(
            "create {name} on {home}: incarnation {} ({uuid})",
            self.scratch.incarnation
        ));
        Ok(())
    }

    fn destroy_scratch(&mut self, world: &mut World) -> Result<()> {
        let name = self.scratch.name.clone();
        let home = world.homes[&name].clone();
        let destroyed =
            world
                .ctl
                .run(&["destroy-model", &format!("{home}:{name}"), "-y", "--force"])?;
        if destroyed.code != 0 {
            self.report.refusals += 1;
            self.note(format!(
                "destroy {name} on {home}: refused: {}",
                destroyed.stderr.trim()
            ));
            return Ok(());
        }
        let uuid = self.scratch.uuid.take().context("no live incarnation")?;
        self.scratch.destroyed.push(uuid.clone());
        world.homes.remove(&name);
        self.note(format!("destroy {name} ({uuid}) on {home}: done"));
        self.check_scratch(world)
    }

    /// Writes one key to the scratch model where it lives and reads it back (both recorded
    /// under its incarnation).
    fn touch_scratch(&mut self, world: &mut World) -> Result<()> {
        if self.scratch.uuid.is_none() {
            return Ok(());
        }
        let name = self.scratch.name.clone();
        let home = world.homes[&name].clone();
        let recorded_as = self.scratch.recorded_as();
        self.scratch.written += 1;
        let key = format!("cs-{}", self.scratch.written);
        world.write_key(&home, &name, &recorded_as, &key)?;
        world.read_keys(&home, &name, &recorded_as)?;
        Ok(())
    }

    /// Every controller's view of the scratch model: a destroyed incarnation is never active,
    /// locked or importing anywhere, and the live one only where the driver put it.
    fn check_scratch(&mut self, world: &mut World) -> Result<()> {
        let name = self.scratch.name.clone();
        // Until every node applied the destroy (or a leftover import is swept); a model held
        // twice stays held and fails after the wait.
        wait_until(
            &format!("{name} held only where it lives"),
            SETTLE_WAIT,
            || self.scratch_held_once(world),
        )
    }

    fn scratch_held_once(&self, world: &mut World) -> Result<()> {
        let name = self.scratch.name.clone();
        let home = world.homes.get(&name).cloned();
        for controller in world.options.controllers.clone() {
            let answer = world
                .show_model(&controller, &name)
                .with_context(|| format!("no definite answer from {controller} about {name}"))?;
            let uuid = answer
                .as_ref()
                .ok()
                .and_then(|info| info.model.as_ref())
                .map(|m| m.uuid.clone());
            let ownership = super::ownership_of(&answer).context("indefinite answer")?;
            let holds = !matches!(ownership, Ownership::Absent | Ownership::MigratedTo { .. });
            if let Some(uuid) = &uuid {
                ensure!(
                    !self.scratch.destroyed.contains(uuid),
                    "{controller} shows a destroyed incarnation of {name} ({uuid}): {ownership}"
                );
            }
            if holds {
                ensure!(
                    home.as_deref() == Some(controller.as_str())
                        && uuid.as_ref() == self.scratch.uuid.as_ref(),
                    "{controller} holds {name} ({ownership}, uuid {uuid:?}); the live incarnation \
                     is {:?} on {home:?}",
                    self.scratch.uuid
                );
            }
        }
        Ok(())
    }

    fn backup_restore(&mut self, world: &mut World) -> Result<()> {
        // The user's controller is not restored: a restore brings back the users' access as
        // it was, which would blur the revocation windows.
        let candidates: Vec<String> = world
            .options
            .controllers
            .iter()
            .filter(|c| **c != self.user.controller)
            .cloned()
            .collect();
        let controller = Self::pick(world, &candidates);
        // A restore rewinds the controller's models: writes acknowledged between the backup
        // and the restore are legitimately lost, so the workload rests meanwhile.
        world.pause_workload();
        let archive = world
            .work_dir()
            .context("no work dir")?
            .join(format!("backup-{}.bin", self.report.steps.len()));
        let archive_arg = archive.display().to_string();
        world.ctl.ok(&[
            "create-backup",
            "sequence",
            "-c",
            &controller,
            "--filename",
            &archive_arg,
        ])?;
        // A migration touching the controller while the restore is asked for.
        let mine: Vec<String> = self
            .movable(world)
            .into_iter()
            .filter(|m| world.homes[m] == controller)
            .collect();
        let mut in_flight_line = String::from("no model to migrate");
        if !mine.is_empty() {
            let model = Self::pick(world, &mine);
            let to = Self::other_than(world, &controller);
            match world.migrate_or_refusal(&model, &to)? {
                Ok(run) => {
                    self.report.migrations += 1;
                    world.wait_phase(&run, "IMPORT", PHASE_WAIT)?;
                    let before = world.migration_status(&controller, &model)?;
                    let restore = world.ctl.run(&[
                        "restore-backup",
                        &archive_arg,
                        "-c",
                        &controller,
                        "--force",
                    ])?;
                    let after = world.migration_status(&controller, &model)?;
                    let in_flight = |phase: &str| !super::world::TERMINAL.contains(&phase);
                    if restore.code == 0 {
                        self.restores += 1;
                        ensure!(
                            !(before.migration_id == run.id
                                && after.migration_id == run.id
                                && in_flight(&before.phase)
                                && in_flight(&after.phase)),
                            "wrong outcome: {controller} restored a backup while migration {} \
                             was in flight ({} before, {} after)",
                            run.id,
                            before.phase,
                            after.phase
                        );
                        in_flight_line = format!(
                            "restore during {model}'s migration accepted (it had ended: {})",
                            after.phase
                        );
                    } else {
                        self.report.refusals += 1;
                        in_flight_line = format!(
                            "restore during {model}'s migration ({}) refused: {}",
                            before.phase,
                            restore.stderr.trim()
                        );
                    }
                    world.wait_migrations_end(MIGRATION_END_WAIT)?;
                    in_flight_line = format!("{in_flight_line}; {}", Self::ended(world, &run));
                }
                Err(why) => {
                    self.report.refusals += 1;
                    in_flight_line = format!("migrate {model}→{to}: refused: {why}");
                }
            }
        }
        let restore =
            world
                .ctl
                .run(&["restore-backup", &archive_arg, "-c", &controller, "--force"])?;
        let outcome = if restore.code == 0 {
            self.restores += 1;
            "restored".to_owned()
        } else {
            self.report.refusals += 1;
            format!("refused: {}", restore.stderr.trim())
        };
        self.note(format!(
            "backup {controller}; {in_flight_line}; restore after: {outcome}"
        ));
        world.resume_workload();
        self.check_owners(world)
    }

    /// Every model of the workload owned by exactly one controller, the one the driver
    /// expects (and the scratch model as [`Self::check_scratch`] says).
    fn check_owners(&mut self, world: &mut World) -> Result<()> {
        for model in world.models.clone() {
            world.wait_one_owner(&model)?;
        }
        self.check_scratch(world)
    }

    fn revoke_or_grant(&mut self, world: &mut World) -> Result<()> {
        let controller = self.user.controller.clone();
        let (user, model) = (self.user.name.clone(), self.user.model.clone());
        let grant = self.user.revoked;
        let (verb, words) = if grant {
            ("grant", "done")
        } else {
            ("revoke", "done (committed)")
        };
        // Recorded as an access change: `ctl` returns once the change committed.
        let id = world.recorder.invoke(
            ACCESS_PROCESS,
            OpKind::access(&model, &user, &controller, grant),
        );
        let changed = world
            .ctl
            .ok(&[verb, "-c", &controller, &user, "write", &model]);
        world.recorder.complete(
            id,
            if changed.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Unknown
            },
        );
        changed?;
        self.user.revoked = !grant;
        self.note(format!("{verb} {user} write on {model}: {words}"));
        Ok(())
    }

    /// Stops the user, then checks the revocations and the scratch model, then
    /// [`World::finish`].
    pub fn finish(&mut self, world: &mut World) -> Result<()> {
        self.user.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.user.task.take() {
            let _ = world
                .rt
                .block_on(async { tokio::time::timeout(CALL_TIMEOUT * 3, task).await });
        }
        let history = world.recorder.history();
        let refused = history
            .ops
            .iter()
            .filter(|op| op.process == USER_PROCESS && op.outcome == Outcome::Fail)
            .count();
        let acked = history
            .ops
            .iter()
            .filter(|op| op.process == USER_PROCESS && op.outcome == Outcome::Ok)
            .count();
        info!(refused, acked, "the user's writes");
        ensure!(acked > 0, "the user never wrote");
        world.finish()?;
        // Every model's log on its final owner: the agents' records all there, once each.
        for model in world.models.clone() {
            let home = world.homes[&model].clone();
            let name = self.log_name(&model);
            world.read_log(&home, &model, &name)?;
        }
        self.check_scratch(world)?;
        if let Some(uuid) = &self.scratch.uuid {
            let home = world.homes[&self.scratch.name].clone();
            let name = self.scratch.name.clone();
            let recorded_as = self.scratch.recorded_as();
            let keys = world.read_keys(&home, &name, &recorded_as)?;
            info!(%uuid, ?keys, "the scratch model's last incarnation");
        }
        // Again with the last read of the scratch model.
        if let Err(e) = world.recorder.history().check() {
            bail!("checker: {e}");
        }
        Ok(())
    }

    /// Saves the steps beside the world's failure files.
    pub fn save_steps(&self, world: &World, error: &str) {
        let dir = super::failure_dir(&world.options.test, world.options.seed);
        let mut text = self.report.steps.join("\n");
        text.push_str(&format!("\nerror: {error}\n"));
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("steps.txt"), text);
        }
    }
}

/// Runs a sequence on `world`: `kinds` steps (the fixed tour), or random steps until
/// `duration` has passed; then the final checks. A failure saves the history, logs and steps.
pub fn run_sequence(
    world: &mut World,
    kinds: Option<&[StepKind]>,
    duration: Duration,
) -> Result<SequenceReport> {
    let mut sequence = match Sequence::start(world) {
        Ok(sequence) => sequence,
        Err(e) => {
            world.save_failure(&format!("{e:#}"));
            return Err(e);
        }
    };
    let result = (|| -> Result<()> {
        match kinds {
            Some(kinds) => {
                for kind in kinds {
                    sequence.step(world, *kind)?;
                }
            }
            None => {
                let start = Instant::now();
                while start.elapsed() < duration {
                    let kind = Sequence::random_kind(world);
                    sequence.step(world, kind)?;
                }
            }
        }
        sequence.finish(world)
    })();
    let report = sequence.report().clone();
    eprintln!(
        "sequence: {} steps, {} migrations, {} leader kills, {} refusals",
        report.steps.len(),
        report.migrations,
        report.kills,
        report.refusals
    );
    if let Err(e) = &result {
        let error = format!("{e:#}");
        sequence.save_steps(world, &error);
        world.save_failure(&error);
    }
    result.map(|()| report)
}
