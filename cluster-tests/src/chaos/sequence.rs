//! The operation-sequence tier: on a [`World`] of three controllers under the recorded
//! workload, a driver performs seeded sequences of what an operator does — migrate a model
//! onward (A→B→C) and back, abort a migration mid-flight and retry it with nothing changed,
//! migrate while a leader on either side is SIGKILLed, destroy a model and re-create it under
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
//! - a write of the user invoked after the revocation returned (committed) and completed
//!   before the next grant was asked for, acknowledged.
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
use super::World;
use crate::history::{History, OpKind, Outcome, Ownership, Recorder};

/// The process id of the user's writes in the history.
pub const USER_PROCESS: u64 = 1003;
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
    StepKind::MigrateUnderKill,
    StepKind::Onward,
    StepKind::DestroyOrCreate,
    StepKind::Back,
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
    /// Revocations: when each `ctl revoke` returned, and when the next `ctl grant` was asked
    /// for (recorder clock).
    windows: Vec<(u64, Option<u64>)>,
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
}

async fn user_loop(
    clients: Vec<(u64, crate::AuthedControllerClient)>,
    recorder: Recorder,
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
        let id = recorder.invoke(USER_PROCESS, OpKind::append(&model, &key, &controller));
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

/// Writes of `process` acknowledged although they were invoked after a revocation returned
/// and completed before the next grant was asked for: each `(revoked_at, granted_at)` window
/// on the history's clock. An empty list when there are none.
pub fn writes_after_revocation(
    history: &History,
    process: u64,
    windows: &[(u64, Option<u64>)],
) -> Vec<String> {
    history
        .ops
        .iter()
        .filter(|op| op.process == process && op.outcome == Outcome::Ok)
        .filter(|op| matches!(op.kind, OpKind::Append { .. }))
        .filter(|op| {
            windows.iter().any(|(revoked, granted)| {
                op.invoke > *revoked
                    && match (granted, op.complete) {
                        (None, _) => true,
                        (Some(granted), Some(done)) => done < *granted,
                        (Some(_), None) => false,
                    }
            })
        })
        .map(|op| op.to_string())
        .collect()
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
                windows: Vec::new(),
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
        match world.rng.gen_range(0..24) {
            0..=3 => StepKind::Migrate,
            4..=5 => StepKind::Onward,
            6..=7 => StepKind::Back,
            8..=10 => StepKind::MigrateUnderKill,
            11..=13 => StepKind::AbortAndRetry,
            14 => StepKind::KillLeader,
            15..=17 => StepKind::DestroyOrCreate,
            18..=20 => StepKind::BackupRestore,
            _ => StepKind::RevokeOrGrant,
        }
    }

    /// Performs one step of `kind`, waits until its migrations ended, and writes to the scratch
    /// model.
    pub fn step(&mut self, world: &mut World, kind: StepKind) -> Result<()> {
        match kind {
            StepKind::Migrate => self.migrate(world)?,
            StepKind::Onward => self.onward(world)?,
            StepKind::Back => self.back(world)?,
            StepKind::MigrateUnderKill => self.migrate_under_kill(world)?,
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
        self.touch_scratch(world)
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
        if self.user.revoked {
            let asked = world.recorder.now();
            world
                .ctl
                .ok(&["grant", "-c", &controller, &user, "write", &model])?;
            if let Some(window) = self.user.windows.last_mut() {
                window.1 = Some(asked);
            }
            self.user.revoked = false;
            self.note(format!("grant {user} write on {model}: done"));
        } else {
            world
                .ctl
                .ok(&["revoke", "-c", &controller, &user, "write", &model])?;
            self.user.windows.push((world.recorder.now(), None));
            self.user.revoked = true;
            self.note(format!("revoke {user} write on {model}: done (committed)"));
        }
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
        info!(refused, acked, windows = ?self.user.windows, "the user's writes");
        let wrong = writes_after_revocation(&history, USER_PROCESS, &self.user.windows);
        ensure!(
            wrong.is_empty(),
            "writes acknowledged after the revocation committed: {wrong:#?}"
        );
        ensure!(acked > 0, "the user never wrote");
        world.finish()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryBuilder;

    #[test]
    fn a_write_acknowledged_inside_a_revocation_window_is_reported() {
        let mut history = HistoryBuilder::new();
        // Before the revocation, inside it, straddling the grant, after the grant.
        history.op(
            USER_PROCESS,
            OpKind::append("m", "a", "c"),
            1,
            Some(5),
            Outcome::Ok,
        );
        history.op(
            USER_PROCESS,
            OpKind::append("m", "b", "c"),
            12,
            Some(14),
            Outcome::Ok,
        );
        history.op(
            USER_PROCESS,
            OpKind::append("m", "x", "c"),
            15,
            Some(25),
            Outcome::Ok,
        );
        history.op(
            USER_PROCESS,
            OpKind::append("m", "d", "c"),
            30,
            Some(31),
            Outcome::Ok,
        );
        history.op(
            USER_PROCESS,
            OpKind::append("m", "e", "c"),
            13,
            Some(16),
            Outcome::Fail,
        );
        let history = history.build();
        let wrong = writes_after_revocation(&history, USER_PROCESS, &[(10, Some(20))]);
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        assert!(wrong[0].contains("\"b\""), "{wrong:?}");
        let open = writes_after_revocation(&history, USER_PROCESS, &[(10, None)]);
        assert_eq!(open.len(), 3, "{open:?}");
        assert!(writes_after_revocation(&history, 7, &[(0, None)]).is_empty());
    }
}
