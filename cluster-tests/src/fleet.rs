//! Real `agentd` processes and the `ctl` binary for process-level tests: a [`Fleet`] of machine
//! agents (each with its config, data dir and log, every process it caused killed by pid on
//! drop), a bounded [`Ctl`] runner with its own client store, and `/proc` helpers that name a
//! workload by pid and start time so a restarted process is never mistaken for the same one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgrp, Pid};
use serde_json::Value;
use starling_proto::endpoints::first_endpoint;
use tracing::info;

use crate::local_cluster::wait_bounded;

/// How long a condition may take (generous: two cores shared with other tests).
pub const CONDITION_WAIT: Duration = Duration::from_secs(60);
/// How long one `ctl` run may take.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to exit after SIGTERM.
pub const AGENT_STOP_WAIT: Duration = Duration::from_secs(30);
/// Pause between polls.
pub const POLL: Duration = Duration::from_millis(100);
/// Sweeps of the drop guard (a shell may fork between a scan and a kill).
const SWEEP_ROUNDS_MAX: usize = 50;
/// `RUST_LOG` of the agents: status reports are logged at debug.
pub const AGENT_LOG: &str = "info,starling_agentd::context=debug";

/// Polls `probe` until it returns `Ok` or `CONDITION_WAIT` passes; an `Err` means "not yet"
/// and the last one is reported on timeout.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + CONDITION_WAIT;
    loop {
        let reason = match probe() {
            Ok(value) => return Ok(value),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {CONDITION_WAIT:?}; last: {reason}");
        }
        std::thread::sleep(POLL);
    }
}

/// What one `ctl` run printed.
pub struct CtlRun {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// The real `ctl` with its own client store; every run is bounded by `CTL_TIMEOUT`.
pub struct Ctl {
    /// The `ctl` binary.
    pub bin: PathBuf,
    /// Its client store (`CTL_DATA`).
    pub data: PathBuf,
    /// Where runs write their output.
    pub scratch: PathBuf,
}

impl Ctl {
    /// `bins`' `ctl` with a client store of its own under `root`.
    pub fn new(bins: &crate::Bins, root: &Path) -> Self {
        Ctl {
            bin: bins.ctl.clone(),
            data: root.join("ctl-data"),
            scratch: root.to_path_buf(),
        }
    }

    /// Runs `ctl ARGS`, whatever its exit code.
    pub fn run(&self, args: &[&str]) -> Result<CtlRun> {
        self.run_for(args, CTL_TIMEOUT)
    }

    /// Runs `ctl ARGS` for at most `timeout`, whatever its exit code.
    pub fn run_for(&self, args: &[&str], timeout: Duration) -> Result<CtlRun> {
        let out_path = self.scratch.join("ctl.out");
        let err_path = self.scratch.join("ctl.err");
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("CTL_DATA", &self.data)
            .env_remove("CTL_CONTROLLER")
            .env_remove("CTL_MODEL")
            .env_remove("CTL_TOKEN")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .with_context(|| format!("spawning ctl {args:?}"))?;
        let Some(status) = wait_bounded(&mut child, timeout)? else {
            child.kill().ok();
            child.wait().ok();
            bail!("ctl {args:?} did not finish within {timeout:?}");
        };
        Ok(CtlRun {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path)?,
            stderr: std::fs::read_to_string(&err_path)?,
        })
    }

    /// `ctl ARGS` must exit 0; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let run = self.run(args)?;
        ensure!(
            run.code == 0,
            "ctl {args:?} exited {}: {}",
            run.code,
            run.stderr.trim_end()
        );
        Ok(run.stdout)
    }
}

/// A process named by pid and start time (field 22 of `/proc/<pid>/stat`), as agentd records
/// its workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadId {
    /// The pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

/// (state, process group, start time) of a process from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields resume after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), fields[2] field 5 (pgrp), fields[19] field 22 (starttime).
    Some((
        fields.first()?.to_string(),
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Whether `workload` still runs: same pid, same start time, not a zombie.
pub fn running(workload: WorkloadId) -> bool {
    proc_stat(workload.pid).is_some_and(|(state, _, start_time)| {
        state != "Z" && state != "X" && start_time == workload.start_time
    })
}

/// Pids of live processes whose working directory is under `root` (workloads and hooks run in
/// the unpacked charm, inside the agent's data dir).
pub fn processes_under(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
        })
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, _, _)| state != "Z" && state != "X"))
        .collect()
}

/// Process groups of the live counter workloads under `root` (one per workload, whatever
/// `sh` forks).
pub fn counter_groups(root: &Path) -> BTreeSet<u32> {
    processes_under(root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("counter.sh"))
        })
        .filter_map(|pid| proc_stat(pid).map(|(_, pgrp, _)| pgrp))
        .collect()
}

/// Whether process `pid` was started with `var` (`KEY=VALUE`) in its environment.
pub fn has_env(pid: u32, var: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == var.as_bytes()))
}

/// Lines in a file (0 when missing).
pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// One machine: its agent config, data dir, log and running `agentd`.
pub struct Machine {
    /// The machine id.
    pub id: String,
    /// A directory of its own (agentd runs there).
    pub dir: PathBuf,
    /// Its agent config file.
    pub config: PathBuf,
    /// agentd's data dir.
    pub data_dir: PathBuf,
    /// agentd's log.
    pub log: PathBuf,
    /// The running agentd.
    pub agentd: Option<Child>,
}

impl Machine {
    /// Workloads by unit, as agentd recorded them in its state file.
    pub fn recorded_workloads(&self) -> Result<BTreeMap<String, WorkloadId>> {
        let path = self.data_dir.join("state.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let state: Value = serde_json::from_str(&text)?;
        let mut out = BTreeMap::new();
        for (unit, record) in state["units"].as_object().into_iter().flatten() {
            let workload = &record["workload"];
            if let (Some(pid), Some(start_time)) =
                (workload["pid"].as_u64(), workload["start-time"].as_u64())
            {
                out.insert(
                    unit.clone(),
                    WorkloadId {
                        pid: u32::try_from(pid)?,
                        start_time,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Where agentd keeps `unit`.
    pub fn unit_dir(&self, unit: &str) -> PathBuf {
        self.data_dir.join("units").join(unit.replace('/', "-"))
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The endpoints of the controller connections agentd made in `log` (oldest first).
    pub fn connections(log: &str) -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("connected to the controller"))
            .filter_map(|l| l.split("endpoint=").nth(1)?.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// The endpoint agentd connected to last.
    pub fn endpoint(&self) -> Option<String> {
        Self::connections(&self.log_text()).pop()
    }
}

/// Rotates the `api-endpoints` of the agent config at `path` so that the agent starts on the
/// `by`-th endpoint of the list as written (modulo its length): agents given 0, 1, 2, ... start
/// on different nodes, so a killed node always had one. An agent starts at the index its model
/// and machine hash to (`starling_proto::endpoints::first_endpoint`), so the rotation is by `by`
/// less that index.
pub fn rotate_endpoints(path: &Path, by: usize) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut config: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let text_of = |key: &str| -> Result<String> {
        Ok(config[key]
            .as_str()
            .with_context(|| format!("no {key} in the agent config"))?
            .to_owned())
    };
    let (model_uuid, machine_id) = (text_of("model-uuid")?, text_of("machine-id")?);
    let endpoints = config["api-endpoints"]
        .as_array_mut()
        .context("no api-endpoints in the agent config")?;
    let n = endpoints.len().max(1);
    let start = first_endpoint(&model_uuid, &machine_id, n);
    endpoints.rotate_left((by % n + n - start) % n);
    std::fs::write(path, serde_saphyr::to_string(&config)?)?;
    Ok(())
}

/// The `agentd` processes of the test. On drop: every agentd is SIGKILLed and reaped, then every
/// process group of a process left under `root` (workloads, hooks) is SIGKILLed.
pub struct Fleet {
    /// Everything the fleet causes lives under this directory.
    pub root: PathBuf,
    /// The agentd binary.
    pub agentd: PathBuf,
    /// The machines.
    pub machines: Vec<Machine>,
}

impl Fleet {
    /// No machines yet; agents run `bins`' `agentd` and live under `root`.
    pub fn new(bins: &crate::Bins, root: PathBuf) -> Result<Self> {
        let agentd = bins.dir.join("agentd");
        ensure!(
            agentd.is_file(),
            "{} is missing: run `cargo build --workspace --bins`",
            agentd.display()
        );
        Ok(Fleet {
            root,
            agentd,
            machines: Vec::new(),
        })
    }

    /// Starts agentd `idx` (appending to its log).
    pub fn start(&mut self, idx: usize) -> Result<()> {
        let agentd = self.agentd.clone();
        let machine = &mut self.machines[idx];
        ensure!(machine.agentd.is_none(), "agentd {idx} already runs");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&machine.log)?;
        writeln!(log, "--- harness: starting agentd")?;
        let child = Command::new(agentd)
            .arg("--config")
            .arg(&machine.config)
            .arg("--data-dir")
            .arg(&machine.data_dir)
            .current_dir(&machine.dir)
            .env("RUST_LOG", AGENT_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning agentd")?;
        info!(machine = %machine.id, pid = child.id(), "agentd started");
        machine.agentd = Some(child);
        Ok(())
    }

    /// SIGKILLs agentd `idx` and reaps it.
    pub fn kill(&mut self, idx: usize) -> Result<()> {
        let machine = &mut self.machines[idx];
        let mut child = machine
            .agentd
            .take()
            .ok_or_else(|| anyhow!("agentd {idx} is not running"))?;
        child.kill().ok();
        child.wait().context("reaping agentd")?;
        info!(machine = %machine.id, "agentd SIGKILLed");
        Ok(())
    }

    /// SIGTERMs agentd `idx` and waits for it to exit.
    pub fn terminate(&mut self, idx: usize) -> Result<ExitStatus> {
        let machine = &mut self.machines[idx];
        let mut child = machine
            .agentd
            .take()
            .ok_or_else(|| anyhow!("agentd {idx} is not running"))?;
        kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)?;
        match wait_bounded(&mut child, AGENT_STOP_WAIT)? {
            Some(status) => Ok(status),
            None => {
                child.kill().ok();
                child.wait().ok();
                bail!("agentd {idx} did not exit within {AGENT_STOP_WAIT:?} of SIGTERM")
            }
        }
    }

    /// Workloads of every machine by unit.
    pub fn recorded_workloads(&self) -> Result<BTreeMap<String, WorkloadId>> {
        let mut out = BTreeMap::new();
        for machine in &self.machines {
            out.extend(machine.recorded_workloads()?);
        }
        Ok(out)
    }

    /// The machine a unit runs on.
    pub fn machine_of(&self, unit: &str) -> Result<&Machine> {
        self.machines
            .iter()
            .find(|m| m.unit_dir(unit).exists())
            .ok_or_else(|| anyhow!("no machine has a unit dir for {unit}"))
    }

    /// counter.log line counts by unit.
    pub fn counter_lines(&self, units: &[String]) -> Result<BTreeMap<String, usize>> {
        units
            .iter()
            .map(|unit| {
                let path = self.machine_of(unit)?.unit_dir(unit).join("counter.log");
                Ok((unit.clone(), lines(&path)))
            })
            .collect()
    }

    /// Waits until every unit's counter.log holds `more` lines beyond `before`.
    pub fn wait_counters_grow(&self, before: &BTreeMap<String, usize>, more: usize) -> Result<()> {
        let units: Vec<String> = before.keys().cloned().collect();
        wait_for(&format!("{more} more counter.log lines per unit"), || {
            let now = self.counter_lines(&units)?;
            for (unit, n) in &now {
                ensure!(*n >= before[unit] + more, "{unit}: {} → {n}", before[unit]);
            }
            Ok(())
        })
    }

    /// Prints the last `n_lines` of every agent's log.
    pub fn dump_log_tails(&self, n_lines: usize) {
        for machine in &self.machines {
            let text = machine.log_text();
            let all: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- agentd of machine {} ({}):\n{}",
                machine.id,
                machine.log.display(),
                all[all.len().saturating_sub(n_lines)..].join("\n")
            );
        }
    }

    /// Kills every agentd, then every process group left under `root`, by pid.
    pub fn sweep(&mut self) {
        for machine in &mut self.machines {
            if let Some(mut child) = machine.agentd.take() {
                child.kill().ok();
                child.wait().ok();
            }
        }
        let own_group = getpgrp();
        for _ in 0..SWEEP_ROUNDS_MAX {
            let pids = processes_under(&self.root);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let group = proc_stat(pid).map(|(_, pgrp, _)| pgrp);
                match group.and_then(|g| i32::try_from(g).ok()).map(Pid::from_raw) {
                    // Workloads and hooks lead their own groups (agentd starts them so).
                    Some(group) if group != own_group => {
                        let _ = killpg(group, Signal::SIGKILL);
                    }
                    _ => {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "processes still under {} after {SWEEP_ROUNDS_MAX} sweeps: {:?}",
            self.root.display(),
            processes_under(&self.root)
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log_tails(40);
        }
        self.sweep();
    }
}

/// One look at `ctl status -m MODEL_ARG --format json`: every one of the `units` units is
/// active and every machine's agent started (an `Err` says what is not yet so).
pub fn all_units_active(ctl: &Ctl, model_arg: &str, units: usize) -> Result<()> {
    let out = ctl.ok(&["status", "-m", model_arg, "--format", "json"])?;
    let status: Value = serde_json::from_str(&out)?;
    let mut seen = 0;
    for (name, app) in status["applications"].as_object().into_iter().flatten() {
        for (unit, u) in app["units"].as_object().into_iter().flatten() {
            ensure!(
                u["workload-status"]["current"] == "active",
                "{name}: {unit} is {}",
                u["workload-status"]["current"]
            );
            seen += 1;
        }
    }
    ensure!(seen == units, "{seen} units of {units}");
    for (id, m) in status["machines"].as_object().into_iter().flatten() {
        ensure!(
            m["agent-status"]["current"] == "started",
            "machine {id} is {}",
            m["agent-status"]["current"]
        );
    }
    Ok(())
}
