//! Machine-agent presence: each node keeps, in memory, when each agent last heartbeat to it, and
//! once per heartbeat interval proposes the whole table as one replicated `RenewPresence`
//! (stored as `presence/<node_id>`, replaced each time). Agent status is computed at read time
//! from the newest `last_seen` across every node's record, so every node answers the same and
//! the write rate is one command per node per interval, whatever the number of agents.
//!
//! An agent that arrives (a first contact with this node, or one after a silence the replicated
//! record may already show as `down`) is *fresh*: the renewal is proposed at once instead of at
//! the end of the interval, and the call that brought it can wait until that renewal committed
//! (`PresenceTable::wait_renewed`), so an agent is `started` from its first contact with any
//! controller (after a migration too). Fresh renewals are coalesced: at most one per
//! `FRESH_RENEWAL_GAP_MIN`, however many agents connect at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use starling_proto::command::{command, Command, RenewPresence};
use starling_proto::model::PresenceEntry;
use starling_raft::RaftHandle;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use starling_storage::model::names::parse_machine_id;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument, warn};

use crate::plumbing::now_unix_ms;

/// Least time between two renewals proposed for fresh agents: a burst of connections (every
/// agent of a model after a migration, a fleet after a controller restart) costs one write per
/// gap, not one per agent.
const FRESH_RENEWAL_GAP_MIN: Duration = Duration::from_millis(100);
/// An agent whose previous heartbeat here is older than this many intervals is fresh again: the
/// replicated record may be about to show it `down`.
const FRESH_AFTER_INTERVALS: u32 = 2;

#[derive(Default)]
struct Table {
    /// model uuid → machine id → last heartbeat (ms since the epoch).
    seen: HashMap<String, HashMap<String, i64>>,
    /// Whether the table changed shape (entries added or dropped) since the last renewal.
    changed: bool,
    /// Bumped for each fresh agent; a renewal carries every agent recorded up to the
    /// generation it read.
    generation: u64,
    /// The generation the last renewal read, while it is being proposed.
    renewing: u64,
}

/// The agents that heartbeat to this node. std Mutex, not tokio's: nothing awaits while it is
/// held.
pub struct PresenceTable {
    table: Mutex<Table>,
    /// Wakes the renewal loop for a fresh agent.
    fresh: Notify,
    /// The newest generation a committed renewal carried.
    renewed: watch::Sender<u64>,
}

impl Default for PresenceTable {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
            fresh: Notify::new(),
            renewed: watch::Sender::new(0),
        }
    }
}

/// A fresh agent's place in the renewals: `PresenceTable::wait_renewed` waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fresh(u64);

impl PresenceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a heartbeat of machine `machine_id` of model `model_uuid` at `now_unix_ms`;
    /// `interval` is the agents' heartbeat interval. Returns `Some` when the agent is fresh
    /// (new here, or silent for more than `FRESH_AFTER_INTERVALS` intervals): a renewal is then
    /// proposed at once.
    pub fn record(
        &self,
        model_uuid: &str,
        machine_id: &str,
        now_unix_ms: i64,
        interval: Duration,
    ) -> Option<Fresh> {
        let fresh_after_ms =
            i64::try_from((interval * FRESH_AFTER_INTERVALS).as_millis()).unwrap_or(i64::MAX);
        let mut table = self.table.lock().expect("presence table lock");
        let previous = table
            .seen
            .get(model_uuid)
            .and_then(|machines| machines.get(machine_id))
            .copied();
        if previous.is_none() {
            table.changed = true;
        }
        let seen = table
            .seen
            .entry(model_uuid.to_owned())
            .or_default()
            .entry(machine_id.to_owned())
            .or_insert(now_unix_ms);
        *seen = (*seen).max(now_unix_ms);
        let fresh = previous.is_none_or(|p| now_unix_ms.saturating_sub(p) > fresh_after_ms);
        if !fresh {
            return None;
        }
        table.generation += 1;
        let generation = table.generation;
        drop(table);
        self.fresh.notify_one();
        Some(Fresh(generation))
    }

    /// Waits until a committed renewal carries the agent `fresh` was recorded with, at most
    /// `timeout`; whether it did.
    pub async fn wait_renewed(&self, fresh: Fresh, timeout: Duration) -> bool {
        let mut renewed = self.renewed.subscribe();
        tokio::time::timeout(timeout, renewed.wait_for(|g| *g >= fresh.0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Notes that the renewal last taken from `renewal` committed.
    fn renewal_committed(&self) {
        let renewing = self.table.lock().expect("presence table lock").renewing;
        self.renewed.send_if_modified(|g| {
            let newer = renewing > *g;
            *g = (*g).max(renewing);
            newer
        });
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
        table.renewing = table.generation;
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
        let fresh = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => false,
            _ = table.fresh.notified() => true,
        };
        if fresh {
            // Coalesce a burst of arrivals into one renewal.
            let earliest = last_renewal + FRESH_RENEWAL_GAP_MIN;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(earliest) => {}
            }
        } else if tokio::time::Instant::now() < due {
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
            authority: None,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            result = handle.propose(command) => match result {
                Ok(_) => {
                    table.renewal_committed();
                    debug!(n_entries, fresh, "presence renewed");
                }
                Err(e) => warn!(error = %e, n_entries, "cannot renew presence"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(1000);

    #[test]
    fn an_agent_is_fresh_when_new_or_back_from_a_silence() {
        let table = PresenceTable::new();
        let first = table.record("m", "0", 1_000, INTERVAL);
        assert_eq!(first, Some(Fresh(1)));
        // Regular heartbeats wait for the interval's renewal.
        assert_eq!(table.record("m", "0", 2_000, INTERVAL), None);
        assert_eq!(table.record("m", "0", 4_000, INTERVAL), None);
        // Back after more than two intervals without a word: fresh again.
        assert_eq!(table.record("m", "0", 6_001, INTERVAL), Some(Fresh(2)));
        assert_eq!(table.record("m", "1", 6_001, INTERVAL), Some(Fresh(3)));
    }

    #[tokio::test]
    async fn a_fresh_agent_waits_for_the_renewal_that_carries_it() {
        let table = PresenceTable::new();
        let fresh = table.record("m", "0", 1_000, INTERVAL).expect("fresh");
        assert!(!table.wait_renewed(fresh, Duration::ZERO).await);
        let entries = table.renewal().expect("a renewal");
        assert_eq!(entries.len(), 1);
        // A later arrival is not carried by the renewal taken before it.
        let later = table.record("m", "1", 1_000, INTERVAL).expect("fresh");
        table.renewal_committed();
        assert!(table.wait_renewed(fresh, Duration::ZERO).await);
        assert!(!table.wait_renewed(later, Duration::ZERO).await);
        table.renewal().expect("a renewal");
        table.renewal_committed();
        assert!(table.wait_renewed(later, Duration::ZERO).await);
    }

    #[test]
    fn renewal_is_skipped_only_when_empty_and_unchanged() {
        let table = PresenceTable::new();
        assert!(table.renewal().is_none());
        table.record("m", "0", 10, INTERVAL);
        table.record("m", "0", 5, INTERVAL);
        table.record("m", "1", 20, INTERVAL);
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
