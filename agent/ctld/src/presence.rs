//! Machine-agent presence: each node keeps, in memory, when each agent last heartbeat to it, and
//! once per heartbeat interval proposes the whole table as one replicated `RenewPresence`
//! (stored as `presence/<node_id>`, replaced each time). Agent status is computed at read time
//! from the newest `last_seen` across every node's record, so every node answers the same and
//! the write rate is one command per node per interval, whatever the number of agents.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use starling_proto::command::{command, Command, RenewPresence};
use starling_proto::model::PresenceEntry;
use starling_raft::RaftHandle;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use starling_storage::model::names::parse_machine_id;
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument, warn};

use crate::plumbing::now_unix_ms;

#[derive(Default)]
struct Table {
    /// model uuid → machine id → last heartbeat (ms since the epoch).
    seen: HashMap<String, HashMap<String, i64>>,
    /// Whether the table changed shape (entries added or dropped) since the last renewal.
    changed: bool,
}

/// The agents that heartbeat to this node. std Mutex, not tokio's: nothing awaits while it is
/// held.
#[derive(Default)]
pub struct PresenceTable {
    table: Mutex<Table>,
}

impl PresenceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a heartbeat of machine `machine_id` of model `model_uuid` at `now_unix_ms`.
    pub fn record(&self, model_uuid: &str, machine_id: &str, now_unix_ms: i64) {
        let mut table = self.table.lock().expect("presence table lock");
        if let Some(machines) = table.seen.get_mut(model_uuid) {
            if let Some(seen) = machines.get_mut(machine_id) {
                *seen = (*seen).max(now_unix_ms);
                return;
            }
        }
        table
            .seen
            .entry(model_uuid.to_owned())
            .or_default()
            .insert(machine_id.to_owned(), now_unix_ms);
        table.changed = true;
    }

    /// Drops the machines `exists` says are gone.
    pub fn retain(&self, mut exists: impl FnMut(&str, &str) -> bool) {
        let mut table = self.table.lock().expect("presence table lock");
        let mut dropped = false;
        for (model, machines) in table.seen.iter_mut() {
            let before = machines.len();
            machines.retain(|machine, _| exists(model, machine));
            dropped |= machines.len() != before;
        }
        table.seen.retain(|_, machines| !machines.is_empty());
        table.changed |= dropped;
    }

    /// The entries to renew, sorted, or `None` when the table is empty and unchanged (nothing
    /// to tell the other nodes). Clears the changed flag.
    pub fn renewal(&self) -> Option<Vec<PresenceEntry>> {
        let mut table = self.table.lock().expect("presence table lock");
        if table.seen.is_empty() && !table.changed {
            return None;
        }
        table.changed = false;
        let mut entries: Vec<PresenceEntry> = table
            .seen
            .iter()
            .flat_map(|(model, machines)| {
                machines.iter().map(|(machine, seen)| PresenceEntry {
                    model_uuid: model.clone(),
                    machine_id: machine.clone(),
                    last_seen_unix_ms: *seen,
                })
            })
            .collect();
        entries.sort_by(|a, b| (&a.model_uuid, &a.machine_id).cmp(&(&b.model_uuid, &b.machine_id)));
        Some(entries)
    }

    /// How many agents are in the table.
    pub fn len(&self) -> usize {
        let table = self.table.lock().expect("presence table lock");
        table.seen.values().map(HashMap::len).sum()
    }

    /// Whether no agent is in the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Renews this node's presence record every heartbeat interval until `stop` is cancelled.
#[instrument(skip_all, fields(node_id = handle.node_id()))]
pub async fn run_presence(
    handle: RaftHandle,
    table: std::sync::Arc<PresenceTable>,
    stop: CancellationToken,
) {
    // The interval is re-read at least every `CONFIG_POLL`, so lowering it takes effect within
    // that time rather than after one whole old interval.
    const CONFIG_POLL: Duration = Duration::from_secs(1);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        let interval = agent_heartbeat_interval(&handle.state().controller_config());
        let due = last_renewal + interval;
        let wake = due.min(tokio::time::Instant::now() + CONFIG_POLL);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if tokio::time::Instant::now() < due {
            continue;
        }
        last_renewal = tokio::time::Instant::now();
        let state = handle.state().clone();
        table.retain(|model, machine| {
            // A read failure keeps the entry: dropping it would show a live agent as pending.
            match parse_machine_id(machine) {
                Ok(number) => state.machine(model, number).map_or(true, |m| m.is_some()),
                Err(_) => false,
            }
        });
        let Some(entries) = table.renewal() else {
            continue;
        };
        let n_entries = entries.len();
        let command = Command {
            request_id: String::new(),
            op: Some(command::Op::RenewPresence(RenewPresence {
                node_id: handle.node_id(),
                entries,
            })),
            proposed_unix_ms: now_unix_ms(),
            caller: String::new(),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = handle.propose(command) => match result {
                Ok(_) => debug!(n_entries, "presence renewed"),
                Err(e) => warn!(error = %e, n_entries, "cannot renew presence"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_skipped_only_when_empty_and_unchanged() {
        let table = PresenceTable::new();
        assert!(table.renewal().is_none());
        table.record("m", "0", 10);
        table.record("m", "0", 5);
        table.record("m", "1", 20);
        let entries = table.renewal().expect("entries");
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.machine_id.as_str(), e.last_seen_unix_ms))
                .collect::<Vec<_>>(),
            [("0", 10), ("1", 20)]
        );
        // Non-empty: renewed every interval even when unchanged.
        assert!(table.renewal().is_some());
        table.retain(|_, _| false);
        assert!(table.is_empty());
        // The drop itself is renewed once (an empty record), then nothing.
        assert_eq!(table.renewal().map(|e| e.len()), Some(0));
        assert!(table.renewal().is_none());
    }
}
