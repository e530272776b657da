//! `UnitRunner`: one unit's lifecycle on this machine — fetch its charm, run its hooks
//! (`install`, `config-changed`, `start`, `upgrade-charm`, `relation-*`, `stop`), start and
//! supervise its workload (restart with backoff 1s..60s), stop it when the unit goes. What to do
//! next is a pure function (`plan_unit`) of what was done (`UnitRecord`) and what is wanted
//! (`UnitSpec`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};
use starling_proto::agent::{RelationSpec, UnitSpec};
use starling_proto::model::LogLevel;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::charms::{self, CharmStore};
use crate::context::AgentContext;
use crate::reports::status;
use crate::state::UnitRecord;
use crate::supervisor::{run_hook, Launch, Workload};

/// The longest a hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// SIGTERM → SIGKILL grace when a workload is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Workload restart backoff bounds.
pub const RESTART_MIN: Duration = Duration::from_secs(1);
/// Workload restart backoff bounds.
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// A workload that ran this long before exiting restarts after `RESTART_MIN` again.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);
/// Retry bounds for a failed hook or download.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the runtime wants of a unit runner (latest wins).
#[derive(Clone, Debug, PartialEq)]
pub enum UnitDesired {
    /// Converge on this spec.
    Apply(Box<UnitSpec>),
    /// The unit left the machine: stop hook, stop the workload, delete the unit dir.
    Remove,
    /// The agent is stopping: leave the workload running, return.
    Detach,
}

/// One step towards a spec.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitStep {
    /// Download and unpack the charm.
    FetchCharm,
    /// Run a hook (if the charm declares it) and record it.
    Hook {
        /// "install", "relation-joined", ...
        name: String,
        /// The relation, for relation hooks.
        relation: Option<RelationSpec>,
    },
    /// Start the workload.
    StartWorkload,
    /// Stop and start the workload (it must see new config or a new charm).
    RestartWorkload,
}

fn hook(name: &str) -> UnitStep {
    UnitStep::Hook {
        name: name.to_string(),
        relation: None,
    }
}

fn relation_hook(name: &str, relation: &RelationSpec) -> UnitStep {
    UnitStep::Hook {
        name: name.to_string(),
        relation: Some(relation.clone()),
    }
}

/// The steps from `record` to `spec`. `charm_local`: the charm is unpacked; `workload_running`:
/// a workload is up; `launch_fingerprint`: [`launch_fingerprint`] of the spec.
pub fn plan_unit(
    record: &UnitRecord,
    spec: &UnitSpec,
    charm_local: bool,
    workload_running: bool,
    launch_fingerprint: &str,
) -> Vec<UnitStep> {
    let mut steps = Vec::new();
    if !charm_local {
        steps.push(UnitStep::FetchCharm);
    }
    let upgrading = !record.charm_digest.is_empty() && record.charm_digest != spec.charm_digest;
    if !record.hooks_run.contains("install") {
        steps.push(hook("install"));
    } else if upgrading {
        steps.push(hook("upgrade-charm"));
    }
    let config: BTreeMap<String, String> = spec
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if upgrading || record.applied_config.as_ref() != Some(&config) {
        steps.push(hook("config-changed"));
    }
    if !record.hooks_run.contains("start") {
        steps.push(hook("start"));
    }
    let has_command = spec
        .charm
        .as_ref()
        .is_some_and(|c| !c.command.trim().is_empty());
    if has_command {
        if !workload_running {
            steps.push(UnitStep::StartWorkload);
        } else if record.workload_fingerprint != launch_fingerprint {
            steps.push(UnitStep::RestartWorkload);
        }
    }
    let wanted: BTreeMap<u64, &RelationSpec> = spec.relations.iter().map(|r| (r.id, r)).collect();
    for (id, _) in record
        .relations
        .iter()
        .filter(|(id, _)| !wanted.contains_key(id))
    {
        let departed = RelationSpec {
            id: *id,
            ..RelationSpec::default()
        };
        steps.push(relation_hook("relation-departed", &departed));
    }
    for relation in &spec.relations {
        match record.relations.get(&relation.id) {
            None => {
                steps.push(relation_hook("relation-joined", relation));
                steps.push(relation_hook("relation-changed", relation));
            }
            Some(seen) if *seen != relation.remote_units => {
                steps.push(relation_hook("relation-changed", relation));
            }
            Some(_) => {}
        }
    }
    steps
}

/// The environment of the unit's hooks and workload.
pub fn unit_env(
    spec: &UnitSpec,
    unit_dir: &std::path::Path,
    model_uuid: &str,
    machine_id: &str,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("STARLING_UNIT".to_string(), spec.name.clone()),
        (
            "STARLING_UNIT_DIR".to_string(),
            unit_dir.display().to_string(),
        ),
        ("STARLING_MODEL_UUID".to_string(), model_uuid.to_string()),
        ("STARLING_MACHINE_ID".to_string(), machine_id.to_string()),
    ];
    let config: BTreeMap<&String, &String> = spec.config.iter().collect();
    for (key, value) in config {
        // A key that cannot be a variable name part is skipped rather than breaking exec.
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            continue;
        }
        env.push((format!("STARLING_CONFIG_{key}"), value.clone()));
    }
    env
}

/// The extra environment of a relation hook.
pub fn relation_env(relation: &RelationSpec) -> Vec<(String, String)> {
    vec![
        ("STARLING_RELATION_ID".to_string(), relation.id.to_string()),
        (
            "STARLING_RELATION_ENDPOINT".to_string(),
            relation.endpoint.clone(),
        ),
        (
            "STARLING_REMOTE_APP".to_string(),
            relation.remote_application.clone(),
        ),
        (
            "STARLING_REMOTE_UNITS".to_string(),
            relation.remote_units.join(" "),
        ),
    ]
}

/// Identifies what a workload was started with (charm, command, environment): a running
/// workload whose fingerprint differs from the spec's is restarted.
pub fn launch_fingerprint(spec: &UnitSpec, env: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(spec.charm_digest.as_bytes());
    hasher.update([0]);
    hasher.update(
        spec.charm
            .as_ref()
            .map(|c| c.command.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    for (key, value) in env {
        hasher.update([0]);
        hasher.update(key.as_bytes());
        hasher.update([b'=']);
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// "web/0" → "web-0", as the unit dir and entity names spell it.
pub fn unit_slug(unit: &str) -> String {
    unit.replace('/', "-")
}

/// Why converging stopped early.
enum Halt {
    /// No controller to download from: retry when one is back.
    NotConnected,
    /// A step failed (already reported).
    Failed(anyhow::Error),
}

/// The task that owns one unit.
pub struct UnitRunner {
    ctx: Arc<AgentContext>,
    name: String,
    entity: String,
    unit_dir: PathBuf,
    charms: CharmStore,
    workload: Option<Workload>,
    workload_started: Instant,
    restart_backoff: Backoff,
    restart_at: Option<Instant>,
    retry_backoff: Backoff,
    retry_at: Option<Instant>,
    waiting_for_controller: bool,
}

impl UnitRunner {
    /// A runner for unit `name`; adopts its workload if the previous agent left it running.
    pub fn new(ctx: Arc<AgentContext>, name: &str) -> Self {
        let slug = unit_slug(name);
        let unit_dir = ctx.data_dir.join("units").join(&slug);
        let charms = CharmStore::new(&ctx.data_dir);
        let mut runner = Self {
            ctx,
            name: name.to_string(),
            entity: format!("unit-{slug}"),
            unit_dir,
            charms,
            workload: None,
            workload_started: Instant::now(),
            restart_backoff: Backoff::new(RESTART_MIN, RESTART_MAX),
            restart_at: None,
            retry_backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            retry_at: None,
            waiting_for_controller: false,
        };
        runner.adopt();
        runner
    }

    fn record(&self) -> UnitRecord {
        self.ctx
            .with_state(|s| s.units.get(&self.name).cloned().unwrap_or_default())
    }

    fn update_record(&self, f: impl FnOnce(&mut UnitRecord)) -> Result<()> {
        self.ctx
            .update_state(|s| f(s.units.entry(self.name.clone()).or_default()))
    }

    fn adopt(&mut self) {
        let Some(previous) = self.record().workload else {
            return;
        };
        match Workload::adopt(previous) {
            Some(workload) => {
                info!(unit = %self.name, pid = previous.pid, "adopted the running workload");
                self.workload = Some(workload);
            }
            None => {
                info!(unit = %self.name, pid = previous.pid, "the recorded workload is gone; it will be started again");
                if let Err(e) = self.update_record(|r| r.workload = None) {
                    warn!(unit = %self.name, error = %format!("{e:#}"), "cannot persist the agent state");
                }
            }
        }
    }

    /// Runs until the unit is removed or the agent detaches; returns the unit's name.
    pub async fn run(mut self, mut desired: watch::Receiver<UnitDesired>) -> String {
        let mut caller = self.ctx.caller();
        loop {
            let want = desired.borrow_and_update().clone();
            match want {
                UnitDesired::Detach => return self.name,
                UnitDesired::Remove => {
                    self.remove().await;
                    return self.name;
                }
                UnitDesired::Apply(spec) if self.retry_at.is_none() => {
                    match self.converge(&spec).await {
                        Ok(()) => {
                            self.retry_backoff.reset();
                            self.waiting_for_controller = false;
                        }
                        Err(Halt::NotConnected) => {
                            self.waiting_for_controller = true;
                            self.retry_at = Some(Instant::now() + RETRY_MAX);
                        }
                        Err(Halt::Failed(e)) => {
                            let delay = self.retry_backoff.next_plain();
                            warn!(unit = %self.name, error = %format!("{e:#}"), retry_in_s = delay.as_secs(), "unit step failed");
                            self.retry_at = Some(Instant::now() + delay);
                        }
                    }
                }
                UnitDesired::Apply(_) => {}
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        return self.name;
                    }
                    self.retry_at = None;
                }
                _ = caller.changed(), if self.waiting_for_controller => {
                    if caller.borrow_and_update().is_some() {
                        self.retry_at = None;
                    }
                }
                exit = wait_exit(&mut self.workload) => self.on_exit(exit),
                _ = tokio::time::sleep_until(self.restart_at.unwrap_or(far)), if self.restart_at.is_some() => {
                    self.restart_at = None;
                }
                _ = tokio::time::sleep_until(self.retry_at.unwrap_or(far)), if self.retry_at.is_some() => {
                    self.retry_at = None;
                }
            }
        }
    }

    fn on_exit(&mut self, exit: String) {
        self.workload = None;
        if self.workload_started.elapsed() >= RESTART_RESET_AFTER {
            self.restart_backoff.reset();
        }
        let delay = self.restart_backoff.next_plain();
        self.restart_at = Some(Instant::now() + delay);
        let message = format!(
            "workload exited ({exit}); restarting in {}s",
            delay.as_secs()
        );
        warn!(unit = %self.name, %message, "workload exited");
        if let Err(e) = self.update_record(|r| r.workload = None) {
            warn!(unit = %self.name, error = %format!("{e:#}"), "cannot persist the agent state");
        }
        self.ctx
            .report_log(&self.entity, LogLevel::Error, "workload", message.clone());
        self.ctx
            .report_status(&self.entity, "workload", status("error", message));
    }

    /// Runs the planned steps for `spec`, stopping at the first failure.
    async fn converge(&mut self, spec: &UnitSpec) -> Result<(), Halt> {
        std::fs::create_dir_all(&self.unit_dir)
            .with_context(|| format!("cannot create {}", self.unit_dir.display()))
            .map_err(Halt::Failed)?;
        let env = unit_env(
            spec,
            &self.unit_dir,
            &self.ctx.model_uuid,
            &self.ctx.machine_id,
        );
        let fingerprint = launch_fingerprint(spec, &env);
        let record = self.record();
        let steps = plan_unit(
            &record,
            spec,
            self.charms.has(&spec.charm_digest),
            self.workload.is_some(),
            &fingerprint,
        );
        if record.spec_hex.is_empty() || record.spec().as_ref() != Some(spec) {
            self.update_record(|r| r.set_spec(spec))
                .map_err(Halt::Failed)?;
        }
        let runs_hooks = steps.iter().any(|s| matches!(s, UnitStep::Hook { .. }));
        if runs_hooks {
            self.ctx
                .report_status(&self.entity, "agent", status("executing", ""));
        }
        for step in steps {
            match step {
                UnitStep::FetchCharm => self.fetch_charm(&spec.charm_digest).await?,
                UnitStep::Hook { name, relation } => {
                    self.run_hook(spec, &env, &name, relation.as_ref()).await?
                }
                UnitStep::StartWorkload if self.restart_at.is_some() => {}
                UnitStep::StartWorkload => self.start_workload(spec, &env, &fingerprint)?,
                UnitStep::RestartWorkload => {
                    self.ctx.report_status(
                        &self.entity,
                        "workload",
                        status("maintenance", "restarting the workload"),
                    );
                    if let Some(workload) = self.workload.take() {
                        workload.terminate(STOP_GRACE).await;
                    }
                    self.start_workload(spec, &env, &fingerprint)?;
                }
            }
        }
        if runs_hooks {
            self.ctx
                .report_status(&self.entity, "agent", status("idle", ""));
        }
        Ok(())
    }

    async fn fetch_charm(&self, digest: &str) -> Result<(), Halt> {
        let Some(caller) = self.ctx.caller().borrow().clone() else {
            self.ctx.report_status(
                &self.entity,
                "workload",
                status(
                    "waiting",
                    "waiting for the controller to download the charm",
                ),
            );
            return Err(Halt::NotConnected);
        };
        self.ctx.report_status(
            &self.entity,
            "workload",
            status("waiting", "downloading the charm"),
        );
        let result = async {
            let bytes = charms::download(&caller, digest).await?;
            let charms = self.charms.clone();
            let digest = digest.to_string();
            tokio::task::spawn_blocking(move || charms.install(&digest, &bytes))
                .await
                .map_err(|e| anyhow!("charm unpack task failed: {e}"))?
        }
        .await;
        match result {
            Ok(dir) => {
                info!(unit = %self.name, charm = %dir.display(), "charm ready");
                Ok(())
            }
            Err(e) => {
                let message = format!("cannot fetch the charm: {e:#}");
                self.ctx
                    .report_status(&self.entity, "workload", status("error", message.clone()));
                Err(Halt::Failed(anyhow!(message)))
            }
        }
    }

    async fn run_hook(
        &self,
        spec: &UnitSpec,
        env: &[(String, String)],
        name: &str,
        relation: Option<&RelationSpec>,
    ) -> Result<(), Halt> {
        let command = spec
            .charm
            .as_ref()
            .and_then(|c| c.hooks.get(name))
            .filter(|c| !c.trim().is_empty());
        if let Some(command) = command {
            self.ctx.report_status(
                &self.entity,
                "workload",
                status("maintenance", format!("running {name} hook")),
            );
            let mut env = env.to_vec();
            if let Some(relation) = relation {
                env.extend(relation_env(relation));
            }
            let launch = Launch {
                command: command.clone(),
                cwd: self.charms.dir(&spec.charm_digest),
                env,
            };
            info!(unit = %self.name, hook = name, "running hook");
            let outcome = run_hook(&launch, HOOK_TIMEOUT)
                .await
                .map_err(Halt::Failed)?;
            let module = format!("unit.{}.{name}", spec.application);
            for line in outcome.stdout.lines() {
                self.ctx
                    .report_log(&self.entity, LogLevel::Info, &module, line.to_string());
            }
            for line in outcome.stderr.lines() {
                self.ctx
                    .report_log(&self.entity, LogLevel::Warning, &module, line.to_string());
            }
            if !outcome.success {
                let message = format!("hook \"{name}\" failed: {}", outcome.description);
                self.ctx
                    .report_log(&self.entity, LogLevel::Error, &module, message.clone());
                self.ctx
                    .report_status(&self.entity, "workload", status("error", message.clone()));
                self.ctx
                    .report_status(&self.entity, "agent", status("idle", ""));
                return Err(Halt::Failed(anyhow!(message)));
            }
        }
        let config: BTreeMap<String, String> = spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.update_record(|r| match name {
            "install" | "start" => {
                r.hooks_run.insert(name.to_string());
                if name == "install" {
                    r.charm_digest = spec.charm_digest.clone();
                }
            }
            "upgrade-charm" => {
                r.charm_digest = spec.charm_digest.clone();
                // A new charm always sees config-changed.
                r.applied_config = None;
            }
            "config-changed" => r.applied_config = Some(config),
            "relation-departed" => {
                if let Some(rel) = relation {
                    r.relations.remove(&rel.id);
                }
            }
            _ => {
                if let Some(rel) = relation {
                    r.relations.insert(rel.id, rel.remote_units.clone());
                }
            }
        })
        .map_err(Halt::Failed)
    }

    fn start_workload(
        &mut self,
        spec: &UnitSpec,
        env: &[(String, String)],
        fingerprint: &str,
    ) -> Result<(), Halt> {
        let command = spec
            .charm
            .as_ref()
            .map(|c| c.command.clone())
            .unwrap_or_default();
        let launch = Launch {
            command,
            cwd: self.charms.dir(&spec.charm_digest),
            env: env.to_vec(),
        };
        match Workload::spawn(&launch, &self.unit_dir.join("workload.log")) {
            Ok(workload) => {
                let record = workload.record();
                info!(unit = %self.name, pid = record.pid, "workload started");
                self.workload = Some(workload);
                self.workload_started = Instant::now();
                self.update_record(|r| {
                    r.workload = Some(record);
                    r.workload_fingerprint = fingerprint.to_string();
                })
                .map_err(Halt::Failed)?;
                self.ctx
                    .report_status(&self.entity, "workload", status("active", ""));
                Ok(())
            }
            Err(e) => {
                let message = format!("cannot start the workload: {e:#}");
                self.ctx
                    .report_status(&self.entity, "workload", status("error", message.clone()));
                Err(Halt::Failed(anyhow!(message)))
            }
        }
    }

    /// The unit left the machine.
    async fn remove(&mut self) {
        let record = self.record();
        if let Some(spec) = record.spec() {
            if record.hooks_run.contains("install") && self.charms.has(&spec.charm_digest) {
                let env = unit_env(
                    &spec,
                    &self.unit_dir,
                    &self.ctx.model_uuid,
                    &self.ctx.machine_id,
                );
                // A failing stop hook is reported but does not keep the unit alive.
                let _ = self.run_hook(&spec, &env, "stop", None).await;
            }
        }
        if let Some(workload) = self.workload.take() {
            let pid = workload.record().pid;
            workload.terminate(STOP_GRACE).await;
            info!(unit = %self.name, pid, "workload stopped");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.unit_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(unit = %self.name, error = %e, "cannot remove the unit dir");
            }
        }
        if let Err(e) = self.ctx.update_state(|s| {
            s.units.remove(&self.name);
        }) {
            warn!(unit = %self.name, error = %format!("{e:#}"), "cannot persist the agent state");
        }
        self.ctx.report_log(
            &self.ctx.machine_entity(),
            LogLevel::Info,
            "machine",
            format!("unit {} removed from the machine", self.name),
        );
        info!(unit = %self.name, "unit removed");
    }
}

async fn wait_exit(workload: &mut Option<Workload>) -> String {
    match workload {
        Some(workload) => workload.exited().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::model::CharmMeta;

    fn spec() -> UnitSpec {
        UnitSpec {
            name: "web/0".into(),
            application: "web".into(),
            charm_digest: "d1".into(),
            charm: Some(CharmMeta {
                name: "web".into(),
                command: "./run".into(),
                ..CharmMeta::default()
            }),
            config: [("interval".to_string(), "2".to_string())].into(),
            ..UnitSpec::default()
        }
    }

    fn names(steps: &[UnitStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                UnitStep::FetchCharm => "fetch".into(),
                UnitStep::Hook { name, .. } => name.clone(),
                UnitStep::StartWorkload => "start-workload".into(),
                UnitStep::RestartWorkload => "restart-workload".into(),
            })
            .collect()
    }

    fn installed(spec: &UnitSpec) -> UnitRecord {
        let mut record = UnitRecord {
            charm_digest: spec.charm_digest.clone(),
            applied_config: Some(spec.config.clone().into_iter().collect()),
            workload_fingerprint: "fp".into(),
            ..UnitRecord::default()
        };
        record.hooks_run.insert("install".into());
        record.hooks_run.insert("start".into());
        record
    }

    #[test]
    fn new_unit_fetches_installs_configures_starts() {
        let steps = plan_unit(&UnitRecord::default(), &spec(), false, false, "fp");
        assert_eq!(
            names(&steps),
            vec![
                "fetch",
                "install",
                "config-changed",
                "start",
                "start-workload"
            ]
        );
    }

    #[test]
    fn converged_unit_has_nothing_to_do() {
        let spec = spec();
        assert!(plan_unit(&installed(&spec), &spec, true, true, "fp").is_empty());
    }

    #[test]
    fn restarted_agent_does_not_rerun_install_and_starts_a_dead_workload() {
        let spec = spec();
        let steps = plan_unit(&installed(&spec), &spec, true, false, "fp");
        assert_eq!(names(&steps), vec!["start-workload"]);
    }

    #[test]
    fn config_change_runs_config_changed_then_restarts() {
        let spec = spec();
        let record = installed(&spec);
        let mut changed = spec.clone();
        changed.config.insert("interval".into(), "5".into());
        let steps = plan_unit(&record, &changed, true, true, "fp2");
        assert_eq!(names(&steps), vec!["config-changed", "restart-workload"]);
    }

    #[test]
    fn new_charm_runs_upgrade_charm() {
        let spec = spec();
        let record = installed(&spec);
        let mut upgraded = spec.clone();
        upgraded.charm_digest = "d2".into();
        let steps = plan_unit(&record, &upgraded, false, true, "fp2");
        assert_eq!(
            names(&steps),
            vec![
                "fetch",
                "upgrade-charm",
                "config-changed",
                "restart-workload"
            ]
        );
    }

    #[test]
    fn relations_join_change_and_depart() {
        let spec = spec();
        let mut record = installed(&spec);
        record.relations.insert(1, vec!["db/0".into()]);
        record.relations.insert(2, vec!["cache/0".into()]);
        let mut wanted = spec.clone();
        wanted.relations = vec![
            RelationSpec {
                id: 1,
                remote_units: vec!["db/0".into(), "db/1".into()],
                ..RelationSpec::default()
            },
            RelationSpec {
                id: 3,
                remote_units: vec!["queue/0".into()],
                ..RelationSpec::default()
            },
        ];
        let steps = plan_unit(&record, &wanted, true, true, "fp");
        assert_eq!(
            names(&steps),
            vec![
                "relation-departed",
                "relation-changed",
                "relation-joined",
                "relation-changed"
            ]
        );
    }

    #[test]
    fn env_names_the_unit_config_and_relation() {
        let env = unit_env(
            &spec(),
            std::path::Path::new("/data/units/web-0"),
            "uuid-1",
            "3",
        );
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("STARLING_UNIT"), Some("web/0"));
        assert_eq!(get("STARLING_UNIT_DIR"), Some("/data/units/web-0"));
        assert_eq!(get("STARLING_MODEL_UUID"), Some("uuid-1"));
        assert_eq!(get("STARLING_MACHINE_ID"), Some("3"));
        assert_eq!(get("STARLING_CONFIG_interval"), Some("2"));
        let relation = relation_env(&RelationSpec {
            id: 7,
            endpoint: "db".into(),
            interface: "pgsql".into(),
            remote_application: "db".into(),
            remote_units: vec!["db/0".into(), "db/1".into()],
        });
        assert!(relation.contains(&("STARLING_RELATION_ID".into(), "7".into())));
        assert!(relation.contains(&("STARLING_RELATION_ENDPOINT".into(), "db".into())));
        assert!(relation.contains(&("STARLING_REMOTE_APP".into(), "db".into())));
        assert!(relation.contains(&("STARLING_REMOTE_UNITS".into(), "db/0 db/1".into())));
    }

    #[test]
    fn fingerprint_follows_config() {
        let spec = spec();
        let dir = std::path::Path::new("/u");
        let a = launch_fingerprint(&spec, &unit_env(&spec, dir, "m", "0"));
        let mut changed = spec.clone();
        changed.config.insert("interval".into(), "9".into());
        let b = launch_fingerprint(&changed, &unit_env(&changed, dir, "m", "0"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            launch_fingerprint(&spec, &unit_env(&spec, dir, "m", "0"))
        );
    }
}
