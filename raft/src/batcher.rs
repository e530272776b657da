//! `ProposalBatcher`: concurrent proposals on the leader share Raft entries. Every append costs an
//! fdatasync, so proposals are queued (bounded) and one task drains whatever is queued, up to a
//! count and byte bound, into ONE entry carrying a `CommandBatch`. Only a few entries are in flight
//! at once, so under load the queue fills while they commit and the next entry carries more; when
//! idle, a lone command goes out at once (nothing waits for company).

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use starling_proto::command::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument};

use crate::handle::{ProposeError, Proposed};
use crate::stages::WriteTimeline;
use crate::type_config::{Raft, Request};

/// Bounds on proposal batching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Proposals queued for the next entries; a full queue makes proposers wait.
    pub queued_commands_max: usize,
    /// Most commands in one entry.
    pub batch_commands_max: usize,
    /// Most encoded command bytes in one entry (a larger lone command still goes alone).
    pub batch_bytes_max: usize,
    /// Entries proposed and not yet committed and applied.
    pub batches_in_flight_max: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            queued_commands_max: 4096,
            batch_commands_max: 1000,
            // Small enough that `max_payload_entries` entries cross to a follower, are stored
            // and fsynced well within the AppendEntries timeout (one heartbeat).
            batch_bytes_max: 256 * 1024,
            batches_in_flight_max: 2,
        }
    }
}

/// One queued proposal and where its outcome goes.
struct Proposal {
    command: Command,
    encoded_bytes: usize,
    queued: Instant,
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
}

/// The proposer side of the batching task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ProposalBatcher {
    queue: mpsc::Sender<Proposal>,
    gate: Arc<watch::Sender<Gate>>,
}

/// Whether proposals may go to Raft, and how many entries are there and not yet answered. One
/// value, changed under the watch's lock, so a hold and a batch leaving cannot cross unseen.
#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    /// Holds alive; while any is, queued proposals wait (a leadership hand-off is under way).
    holds: usize,
    /// Entries handed to openraft whose `client_write` has not returned.
    in_flight: usize,
}

/// Holds proposals back until dropped.
pub(crate) struct Hold(Arc<watch::Sender<Gate>>);

impl Hold {
    /// Waits until every entry proposed before the hold has been answered (committed and
    /// applied, or failed): from then on this node's log grows only by what Raft itself adds.
    pub(crate) async fn drained(&self) {
        let mut gate = self.0.subscribe();
        // The sender lives as long as this hold, so the wait cannot fail.
        let _ = gate.wait_for(|g| g.in_flight == 0).await.map(drop);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.send_modify(|g| g.holds -= 1);
    }
}

/// What a batch's entry needs besides the proposals: the Raft node and where its moments are.
#[derive(Clone)]
struct Writer {
    raft: Raft,
    timeline: Arc<WriteTimeline>,
}

impl ProposalBatcher {
    /// Starts the batching task for `raft`; it stops when `stop` is cancelled or every
    /// `ProposalBatcher` is dropped, after answering what it already took.
    pub(crate) fn spawn(
        raft: Raft,
        timeline: Arc<WriteTimeline>,
        limits: BatchLimits,
        stop: CancellationToken,
    ) -> Self {
        assert!(limits.queued_commands_max > 0 && limits.batch_commands_max > 0);
        assert!(limits.batches_in_flight_max > 0);
        let (queue, rx) = mpsc::channel(limits.queued_commands_max);
        let gate = Arc::new(watch::Sender::new(Gate::default()));
        tokio::spawn(run(
            Writer { raft, timeline },
            rx,
            gate.clone(),
            limits,
            stop,
        ));
        ProposalBatcher { queue, gate }
    }

    /// Holds queued proposals back (they are not handed to Raft) until the guard is dropped.
    /// Entries already handed to Raft still complete; `Hold::drained` waits for them.
    pub(crate) fn hold(&self) -> Hold {
        self.gate.send_modify(|g| g.holds += 1);
        Hold(self.gate.clone())
    }

    /// Proposes `command` in the next entry with room; `NotLeader` when this node does not lead.
    pub(crate) async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        let proposal = Proposal {
            encoded_bytes: command.encoded_len(),
            command,
            queued: Instant::now(),
            reply,
        };
        self.queue.send(proposal).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ProposeError {
    ProposeError::Fatal("the proposal batcher stopped (raft node shut down)".into())
}

#[instrument(skip_all)]
async fn run(
    writer: Writer,
    mut queue: mpsc::Receiver<Proposal>,
    gate: Arc<watch::Sender<Gate>>,
    limits: BatchLimits,
    stop: CancellationToken,
) {
    let mut open = gate.subscribe();
    let mut in_flight = FuturesUnordered::new();
    // A proposal that did not fit the previous batch; it opens the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        if in_flight.len() >= limits.batches_in_flight_max {
            in_flight.next().await;
            continue;
        }
        let first = match carried.take() {
            Some(first) => first,
            None => tokio::select! {
                () = stop.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => break,
                },
            },
        };
        // Counted in flight in the same step that finds the gate open, so a hold taken at the
        // same moment either stops this batch or sees it in flight.
        while !gate.send_if_modified(|g| {
            let open = g.holds == 0;
            g.in_flight += usize::from(open);
            open
        }) {
            // Entries already in flight still finish meanwhile (a hold waits for them).
            let stopped = tokio::select! {
                () = stop.cancelled() => true,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => false,
                _ = open.wait_for(|g| g.holds == 0) => false,
            };
            if stopped {
                return answer_in_flight(in_flight).await;
            }
        }
        let batch = collect_batch(first, &mut queue, &mut carried, &limits);
        let (entry_writer, entry_gate) = (writer.clone(), gate.clone());
        in_flight.push(async move {
            write_batch(entry_writer, batch).await;
            entry_gate.send_modify(|g| g.in_flight -= 1);
        });
    }
    answer_in_flight(in_flight).await;
}

/// Answers what was taken; what is still queued is answered by dropping it (`stopped`).
async fn answer_in_flight<F: std::future::Future<Output = ()>>(mut in_flight: FuturesUnordered<F>) {
    while in_flight.next().await.is_some() {}
    debug!("proposal batcher stopped");
}

/// `first` and whatever is already queued, up to the limits; never waits. A proposal that would
/// overflow the byte bound is left in `carried` for the next batch.
fn collect_batch(
    first: Proposal,
    queue: &mut mpsc::Receiver<Proposal>,
    carried: &mut Option<Proposal>,
    limits: &BatchLimits,
) -> Vec<Proposal> {
    let mut bytes = first.encoded_bytes;
    let mut batch = vec![first];
    while batch.len() < limits.batch_commands_max {
        let Ok(next) = queue.try_recv() else {
            break;
        };
        if bytes + next.encoded_bytes > limits.batch_bytes_max {
            *carried = Some(next);
            break;
        }
        bytes += next.encoded_bytes;
        batch.push(next);
    }
    batch
}

/// Proposes `batch` as one entry (a lone command as a plain command entry) and answers each
/// proposer with its own result.
async fn write_batch(writer: Writer, mut batch: Vec<Proposal>) {
    let n_commands = batch.len();
    metrics::counter!("starling_raft_proposal_entries_total").increment(1);
    metrics::histogram!("starling_raft_proposal_batch_commands").record(n_commands as f64);
    let request = if n_commands == 1 {
        Request::command(std::mem::take(&mut batch[0].command))
    } else {
        Request::batch(
            batch
                .iter_mut()
                .map(|p| std::mem::take(&mut p.command))
                .collect(),
        )
    };
    let proposed = Instant::now();
    let outcome = writer.raft.client_write(request).await;
    if let Ok(response) = &outcome {
        let answered = Instant::now();
        let voters = writer
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        for proposal in &batch {
            writer.timeline.observe_write(
                response.log_id.index,
                proposal.queued,
                proposed,
                answered,
                voters / 2,
            );
        }
    }
    match outcome {
        Ok(response) if n_commands == 1 => {
            let done = Proposed {
                result: response.data.0,
                log_index: response.log_id.index,
            };
            let _ = batch.pop().expect("one proposal").reply.send(Ok(done));
        }
        Ok(response) => {
            let log_index = response.log_id.index;
            let results = response.data.0.batch_results;
            if results.len() != n_commands {
                // Only a state machine that does not know batches answers like this.
                let why = format!(
                    "a batch of {n_commands} commands at index {log_index} applied as {} results",
                    results.len()
                );
                for proposal in batch {
                    let _ = proposal.reply.send(Err(ProposeError::Fatal(why.clone())));
                }
                return;
            }
            for (proposal, result) in batch.into_iter().zip(results) {
                let _ = proposal.reply.send(Ok(Proposed { result, log_index }));
            }
        }
        Err(e) => {
            for proposal in batch {
                let _ = proposal.reply.send(Err(client_write_error(&e)));
            }
        }
    }
}

/// The proposer's view of a failed `client_write`.
pub(crate) fn client_write_error(
    e: &RaftError<crate::NodeId, ClientWriteError<crate::NodeId, crate::Node>>,
) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader_hint: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Unavailable {
                leader_hint: None,
                reason: e.to_string(),
            }
        }
        RaftError::Fatal(e) => ProposeError::Fatal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(bytes: usize) -> (Proposal, oneshot::Receiver<Result<Proposed, ProposeError>>) {
        let (reply, rx) = oneshot::channel();
        let command = Command {
            request_id: "r".into(),
            ..Default::default()
        };
        (
            Proposal {
                command,
                encoded_bytes: bytes,
                queued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    fn limits(commands: usize, bytes: usize) -> BatchLimits {
        BatchLimits {
            queued_commands_max: 16,
            batch_commands_max: commands,
            batch_bytes_max: bytes,
            batches_in_flight_max: 1,
        }
    }

    #[test]
    fn a_lone_proposal_is_a_batch_of_one_at_once() {
        let (_tx, mut rx) = mpsc::channel(4);
        let mut carried = None;
        let (first, _r) = proposal(10);
        let batch = collect_batch(first, &mut rx, &mut carried, &limits(10, 1000));
        assert_eq!(batch.len(), 1);
        assert!(carried.is_none());
    }

    #[test]
    fn queued_proposals_join_up_to_the_count_and_byte_bounds() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut replies = Vec::new();
        for _ in 0..10 {
            let (p, r) = proposal(100);
            replies.push(r);
            assert!(tx.try_send(p).is_ok());
        }
        let mut carried = None;
        let (first, _r) = proposal(100);
        // Count bound: 4 per batch, the rest stays queued.
        let batch = collect_batch(first, &mut rx, &mut carried, &limits(4, 10_000));
        assert_eq!(batch.len(), 4);
        assert!(carried.is_none());
        // Byte bound: 250 bytes hold two 100-byte commands; the third is carried over.
        let first = rx.try_recv().expect("queued");
        let batch = collect_batch(first, &mut rx, &mut carried, &limits(100, 250));
        assert_eq!(batch.len(), 2);
        assert!(carried.is_some());
        // A command above the byte bound still goes, alone.
        let (big, _r) = proposal(1000);
        let batch = collect_batch(big, &mut rx, &mut None, &limits(100, 250));
        assert_eq!(batch.len(), 1);
    }
}
