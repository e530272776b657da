//! `RaftHandle`: what the daemon needs from consensus — start a node, propose a command from any
//! node (forwarded to the leader), linearizable reads, membership changes and status.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use starling_proto::command::{Command, CommandResult};
use starling_proto::raft as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batcher::{BatchLimits, ProposalBatcher};
use crate::network::{Network, PeerChannels};
use crate::store::StateView;
use crate::type_config::{Node, NodeId, Raft, Vote};
use crate::watchdog::{self, LeaderContact, WatchdogTiming};

/// How often, from its turn on, a bootstrapping node asks the other members whether they are in
/// the group.
const BOOTSTRAP_ASK_EVERY: Duration = Duration::from_millis(100);
/// How many shortest election timeouts past its turn a bootstrapping node waits to be reached by
/// the leader of a group another member reports, before it initializes anyway.
const BOOTSTRAP_TURNS_MAX: u32 = 10;

/// Raft timing and sizes; all configurable from `ctld run`.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    /// Leader heartbeat period; openraft 0.9 also uses it as the AppendEntries RPC timeout.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, and the leader lease: a voter that heard from a
    /// leader less than this long ago refuses to vote for anyone else.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout: a voter follower without leader contact campaigns
    /// (after a pre-vote) at a random point between the bounds, drawn afresh for each attempt.
    pub election_timeout_max_ms: u64,
    /// Deadline for sending one snapshot chunk.
    pub install_snapshot_timeout_ms: u64,
    /// Largest snapshot chunk sent to a follower.
    pub snapshot_chunk_bytes_max: u64,
    /// A snapshot is built after this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log after a snapshot, so a briefly lagging follower needs no snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How concurrent proposals share log entries on the leader.
    pub batch: BatchLimits,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            // openraft 0.9 cuts an AppendEntries off after one heartbeat period; a follower's
            // fsync behind a large batch can take tens of milliseconds (a cut-off append is
            // retried, and whatever the follower stored by then is kept).
            heartbeat_ms: 100,
            // 4-7 heartbeats. Failover takes the earliest survivor's draw in [min, max] plus an
            // election: about 0.5 s. Shorter makes a leader whose heartbeats are delayed by CPU
            // or disk stalls (its Raft core waits for its own log fsync) lose its lease.
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 700,
            install_snapshot_timeout_ms: 10_000,
            snapshot_chunk_bytes_max: 1024 * 1024,
            snapshot_logs_since_last: 10_000,
            logs_kept_after_snapshot: 5_000,
            batch: BatchLimits::default(),
        }
    }
}

impl RaftTiming {
    /// The validated openraft configuration for these settings.
    pub fn to_config(&self, cluster_name: &str) -> Result<Config, Box<openraft::ConfigError>> {
        if self.election_timeout_max_ms < self.election_timeout_min_ms {
            return Err(Box::new(openraft::ConfigError::ElectionTimeout {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
            }));
        }
        let config = Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            // openraft's leader lease is its `election_timeout_max`; its own election timer is
            // off (the watchdog campaigns), so only the lease matters: our minimum.
            election_timeout_min: self.election_timeout_min_ms.saturating_sub(1),
            election_timeout_max: self.election_timeout_min_ms,
            enable_elect: false,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // Entries carry proposal batches of up to `batch_bytes_max` (256 KiB), and openraft 0.9
            // cuts an AppendEntries off after one heartbeat: 16 entries (<= 4 MiB) fit in it even
            // on this machine; a catching-up follower gets them back to back.
            max_payload_entries: 16,
            ..Default::default()
        };
        config.validate().map_err(Box::new)
    }
}

/// Why a proposal or a read did not complete. The caller decides whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known, or the leader could not be reached, before the deadline.
    #[error(
        "no leader reachable before the deadline (last leader hint: {leader_hint:?}): {reason}"
    )]
    Unavailable {
        /// The last leader this node heard of.
        leader_hint: Option<NodeId>,
        /// What went wrong on the last attempt.
        reason: String,
    },
    /// This node is not the leader (returned by the leader-only calls).
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
    },
    /// The Raft node stopped or its storage failed.
    #[error("raft node failed: {0}")]
    Fatal(String),
}

/// Why a Raft node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The timing settings are inconsistent (e.g. election timeout not above the heartbeat).
    #[error("invalid raft settings: {0}")]
    Config(#[from] Box<openraft::ConfigError>),
    /// The node failed while starting (storage could not be read).
    #[error("raft node failed to start: {0}")]
    Fatal(#[from] Box<openraft::error::Fatal<NodeId>>),
}

/// A committed command: its result and the index of the entry that carried it.
#[derive(Debug, Clone)]
pub struct Proposed {
    /// What the state machine returned.
    pub result: CommandResult,
    /// The log index of the command's entry.
    pub log_index: u64,
}

/// What a node measures about itself for the `NodeStatus` peer RPC (`with_load`): the daemon
/// supplies it, this crate only carries it.
pub type LoadSource = Arc<dyn Fn() -> pb::NodeLoad + Send + Sync>;

/// A leader this node saw take over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// When this node learnt of it (wall clock, milliseconds since the Unix epoch).
    pub unix_ms: i64,
    /// The term it leads.
    pub term: u64,
    /// The new leader.
    pub leader: NodeId,
}

/// Leader changes a node remembers (the most recent).
pub const LEADER_CHANGES_KEPT: usize = 32;

/// Who a Raft node is and how it talks to its peers.
#[derive(Clone)]
pub struct NodeOptions {
    /// This node's Raft id.
    pub node_id: NodeId,
    /// The controller the node belongs to; peers naming another controller are refused.
    pub controller_uuid: String,
    /// The version the node advertises.
    pub version: String,
    /// Timing and sizes.
    pub timing: RaftTiming,
    /// The peer channel cache (and the mTLS identity it dials with).
    pub channels: PeerChannels,
}

/// One controller node's consensus handle. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    node_id: NodeId,
    controller_uuid: String,
    version: String,
    channels: PeerChannels,
    state: StateView,
    batcher: ProposalBatcher,
    leader_contact: Arc<LeaderContact>,
    /// The term this node leads in and when it was first seen leading it (by the metrics task).
    leading_since: Arc<std::sync::Mutex<Option<(u64, Instant)>>>,
    timing: RaftTiming,
    /// What `NodeStatus` reports when asked for the node's load.
    load_source: RwLock<Option<LoadSource>>,
    /// The latest leader changes, oldest first, at most `LEADER_CHANGES_KEPT`.
    leader_changes: Mutex<VecDeque<LeaderChange>>,
    /// Stops the batcher and the election watchdog.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a stopping or leaving leader tries to hand its leadership to a caught-up voter.
pub const LEADER_HANDOFF_LIMIT: Duration = Duration::from_secs(2);

/// How long a proposal may wait for a leader before answering `Unavailable`.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(20);

impl RaftHandle {
    /// Starts the Raft node `options` on the given stores.
    pub async fn start<LS, SM>(
        options: NodeOptions,
        log_store: LS,
        state_machine: SM,
        state: StateView,
    ) -> Result<Self, StartError>
    where
        LS: openraft::storage::RaftLogStorage<crate::type_config::TypeConfig>,
        SM: openraft::storage::RaftStateMachine<crate::type_config::TypeConfig>,
    {
        let NodeOptions {
            node_id,
            controller_uuid,
            version,
            timing,
            channels,
        } = options;
        let config = Arc::new(timing.to_config(&controller_uuid)?);
        let timeline = state.timeline();
        let network = Network::new(&controller_uuid, channels.clone(), timeline.clone());
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(Box::new)?;
        let stop = CancellationToken::new();
        let leader_contact = Arc::new(LeaderContact::default());
        let batcher = ProposalBatcher::spawn(raft.clone(), timeline, timing.batch, stop.clone());
        let handle = Self {
            inner: Arc::new(Inner {
                raft: raft.clone(),
                node_id,
                controller_uuid,
                version,
                channels,
                state,
                batcher,
                leader_contact: leader_contact.clone(),
                leading_since: Arc::default(),
                timing: timing.clone(),
                load_source: RwLock::new(None),
                leader_changes: Mutex::new(VecDeque::with_capacity(LEADER_CHANGES_KEPT)),
                stop: stop.clone(),
            }),
        };
        // The watchdog must not keep the node alive: it asks through a weak reference.
        let weak = Arc::downgrade(&handle.inner);
        let pre_vote: watchdog::PreVote = Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => RaftHandle { inner }.pre_vote_round().await,
                    None => false,
                }
            })
        });
        watchdog::spawn(
            raft,
            node_id,
            leader_contact,
            WatchdogTiming {
                timeout_min: Duration::from_millis(timing.election_timeout_min_ms),
                timeout_max: Duration::from_millis(timing.election_timeout_max_ms),
                heartbeat: Duration::from_millis(timing.heartbeat_ms),
            },
            pre_vote,
            stop,
        );
        handle.spawn_metrics_exporter();
        Ok(handle)
    }

    /// The openraft instance (for the peer service).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The controller this node belongs to.
    pub fn controller_uuid(&self) -> &str {
        &self.inner.controller_uuid
    }

    /// The applied state.
    pub fn state(&self) -> &StateView {
        &self.inner.state
    }

    /// The peer channel cache.
    pub fn channels(&self) -> &PeerChannels {
        &self.inner.channels
    }

    /// Initializes the group with `members` as voters if this node has never been part of one.
    /// Every initial member calls this; only a node that finds no other member already in the
    /// group starts it, and the members go in turn (by their order in `members`, one shortest
    /// election timeout apart). A node that initializes after a leader has been elected would
    /// stand as a candidate of the same first term, and openraft 0.9 orders votes of one term by
    /// node id: a higher-numbered latecomer's own vote outranks the leader's, so it refuses the
    /// leader's AppendEntries and the leader steps down for nothing. Such a node waits to be
    /// reached by the leader instead (its first message initializes it).
    pub async fn initialize_if_new(
        &self,
        members: BTreeMap<NodeId, Node>,
    ) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        let turn = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let rank = members
            .keys()
            .position(|id| *id == self.inner.node_id)
            .unwrap_or(0);
        let my_turn = Instant::now() + turn * rank as u32;
        // A member that stays out of reach must not keep the others from starting the group.
        let give_up = my_turn + turn * BOOTSTRAP_TURNS_MAX;
        let mut next_ask = my_turn;
        let mut metrics = raft.metrics();
        loop {
            if raft.is_initialized().await.map_err(fatal)? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_ask {
                next_ask = now + BOOTSTRAP_ASK_EVERY;
                match self.member_in_a_group(&members).await {
                    None => break,
                    Some(peer) if now >= give_up => {
                        warn!(
                            peer,
                            "a member is in the group but no leader has reached this node; \
                             initializing"
                        );
                        break;
                    }
                    Some(peer) => debug!(peer, "a member is in the group; waiting to be reached"),
                }
            }
            // A leader's first message (or a candidate's vote request) changes the node's Raft
            // state; nothing else can make it initialized before the next ask.
            let left = next_ask.saturating_duration_since(Instant::now());
            if let Ok(Err(_closed)) = tokio::time::timeout(left, metrics.changed()).await {
                // The node shut down: `initialize` says so.
                break;
            }
        }
        match raft.initialize(members).await {
            Ok(()) => {
                info!("initialized the raft group");
                Ok(())
            }
            Err(RaftError::APIError(e)) => {
                debug!(error = %e, "initialize not needed");
                Ok(())
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// Another of `members` that answers that it belongs to a group already, if any does.
    async fn member_in_a_group(&self, members: &BTreeMap<NodeId, Node>) -> Option<NodeId> {
        let timeout = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let mut asks: futures::stream::FuturesUnordered<_> = members
            .iter()
            .filter(|(id, _)| **id != self.inner.node_id)
            .map(|(id, node)| async move {
                let mut client = self.inner.channels.client(*id, &node.addr).ok()?;
                let mut request = tonic::Request::new(pb::PreVoteRequest {
                    controller_uuid: self.inner.controller_uuid.clone(),
                    candidate_id: self.inner.node_id,
                    last_log_index: 0,
                });
                request.set_timeout(timeout);
                let answer = client.pre_vote(request).await.ok()?.into_inner();
                answer.initialized.then_some(*id)
            })
            .collect();
        while let Some(answer) = futures::StreamExt::next(&mut asks).await {
            if answer.is_some() {
                return answer;
            }
        }
        None
    }

    /// Whether this node belongs to a group: its log holds an entry or it has voted.
    pub fn in_a_group(&self) -> bool {
        let watch = self.inner.raft.metrics();
        let m = watch.borrow();
        m.last_log_index.is_some() || m.vote != Vote::default()
    }

    /// Proposes `command` through the leader, forwarding from a follower, retrying (the request id
    /// makes retries idempotent) until `deadline`.
    pub async fn propose(&self, mut command: Command) -> Result<Proposed, ProposeError> {
        if command.request_id.is_empty() {
            command.request_id = uuid::Uuid::new_v4().to_string();
        }
        let deadline = Instant::now() + PROPOSE_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        let mut leader_hint = None;
        let mut reason = String::from("no attempt made");
        while Instant::now() < deadline {
            match self.propose_local(command.clone()).await {
                Ok(done) => return Ok(done),
                Err(ProposeError::NotLeader {
                    leader_hint: Some(leader),
                }) if leader != self.inner.node_id => {
                    leader_hint = Some(leader);
                    match self.forward(leader, &command, deadline).await {
                        Ok(done) => return Ok(done),
                        Err(e) => reason = e,
                    }
                }
                Err(ProposeError::NotLeader { leader_hint: hint }) => {
                    leader_hint = hint;
                    reason = "no leader elected yet".into();
                }
                Err(e @ ProposeError::Fatal(_)) => return Err(e),
                Err(ProposeError::Unavailable { reason: r, .. }) => reason = r,
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        metrics::counter!("starling_raft_proposals_failed_total").increment(1);
        Err(ProposeError::Unavailable {
            leader_hint,
            reason,
        })
    }

    /// Proposes on this node only; `NotLeader` when it is not the leader. Concurrent proposals
    /// (local ones and those forwarded by followers) share log entries (`ProposalBatcher`).
    pub async fn propose_local(&self, command: Command) -> Result<Proposed, ProposeError> {
        let leader = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state != ServerState::Leader).then_some(metrics.current_leader)
        };
        // A follower answers at once instead of queueing behind the leader-only batcher.
        if let Some(leader_hint) = leader {
            return Err(ProposeError::NotLeader { leader_hint });
        }
        self.inner.batcher.propose(command).await
    }

    /// Notes an AppendEntries (or heartbeat) about to be handled: one from a leader whose vote
    /// this node accepts resets the election watchdog. Called by the peer service on arrival,
    /// so a request whose caller gave up still counts (openraft handles it anyway).
    pub fn note_append_entries(&self, leader_vote: &Vote) {
        let accepted = {
            let metrics = self.inner.raft.metrics();
            let own_vote = metrics.borrow().vote;
            leader_vote.is_committed() && *leader_vote >= own_vote
        };
        if accepted {
            self.inner.leader_contact.touch();
        }
    }

    /// A peer client for the leader `leader`, dialled at its membership address.
    fn leader_client(
        &self,
        leader: NodeId,
    ) -> Result<pb::raft_client::RaftClient<tonic::transport::Channel>, String> {
        let address = self
            .node_address(leader)
            .ok_or_else(|| format!("leader {leader} is not in the membership"))?;
        self.inner
            .channels
            .client(leader, &address)
            .map_err(|e| e.to_string())
    }

    async fn forward(
        &self,
        leader: NodeId,
        command: &Command,
        deadline: Instant,
    ) -> Result<Proposed, String> {
        let mut client = self.leader_client(leader)?;
        let mut request = tonic::Request::new(pb::ForwardRequest {
            controller_uuid: self.inner.controller_uuid.clone(),
            command: Some(command.clone()),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let sent = Instant::now();
        let response = client
            .forward(request)
            .await
            .map_err(|s| format!("forwarding to leader {leader}: {}", s.message()))?
            .into_inner();
        metrics::histogram!("starling_raft_write_stage_seconds", "stage" => "forward")
            .record(sent.elapsed().as_secs_f64());
        Ok(Proposed {
            result: response.result.unwrap_or_default(),
            log_index: response.log_index,
        })
    }

    /// Waits until this node has applied `index` (read-your-writes after a forwarded proposal).
    pub async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        if self.inner.state.applied_index() >= index {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(PROPOSE_DEADLINE))
            .applied_index_at_least(Some(index), "read your write")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Unavailable {
                leader_hint: self.current_leader(),
                reason: format!("waiting to apply index {index}: {e}"),
            })
    }

    /// Waits at most `timeout` for this node to apply anything past `index`; returns the applied
    /// index then (unchanged on timeout).
    pub async fn wait_applied_past(&self, index: u64, timeout: Duration) -> u64 {
        self.inner.state.wait_applied_past(index, timeout).await
    }

    /// The index a linearizable read must wait for; only the leader answers.
    pub async fn read_index_local(&self) -> Result<u64, ProposeError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader_hint: f.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ProposeError::Unavailable {
                    leader_hint: Some(self.inner.node_id),
                    reason: e.to_string(),
                })
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// Waits until this node's applied state reflects every write committed before the call
    /// (read index from the leader, then wait to apply it), so a local read after it is
    /// linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        if starling_storage::planted::armed("stale-read") {
            // Planted bug: serve reads from whatever this node has applied.
            return Ok(());
        }
        let deadline = Instant::now() + PROPOSE_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        let mut leader_hint = None;
        let mut reason = String::from("no attempt made");
        while Instant::now() < deadline {
            let index = match self.read_index_local().await {
                Ok(index) => Some(index),
                Err(ProposeError::NotLeader {
                    leader_hint: Some(leader),
                }) if leader != self.inner.node_id => {
                    leader_hint = Some(leader);
                    match self.remote_read_index(leader, deadline).await {
                        Ok(index) => Some(index),
                        Err(e) => {
                            reason = e;
                            None
                        }
                    }
                }
                Err(e @ ProposeError::Fatal(_)) => return Err(e),
                Err(e) => {
                    reason = e.to_string();
                    None
                }
            };
            if let Some(index) = index {
                let timeout = deadline.saturating_duration_since(Instant::now());
                return self
                    .inner
                    .raft
                    .wait(Some(timeout))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map(|_| ())
                    .map_err(|e| ProposeError::Unavailable {
                        leader_hint,
                        reason: format!("waiting to apply index {index}: {e}"),
                    });
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(ProposeError::Unavailable {
            leader_hint,
            reason,
        })
    }

    async fn remote_read_index(&self, leader: NodeId, deadline: Instant) -> Result<u64, String> {
        let mut client = self.leader_client(leader)?;
        let mut request = tonic::Request::new(pb::ReadIndexRequest {
            controller_uuid: self.inner.controller_uuid.clone(),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        client
            .read_index(request)
            .await
            .map(|r| r.into_inner().read_index)
            .map_err(|s| format!("read index from leader {leader}: {}", s.message()))
    }

    /// The peer address of `node` in the current membership.
    pub fn node_address(&self, node: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// The current membership: voter ids and every node (voters and learners) with its address.
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, String>) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        (voters, nodes)
    }

    /// How long this node has been without its group, when it looks cut off: a leader whose
    /// quorum has not acknowledged it, or a follower that has not heard from a leader, for
    /// longer than `after`. `None` while in contact, in a single-voter group, or before any
    /// contact was expected (a node that has just started).
    pub fn cut_off_for(&self, after: Duration) -> Option<Duration> {
        let watch = self.inner.raft.metrics();
        let metrics = watch.borrow();
        if metrics.membership_config.membership().voter_ids().count() < 2 {
            return None;
        }
        let age = if metrics.current_leader == Some(self.inner.node_id) {
            Duration::from_millis(metrics.millis_since_quorum_ack?)
        } else {
            self.inner.leader_contact.last()?.elapsed()
        };
        (age > after).then_some(age)
    }

    /// The leader this node is in touch with: a leader whose quorum answered within the
    /// minimum election timeout (the lease), or a follower's leader heard from within it.
    /// openraft 0.9 keeps naming the last leader after contact is lost (only a campaign clears
    /// it, and a node that cannot reach a majority never campaigns), so readiness asks this.
    pub fn leader_in_contact(&self) -> Option<NodeId> {
        let lease = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let watch = self.inner.raft.metrics();
        let metrics = watch.borrow();
        let leader = metrics.current_leader?;
        let sole_voter = metrics.membership_config.membership().voter_ids().count() < 2;
        let in_contact = if leader == self.inner.node_id {
            sole_voter
                || metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| Duration::from_millis(ms) < lease)
        } else {
            self.inner
                .leader_contact
                .last()
                .is_some_and(|at| at.elapsed() < lease)
        };
        in_contact.then_some(leader)
    }

    /// The leader this node knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// This node's own view, as the `NodeStatus` peer RPC reports it.
    pub fn node_status(&self) -> pb::NodeStatusResponse {
        let metrics = self.inner.raft.metrics().borrow().clone();
        pb::NodeStatusResponse {
            node_id: self.inner.node_id,
            state: state_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            version: self.inner.version.clone(),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            load: None,
        }
    }

    /// Sets what this node reports as its load to peers that ask (`NodeStatus` with `with_load`).
    pub fn set_load_source(&self, source: LoadSource) {
        *self
            .inner
            .load_source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// This node's status with its load, when a load source is set.
    pub fn node_status_with_load(&self) -> pb::NodeStatusResponse {
        let source = self
            .inner
            .load_source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        pb::NodeStatusResponse {
            load: source.map(|source| source()),
            ..self.node_status()
        }
    }

    /// The leader changes this node saw since it started (the latest `LEADER_CHANGES_KEPT`),
    /// oldest first.
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        self.inner
            .leader_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Replication progress the leader knows: matched index per node. Empty on followers.
    pub fn matched_indexes(&self) -> BTreeMap<NodeId, u64> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics
            .replication
            .map(|r| {
                r.into_iter()
                    .map(|(id, matched)| (id, matched.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asks node `id` for its own status over the peer service, with its load when `with_load`.
    pub async fn peer_status(
        &self,
        id: NodeId,
        address: &str,
        timeout: Duration,
        with_load: bool,
    ) -> Result<pb::NodeStatusResponse, String> {
        if id == self.inner.node_id {
            return Ok(if with_load {
                self.node_status_with_load()
            } else {
                self.node_status()
            });
        }
        let mut client = self
            .inner
            .channels
            .client(id, address)
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(pb::NodeStatusRequest {
            controller_uuid: self.inner.controller_uuid.clone(),
            with_load,
        });
        request.set_timeout(timeout);
        client
            .node_status(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    /// Adds `id` as a learner (leader only) without waiting for it to catch up.
    pub async fn add_learner(&self, id: NodeId, address: &str) -> Result<(), ProposeError> {
        self.inner
            .raft
            .add_learner(id, Node::new(address), false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Promotes learners to voters or removes nodes (leader only); one joint change.
    pub async fn change_voters(
        &self,
        add: BTreeSet<NodeId>,
        remove: BTreeSet<NodeId>,
    ) -> Result<(), ProposeError> {
        let raft = &self.inner.raft;
        if !add.is_empty() {
            raft.change_membership(ChangeMembers::AddVoterIds(add), false)
                .await
                .map_err(membership_error)?;
        }
        if !remove.is_empty() {
            raft.change_membership(ChangeMembers::RemoveVoters(remove.clone()), false)
                .await
                .map_err(membership_error)?;
            raft.change_membership(ChangeMembers::RemoveNodes(remove), false)
                .await
                .map_err(membership_error)?;
        }
        Ok(())
    }

    /// Asks every other voter whether it would vote for this node (pre-vote); true when a
    /// majority of the voters, this node included, would.
    async fn pre_vote_round(&self) -> bool {
        let (voters, nodes) = self.membership();
        if !voters.contains(&self.inner.node_id) {
            return false;
        }
        let needed = voters.len() / 2 + 1;
        let last_log_index = self.node_status().last_log_index;
        let timeout = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let mut asks: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .filter(|id| **id != self.inner.node_id)
            .filter_map(|id| Some((*id, nodes.get(id)?.clone())))
            .map(|(id, address)| async move {
                let mut client = self.inner.channels.client(id, &address).ok()?;
                let mut request = tonic::Request::new(pb::PreVoteRequest {
                    controller_uuid: self.inner.controller_uuid.clone(),
                    candidate_id: self.inner.node_id,
                    last_log_index,
                });
                request.set_timeout(timeout);
                let answer = client.pre_vote(request).await.ok()?.into_inner();
                if !answer.granted {
                    debug!(voter = id, reason = %answer.reason, "pre-vote refused");
                }
                Some(answer.granted)
            })
            .collect();
        let mut granted = 1;
        if granted >= needed {
            return true;
        }
        while let Some(answer) = futures::StreamExt::next(&mut asks).await {
            granted += usize::from(answer == Some(true));
            if granted >= needed {
                return true;
            }
        }
        false
    }

    /// This node's answer to a pre-vote from `candidate`: granted unless it still hears from a
    /// leader (or is one with a live quorum) or its log is ahead of the candidate's.
    pub fn pre_vote_answer(&self, candidate: NodeId, last_log_index: u64) -> Result<(), String> {
        let lease = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let (state, my_last, quorum_ack_ms, leader) = {
            let watch = self.inner.raft.metrics();
            let m = watch.borrow();
            (
                m.state,
                m.last_log_index.unwrap_or(0),
                m.millis_since_quorum_ack,
                m.current_leader,
            )
        };
        if state == ServerState::Leader
            && quorum_ack_ms.is_some_and(|ms| Duration::from_millis(ms) < lease)
        {
            return Err("this node leads and its quorum answers".into());
        }
        if state != ServerState::Leader {
            if let Some(contact) = self.inner.leader_contact.last() {
                if contact.elapsed() < lease && leader != Some(candidate) {
                    return Err(format!(
                        "heard from leader {leader:?} {} ms ago",
                        contact.elapsed().as_millis()
                    ));
                }
            }
        }
        if my_last > last_log_index {
            return Err(format!(
                "log ahead of the candidate's ({my_last} > {last_log_index})"
            ));
        }
        Ok(())
    }

    /// Hands leadership to a caught-up voter before this node stops or leaves (etcd's
    /// move-leader): holds new proposals back, waits until a voter has every entry, tells it to
    /// campaign, and waits until this node hears from the new leader. Returns the new leader's
    /// id, or `None` when this node did not lead or no other voter could take over within
    /// `limit` (then leadership stays, and stopping costs the followers an election timeout).
    pub async fn transfer_leadership(&self, limit: Duration) -> Option<NodeId> {
        let me = self.inner.node_id;
        let deadline = Instant::now() + limit;
        let (voters, nodes) = self.membership();
        let others: Vec<NodeId> = voters.into_iter().filter(|id| *id != me).collect();
        if self.current_leader() != Some(me) || others.is_empty() {
            return None;
        }
        // A voter grants a vote only once its leader lease has run out (openraft 0.9). The
        // followers' lease is refreshed by every heartbeat, but this leader's own counts from
        // its election and is never refreshed: once it has led for the lease it grants the
        // target's vote, and the target wins with it. A leader elected less than a lease ago
        // (rare: a hand-off right after an election) waits for that first, still serving.
        let lease = Duration::from_millis(self.inner.timing.election_timeout_min_ms);
        let since = *self
            .inner
            .leading_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, since)) = since {
            let grants_at = since + lease + Duration::from_millis(5);
            tokio::time::sleep_until(grants_at.min(deadline)).await;
        }
        let held = self.inner.batcher.hold();
        let started = Instant::now();
        // Entries proposed just before the hold are still being appended: a target chosen now
        // could lack the last of them, and the other voters would refuse it their votes (its
        // log behind theirs) while this node had already stepped down for it.
        if tokio::time::timeout_at(deadline, held.drained())
            .await
            .is_err()
        {
            warn!(
                limit_ms = limit.as_millis() as u64,
                "proposals in flight did not finish in time; keeping leadership"
            );
            return None;
        }
        let mut watch = self.inner.raft.metrics();
        // Whom this node asked to campaign, and in which of its terms.
        let mut asked: Option<(NodeId, u64)> = None;
        loop {
            let (state, term, leader, last, matched) = {
                let m = watch.borrow_and_update();
                (
                    m.state,
                    m.current_term,
                    m.current_leader,
                    m.last_log_index.unwrap_or(0),
                    m.replication.clone(),
                )
            };
            // Elected again after the target failed (its campaign lost): ask afresh.
            if state == ServerState::Leader && asked.is_some_and(|(_, at)| term > at) {
                asked = None;
            }
            if state != ServerState::Leader {
                // Stepped down. Keep holding until the new leader's first AppendEntries names
                // it here, so what was held is forwarded to it at once instead of backing off
                // while no leader is known.
                if let Some(leader) = leader.filter(|l| *l != me) {
                    info!(
                        new_leader = leader,
                        took_ms = started.elapsed().as_millis() as u64,
                        "leadership handed over"
                    );
                    metrics::counter!("starling_raft_leader_transfers_total").increment(1);
                    return Some(leader);
                }
            } else if asked.is_none() {
                // The most caught-up voter, once it holds every entry.
                let target = others
                    .iter()
                    .filter_map(|id| {
                        let m = matched.as_ref()?.get(id)?.map_or(0, |l| l.index);
                        Some((m, *id))
                    })
                    .max()
                    .filter(|(m, _)| *m >= last)
                    .map(|(_, id)| id);
                if let Some(target) = target {
                    match self.ask_to_campaign(target, &nodes, last).await {
                        Ok(()) => asked = Some((target, term)),
                        Err(e) => warn!(target, error = %e, "leader hand-off refused"),
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Wake on any change of the node's metrics (a follower's ack, a new vote or leader),
            // and at least every few milliseconds to retry a refused hand-off.
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(5));
            if let Ok(Err(_)) = tokio::time::timeout(wait, watch.changed()).await {
                return None; // the node shut down
            }
        }
        if self.current_leader() == Some(me) {
            warn!(
                limit_ms = limit.as_millis() as u64,
                "no voter took over leadership in time; keeping it"
            );
            return None;
        }
        let asked = asked.map(|(target, _)| target);
        warn!(
            limit_ms = limit.as_millis() as u64,
            ?asked,
            "stepped down, but no new leader made itself known in time"
        );
        asked
    }

    async fn ask_to_campaign(
        &self,
        target: NodeId,
        nodes: &BTreeMap<NodeId, String>,
        last_log_index: u64,
    ) -> Result<(), String> {
        let address = nodes
            .get(&target)
            .ok_or_else(|| format!("node {target} has no address"))?;
        let mut client = self
            .inner
            .channels
            .client(target, address)
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(pb::TransferLeaderRequest {
            controller_uuid: self.inner.controller_uuid.clone(),
            leader_id: self.inner.node_id,
            leader_last_log_index: last_log_index,
        });
        request.set_timeout(Duration::from_millis(
            self.inner.timing.election_timeout_min_ms,
        ));
        client
            .transfer_leader(request)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    }

    /// Removes this node from the group while it leads: hands leadership over first (so the
    /// group needs no election), then asks the new leader to remove it. A node that does not
    /// lead, or finds no voter to take over, removes itself as any leader would.
    pub async fn remove_self_handing_over(&self, limit: Duration) -> Result<(), ProposeError> {
        let me = self.inner.node_id;
        let Some(leader) = self.transfer_leadership(limit).await else {
            return self
                .change_voters(BTreeSet::new(), BTreeSet::from([me]))
                .await;
        };
        let mut client =
            self.leader_client(leader)
                .map_err(|reason| ProposeError::Unavailable {
                    leader_hint: Some(leader),
                    reason,
                })?;
        let mut request = tonic::Request::new(pb::RemoveNodeAtLeaderRequest {
            controller_uuid: self.inner.controller_uuid.clone(),
            node_id: me,
        });
        request.set_timeout(PROPOSE_DEADLINE);
        client
            .remove_node_at_leader(request)
            .await
            .map(|_| ())
            .map_err(|s| ProposeError::Unavailable {
                leader_hint: Some(leader),
                reason: format!("removal at the new leader {leader}: {}", s.message()),
            })
    }

    /// Campaigns at once because the leader `leader` hands leadership over; refused when this
    /// node is not a voter follower or misses entries up to `leader_last_log_index`.
    pub async fn campaign_for_transfer(
        &self,
        leader: NodeId,
        leader_last_log_index: u64,
    ) -> Result<(), String> {
        let (state, last) = {
            let watch = self.inner.raft.metrics();
            let m = watch.borrow();
            (m.state, m.last_log_index.unwrap_or(0))
        };
        let (voters, _) = self.membership();
        if state != ServerState::Follower || !voters.contains(&self.inner.node_id) {
            return Err(format!(
                "node {} is not a voter follower",
                self.inner.node_id
            ));
        }
        if last < leader_last_log_index {
            return Err(format!(
                "node {} holds entries up to {last}, not {leader_last_log_index}",
                self.inner.node_id
            ));
        }
        info!(from = leader, "leader hands over; campaigning");
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops the Raft node (and the proposal batcher and election watchdog).
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft shutdown failed");
        }
    }

    fn spawn_metrics_exporter(&self) {
        let mut rx = self.inner.raft.metrics();
        let node_id = self.inner.node_id;
        let leading_since = self.inner.leading_since.clone();
        // Weak: the exporter must not keep a shut-down node's state alive.
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut last_leader = None;
            loop {
                {
                    let m = rx.borrow_and_update().clone();
                    {
                        let mut since = leading_since.lock().unwrap_or_else(|e| e.into_inner());
                        match *since {
                            _ if m.state != ServerState::Leader => *since = None,
                            Some((term, _)) if term == m.current_term => {}
                            _ => *since = Some((m.current_term, Instant::now())),
                        }
                    }
                    metrics::gauge!("starling_raft_term").set(m.current_term as f64);
                    metrics::gauge!("starling_raft_leader_id")
                        .set(m.current_leader.map(|l| l as f64).unwrap_or(-1.0));
                    metrics::gauge!("starling_raft_is_leader").set(
                        if m.current_leader == Some(node_id) {
                            1.0
                        } else {
                            0.0
                        },
                    );
                    metrics::gauge!("starling_raft_last_log_index")
                        .set(m.last_log_index.unwrap_or(0) as f64);
                    metrics::gauge!("starling_raft_applied_index")
                        .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
                    if let Some(leader) = m.current_leader.filter(|l| Some(*l) != last_leader) {
                        metrics::counter!("starling_raft_leader_changes_total").increment(1);
                        info!(leader, term = m.current_term, "leader changed");
                        if let Some(inner) = inner.upgrade() {
                            let mut changes = inner
                                .leader_changes
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            if changes.len() == LEADER_CHANGES_KEPT {
                                changes.pop_front();
                            }
                            changes.push_back(LeaderChange {
                                unix_ms: unix_ms_now(),
                                term: m.current_term,
                                leader,
                            });
                        }
                    }
                    last_leader = m.current_leader;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn fatal(e: impl std::fmt::Display) -> ProposeError {
    ProposeError::Fatal(e.to_string())
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> ProposeError {
    crate::batcher::client_write_error(&e)
}
