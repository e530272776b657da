//! Early replication: the leader sends a small append to its followers while its own fdatasync
//! of that append runs, instead of after it.
//!
//! openraft 0.9's core appends an entry to the leader's log and waits for the append's sync
//! before it replicates, so a lone write pays the leader's sync and then a follower's sync, one
//! after the other. The leader's log store hands each append it makes as leader to
//! [`EarlyReplication`] before it syncs; this sends the same entries to every follower as the
//! AppendEntries openraft will send after the sync (same vote, the entry before them as
//! `prev_log_id`, no commit index), and forgets the answers. A follower appends and syncs them
//! at once; when openraft's own AppendEntries arrives, the follower already holds them and
//! answers as soon as that sync is done. Nothing in the commit rule changes: the leader counts
//! itself only after its own sync and a follower only after answering openraft's request, which
//! it does only once the entries are on its disk. Raft allows a leader to send entries before
//! they are on its own disk: a follower holding entries the leader has not synced is a state
//! the protocol already handles (the entries are not committed until a majority synced them).
//!
//! Only appends of at most [`EARLY_BYTES_MAX`] are sent early (a lone writer's, where the
//! serialized syncs are most of a write's time): large batches would cross the network twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use starling_proto::raft as pb;
use tracing::debug;

use crate::codec;
use crate::network::PeerChannels;
use crate::type_config::{LogId, NodeId, Vote};

/// Appends of more bytes than this (encoded entries) wait for openraft's replication.
pub const EARLY_BYTES_MAX: usize = 16 * 1024;

/// How long an early send may take; it is only a head start, openraft's own request follows.
const EARLY_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// A follower that did not take an early append (unreachable, or lagging so the entries did not
/// follow its log) gets none for this long; openraft's replication catches it up meanwhile.
const EARLY_PAUSE_AFTER_MISS: Duration = Duration::from_secs(1);

/// Who the node is and how it reaches its peers, known once the Raft node starts.
struct Link {
    node_id: NodeId,
    controller_uuid: String,
    channels: PeerChannels,
}

/// Where early appends go: the term this node leads and its followers, or nowhere.
#[derive(Default)]
struct Route {
    term: Option<u64>,
    followers: Vec<(NodeId, String)>,
}

/// Sends a leader's small appends to its followers before the leader's own sync. Shared by
/// the node's log store (which offers every append) and its Raft handle (which sets who the
/// node is and, from openraft's metrics, whether it leads and whom).
#[derive(Default)]
pub struct EarlyReplication {
    link: OnceLock<Link>,
    route: RwLock<Route>,
    /// The id of the last entry of this node's log, when known: an early request names it as
    /// `prev_log_id`, so it must be exactly the log's (cleared when the log is truncated or
    /// purged, set by every append).
    last: Mutex<Option<LogId>>,
    /// When each follower last missed an early append.
    missed: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl std::fmt::Debug for EarlyReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyReplication").finish_non_exhaustive()
    }
}

impl EarlyReplication {
    /// Sets who this node is and how it dials its peers (once; later calls change nothing).
    pub(crate) fn link(&self, node_id: NodeId, controller_uuid: &str, channels: PeerChannels) {
        let _ = self.link.set(Link {
            node_id,
            controller_uuid: controller_uuid.to_owned(),
            channels,
        });
    }

    /// This node leads `term` with `followers` (id, address), or (`None`) leads nothing.
    pub(crate) fn route(&self, term: Option<u64>, followers: Vec<(NodeId, String)>) {
        let followers = if term.is_some() {
            followers
        } else {
            Vec::new()
        };
        let now = self.route.read().unwrap_or_else(PoisonError::into_inner);
        if now.term == term && now.followers == followers {
            return;
        }
        drop(now);
        *self.route.write().unwrap_or_else(PoisonError::into_inner) = Route { term, followers };
    }

    /// The log changed other than by an append (truncated or purged): the last entry is not
    /// known until the next append.
    pub(crate) fn forget_last(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Called by the log store with each append (entries `first..=last` and their encoded
    /// forms) before it syncs: sends them to the followers when this node appends them as the
    /// leader of the term they carry, and they follow the entry it appended last.
    pub(crate) fn appending(&self, first: &LogId, last: &LogId, entries: &[pb::LogEntry]) {
        let Some((request, followers)) = self.request_for(first, last, entries) else {
            return;
        };
        let Some(link) = self.link.get() else {
            return;
        };
        let now = Instant::now();
        let paused: Vec<NodeId> = {
            let mut missed = self.missed.lock().unwrap_or_else(PoisonError::into_inner);
            missed.retain(|_, at| now.duration_since(*at) < EARLY_PAUSE_AFTER_MISS);
            missed.keys().copied().collect()
        };
        for (id, address) in followers.into_iter().filter(|(id, _)| !paused.contains(id)) {
            let mut client = match link.channels.client(id, &address) {
                Ok(client) => client,
                Err(e) => {
                    debug!(peer = id, error = %e, "no channel for an early append");
                    continue;
                }
            };
            let mut message = tonic::Request::new(request.clone());
            message.set_timeout(EARLY_SEND_TIMEOUT);
            metrics::counter!("starling_raft_early_appends_total").increment(1);
            let missed = self.missed.clone();
            tokio::spawn(async move {
                // Whether the follower took the entries is openraft's business when its own
                // request comes; a miss here only costs the head start.
                let taken = match client.append_entries(message).await {
                    Ok(response) => matches!(
                        response.into_inner().result,
                        Some(pb::append_entries_response::Result::Success(_))
                    ),
                    Err(status) => {
                        debug!(peer = id, %status, "early append not delivered");
                        false
                    }
                };
                if !taken {
                    missed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id, Instant::now());
                }
            });
        }
    }

    /// The request that sends an append early, and to whom; `None` when it is not sent early.
    /// Notes the append's last entry either way.
    fn request_for(
        &self,
        first: &LogId,
        last: &LogId,
        entries: &[pb::LogEntry],
    ) -> Option<(pb::AppendEntriesRequest, Vec<(NodeId, String)>)> {
        let prev = {
            let mut known = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            known.replace(*last)
        };
        let link = self.link.get()?;
        let prev = prev.filter(|prev| prev.index + 1 == first.index)?;
        let leader = first.leader_id;
        if leader.node_id != link.node_id || last.leader_id != leader {
            return None;
        }
        let followers = {
            let route = self.route.read().unwrap_or_else(PoisonError::into_inner);
            if route.term != Some(leader.term) || route.followers.is_empty() {
                return None;
            }
            route.followers.clone()
        };
        if entries
            .iter()
            .map(prost::Message::encoded_len)
            .sum::<usize>()
            > EARLY_BYTES_MAX
        {
            return None;
        }
        let request = pb::AppendEntriesRequest {
            controller_uuid: link.controller_uuid.clone(),
            vote: Some(codec::vote_to_pb(&Vote::new_committed(
                leader.term,
                leader.node_id,
            ))),
            prev_log_id: Some(codec::log_id_to_pb(&prev)),
            entries: entries.to_vec(),
            leader_commit: None,
        };
        Some((request, followers))
    }
}

#[cfg(test)]
mod tests {
    use openraft::LeaderId;
    use starling_proto::command::Command;
    use tonic::transport::ClientTlsConfig;

    use super::*;
    use crate::network::PeerDialer;

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId {
        LogId::new(LeaderId::new(term, leader), index)
    }

    fn entries(first: &LogId, last: &LogId, request_id: &str) -> Vec<pb::LogEntry> {
        (first.index..=last.index)
            .map(|index| pb::LogEntry {
                log_id: Some(codec::log_id_to_pb(&LogId { index, ..*first })),
                payload: Some(pb::log_entry::Payload::Command(Command {
                    request_id: request_id.to_owned(),
                    ..Default::default()
                })),
            })
            .collect()
    }

    fn linked(node_id: NodeId) -> EarlyReplication {
        let early = EarlyReplication::default();
        let dialer = PeerDialer::new(ClientTlsConfig::new(), Duration::from_secs(1));
        early.link(node_id, "ctl-uuid", PeerChannels::new(dialer));
        early
    }

    /// Which appends a node sends early: only its own as the leader of their term, right after
    /// the entry it appended last, small, and with followers to send to; the request is the
    /// AppendEntries openraft would send, without a commit index.
    #[test]
    fn only_a_leaders_own_small_appends_after_a_known_entry_go_early() {
        let early = linked(1);
        let followers = vec![(2, "127.0.0.1:2".to_owned()), (3, "127.0.0.1:3".to_owned())];
        early.route(Some(5), followers.clone());
        let (a, b) = (log_id(5, 1, 10), log_id(5, 1, 10));
        assert!(
            early.request_for(&a, &b, &entries(&a, &b, "r")).is_none(),
            "the entry before is not known yet"
        );
        let (first, last) = (log_id(5, 1, 11), log_id(5, 1, 12));
        let (request, to) = early
            .request_for(&first, &last, &entries(&first, &last, "r"))
            .expect("sent early");
        assert_eq!(to, followers);
        assert_eq!(request.prev_log_id, Some(codec::log_id_to_pb(&b)));
        assert_eq!(
            request.vote,
            Some(codec::vote_to_pb(&Vote::new_committed(5, 1)))
        );
        assert_eq!(request.entries.len(), 2);
        assert_eq!(request.leader_commit, None);
        assert_eq!(request.controller_uuid, "ctl-uuid");

        let gap = log_id(5, 1, 14);
        assert!(
            early
                .request_for(&gap, &gap, &entries(&gap, &gap, "r"))
                .is_none(),
            "not right after the last entry"
        );
        let next = log_id(5, 1, 15);
        assert!(early
            .request_for(&next, &next, &entries(&next, &next, "r"))
            .is_some());
        early.forget_last();
        let after = log_id(5, 1, 16);
        assert!(
            early
                .request_for(&after, &after, &entries(&after, &after, "r"))
                .is_none(),
            "the log was truncated or purged"
        );
        let theirs = log_id(5, 2, 17);
        assert!(
            early
                .request_for(&theirs, &theirs, &entries(&theirs, &theirs, "r"))
                .is_none(),
            "another leader's entry"
        );
        let old_term = log_id(4, 1, 18);
        assert!(
            early
                .request_for(&old_term, &old_term, &entries(&old_term, &old_term, "r"))
                .is_none(),
            "not the term this node leads"
        );
        let big = log_id(5, 1, 19);
        let large = "x".repeat(EARLY_BYTES_MAX);
        assert!(
            early
                .request_for(&big, &big, &entries(&big, &big, &large))
                .is_none(),
            "too large"
        );
        let small = log_id(5, 1, 20);
        assert!(early
            .request_for(&small, &small, &entries(&small, &small, "r"))
            .is_some());
        early.route(None, followers);
        let follower = log_id(5, 1, 21);
        assert!(
            early
                .request_for(&follower, &follower, &entries(&follower, &follower, "r"))
                .is_none(),
            "no longer leading"
        );
        let unlinked = EarlyReplication::default();
        unlinked.route(Some(5), vec![(2, "127.0.0.1:2".to_owned())]);
        assert!(unlinked
            .request_for(&first, &first, &entries(&first, &first, "r"))
            .is_none());
    }
}
