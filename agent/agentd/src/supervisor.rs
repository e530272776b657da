//! `Workload`: one unit's workload process — started with `sh -c` in its own process group
//! (so stopping it reaches everything it started), stdout and stderr appended to
//! `workload.log` — or adopted after an agent restart by pid and process start time. Also runs
//! hooks (`run_hook`): bounded by a timeout, output captured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::state::WorkloadRecord;

/// How often an adopted workload (not our child) is checked.
pub const ADOPTED_POLL: Duration = Duration::from_secs(1);
/// The most hook output kept per stream.
pub const HOOK_OUTPUT_BYTES_MAX: usize = 64 * 1024;

/// How to start a workload or a hook.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `sh -c` command.
    pub command: String,
    /// Working directory (the unpacked charm).
    pub cwd: PathBuf,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
}

impl Launch {
    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .current_dir(&self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Its own process group: signals reach its children, and a terminal's SIGINT to
            // the agent does not reach it.
            .process_group(0);
        command
    }
}

/// A running workload.
#[derive(Debug)]
pub struct Workload {
    record: WorkloadRecord,
    /// Set when we started it; adopted workloads are not our children.
    child: Option<tokio::process::Child>,
}

impl Workload {
    /// Starts the workload, output appended to `log_path`.
    pub fn spawn(launch: &Launch, log_path: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = launch
            .command()
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start \"{}\"", launch.command))?;
        let pid = child.id().context("the workload exited at once")?;
        // The process exists until we reap it, so its start time is readable.
        let start_time = proc_start_time(pid).unwrap_or(0);
        Ok(Self {
            record: WorkloadRecord { pid, start_time },
            child: Some(child),
        })
    }

    /// Adopts a workload a previous agent started, if it still runs (same pid and start time).
    pub fn adopt(record: WorkloadRecord) -> Option<Self> {
        (record.start_time != 0 && proc_start_time(record.pid) == Some(record.start_time))
            .then_some(Self {
                record,
                child: None,
            })
    }

    /// Its pid and start time.
    pub fn record(&self) -> WorkloadRecord {
        self.record
    }

    /// Whether it was adopted rather than started by this agent.
    pub fn adopted(&self) -> bool {
        self.child.is_none()
    }

    /// Waits until the workload exits and says how. Cancel-safe.
    pub async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot wait for the workload: {e}"),
            },
            None => {
                let mut tick = tokio::time::interval(ADOPTED_POLL);
                loop {
                    tick.tick().await;
                    if !self.alive() {
                        return "exited (adopted process, status unknown)".to_string();
                    }
                }
            }
        }
    }

    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => proc_start_time(self.record.pid) == Some(self.record.start_time),
        }
    }

    /// SIGTERM to its process group, SIGKILL after `grace`; returns once it is gone (bounded).
    pub async fn terminate(mut self, grace: Duration) {
        let group = Pid::from_raw(self.record.pid as i32);
        if self.alive() {
            let _ = killpg(group, Signal::SIGTERM);
            let _ = tokio::time::timeout(grace, self.exited()).await;
        }
        // Whatever is left of the group (the leader may be gone, its children not).
        let _ = killpg(group, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.exited()).await;
    }
}

/// Start time (field 22 of `/proc/<pid>/stat`) of a live, non-zombie process.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// Exit status 0.
    pub success: bool,
    /// "exit status: 1", "timed out after 300s", ...
    pub description: String,
    /// Captured stdout (bounded).
    pub stdout: String,
    /// Captured stderr (bounded).
    pub stderr: String,
}

/// Runs a hook to completion, killing its process group after `timeout`.
pub async fn run_hook(launch: &Launch, timeout: Duration) -> Result<HookOutcome> {
    let mut child = launch
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run \"{}\"", launch.command))?;
    let pid = child.id().unwrap_or(0);
    let stdout = tokio::spawn(read_bounded(child.stdout.take()));
    let stderr = tokio::spawn(read_bounded(child.stderr.take()));
    let (success, description) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (status.success(), status.to_string()),
        Ok(Err(e)) => (false, format!("cannot wait for the hook: {e}")),
        Err(_) => {
            if pid != 0 {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            (false, format!("timed out after {}s", timeout.as_secs()))
        }
    };
    // A process the hook left behind may hold the pipes open: don't wait for it for ever.
    let grace = Duration::from_secs(2);
    let stdout = tokio::time::timeout(grace, stdout)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let stderr = tokio::time::timeout(grace, stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Ok(HookOutcome {
        success,
        description,
        stdout,
        stderr,
    })
}

async fn read_bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = HOOK_OUTPUT_BYTES_MAX.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(command: &str, dir: &Path) -> Launch {
        Launch {
            command: command.to_string(),
            cwd: dir.to_path_buf(),
            env: vec![("STARLING_TEST_VALUE".into(), "hello".into())],
        }
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(proc_start_time(std::process::id()).is_some());
    }

    #[tokio::test]
    async fn hook_output_and_failure_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run_hook(
            &launch(
                "echo $STARLING_TEST_VALUE; echo oops >&2; exit 3",
                dir.path(),
            ),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(!outcome.success);
        assert_eq!(outcome.stdout, "hello\n");
        assert_eq!(outcome.stderr, "oops\n");
        assert!(outcome.description.contains('3'), "{}", outcome.description);
    }

    #[tokio::test]
    async fn workload_is_adopted_and_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("workload.log");
        let workload =
            Workload::spawn(&launch("echo started; exec sleep 600", dir.path()), &log).unwrap();
        let record = workload.record();
        assert!(record.start_time > 0);
        let adopted = Workload::adopt(record).expect("running");
        assert!(adopted.adopted());
        // A wrong start time is another process.
        assert!(Workload::adopt(WorkloadRecord {
            pid: record.pid,
            start_time: record.start_time + 1
        })
        .is_none());
        workload.terminate(Duration::from_secs(5)).await;
        assert!(Workload::adopt(record).is_none());
    }
}
