//! `AgentContext`: what the machine agent's tasks share — who it is, its data dir, its persisted
//! state, the report outbox and the current controller connection.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Result;
use starling_proto::model::{LogLevel, Status};
use tokio::sync::{watch, Notify};

use super::reports::ReportBuffer;
use super::session::ControllerCaller;
use super::state::{AgentState, StateStore};

/// How many report seqs are reserved in the state file at once, so seqs keep growing across
/// a SIGKILL without a state write per report.
const SEQ_RESERVATION: u64 = 1024;

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
    caller: watch::Sender<Option<ControllerCaller>>,
}

impl AgentContext {
    /// A context over the loaded `state`.
    pub fn new(
        model_uuid: String,
        machine_id: String,
        data_dir: PathBuf,
        store: StateStore,
        state: AgentState,
    ) -> Self {
        let outbox = ReportBuffer::new(state.next_seq);
        Self {
            model_uuid,
            machine_id,
            data_dir,
            store,
            state: Mutex::new(state),
            outbox: Mutex::new(outbox),
            outbox_ready: Notify::new(),
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

    /// Queues a status report.
    pub fn report_status(&self, entity: &str, kind: &str, status: Status) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        let next_seq = outbox.next_seq();
        let reserved = self.with_state(|s| s.next_seq);
        if next_seq >= reserved {
            let result = self.update_state(|s| s.next_seq = next_seq + SEQ_RESERVATION);
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "cannot persist the report seq");
            }
        }
        let seq = outbox.push_status(entity, kind, status.clone());
        tracing::debug!(seq, entity, kind, current = %status.current, message = %status.message, "status");
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// Queues a model-log record.
    pub fn report_log(&self, entity: &str, level: LogLevel, module: &str, message: String) {
        self.outbox
            .lock()
            .expect("outbox lock")
            .push_log(entity, level, module, message);
        self.outbox_ready.notify_one();
    }

    /// Runs `f` on the outbox.
    pub fn with_outbox<T>(&self, f: impl FnOnce(&mut ReportBuffer) -> T) -> T {
        f(&mut self.outbox.lock().expect("outbox lock"))
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
