//! Where a write's time goes: the moments one log entry passes on this node (appended, synced,
//! sent to and acknowledged by followers, applied), kept by index in a small ring, and turned by
//! the proposal batcher into one observation per write of each stage in the
//! `starling_raft_write_stage_seconds{stage}` histogram:
//!
//! | stage | from → to |
//! |---|---|
//! | `queue` | proposal queued on the leader → its entry handed to openraft (batch wait) |
//! | `to_append` | handed to openraft → the log store's append starts |
//! | `leader_append` | append starts → the entry is fdatasynced on the leader |
//! | `to_send` | leader synced → first AppendEntries carrying the entry leaves |
//! | `replicate` | sent → enough followers acknowledged it (their append and fdatasync included) |
//! | `commit_to_apply` | committed (leader synced and a quorum acknowledged) → apply starts |
//! | `apply` | the state machine's apply of the entry's batch |
//! | `respond` | applied → openraft answers the proposer |
//! | `total` | proposal queued → answered |
//!
//! A follower records its side in `starling_raft_follower_append_seconds` (an AppendEntries
//! with entries: arrival → answer, its fdatasync included), and a node forwarding a proposal to
//! the leader records `forward` (the forward RPC's round trip). Missing moments (an entry that
//! was replicated by a previous leader, a ring slot reused) skip the stages they bound.

use std::sync::Mutex;
use std::time::Instant;

/// Entries remembered; older indexes are overwritten.
const RING: usize = 4096;

/// The moments of one entry on this node.
#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    index: u64,
    append_start: Option<Instant>,
    synced: Option<Instant>,
    sent: Option<Instant>,
    /// When the first and the second follower acknowledged it.
    acks: [Option<Instant>; 2],
    apply_start: Option<Instant>,
    apply_end: Option<Instant>,
}

/// The per-index moments of one node. Cheap to share (`Arc`); a std mutex held for a few
/// assignments, never across an await.
#[derive(Debug)]
pub struct WriteTimeline {
    ring: Mutex<Vec<Marks>>,
}

impl Default for WriteTimeline {
    fn default() -> Self {
        WriteTimeline {
            ring: Mutex::new(vec![Marks::default(); RING]),
        }
    }
}

/// What happened to an entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mark {
    AppendStart,
    Synced,
    Sent,
    Acked,
    ApplyStart,
    ApplyEnd,
}

impl WriteTimeline {
    /// Records `mark` now for every index in `first..=last` (the first time only).
    pub(crate) fn mark(&self, first: u64, last: u64, mark: Mark) {
        if last < first {
            return;
        }
        let now = Instant::now();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // A long range only needs its newest RING indexes.
        for index in first.max(last.saturating_sub(RING as u64 - 1))..=last {
            let slot = &mut ring[(index % RING as u64) as usize];
            if slot.index != index {
                if slot.index > index {
                    continue;
                }
                *slot = Marks {
                    index,
                    ..Marks::default()
                };
            }
            let field = match mark {
                Mark::AppendStart => &mut slot.append_start,
                Mark::Synced => &mut slot.synced,
                Mark::Sent => &mut slot.sent,
                Mark::ApplyStart => &mut slot.apply_start,
                Mark::ApplyEnd => &mut slot.apply_end,
                Mark::Acked => match slot.acks {
                    [None, _] => &mut slot.acks[0],
                    [Some(_), None] => &mut slot.acks[1],
                    [Some(_), Some(_)] => continue,
                },
            };
            field.get_or_insert(now);
        }
    }

    /// Records the stages of a write whose entry `index` was answered at `answered`, having been
    /// queued at `queued` and handed to openraft at `proposed`; `follower_acks_needed` is how
    /// many followers make a quorum with the leader (1 of 2 in a 3-voter group).
    pub(crate) fn observe_write(
        &self,
        index: u64,
        queued: Instant,
        proposed: Instant,
        answered: Instant,
        follower_acks_needed: usize,
    ) {
        let marks = {
            let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let slot = ring[(index % RING as u64) as usize];
            (slot.index == index).then_some(slot)
        };
        let stage = |name: &'static str, from: Option<Instant>, to: Option<Instant>| {
            if let (Some(from), Some(to)) = (from, to) {
                metrics::histogram!("starling_raft_write_stage_seconds", "stage" => name)
                    .record(to.saturating_duration_since(from).as_secs_f64());
            }
        };
        stage("queue", Some(queued), Some(proposed));
        stage("total", Some(queued), Some(answered));
        let Some(m) = marks else {
            return;
        };
        let quorum_ack = match follower_acks_needed {
            0 => m.synced,
            n => m.acks.get(n - 1).copied().flatten(),
        };
        let committed = match (m.synced, quorum_ack) {
            (Some(synced), Some(ack)) => Some(synced.max(ack)),
            _ => None,
        };
        stage("to_append", Some(proposed), m.append_start);
        stage("leader_append", m.append_start, m.synced);
        stage("to_send", m.synced, m.sent);
        stage("replicate", m.sent, quorum_ack);
        stage("commit_to_apply", committed, m.apply_start);
        stage("apply", m.apply_start, m.apply_end);
        stage("respond", m.apply_end, Some(answered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_the_first_moment_and_two_acks() {
        let t = WriteTimeline::default();
        t.mark(5, 7, Mark::AppendStart);
        t.mark(5, 7, Mark::Acked);
        let first = t.ring.lock().unwrap()[6].acks[0];
        t.mark(6, 6, Mark::Acked);
        t.mark(6, 6, Mark::Acked);
        let slot = t.ring.lock().unwrap()[6];
        assert_eq!(slot.index, 6);
        assert_eq!(slot.acks[0], first);
        assert!(slot.acks[1].is_some());
        assert!(slot.append_start.is_some() && slot.synced.is_none());
    }

    #[test]
    fn a_newer_index_takes_the_slot_and_an_older_one_is_ignored() {
        let t = WriteTimeline::default();
        t.mark(3, 3, Mark::Synced);
        t.mark(3 + RING as u64, 3 + RING as u64, Mark::AppendStart);
        t.mark(3, 3, Mark::ApplyStart);
        let slot = t.ring.lock().unwrap()[3];
        assert_eq!(slot.index, 3 + RING as u64);
        assert!(slot.synced.is_none() && slot.apply_start.is_none());
        assert!(slot.append_start.is_some());
    }
}
