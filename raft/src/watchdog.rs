//! `ElectionWatchdog`: starts an election as soon as the leader's lease has run out. openraft 0.9
//! makes a follower with a committed vote wait `leader_lease` (= election timeout max) PLUS a
//! random election timeout after the last leader contact, while the other voters already grant
//! votes once their own lease expired. So a voter follower that has accepted no AppendEntries for
//! `election_timeout_max + jitter` calls `raft.trigger().elect()`; a healthy leader is never
//! disturbed (its heartbeats keep the contact fresh), learners and leaders never campaign.
//! It makes at most `ATTEMPTS_MAX` attempts per lost leader: a node whose log is behind can never
//! win, and retrying every heartbeat would drive the term up faster than the node that can win
//! catches up with it (a livelock). After that, openraft's own randomized election timer retries.
//!
//! The decision (`Schedule::step`) is pure; the task only observes and acts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::type_config::{NodeId, Raft, Vote};

/// Elections the watchdog starts per lost leader; openraft's own timer takes over after them.
const ATTEMPTS_MAX: u32 = 2;

/// When this node last accepted an AppendEntries (or heartbeat) from a leader.
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    // std Mutex: nothing awaits while it is held.
    last: Mutex<Option<Instant>>,
}

impl LeaderContact {
    /// Records a contact now.
    pub(crate) fn touch(&self) {
        *self.last.lock().expect("leader contact poisoned") = Some(Instant::now());
    }

    pub(crate) fn last(&self) -> Option<Instant> {
        *self.last.lock().expect("leader contact poisoned")
    }
}

/// The watchdog's timing, from `RaftTiming`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchdogTiming {
    /// openraft's leader lease: the election timeout max.
    pub lease: Duration,
    /// The leader heartbeat period; jitter and retries are fractions of it.
    pub heartbeat: Duration,
}

impl WatchdogTiming {
    /// How often the task looks at the clock.
    fn tick(&self) -> Duration {
        (self.heartbeat / 4).max(Duration::from_millis(5))
    }

    /// Spreads the followers' first attempts over half a heartbeat, so one usually asks first.
    fn first_attempt_jitter(&self, rng: &mut impl Rng) -> Duration {
        self.heartbeat.mul_f64(rng.gen_range(0.0..0.5))
    }

    /// After an attempt without a leader (split vote, or a voter whose lease had not quite
    /// expired): try again after one to two heartbeats.
    fn retry_delay(&self, rng: &mut impl Rng) -> Duration {
        self.heartbeat.mul_f64(rng.gen_range(1.0..2.0))
    }
}

/// What the watchdog sees of its node.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    /// A voter that is not the leader (a follower or a candidate).
    pub campaigning_voter: bool,
    /// The last accepted leader contact.
    pub contact: Option<Instant>,
    /// The node's vote.
    pub vote: Vote,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Wait,
    Elect,
}

/// When the next election attempt is due.
#[derive(Debug)]
pub(crate) struct Schedule {
    node_id: NodeId,
    timing: WatchdogTiming,
    next_attempt: Instant,
    seen_contact: Option<Instant>,
    seen_vote: Option<Vote>,
    attempts_left: u32,
}

impl Schedule {
    pub(crate) fn new(
        node_id: NodeId,
        timing: WatchdogTiming,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        Schedule {
            node_id,
            timing,
            next_attempt: now + timing.lease + timing.first_attempt_jitter(rng),
            seen_contact: None,
            seen_vote: None,
            attempts_left: ATTEMPTS_MAX,
        }
    }

    /// The pure decision: given what the node looks like at `now`, elect or wait.
    pub(crate) fn step(&mut self, seen: &Observation, now: Instant, rng: &mut impl Rng) -> Step {
        let lease = self.timing.lease;
        if !seen.campaigning_voter {
            // A leader or a learner; when it becomes a follower the lease counts from then.
            self.next_attempt = now + lease + self.timing.first_attempt_jitter(rng);
            self.seen_contact = seen.contact;
            self.seen_vote = Some(seen.vote);
            self.attempts_left = ATTEMPTS_MAX;
            return Step::Wait;
        }
        if seen.contact > self.seen_contact {
            self.seen_contact = seen.contact;
            self.attempts_left = ATTEMPTS_MAX;
            if let Some(contact) = seen.contact {
                self.next_attempt = contact + lease + self.timing.first_attempt_jitter(rng);
            }
        }
        if self.seen_vote != Some(seen.vote) {
            self.seen_vote = Some(seen.vote);
            // Another candidate is campaigning (this node granted it, or learned its higher
            // term): give it a lease to win. This node's own candidacy changes nothing here.
            if seen.vote.leader_id().voted_for() != Some(self.node_id) {
                let after_grant = now + lease + self.timing.first_attempt_jitter(rng);
                self.next_attempt = self.next_attempt.max(after_grant);
            }
        }
        if now >= self.next_attempt && self.attempts_left > 0 {
            self.attempts_left -= 1;
            self.next_attempt = now + self.timing.retry_delay(rng);
            return Step::Elect;
        }
        Step::Wait
    }
}

/// Starts the watchdog of `raft`; it stops when `stop` is cancelled or the node shuts down.
pub(crate) fn spawn(
    raft: Raft,
    node_id: NodeId,
    contact: Arc<LeaderContact>,
    timing: WatchdogTiming,
    stop: CancellationToken,
) {
    tokio::spawn(run(raft, node_id, contact, timing, stop));
}

#[instrument(skip_all, fields(node_id))]
async fn run(
    raft: Raft,
    node_id: NodeId,
    contact: Arc<LeaderContact>,
    timing: WatchdogTiming,
    stop: CancellationToken,
) {
    let metrics = raft.metrics();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut schedule = Schedule::new(node_id, timing, Instant::now(), &mut rng);
    let mut ticker = tokio::time::interval(timing.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let seen = {
            let m = metrics.borrow();
            if m.state == ServerState::Shutdown || m.running_state.is_err() {
                break;
            }
            Observation {
                campaigning_voter: matches!(
                    m.state,
                    ServerState::Follower | ServerState::Candidate
                ) && m.membership_config.membership().voter_ids().count() > 1
                    && m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|id| id == node_id),
                contact: contact.last(),
                vote: m.vote,
            }
        };
        if schedule.step(&seen, Instant::now(), &mut rng) == Step::Elect {
            info!(
                term = seen.vote.leader_id().term,
                since_leader_contact_ms = seen.contact.map(|c| c.elapsed().as_millis() as u64),
                "leader lease expired without contact; starting an election"
            );
            metrics::counter!("starling_raft_watchdog_elections_total").increment(1);
            if let Err(e) = raft.trigger().elect().await {
                warn!(error = %e, "election trigger refused; watchdog stops");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1500);
    const HEARTBEAT: Duration = Duration::from_millis(150);

    fn setup() -> (Schedule, Instant, rand::rngs::StdRng) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let timing = WatchdogTiming {
            lease: LEASE,
            heartbeat: HEARTBEAT,
        };
        let start = Instant::now();
        (Schedule::new(2, timing, start, &mut rng), start, rng)
    }

    fn follower(contact: Option<Instant>, term: u64, voted_for: NodeId) -> Observation {
        let mut vote = Vote::new(term, voted_for);
        vote.commit();
        Observation {
            campaigning_voter: true,
            contact,
            vote,
        }
    }

    #[test]
    fn heartbeats_keep_it_quiet() {
        let (mut schedule, start, mut rng) = setup();
        for beat in 0..100u32 {
            let now = start + HEARTBEAT * beat;
            let seen = follower(Some(now), 1, 1);
            assert_eq!(schedule.step(&seen, now, &mut rng), Step::Wait);
        }
    }

    #[test]
    fn fires_once_the_lease_expired_and_retries_within_two_heartbeats() {
        let (mut schedule, start, mut rng) = setup();
        let seen = follower(Some(start), 1, 1);
        assert_eq!(schedule.step(&seen, start, &mut rng), Step::Wait);
        assert_eq!(schedule.step(&seen, start + LEASE, &mut rng), Step::Wait);
        let due = start + LEASE + HEARTBEAT / 2;
        assert_eq!(schedule.step(&seen, due, &mut rng), Step::Elect);
        // Its own candidacy (term 2, voted for itself) does not push the retry out.
        let mut candidacy = seen.clone();
        candidacy.vote = Vote::new(2, 2);
        assert_eq!(schedule.step(&candidacy, due, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&candidacy, due + HEARTBEAT * 2, &mut rng),
            Step::Elect
        );
    }

    #[test]
    fn gives_up_after_bounded_attempts_until_a_leader_is_heard() {
        let (mut schedule, start, mut rng) = setup();
        let seen = follower(Some(start), 1, 1);
        let mut elections = 0;
        for tick in 0..1000u32 {
            let now = start + HEARTBEAT / 4 * tick;
            if schedule.step(&seen, now, &mut rng) == Step::Elect {
                elections += 1;
            }
        }
        assert_eq!(elections, ATTEMPTS_MAX);
        // A new leader's contact re-arms it.
        let later = start + HEARTBEAT * 300;
        let seen = follower(Some(later), 9, 3);
        assert_eq!(schedule.step(&seen, later, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&seen, later + LEASE + HEARTBEAT / 2, &mut rng),
            Step::Elect
        );
    }

    #[test]
    fn never_fires_on_leaders_or_learners() {
        let (mut schedule, start, mut rng) = setup();
        for beat in 0..100u32 {
            let now = start + LEASE * beat;
            let seen = Observation {
                campaigning_voter: false,
                contact: None,
                vote: Vote::new(1, 2),
            };
            assert_eq!(schedule.step(&seen, now, &mut rng), Step::Wait);
        }
    }

    #[test]
    fn granting_another_candidate_gives_it_a_lease() {
        let (mut schedule, start, mut rng) = setup();
        assert_eq!(
            schedule.step(&follower(Some(start), 1, 1), start, &mut rng),
            Step::Wait
        );
        // Just before this node's own attempt, it grants node 3's candidacy.
        let grant_at = start + LEASE;
        let granted = Observation {
            campaigning_voter: true,
            contact: Some(start),
            vote: Vote::new(2, 3),
        };
        assert_eq!(schedule.step(&granted, grant_at, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&granted, grant_at + HEARTBEAT, &mut rng),
            Step::Wait
        );
        assert_eq!(
            schedule.step(&granted, grant_at + LEASE + HEARTBEAT, &mut rng),
            Step::Elect
        );
    }
}
