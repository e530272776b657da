//! `AgentContext`: what the machine agent's tasks share — who it is, its data dir, its persisted
//! state, the report outbox (kept on disk too) and the current controller connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use starling_proto::agent::ReportRequest;
use starling_proto::model::{LogLevel, Status};
use tokio::sync::{watch, Notify};

use crate::reports::ReportBuffer;
use crate::session::ControllerCaller;
use crate::state::{AgentState, OutboxStore, StateStore};

/// How many report seqs are reserved in the state file at once, so seqs keep growing across
/// a SIGKILL without a state write per report.
const SEQ_RESERVATION: u64 = 1024;
/// How long the outbox writer gathers changes before it rewrites the file: a hook printing a
/// thousand lines costs a few writes, not a thousand; a SIGKILL loses at most this much.
pub const OUTBOX_SAVE_DELAY: Duration = Duration::from_millis(100);
/// How soon a failed outbox write (a full disk) is tried again when nothing else changes.
const OUTBOX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Shared by the runtime, the session and every unit runner.
#[derive(Debug)]
pub struct AgentContext {
    /// The model's uuid.
    pub model_uuid: String,
    /// This machine's id.
    pub machine_id: String,
    /// The agent's data dir.
    pub data_dir: PathBuf,
    store: StateStore,
    // std Mutex, not tokio's: nothing awaits while these are held.
    state: Mutex<AgentState>,
    outbox: Mutex<ReportBuffer>,
    /// Woken whenever something is queued in the outbox.
    pub outbox_ready: Notify,
    /// Woken whenever the outbox changed (its generation moved).
    outbox_changed: Notify,
    outbox_store: OutboxStore,
    /// The outbox generation on disk; held while the file is written, so writes never race.
    outbox_saved: Mutex<u64>,
    outbox_save_failing: AtomicBool,
    caller: watch::Sender<Option<ControllerCaller>>,
}

impl AgentContext {
    /// A context over the loaded `state` and what the last run left in the outbox (`saved`).
    pub fn new(
        model_uuid: String,
        machine_id: String,
        data_dir: PathBuf,
        store: StateStore,
        state: AgentState,
        saved: ReportRequest,
    ) -> Self {
        let outbox = ReportBuffer::restore(state.next_seq, saved);
        let outbox_store = OutboxStore::new(&data_dir);
        let saved_generation = outbox.generation();
        Self {
            model_uuid,
            machine_id,
            data_dir,
            store,
            state: Mutex::new(state),
            outbox: Mutex::new(outbox),
            outbox_ready: Notify::new(),
            outbox_changed: Notify::new(),
            outbox_store,
            outbox_saved: Mutex::new(saved_generation),
            outbox_save_failing: AtomicBool::new(false),
            caller: watch::channel(None).0,
        }
    }

    /// The machine's entity name in reports: "machine-0".
    pub fn machine_entity(&self) -> String {
        format!("machine-{}", self.machine_id)
    }

    /// Reads the persisted state.
    pub fn with_state<T>(&self, f: impl FnOnce(&AgentState) -> T) -> T {
        f(&self.state.lock().expect("state lock"))
    }

    /// Changes the persisted state and rewrites the file.
    pub fn update_state(&self, f: impl FnOnce(&mut AgentState)) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        f(&mut state);
        // The write is a few KiB plus an fsync; block_in_place keeps the other tasks moving.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.store.save(&state))
        } else {
            self.store.save(&state)
        }
    }

    /// Persists a new reservation of numbers when the next one is not reserved yet: status
    /// reports and log records take their numbers from one counter, and a restarted agent
    /// continues after the reservation, so no number is ever given twice (a controller skips a
    /// number it has applied).
    fn reserve_seq(&self, outbox: &ReportBuffer) {
        let next_seq = outbox.next_seq();
        let reserved = self.with_state(|s| s.next_seq);
        if next_seq >= reserved {
            let result = self.update_state(|s| s.next_seq = next_seq + SEQ_RESERVATION);
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "cannot persist the report seq");
            }
        }
    }

    /// Queues a status report.
    pub fn report_status(&self, entity: &str, kind: &str, status: Status) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        self.reserve_seq(&outbox);
        let seq = outbox.push_status(entity, kind, status.clone());
        tracing::debug!(seq, entity, kind, current = %status.current, message = %status.message, "status");
        drop(outbox);
        self.outbox_ready.notify_one();
        self.outbox_changed.notify_one();
    }

    /// Queues a model-log record.
    pub fn report_log(&self, entity: &str, level: LogLevel, module: &str, message: String) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        self.reserve_seq(&outbox);
        outbox.push_log(entity, level, module, message);
        drop(outbox);
        self.outbox_ready.notify_one();
        self.outbox_changed.notify_one();
    }

    /// Runs `f` on the outbox (the writer is woken only if `f` changed it).
    pub fn with_outbox<T>(&self, f: impl FnOnce(&mut ReportBuffer) -> T) -> T {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        let before = outbox.generation();
        let result = f(&mut outbox);
        let changed = outbox.generation() != before;
        drop(outbox);
        if changed {
            self.outbox_changed.notify_one();
        }
        result
    }

    /// Rewrites the outbox file if the outbox changed since it was last written (blocking:
    /// a write and two fsyncs). `true` when it wrote.
    pub fn save_outbox(&self) -> Result<bool> {
        let mut saved = self.outbox_saved.lock().expect("outbox-saved lock");
        let (generation, pending) = {
            let outbox = self.outbox.lock().expect("outbox lock");
            if outbox.generation() == *saved {
                return Ok(false);
            }
            (outbox.generation(), outbox.pending())
        };
        self.outbox_store.save(&pending)?;
        *saved = generation;
        Ok(true)
    }

    /// Keeps the outbox file current: after each change, waits [`OUTBOX_SAVE_DELAY`] for more,
    /// then rewrites it. Runs until the agent aborts it (which then saves once more).
    pub async fn keep_outbox_saved(self: Arc<Self>) {
        loop {
            // After a failed write, try again in a while even if nothing changes.
            if self.outbox_save_failing.load(Ordering::Relaxed) {
                let _ =
                    tokio::time::timeout(OUTBOX_RETRY_DELAY, self.outbox_changed.notified()).await;
            } else {
                self.outbox_changed.notified().await;
            }
            tokio::time::sleep(OUTBOX_SAVE_DELAY).await;
            let ctx = self.clone();
            let result = tokio::task::spawn_blocking(move || ctx.save_outbox()).await;
            self.note_outbox_save(result.map_err(anyhow::Error::from).and_then(|r| r));
        }
    }

    /// Logs a failing outbox write once (a full disk would otherwise log on every change), and
    /// the recovery. The outbox stays in memory either way.
    pub fn note_outbox_save(&self, result: Result<bool>) {
        match result {
            Ok(_) => {
                if self.outbox_save_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.outbox_store.path().display(), "the outbox is saved again");
                }
            }
            Err(e) => {
                if !self.outbox_save_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        path = %self.outbox_store.path().display(),
                        error = %format!("{e:#}"),
                        "cannot save the outbox; queued reports are kept in memory only until it \
                         works again"
                    );
                }
            }
        }
    }

    /// Publishes the current controller connection (or its loss).
    pub fn set_caller(&self, caller: Option<ControllerCaller>) {
        self.caller.send_replace(caller);
    }

    /// Follows the current controller connection.
    pub fn caller(&self) -> watch::Receiver<Option<ControllerCaller>> {
        self.caller.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(data_dir: &std::path::Path) -> AgentContext {
        let store = StateStore::new(data_dir);
        let state = store.load().expect("state");
        AgentContext::new(
            "model-uuid".into(),
            "0".into(),
            data_dir.to_path_buf(),
            store,
            state,
            // Everything queued was delivered (and dropped from the outbox) before the kill.
            ReportRequest::default(),
        )
    }

    /// More log records than one reservation holds between two status reports, then a
    /// SIGKILL (nothing but the state file survives): the restarted agent must number its
    /// next record above every number given before, or a controller skips it as applied.
    #[test]
    fn numbers_given_to_log_records_are_never_given_again_after_a_kill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = context(dir.path());
        before.report_status("machine-0", "agent", Status::default());
        let lines = 3 * SEQ_RESERVATION;
        for i in 0..lines {
            before.report_log(
                "unit-counter-0",
                LogLevel::Info,
                "hook",
                format!("line {i}"),
            );
        }
        let given = before.outbox.lock().expect("outbox").next_seq();
        assert!(given > lines, "{given} numbers given for {lines} lines");
        drop(before);

        let after = context(dir.path());
        let next = after.outbox.lock().expect("outbox").next_seq();
        assert!(
            next >= given,
            "the restarted agent numbers its next record {next}, a number given before (up to {})",
            given - 1
        );
    }
}
