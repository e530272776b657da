//! `ReportBuffer`: the machine agent's outbox of status reports and model-log records. Reports
//! and log records get increasing numbers from one counter (`seq`, `agent_seq`), are delivered
//! in order (each batch is a prefix of the numbers: nothing left behind is numbered below what
//! it carries) and dropped only once the controller's `applied_seq` covers them, so the
//! controller, this one or the model's next, applies each once; when the buffer is full, it keeps only the latest status of each
//! (entity, kind) — never less, so no entity's current status is lost however long the
//! controller is away or the model is migrating (one machine has few entities).
//!
//! The whole outbox is a `ReportRequest` on disk as well (`<data>/outbox.pb`, see
//! `state::OutboxStore`), so an agentd killed while the controller is away delivers what it
//! had queued once it runs again.

use std::collections::{HashMap, VecDeque};

use starling_proto::agent::{ReportRequest, StatusReport};
use starling_proto::limits::REPORT_ITEMS_MAX;
use starling_proto::model::{LogLevel, LogRecord, Status};

/// The most status reports kept before coalescing to the latest per (entity, kind).
pub const REPORTS_MAX: usize = 10_000;
/// The most log records kept; the oldest are dropped beyond it.
pub const LOGS_MAX: usize = 10_000;

/// The bounded, ordered outbox.
#[derive(Debug)]
pub struct ReportBuffer {
    next_seq: u64,
    reports: VecDeque<StatusReport>,
    logs: VecDeque<LogRecord>,
    reports_max: usize,
    /// Queue length that triggers the next coalescing: `reports_max`, or twice what the last
    /// coalescing kept when that was more (so it is not redone on every push).
    coalesce_at: usize,
    logs_max: usize,
    /// Log records dropped because the buffer was full, not yet said in a log line.
    logs_dropped: u64,
    /// Counts changes, so a writer can tell whether what it saved is still current.
    generation: u64,
}

impl ReportBuffer {
    /// An empty buffer whose first report gets `next_seq` (persisted so it grows across restarts).
    pub fn new(next_seq: u64) -> Self {
        Self::with_bounds(next_seq, REPORTS_MAX, LOGS_MAX)
    }

    /// An empty buffer with explicit bounds (tests).
    pub fn with_bounds(next_seq: u64, reports_max: usize, logs_max: usize) -> Self {
        assert!(reports_max > 0 && logs_max > 0);
        Self {
            next_seq: next_seq.max(1),
            reports: VecDeque::new(),
            logs: VecDeque::new(),
            reports_max,
            coalesce_at: reports_max,
            logs_max,
            logs_dropped: 0,
            generation: 0,
        }
    }

    /// A buffer holding what a previous run saved (`saved`, in order), whose next report gets
    /// at least `next_seq` and always more than any saved one.
    pub fn restore(next_seq: u64, saved: ReportRequest) -> Self {
        let mut buffer = Self::new(next_seq);
        let last_saved = saved
            .reports
            .iter()
            .map(|r| r.seq)
            .chain(saved.logs.iter().map(|l| l.agent_seq))
            .max()
            .unwrap_or(0);
        buffer.next_seq = buffer.next_seq.max(last_saved + 1);
        buffer.reports = saved.reports.into();
        buffer.logs = saved.logs.into();
        buffer.coalesce_at = buffer.reports_max.max(buffer.reports.len() * 2);
        while buffer.logs.len() > buffer.logs_max {
            buffer.logs.pop_front();
        }
        buffer
    }

    /// Everything queued, oldest first, as the outbox file holds it.
    pub fn pending(&self) -> ReportRequest {
        ReportRequest {
            reports: self.reports.iter().cloned().collect(),
            logs: self.logs.iter().cloned().collect(),
        }
    }

    /// Changes so far (pushes, acknowledgements that dropped something).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The `seq` the next report will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues a status report and returns its `seq`.
    pub fn push_status(&mut self, entity: &str, kind: &str, status: Status) -> u64 {
        if self.reports.len() >= self.coalesce_at {
            self.coalesce();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.generation += 1;
        self.reports.push_back(StatusReport {
            seq,
            entity: entity.to_string(),
            kind: kind.to_string(),
            status: Some(status),
        });
        seq
    }

    /// Queues one model-log record and returns its `agent_seq`.
    pub fn push_log(
        &mut self,
        entity: &str,
        level: LogLevel,
        module: &str,
        message: String,
    ) -> u64 {
        if self.logs.len() >= self.logs_max {
            self.logs.pop_front();
            self.logs_dropped += 1;
            if self.logs_dropped == 1 || self.logs_dropped.is_multiple_of(1000) {
                tracing::warn!(
                    dropped = self.logs_dropped,
                    "model-log buffer full: dropping the oldest records"
                );
            }
        }
        let agent_seq = self.next_seq;
        self.next_seq += 1;
        self.generation += 1;
        self.logs.push_back(LogRecord {
            seq: 0,
            time_unix_ms: now_unix_ms(),
            entity: entity.to_string(),
            level: level as i32,
            module: module.to_string(),
            message,
            agent_seq,
        });
        agent_seq
    }

    /// Keeps only the latest report per (entity, kind), in seq order. The survivors are all
    /// kept even beyond the bound: each is the current status of a distinct entity.
    fn coalesce(&mut self) {
        let before = self.reports.len();
        let mut latest: HashMap<(&str, &str), u64> = HashMap::new();
        for report in &self.reports {
            latest.insert((&report.entity, &report.kind), report.seq);
        }
        let keep: std::collections::HashSet<u64> = latest.into_values().collect();
        self.reports.retain(|r| keep.contains(&r.seq));
        self.coalesce_at = self.reports_max.max(self.reports.len() * 2);
        tracing::warn!(
            before,
            after = self.reports.len(),
            "status-report buffer full: coalesced to the latest status per entity and kind"
        );
    }

    /// Whether anything waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.logs.is_empty()
    }

    /// Number of queued status reports.
    pub fn reports_len(&self) -> usize {
        self.reports.len()
    }

    /// The next batch to send: the oldest reports and log records, in order, cut so that
    /// nothing left queued is numbered below what the batch carries (the controller applies
    /// numbers above the last it applied, so a record left behind below it would be lost).
    pub fn batch(&self) -> (Vec<StatusReport>, Vec<LogRecord>) {
        let numbered = |seq: u64| (seq != 0).then_some(seq);
        let left_behind = [
            self.reports.get(REPORT_ITEMS_MAX).map(|r| r.seq),
            self.logs
                .get(REPORT_ITEMS_MAX)
                .and_then(|l| numbered(l.agent_seq)),
        ];
        let cut = left_behind.into_iter().flatten().min().unwrap_or(u64::MAX);
        (
            self.reports
                .iter()
                .take(REPORT_ITEMS_MAX)
                .take_while(|r| r.seq < cut)
                .cloned()
                .collect(),
            self.logs
                .iter()
                .take(REPORT_ITEMS_MAX)
                .take_while(|l| l.agent_seq < cut)
                .cloned()
                .collect(),
        )
    }

    /// The controller answered a batch that carried `logs_sent` log records and has applied
    /// every report and log record up to `applied_seq`.
    pub fn acknowledge(&mut self, applied_seq: u64, logs_sent: usize) {
        let before = (self.reports.len(), self.logs.len());
        while self.reports.front().is_some_and(|r| r.seq <= applied_seq) {
            self.reports.pop_front();
        }
        if self.reports.len() < self.reports_max {
            self.coalesce_at = self.reports_max;
        }
        // Records saved by an older agentd carry no number: the batch's count covers them.
        let mut unnumbered_sent = logs_sent;
        while let Some(log) = self.logs.front() {
            let covered = if log.agent_seq == 0 {
                unnumbered_sent > 0
            } else {
                log.agent_seq <= applied_seq
            };
            if !covered {
                break;
            }
            unnumbered_sent = unnumbered_sent.saturating_sub(usize::from(log.agent_seq == 0));
            self.logs.pop_front();
        }
        if (self.reports.len(), self.logs.len()) != before {
            self.generation += 1;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A status stamped now.
pub fn status(current: &str, message: impl Into<String>) -> Status {
    Status {
        current: current.to_string(),
        message: message.into(),
        since_unix_ms: now_unix_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(buffer: &ReportBuffer) -> Vec<u64> {
        buffer.batch().0.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn reports_are_ordered_and_dropped_only_when_acknowledged() {
        let mut buffer = ReportBuffer::new(7);
        for idx in 0..5 {
            buffer.push_status("unit-web-0", "workload", status("active", format!("{idx}")));
        }
        assert_eq!(seqs(&buffer), vec![7, 8, 9, 10, 11]);
        buffer.acknowledge(8, 0);
        assert_eq!(seqs(&buffer), vec![9, 10, 11]);
        // An old acknowledgement (a late answer) drops nothing.
        buffer.acknowledge(3, 0);
        assert_eq!(seqs(&buffer), vec![9, 10, 11]);
        buffer.acknowledge(11, 0);
        assert!(buffer.is_empty());
        assert_eq!(buffer.next_seq(), 12);
    }

    #[test]
    fn seq_starts_at_one() {
        let mut buffer = ReportBuffer::new(0);
        assert_eq!(
            buffer.push_status("machine-0", "agent", status("started", "")),
            1
        );
    }

    #[test]
    fn full_buffer_coalesces_to_latest_per_entity_and_kind() {
        let mut buffer = ReportBuffer::with_bounds(1, 4, 4);
        buffer.push_status("unit-a-0", "workload", status("maintenance", "")); // 1
        buffer.push_status("unit-a-0", "agent", status("executing", "")); // 2
        buffer.push_status("unit-a-0", "workload", status("active", "")); // 3
        buffer.push_status("unit-a-0", "agent", status("idle", "")); // 4
        buffer.push_status("unit-b-0", "workload", status("active", "")); // 5: coalesces first
        assert_eq!(seqs(&buffer), vec![3, 4, 5]);
        let latest = buffer.batch().0;
        assert_eq!(latest[0].status.as_ref().unwrap().current, "active");
        assert_eq!(latest[1].status.as_ref().unwrap().current, "idle");
    }

    #[test]
    fn coalescing_never_drops_an_entitys_latest_status() {
        let mut buffer = ReportBuffer::with_bounds(1, 3, 4);
        for idx in 0..5 {
            buffer.push_status(&format!("unit-a-{idx}"), "workload", status("active", ""));
        }
        // Five distinct entities: all kept, beyond the bound.
        assert_eq!(seqs(&buffer), vec![1, 2, 3, 4, 5]);
        // Repeats of them coalesce to the latest of each, in seq order.
        for round in 0..3 {
            for idx in 0..5 {
                buffer.push_status(
                    &format!("unit-a-{idx}"),
                    "workload",
                    status("active", format!("{round}")),
                );
            }
        }
        let got = seqs(&buffer);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        let entities: std::collections::BTreeSet<String> =
            buffer.batch().0.into_iter().map(|r| r.entity).collect();
        assert_eq!(entities.len(), 5);
        assert_eq!(got.last(), Some(&20));
        assert!(got.len() <= 10, "{got:?}");
        // Acknowledged: back to the configured bound.
        buffer.acknowledge(20, 0);
        assert!(buffer.is_empty());
        assert_eq!(buffer.coalesce_at, 3);
    }

    #[test]
    fn a_restored_buffer_keeps_the_order_and_never_reuses_a_seq() {
        let mut buffer = ReportBuffer::new(5);
        buffer.push_status("unit-a-0", "workload", status("error", "exited")); // 5
        buffer.push_log("unit-a-0", LogLevel::Error, "workload", "exited".into()); // 6
        buffer.push_status("unit-a-0", "workload", status("active", "")); // 7
        let generation = buffer.generation();
        assert_eq!(generation, 3);
        // The saved seqs win over an older reservation in the state file.
        let mut restored = ReportBuffer::restore(2, buffer.pending());
        assert_eq!(seqs(&restored), vec![5, 7]);
        assert_eq!(restored.batch().1[0].message, "exited");
        assert_eq!(
            restored.push_status("machine-0", "agent", status("started", "")),
            8
        );
        // A saved log record's number counts too.
        let mut only_log = ReportBuffer::new(1);
        only_log.push_log("unit-a-0", LogLevel::Info, "hook", "x".into());
        assert_eq!(ReportBuffer::restore(1, only_log.pending()).next_seq(), 2);
        // A newer reservation wins over the saved seqs.
        assert_eq!(ReportBuffer::restore(100, buffer.pending()).next_seq(), 100);
        // An acknowledgement that drops nothing is no change; one that does is.
        buffer.acknowledge(1, 0);
        assert_eq!(buffer.generation(), generation);
        buffer.acknowledge(5, 1);
        assert_eq!(buffer.generation(), generation + 1);
        assert_eq!(seqs(&buffer), vec![7]);
        // The log record (6) is not covered by 5, whatever the batch carried.
        assert_eq!(buffer.batch().1.len(), 1);
        buffer.acknowledge(7, 1);
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_batch_leaves_nothing_behind_below_what_it_carries() {
        let mut buffer = ReportBuffer::with_bounds(1, 10, REPORT_ITEMS_MAX + 10);
        for idx in 0..=REPORT_ITEMS_MAX {
            buffer.push_log("unit-a-0", LogLevel::Info, "hook", format!("line {idx}"));
        }
        let status_seq = buffer.push_status("unit-a-0", "workload", status("active", ""));
        assert_eq!(status_seq, REPORT_ITEMS_MAX as u64 + 2);
        // The last log record (REPORT_ITEMS_MAX + 1) does not fit: the status report, numbered
        // above it, waits too, or the controller would skip the record once it applied the
        // report.
        let (reports, logs) = buffer.batch();
        assert!(reports.is_empty(), "{reports:?}");
        assert_eq!(logs.len(), REPORT_ITEMS_MAX);
        assert_eq!(
            logs.last().map(|l| l.agent_seq),
            Some(REPORT_ITEMS_MAX as u64)
        );
        buffer.acknowledge(REPORT_ITEMS_MAX as u64, logs.len());
        let (reports, logs) = buffer.batch();
        assert_eq!((reports.len(), logs.len()), (1, 1));
        buffer.acknowledge(status_seq, 1);
        assert!(buffer.is_empty());
    }

    #[test]
    fn logs_are_bounded_and_dropped_when_sent() {
        let mut buffer = ReportBuffer::with_bounds(1, 4, 2);
        for idx in 0..3 {
            buffer.push_log("unit-a-0", LogLevel::Info, "hook", format!("line {idx}"));
        }
        let (_, logs) = buffer.batch();
        let messages: Vec<_> = logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, vec!["line 1", "line 2"]);
        // Numbered records are dropped by number ("line 1" is 2), not by count.
        buffer.acknowledge(0, 1);
        assert_eq!(buffer.batch().1.len(), 2);
        buffer.acknowledge(2, 1);
        assert_eq!(buffer.batch().1.len(), 1);
        // A record saved by an older agentd (no number) is dropped by the batch's count.
        let mut saved = buffer.pending();
        saved.logs[0].agent_seq = 0;
        let mut restored = ReportBuffer::restore(1, saved);
        restored.acknowledge(0, 1);
        assert!(restored.is_empty());
    }
}
