//! `ElectionWatchdog`: the only thing that starts elections. openraft 0.9's own election timer is
//! off (`enable_elect = false`): it draws one random timeout per node for its whole life (two
//! survivors can split the vote again and again) and campaigns without asking first (a follower
//! that was paused for a second deposes a healthy leader on waking up).
//!
//! A voter follower campaigns once it has accepted no AppendEntries for its election timeout,
//! drawn afresh in `[election_timeout_min, election_timeout_max]` for every attempt; and only
//! after a pre-vote: a majority of the voters (itself included) must answer that they too have
//! lost the leader for at least `election_timeout_min` (openraft's leader lease, after which they
//! grant votes) and that its log is not behind theirs. So a node that merely woke up, or whose log
//! is behind, does not raise the term; a failed attempt is retried after another random draw.
//! A healthy leader is never disturbed (its heartbeats keep the contact fresh); learners and
//! leaders never campaign.
//!
//! The decision (`Schedule::step`) is pure; the task only observes, asks and acts.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::type_config::{NodeId, Raft, Vote};

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
    /// The shortest election timeout; also openraft's leader lease (voters refuse votes for this
    /// long after their last leader contact).
    pub timeout_min: Duration,
    /// The longest election timeout.
    pub timeout_max: Duration,
    /// The leader heartbeat period; the watchdog looks at the clock four times per heartbeat.
    pub heartbeat: Duration,
}

impl WatchdogTiming {
    /// How often the task looks at the clock.
    fn tick(&self) -> Duration {
        (self.heartbeat / 4).max(Duration::from_millis(5))
    }

    /// One election timeout, drawn afresh for every attempt.
    fn draw(&self, rng: &mut impl Rng) -> Duration {
        if self.timeout_max <= self.timeout_min {
            return self.timeout_min;
        }
        rng.gen_range(self.timeout_min..=self.timeout_max)
    }
}

/// What the watchdog sees of its node.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    /// A voter that is not the leader (a follower or a candidate).
    pub campaigning_voter: bool,
    /// The group's only voter: it campaigns at once (it has nobody to hear from or ask).
    pub sole_voter: bool,
    /// The last accepted leader contact.
    pub contact: Option<Instant>,
    /// The node's vote.
    pub vote: Vote,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Wait,
    /// Ask the voters (pre-vote) and campaign if a majority agrees.
    Campaign,
}

/// When the next election attempt is due.
#[derive(Debug)]
pub(crate) struct Schedule {
    node_id: NodeId,
    timing: WatchdogTiming,
    next_attempt: Instant,
    seen_contact: Option<Instant>,
    seen_vote: Option<Vote>,
    /// A sole voter's next attempt, one heartbeat after the last.
    sole_retry_at: Option<Instant>,
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
            next_attempt: now + timing.draw(rng),
            seen_contact: None,
            seen_vote: None,
            sole_retry_at: None,
        }
    }

    /// The pure decision: given what the node looks like at `now`, campaign or wait.
    pub(crate) fn step(&mut self, seen: &Observation, now: Instant, rng: &mut impl Rng) -> Step {
        if !seen.campaigning_voter {
            // A leader or a learner; when it becomes a follower the timeout counts from then.
            self.next_attempt = now + self.timing.draw(rng);
            self.seen_contact = seen.contact;
            self.seen_vote = Some(seen.vote);
            self.sole_retry_at = None;
            return Step::Wait;
        }
        if seen.sole_voter {
            if self.sole_retry_at.is_some_and(|at| now < at) {
                return Step::Wait;
            }
            self.sole_retry_at = Some(now + self.timing.heartbeat);
            return Step::Campaign;
        }
        if seen.contact > self.seen_contact {
            self.seen_contact = seen.contact;
            if let Some(contact) = seen.contact {
                self.next_attempt = contact + self.timing.draw(rng);
            }
        }
        if self.seen_vote != Some(seen.vote) {
            let changed = self.seen_vote.is_some();
            self.seen_vote = Some(seen.vote);
            // Another candidate is campaigning (this node granted it, or learned its higher
            // term): give it a timeout to win. This node's own candidacy changes nothing here.
            if changed && seen.vote.leader_id().voted_for() != Some(self.node_id) {
                self.next_attempt = self.next_attempt.max(now + self.timing.draw(rng));
            }
        }
        if now >= self.next_attempt {
            // Whatever comes of it, the next attempt waits for a fresh draw.
            self.next_attempt = now + self.timing.draw(rng);
            return Step::Campaign;
        }
        Step::Wait
    }
}

/// Asks every other voter whether it would vote for this node; true when a majority of the
/// voters (this node included) would.
pub(crate) type PreVote = Arc<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// Starts the watchdog of `raft`; it stops when `stop` is cancelled or the node shuts down.
pub(crate) fn spawn(
    raft: Raft,
    node_id: NodeId,
    contact: Arc<LeaderContact>,
    timing: WatchdogTiming,
    pre_vote: PreVote,
    stop: CancellationToken,
) {
    tokio::spawn(run(raft, node_id, contact, timing, pre_vote, stop));
}

#[instrument(skip_all, fields(node_id))]
async fn run(
    raft: Raft,
    node_id: NodeId,
    contact: Arc<LeaderContact>,
    timing: WatchdogTiming,
    pre_vote: PreVote,
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
            let voters = m
                .membership_config
                .membership()
                .voter_ids()
                .collect::<Vec<_>>();
            Observation {
                campaigning_voter: matches!(
                    m.state,
                    ServerState::Follower | ServerState::Candidate
                ) && voters.contains(&node_id),
                sole_voter: voters == [node_id],
                contact: contact.last(),
                vote: m.vote,
            }
        };
        if schedule.step(&seen, Instant::now(), &mut rng) != Step::Campaign {
            continue;
        }
        let since_contact_ms = seen.contact.map(|c| c.elapsed().as_millis() as u64);
        let granted = tokio::select! {
            () = stop.cancelled() => break,
            granted = bounded(pre_vote(), timing.timeout_min) => granted,
        };
        // A leader may have spoken while the voters were asked.
        if !granted || contact.last() > seen.contact {
            debug!(
                since_contact_ms,
                "pre-vote not granted by a majority; not campaigning"
            );
            metrics::counter!("starling_raft_prevotes_refused_total").increment(1);
            continue;
        }
        info!(
            term = seen.vote.leader_id().term,
            since_contact_ms, "no leader contact and a majority agrees; starting an election"
        );
        metrics::counter!("starling_raft_watchdog_elections_total").increment(1);
        if let Err(e) = raft.trigger().elect().await {
            warn!(error = %e, "election trigger refused; watchdog stops");
            break;
        }
    }
}

/// `future`'s answer, or false once `limit` has passed.
async fn bounded(future: impl Future<Output = bool>, limit: Duration) -> bool {
    tokio::time::timeout(limit, future).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(400);
    const MAX: Duration = Duration::from_millis(700);
    const HEARTBEAT: Duration = Duration::from_millis(100);

    fn setup() -> (Schedule, Instant, rand::rngs::StdRng) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let timing = WatchdogTiming {
            timeout_min: MIN,
            timeout_max: MAX,
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
            sole_voter: false,
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
    fn campaigns_within_the_timeout_range_and_redraws_after_each_attempt() {
        let (mut schedule, start, mut rng) = setup();
        let seen = follower(Some(start), 1, 1);
        assert_eq!(schedule.step(&seen, start, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&seen, start + MIN - Duration::from_millis(1), &mut rng),
            Step::Wait
        );
        let mut attempts = Vec::new();
        let mut now = start;
        while attempts.len() < 50 {
            now += HEARTBEAT / 4;
            if schedule.step(&seen, now, &mut rng) == Step::Campaign {
                attempts.push(now);
            }
        }
        // The first attempt lies in [min, max] after the contact (plus one tick of polling)...
        assert!(attempts[0] >= start + MIN && attempts[0] <= start + MAX + HEARTBEAT / 4);
        // ...and every retry waits a fresh draw: the gaps vary and stay in the range.
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g >= MIN && *g <= MAX + HEARTBEAT / 4));
        assert!(gaps.iter().any(|g| *g != gaps[0]), "the same draw forever");
    }

    #[test]
    fn a_new_leader_contact_rearms_it() {
        let (mut schedule, start, mut rng) = setup();
        let seen = follower(Some(start), 1, 1);
        assert_eq!(schedule.step(&seen, start + MAX, &mut rng), Step::Campaign);
        let later = start + MAX * 2;
        let seen = follower(Some(later), 9, 3);
        assert_eq!(schedule.step(&seen, later, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&seen, later + MIN - Duration::from_millis(1), &mut rng),
            Step::Wait
        );
        assert_eq!(schedule.step(&seen, later + MAX, &mut rng), Step::Campaign);
    }

    #[test]
    fn a_sole_voter_campaigns_at_once_and_then_every_heartbeat() {
        let (mut schedule, start, mut rng) = setup();
        let mut seen = follower(None, 1, 1);
        seen.sole_voter = true;
        assert_eq!(schedule.step(&seen, start, &mut rng), Step::Campaign);
        assert_eq!(
            schedule.step(&seen, start + HEARTBEAT / 2, &mut rng),
            Step::Wait
        );
        assert_eq!(
            schedule.step(&seen, start + HEARTBEAT, &mut rng),
            Step::Campaign
        );
    }

    #[test]
    fn never_fires_on_leaders_or_learners() {
        let (mut schedule, start, mut rng) = setup();
        for beat in 0..100u32 {
            let now = start + MAX * beat;
            let seen = Observation {
                campaigning_voter: false,
                sole_voter: false,
                contact: None,
                vote: Vote::new(1, 2),
            };
            assert_eq!(schedule.step(&seen, now, &mut rng), Step::Wait);
        }
    }

    #[test]
    fn granting_another_candidate_gives_it_a_timeout_to_win() {
        let (mut schedule, start, mut rng) = setup();
        assert_eq!(
            schedule.step(&follower(Some(start), 1, 1), start, &mut rng),
            Step::Wait
        );
        // Just before this node's own attempt could be due, it grants node 3's candidacy.
        let grant_at = start + MIN - Duration::from_millis(1);
        let granted = Observation {
            campaigning_voter: true,
            sole_voter: false,
            contact: Some(start),
            vote: Vote::new(2, 3),
        };
        assert_eq!(schedule.step(&granted, grant_at, &mut rng), Step::Wait);
        assert_eq!(
            schedule.step(&granted, grant_at + HEARTBEAT, &mut rng),
            Step::Wait
        );
        assert_eq!(
            schedule.step(
                &granted,
                grant_at + MIN - Duration::from_millis(1),
                &mut rng
            ),
            Step::Wait
        );
        assert_eq!(
            schedule.step(&granted, grant_at + MAX, &mut rng),
            Step::Campaign
        );
    }
}
