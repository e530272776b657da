//! `MachineAgent`: `agentd`'s runtime. Loads the agent config and state, runs the controller
//! `Session`, and reconciles the units on this machine with every `AgentUpdate` by starting,
//! updating and removing `UnitRunner`s. Shutting down leaves the workloads running.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use starling_proto::agent::{AgentUpdate, UnitSpec};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::context::AgentContext;
use crate::session::{validate_config, Session};
use crate::state::{OutboxStore, StateStore};
use crate::units::{UnitDesired, UnitRunner, HOOK_TIMEOUT, STOP_GRACE};
use starling_daemon::agent_config::AgentConfig;

/// How long a graceful shutdown waits for unit runners to reach a step boundary.
const DETACH_WAIT: Duration = Duration::from_secs(10);
/// How long `machine_removed` waits for the last reports to reach the controller.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Where `agentd` finds its config and keeps its data.
#[derive(Clone, Debug)]
pub struct MachineOptions {
    /// The agent config file (`ctl add-machine` writes it).
    pub config_path: PathBuf,
    /// Data dir; default `<dir of config>/machine-<id>-data`.
    pub data_dir: Option<PathBuf>,
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// Asked to stop; workloads left running.
    Stopped,
    /// The controller removed the machine; every unit was stopped.
    MachineRemoved,
}

/// What the runtime does to the unit runners after an update.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitAction {
    /// A unit new to this machine.
    Start(UnitSpec),
    /// A unit already here: (re)send its spec.
    Update(UnitSpec),
    /// A unit no longer here.
    Remove(String),
}

/// The actions that take the `running` unit runners to the `desired` units.
pub fn reconcile(desired: &[UnitSpec], running: &BTreeSet<String>) -> Vec<UnitAction> {
    let mut actions = Vec::new();
    let wanted: BTreeSet<&str> = desired.iter().map(|u| u.name.as_str()).collect();
    for name in running.iter().filter(|n| !wanted.contains(n.as_str())) {
        actions.push(UnitAction::Remove(name.clone()));
    }
    for spec in desired {
        if running.contains(&spec.name) {
            actions.push(UnitAction::Update(spec.clone()));
        } else {
            actions.push(UnitAction::Start(spec.clone()));
        }
    }
    actions
}

/// The default data dir of a config file.
pub fn default_data_dir(config_path: &Path, machine_id: &str) -> PathBuf {
    config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(format!("machine-{machine_id}-data"))
}

/// Reads and checks an agent config file.
pub fn read_config(path: &Path) -> Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the agent config {}", path.display()))?;
    let config: AgentConfig = serde_saphyr::from_str(&text)
        .with_context(|| format!("invalid agent config {}", path.display()))?;
    validate_config(&config).with_context(|| format!("invalid agent config {}", path.display()))?;
    Ok(config)
}

/// The machine agent.
pub struct MachineAgent {
    ctx: Arc<AgentContext>,
    config_path: PathBuf,
    config: AgentConfig,
    units: BTreeMap<String, watch::Sender<UnitDesired>>,
    runners: JoinSet<String>,
}

impl MachineAgent {
    /// Reads the config and the persisted state (fatal errors: bad config, bad CA, unusable data
    /// dir).
    pub fn load(options: &MachineOptions) -> Result<Self> {
        let config = read_config(&options.config_path)?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir(&options.config_path, &config.machine_id));
        std::fs::create_dir_all(data_dir.join("units"))
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        let store = StateStore::new(&data_dir);
        let state = store.load()?;
        let saved = OutboxStore::new(&data_dir)
            .load()
            .unwrap_or_else(|(empty, e)| {
                warn!(error = %format!("{e:#}"), "starting with an empty outbox");
                empty
            });
        if !saved.reports.is_empty() || !saved.logs.is_empty() {
            info!(
                reports = saved.reports.len(),
                logs = saved.logs.len(),
                "the outbox holds what the last run had not delivered"
            );
        }
        let ctx = Arc::new(AgentContext::new(
            config.model_uuid.clone(),
            config.machine_id.clone(),
            data_dir,
            store,
            state,
            saved,
        ));
        Ok(Self {
            ctx,
            config_path: options.config_path.clone(),
            config,
            units: BTreeMap::new(),
            runners: JoinSet::new(),
        })
    }

    /// The data dir in use.
    pub fn data_dir(&self) -> &Path {
        &self.ctx.data_dir
    }

    /// Runs until `shutdown` completes (workloads keep running), the machine is removed (every
    /// unit stopped) or the controller refuses the credential (the error).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<AgentExit> {
        info!(
            controller = %self.config.controller_name,
            model = %self.config.model_name,
            machine = %self.config.machine_id,
            data_dir = %self.ctx.data_dir.display(),
            "machine agent starting"
        );
        // Units known from the last run are supervised before the controller answers: their
        // workloads are adopted, or restarted if they died meanwhile.
        let known: Vec<UnitSpec> = self.ctx.with_state(|s| {
            s.units
                .values()
                .filter_map(|record| record.spec())
                .collect()
        });
        for spec in known {
            self.start_runner(spec);
        }

        let (updates_tx, mut updates) = watch::channel::<Option<AgentUpdate>>(None);
        let session = Session::new(
            self.ctx.clone(),
            self.config_path.clone(),
            self.config.clone(),
            updates_tx,
        );
        let mut session = tokio::spawn(session.run());
        let outbox_writer = tokio::spawn(self.ctx.clone().keep_outbox_saved());
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("stopping; workloads keep running");
                    break Ok(AgentExit::Stopped);
                }
                ended = &mut session => {
                    break match ended {
                        Ok(Ok(())) => Ok(AgentExit::Stopped),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(anyhow::anyhow!("the controller session failed: {e}")),
                    };
                }
                changed = updates.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let update = updates.borrow_and_update().clone();
                    let Some(update) = update else { continue };
                    if update.machine_removed {
                        info!("the machine was removed: stopping every unit");
                        self.remove_all().await;
                        self.final_flush().await;
                        break Ok(AgentExit::MachineRemoved);
                    }
                    self.apply(&update.units);
                }
                Some(done) = self.runners.join_next() => {
                    if let Ok(name) = done {
                        self.units.remove(&name);
                        // A unit removed and re-added before its runner finished starts again.
                        if let Some(update) = updates.borrow().clone() {
                            self.apply(&update.units);
                        }
                    }
                }
            }
        };
        session.abort();
        self.detach_all().await;
        outbox_writer.abort();
        let _ = outbox_writer.await;
        let ctx = self.ctx.clone();
        let saved = tokio::task::spawn_blocking(move || ctx.save_outbox())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        self.ctx.note_outbox_save(saved);
        result
    }

    fn apply(&mut self, desired: &[UnitSpec]) {
        let running: BTreeSet<String> = self.units.keys().cloned().collect();
        for action in reconcile(desired, &running) {
            match action {
                UnitAction::Start(spec) => self.start_runner(spec),
                UnitAction::Update(spec) => {
                    if let Some(tx) = self.units.get(&spec.name) {
                        let wanted = UnitDesired::Apply(Box::new(spec));
                        tx.send_if_modified(|current| {
                            if *current == wanted {
                                false
                            } else {
                                *current = wanted;
                                true
                            }
                        });
                    }
                }
                UnitAction::Remove(name) => {
                    if let Some(tx) = self.units.get(&name) {
                        info!(unit = %name, "unit left the machine");
                        tx.send_replace(UnitDesired::Remove);
                    }
                }
            }
        }
    }

    fn start_runner(&mut self, spec: UnitSpec) {
        if self.units.contains_key(&spec.name) {
            return;
        }
        info!(unit = %spec.name, "unit on this machine");
        let name = spec.name.clone();
        let (tx, rx) = watch::channel(UnitDesired::Apply(Box::new(spec)));
        let runner = UnitRunner::new(self.ctx.clone(), &name);
        self.runners.spawn(runner.run(rx));
        self.units.insert(name, tx);
    }

    async fn remove_all(&mut self) {
        for tx in self.units.values() {
            tx.send_replace(UnitDesired::Remove);
        }
        let bound = HOOK_TIMEOUT + STOP_GRACE * 2;
        if tokio::time::timeout(bound, async {
            while self.runners.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("some units did not stop in time");
        }
        self.units.clear();
    }

    async fn final_flush(&self) {
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH_WAIT;
        while !self.ctx.with_outbox(|o| o.is_empty()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the runners without touching the workloads.
    async fn detach_all(&mut self) {
        for tx in self.units.values() {
            tx.send_replace(UnitDesired::Detach);
        }
        if tokio::time::timeout(DETACH_WAIT, async {
            while self.runners.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("some units were in a hook; it will run again on the next start");
            self.runners.abort_all();
        }
        self.units.clear();
        let next_seq = self.ctx.with_outbox(|o| o.next_seq());
        if let Err(e) = self
            .ctx
            .update_state(|s| s.next_seq = s.next_seq.max(next_seq))
        {
            warn!(error = %format!("{e:#}"), "cannot persist the agent state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str) -> UnitSpec {
        UnitSpec {
            name: name.into(),
            ..UnitSpec::default()
        }
    }

    #[test]
    fn reconcile_starts_updates_and_removes() {
        let running: BTreeSet<String> = ["a/0".to_string(), "b/0".to_string()].into();
        let actions = reconcile(&[unit("b/0"), unit("c/0")], &running);
        assert_eq!(
            actions,
            vec![
                UnitAction::Remove("a/0".into()),
                UnitAction::Update(unit("b/0")),
                UnitAction::Start(unit("c/0")),
            ]
        );
    }

    #[test]
    fn reconcile_empty_desired_removes_everything() {
        let running: BTreeSet<String> = ["a/0".to_string()].into();
        assert_eq!(
            reconcile(&[], &running),
            vec![UnitAction::Remove("a/0".into())]
        );
        assert!(reconcile(&[], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn default_data_dir_is_next_to_the_config() {
        assert_eq!(
            default_data_dir(Path::new("/etc/starling/agent.yaml"), "3"),
            PathBuf::from("/etc/starling/machine-3-data")
        );
        assert_eq!(
            default_data_dir(Path::new("agent.yaml"), "0"),
            PathBuf::from("./machine-0-data")
        );
    }
}
