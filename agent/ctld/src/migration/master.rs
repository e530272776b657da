//! The migration master. On the node that leads the source's Raft group, one driver per
//! migration that has not ended: it reads the persisted record (after a read-index barrier),
//! asks `next_action` what to do, and does it: a proposal for a commit, a call to the target, a
//! read of the model or its change feed. It keeps nothing but observations (and the copy it
//! exported), so the master of a new leader resumes from the persisted phase; every step is
//! idempotent on the migration id. In the fence (QUIESCE) every step is a few commits and calls,
//! never a read of the whole model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use starling_proto::command::{
    command, migration_progress::Fact, AgentValidation, CommandError, CopyDigests as PbCopyDigests,
    MigrationProgress, MigrationTransition, ReapModel, TrimFeed,
};
use starling_proto::migration as pb;
use starling_proto::model::{Life, Machine};
use starling_storage::migration::{self as stored, stored_position};
use starling_storage::model::migration::{
    next_action, Action, AgentReport, CallOutcome, CopyDigests, FeedLag, FeedPosition,
    ImportStatus, Limits, LogTransferStatus, MigrationId, MigrationRecord, Observations, Observed,
    Phase, PrecheckReport, Progress, ReapResult, RefusedCommit, TargetCopy,
};
use starling_storage::precopy::{read_copy_page, CopyBuilder, COPY_PAGE_KEYS};
use starling_storage::{feed, keys, records};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::peer::{retryable, Peer};
use super::staging::{self, import_answer, PreparedCopy};
use super::{failpoint, failpoint_value, prechecks};
use crate::context::NodeContext;
use crate::plumbing::{internal_command, now_unix_ms};

/// How often the supervisor looks for migrations to drive.
const SCAN_INTERVAL: Duration = Duration::from_millis(300);
/// Longest sleep of a waiting driver before it re-reads the record (abort requests, agents).
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Feed entries per `ApplyChanges` call (each acknowledgement trims at most this many, under
/// the trim bound of one command).
const STREAM_BATCH_ENTRIES: usize = 2_000;
/// Encoded bytes of feed entries per `ApplyChanges` call (one Raft entry on the target, like a
/// staged chunk).
const STREAM_BATCH_BYTES: usize = 1024 * 1024;
/// Log records per transfer call.
const LOG_BATCH: usize = 500;
/// Deadline of one call to the target.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one REAP step proposes chunk after chunk before the driver decides again (and
/// looks at its deadline and leadership).
const REAP_STEP_BUDGET: Duration = Duration::from_millis(500);

/// Runs until `stop`: while this node leads, a driver for every migration that has not ended.
pub async fn run_masters(ctx: NodeContext, stop: CancellationToken) {
    let mut drivers: BTreeMap<String, (CancellationToken, JoinHandle<()>)> = BTreeMap::new();
    let mut changes = ctx.migration_changes.subscribe();
    loop {
        // A migration started here is driven as soon as it applies; the scan interval covers
        // the rest (this node becoming the leader of a group with migrations under way).
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = changes.changed() => {}
        }
        changes.borrow_and_update();
        drivers.retain(|_, (_, task)| !task.is_finished());
        let leading = ctx.handle.current_leader() == Some(ctx.handle.node_id());
        if !leading {
            for (id, (token, _)) in std::mem::take(&mut drivers) {
                info!(migration = %id, "no longer the leader; the new leader's master resumes this migration");
                token.cancel();
            }
            continue;
        }
        let records = match stored::read_all_migrations(ctx.handle.state().reader()) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read migration records");
                continue;
            }
        };
        for record in records.iter().filter(|r| !stored::is_terminal(r)) {
            let id = stored::record_id(record);
            let key = id.to_string();
            if drivers.contains_key(&key) {
                continue;
            }
            info!(migration = %key, phase = %record.phase, "driving migration");
            let token = stop.child_token();
            let task = tokio::spawn(Driver::new(ctx.clone(), id, token.clone()).run());
            drivers.insert(key, (token, task));
        }
    }
    for (_, (token, task)) in drivers {
        token.cancel();
        let _ = task.await;
    }
}

/// The master's deadlines and the fence's lag: the defaults, with `migration-quiesce-timeout`,
/// `migration-import-timeout`, `migration-abort-drop-timeout`, `migration-log-transfer-timeout`
/// and `migration-fence-lag` from the controller config.
fn limits(ctx: &NodeContext) -> Limits {
    let mut limits = Limits::default();
    if let Some(timeout) = ctx.config_ms("migration-quiesce-timeout") {
        limits.quiesce_timeout_ms = timeout;
    }
    if let Some(timeout) = ctx.config_ms("migration-import-timeout") {
        limits.import_timeout_ms = timeout;
    }
    if let Some(timeout) = ctx.config_ms("migration-abort-drop-timeout") {
        limits.abort_drop_timeout_ms = Some(timeout);
    }
    if let Some(timeout) = ctx.config_ms("migration-log-transfer-timeout") {
        limits.log_transfer_timeout_ms = timeout;
    }
    if let Some(lag) = ctx.config_u64("migration-fence-lag") {
        limits.fence_lag_entries = lag;
    }
    limits
}

/// `n` bytes for people (`3.1 MB`).
fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().si().to_string()
}

/// One migration's driver.
struct Driver {
    ctx: NodeContext,
    id: MigrationId,
    key: String,
    stop: CancellationToken,
    /// Marked at the start of every step: a change applied after it ends a wait early.
    changes: tokio::sync::watch::Receiver<u64>,
    obs: Observations,
    peer: Option<Peer>,
    /// The copy this master exported in PRECOPY (lost with the master: a new one exports again).
    copy: Option<PreparedCopy>,
    /// The persisted phase as last read (or as this master last moved it), which the
    /// activities it publishes are said in.
    phase: Option<Phase>,
}

impl Driver {
    fn new(ctx: NodeContext, id: MigrationId, stop: CancellationToken) -> Self {
        let key = id.to_string();
        Driver {
            changes: ctx.migration_changes.subscribe(),
            ctx,
            id,
            key,
            stop,
            obs: Observations::default(),
            peer: None,
            copy: None,
            phase: None,
        }
    }

    async fn run(mut self) {
        while !self.stop.is_cancelled() {
            match self.step().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    warn!(migration = %self.key, error = %e, "migration step failed; retrying");
                    self.sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.ctx.progress.remove(&self.key);
    }

    async fn sleep(&self, duration: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(duration) => {}
        }
    }

    fn activity(&self, text: impl Into<String>) {
        let text = text.into();
        let phase = self.phase_name();
        self.ctx
            .progress
            .update(&self.key, |p| p.set_activity(phase, text));
    }

    fn phase_name(&self) -> &'static str {
        self.phase.map_or("", Phase::as_str)
    }

    /// Reads the record, decides, acts. `false` when the migration has ended.
    ///
    /// Keep the read-index barrier even right after the master's own commit: skipping it there
    /// made the fence slower in three benchmark runs out of three at 10,000 units (a held write
    /// got its redirect 300-450 ms after SUCCESS). Likely its heartbeat round is what tells the
    /// followers the new commit index at once, and a held write waits for the lock and then the
    /// redirect on whichever node it reached, often a follower.
    async fn step(&mut self) -> anyhow::Result<bool> {
        let started = std::time::Instant::now();
        self.changes.borrow_and_update();
        self.ctx
            .handle
            .linearizable_barrier()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let barrier = started.elapsed();
        let Some(stored_record) =
            stored::read_migration(self.ctx.handle.state().reader(), &self.id)?
        else {
            warn!(migration = %self.key, "the migration record vanished");
            return Ok(false);
        };
        let record = stored::to_logic(&stored_record)?;
        self.phase = Some(record.phase);
        if record.phase.is_terminal() {
            info!(migration = %self.key, phase = %record.phase, "migration ended");
            return Ok(false);
        }
        if self.peer.is_none() {
            let target = stored_record.target.clone().unwrap_or_default();
            prechecks::verify_target_ca(&target).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            self.peer = Some(
                Peer::new(
                    &target.endpoints,
                    &target.ca_cert,
                    &target.token,
                    CALL_TIMEOUT,
                )
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?,
            );
        }
        // Failpoints for the tests: `migration.source.step=return(MS)` delays every step (so
        // each phase lasts long enough to kill a leader in it);
        // `migration.source.<phase>` forces the abort path from a phase before SUCCESS, and
        // fails the step (it is retried) in a later one.
        if let Some(delay) = failpoint_value("migration.source.step") {
            if let Ok(ms) = delay.parse::<u64>() {
                self.sleep(Duration::from_millis(ms)).await;
            }
        }
        let point = format!("migration.source.{}", record.phase.as_str().to_lowercase());
        if let Some(reason) = failpoint(&point) {
            if !record.phase.is_committed() && !record.phase.is_aborting() {
                self.obs.abort_requested.get_or_insert(reason);
            } else {
                warn!(migration = %self.key, reason, "step failed by failpoint; retrying");
                self.sleep(Duration::from_secs(1)).await;
                return Ok(true);
            }
        }
        let now = now_unix_ms();
        let action = next_action(&record, &self.obs, now, &limits(&self.ctx));
        // Where a step's time goes (the barrier, reading the record, the action), for an
        // operator tracing a slow fence with RUST_LOG=starling_ctld::migration=debug.
        let acting = std::time::Instant::now();
        let summary = tracing::enabled!(tracing::Level::DEBUG).then(|| format!("{action:?}"));
        self.act(&stored_record, &record, action).await?;
        if let Some(summary) = summary {
            debug!(
                migration = %self.key,
                phase = %record.phase,
                action = %summary.chars().take(80).collect::<String>(),
                barrier_us = barrier.as_micros() as u64,
                read_us = (acting - started - barrier).as_micros() as u64,
                act_us = acting.elapsed().as_micros() as u64,
                "migration step"
            );
        }
        Ok(true)
    }

    async fn propose(
        &self,
        request_id: String,
        op: command::Op,
    ) -> anyhow::Result<Result<starling_proto::command::Ok, CommandError>> {
        let command = internal_command(request_id, op);
        let proposed = self
            .ctx
            .handle
            .propose(command)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.ctx
            .handle
            .wait_applied(proposed.log_index)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(match proposed.result.result {
            Some(starling_proto::command::command_result::Result::Error(e)) => Err(e),
            Some(starling_proto::command::command_result::Result::Ok(ok)) => Ok(ok),
            None => Ok(Default::default()),
        })
    }

    /// A request id unique to one proposal. A derived id (the migration id and the phase)
    /// would make a repeat answer with the first proposal's cached result: a refusal would
    /// then be final however the state changed since. Every commit is idempotent in the state
    /// machine instead (a phase moves only from the phase it was proposed in).
    fn request_id(&self, what: &str) -> String {
        format!("{}/{what}/{}", self.key, uuid::Uuid::new_v4())
    }

    /// A commit the state machine refused in phase `from`: an observation `next_action`
    /// acts on (it aborts with the reason, or waits a retry interval when the refusal is a
    /// passing one), never proposed again at once. A refusal because the record moved on is
    /// from an older phase and is ignored.
    fn refused(&mut self, from: Phase, to: Option<Phase>, refusal: &CommandError) {
        let reason = refusal.message.clone();
        warn!(migration = %self.key, %from, to = ?to, reason, passing = refusal.transient, "commit refused");
        self.obs.refused = Some(Observed::at(
            RefusedCommit {
                from,
                to,
                reason,
                passing: refusal.transient,
            },
            now_unix_ms(),
        ));
    }

    /// Commits `to` from `from`; the refusal's reason when the state machine refused it (also
    /// recorded as an observation, see `refused`).
    async fn transition(
        &mut self,
        from: Phase,
        to: Phase,
        reason: &str,
        target_digest: String,
    ) -> anyhow::Result<Result<(), String>> {
        let op = command::Op::MigrationTransition(MigrationTransition {
            migration_id: self.key.clone(),
            to: to.as_str().to_owned(),
            reason: reason.to_owned(),
            target_digest,
        });
        let outcome = self
            .propose(self.request_id(to.as_str()), op)
            .await?
            .map(|_| ());
        match &outcome {
            Ok(()) => info!(migration = %self.key, phase = %to, reason, "migration phase"),
            Err(refused) => self.refused(from, Some(to), refused),
        }
        Ok(outcome.map_err(|refused| refused.message))
    }

    async fn record(&mut self, from: Phase, progress: Progress) -> anyhow::Result<()> {
        let fact = match progress {
            Progress::AgentAcked { machine } => Fact::AgentAcked(machine),
            Progress::AgentValidated { machine, report } => Fact::AgentValidated(AgentValidation {
                machine_id: machine,
                ok: report == AgentReport::Ok,
                reason: match report {
                    AgentReport::Failed { reason } => reason,
                    AgentReport::Ok => String::new(),
                },
            }),
            Progress::Copy(copy) => Fact::Copy(PbCopyDigests {
                copy_digest: copy.copy_digest,
                base_digest: copy.base_digest,
            }),
            Progress::FeedAcked(position) => Fact::FeedAcked(stored_position(position)),
            Progress::SourceDigest(d) => Fact::SourceDigest(d),
            Progress::TargetDigest(d) => Fact::TargetDigest(d),
            Progress::LogPosition(p) => Fact::LogPosition(p),
        };
        let op = command::Op::MigrationProgress(MigrationProgress {
            migration_id: self.key.clone(),
            fact: Some(fact),
        });
        if let Err(refused) = self.propose(self.request_id("fact"), op).await? {
            self.refused(from, None, &refused);
        }
        Ok(())
    }

    fn peer(&self) -> &Peer {
        self.peer
            .as_ref()
            .expect("the peer is dialed before acting")
    }

    async fn act(
        &mut self,
        stored_record: &pb::MigrationRecord,
        record: &MigrationRecord,
        action: Action,
    ) -> anyhow::Result<()> {
        match action {
            Action::Nothing => {}
            Action::RunPrechecks => {
                self.activity("running prechecks");
                let failures = self.prechecks(record).await?;
                if !failures.is_empty() {
                    warn!(migration = %self.key, ?failures, "prechecks failed");
                }
                self.obs.prechecks = Some(PrecheckReport {
                    phase: record.phase,
                    failures,
                });
            }
            Action::ExportCopy => self.export_copy(record).await?,
            Action::StageCopy => {
                let copy = self.copy.clone().expect("StageCopy follows ExportCopy");
                let status = self.stage_copy(stored_record, &copy).await;
                self.obs.import = Some(Observed::at(status, now_unix_ms()));
            }
            Action::QueryImport => {
                let status = self.import_status().await;
                self.obs.import = Some(Observed::at(status, now_unix_ms()));
            }
            Action::StreamChanges { after } => self.stream_changes(record, after, None).await?,
            Action::SealTarget { after, seal_index } => {
                self.stream_changes(record, after, Some(seal_index)).await?
            }
            Action::Lock { reason } => {
                self.activity("FENCE: locking the model");
                if self
                    .transition(record.phase, Phase::Quiesce, &reason, String::new())
                    .await?
                    .is_err()
                {
                    // An observation, not a loop (`refused` recorded it): re-read the machines
                    // and run the prechecks again before another attempt.
                    self.obs.machines = None;
                    self.obs.prechecks = None;
                } else {
                    self.phase = Some(Phase::Quiesce);
                    self.activity("FENCE: model locked, writes held; sending the last changes");
                }
            }
            Action::CommitSuccess { target_digest } => {
                if let Some(reason) = failpoint("migration.source.commit-success") {
                    warn!(migration = %self.key, reason, "not committing SUCCESS yet");
                    self.sleep(Duration::from_secs(1)).await;
                    return Ok(());
                }
                let (to, reason) = Action::CommitSuccess {
                    target_digest: target_digest.clone(),
                }
                .commits(record.phase)
                .expect("a commit action names its phase");
                // A refusal is logged; the next read of the record shows where things stand.
                let _ = self
                    .transition(record.phase, to, &reason, target_digest)
                    .await?;
            }
            Action::Transition { .. } | Action::Unlock { .. } => {
                let (to, reason) = action
                    .commits(record.phase)
                    .expect("a commit action names its phase");
                let _ = self
                    .transition(record.phase, to, &reason, String::new())
                    .await?;
            }
            Action::ReadMachines => {
                let reader = self.ctx.handle.state().reader();
                let machines: BTreeSet<String> = records::read_records::<Machine>(
                    reader,
                    &keys::machine_prefix(&self.id.model_uuid),
                )?
                .into_iter()
                .filter(|m| m.life == Life::Alive as i32)
                .map(|m| m.id)
                .collect();
                let total = machines.len() as u64;
                self.ctx
                    .progress
                    .update(&self.key, |p| p.agents_total = total);
                self.obs.machines = Some(machines);
            }
            Action::WaitForAgents {
                missing,
                until_unix_ms,
            } => {
                let lag = self.obs.lag.as_ref().map_or(0, |l| l.entries);
                self.activity(format!(
                    "CATCHUP lag {lag} change(s); waiting for the agents of machine(s) {} to \
                     log in to controller \"{}\"",
                    missing.iter().cloned().collect::<Vec<_>>().join(", "),
                    record.target.name
                ));
                self.wait_until(until_unix_ms).await;
                // The feed moved on meanwhile: count (and send) it again.
                self.obs.lag = None;
            }
            Action::Record(progress) => self.record(record.phase, progress).await?,
            Action::CallActivate => {
                self.activity(format!(
                    "activating the model on controller \"{}\"",
                    record.target.name
                ));
                let outcome = if let Some(reason) = failpoint("migration.source.activate") {
                    CallOutcome::Unreachable { error: reason }
                } else {
                    let request = pb::ActivateRequest {
                        migration_id: self.key.clone(),
                    };
                    outcome(
                        self.peer()
                            .call(|mut c| {
                                let r = request.clone();
                                async move { c.activate(r).await }
                            })
                            .await,
                    )
                };
                if let CallOutcome::Acked = outcome {
                    info!(migration = %self.key, "target activated the model");
                } else if starling_storage::planted::armed("abort-after-success") {
                    // Planted bug: give up on an unacknowledged Activate and abort.
                    let _ = self
                        .transition(
                            record.phase,
                            Phase::Abort,
                            "planted bug: Activate was not acknowledged",
                            String::new(),
                        )
                        .await?;
                    return Ok(());
                } else {
                    warn!(migration = %self.key, ?outcome, "activate not acknowledged; retrying");
                }
                self.obs.activate = Some(Observed::at(outcome, now_unix_ms()));
            }
            Action::TrimFeed => {
                self.activity("removing the model's change feed");
                let reader = self.ctx.handle.state().reader();
                let left = if feed::has_entries(reader, &self.id.model_uuid)? {
                    let op = command::Op::TrimFeed(TrimFeed {
                        migration_id: self.key.clone(),
                    });
                    match self.propose(self.request_id("trim"), op).await? {
                        Ok(ok) => ok.more,
                        Err(refused) => {
                            let refused = refused.message;
                            warn!(migration = %self.key, refused, "trimming the feed refused");
                            true
                        }
                    }
                } else {
                    false
                };
                self.obs.feed_entries_left = Some(left);
            }
            Action::TransferLogs { from } => {
                self.activity("transferring the model's log");
                let status = self.transfer_logs(from).await;
                self.obs.log_transfer = Some(Observed::at(status, now_unix_ms()));
            }
            Action::Reap => {
                // A transfer given up (its deadline passed) has ended too: say so, once, at
                // best (a target that does not hear it keeps refusing to move the model on).
                let transferred = matches!(
                    self.obs.log_transfer.as_ref().map(|o| &o.value),
                    Some(LogTransferStatus::Complete { .. })
                );
                if !transferred {
                    if let Err(status) = self.end_log_transfer().await {
                        warn!(migration = %self.key, error = %status.message(), "could not tell the target the log transfer ended");
                    }
                }
                self.activity("removing the model's data from this controller");
                // Bounded chunks, each its own commit (other writes apply between them), one
                // after the other for at most `REAP_STEP_BUDGET`; the next step reaps on while
                // records remain.
                let started = std::time::Instant::now();
                self.obs.reap = loop {
                    let op = command::Op::ReapModel(ReapModel {
                        migration_id: self.key.clone(),
                        max_records: stored::REMOVAL_RECORDS_MAX,
                    });
                    match self.propose(self.request_id("reap"), op).await? {
                        Ok(ok) if ok.more => {
                            if self.stop.is_cancelled() || started.elapsed() >= REAP_STEP_BUDGET {
                                break None;
                            }
                        }
                        Ok(_) => break Some(ReapResult::Done),
                        Err(refused) => {
                            break Some(ReapResult::Failed {
                                reason: refused.message,
                            })
                        }
                    }
                };
            }
            Action::DropImportOnTarget => {
                self.activity(format!(
                    "asking controller \"{}\" to drop its import",
                    record.target.name
                ));
                let request = pb::DropImportRequest {
                    migration_id: self.key.clone(),
                    reason: record.abort_reason.clone().unwrap_or_default(),
                };
                let outcome = outcome(
                    self.peer()
                        .call(|mut c| {
                            let r = request.clone();
                            async move { c.drop_import(r).await }
                        })
                        .await,
                );
                self.obs.drop_import = Some(Observed::at(outcome, now_unix_ms()));
            }
            Action::Wait { until_unix_ms } => {
                self.wait_until(until_unix_ms).await;
                self.obs.lag = None;
            }
        }
        Ok(())
    }

    /// Waits until `until_unix_ms`, at most `POLL_INTERVAL`, and no longer than until a
    /// migration command applies here after this step began (an agent's validation report, an
    /// abort request): the next step then sees it at once.
    async fn wait_until(&mut self, until_unix_ms: i64) {
        let left = until_unix_ms.saturating_sub(now_unix_ms()).max(0) as u64;
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(left).min(POLL_INTERVAL)) => {}
            _ = self.changes.changed() => {}
        }
    }

    async fn prechecks(&self, record: &MigrationRecord) -> anyhow::Result<Vec<String>> {
        let Some(model) = self.ctx.handle.state().model(&self.id.model_uuid)? else {
            return Ok(vec![format!(
                "model {} no longer exists",
                self.id.model_uuid
            )]);
        };
        let mut failures = prechecks::source_checks(
            &self.ctx,
            &model,
            Some(&self.key),
            prechecks::AgentPresence::LeftToValidation,
        )
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let request = prechecks::precheck_request(&self.ctx, &model, &self.key);
        failures.extend(prechecks::ask_target(self.peer(), &record.target.name, request).await);
        if let Some(reason) = failpoint("migration.source.prechecks") {
            failures.push(reason);
        }
        Ok(failures)
    }

    async fn import_status(&self) -> ImportStatus {
        let request = pb::ImportStatusRequest {
            migration_id: self.key.clone(),
        };
        match self
            .peer()
            .call(|mut c| {
                let r = request.clone();
                async move { c.import_status(r).await }
            })
            .await
        {
            Ok(answer) => import_answer(answer),
            Err(status) => ImportStatus::Unreachable {
                error: status.message().to_owned(),
            },
        }
    }

    /// PRECOPY: reads the model page by page, each page in one applied state (no lock, no
    /// commit held back longer than a page), and keeps the copy; its digests go into the
    /// observations (the decision records them before anything is staged).
    async fn export_copy(&mut self, record: &MigrationRecord) -> anyhow::Result<()> {
        self.activity("PRECOPY: reading the model");
        if let Some(reason) = failpoint("migration.source.export") {
            anyhow::bail!("{reason}");
        }
        let state = self.ctx.handle.state().clone();
        let uuid = self.id.model_uuid.clone();
        let feed_from = record.feed_from_index;
        let copy = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut builder = CopyBuilder::new(&uuid, feed_from);
            let mut start = Some(keys::model_prefix(&uuid));
            while let Some(page_start) = start {
                let (applied, page) = state.consistent(|view| {
                    let applied = starling_storage::state::read_applied_state(view.reader())
                        .map(|a| a.last_applied.map_or(0, |l| l.index));
                    let page = read_copy_page(view.reader(), &uuid, &page_start, COPY_PAGE_KEYS);
                    (applied, page)
                });
                let (pairs, next) = page?;
                builder.add_page(&page_start, applied?, pairs)?;
                start = next;
            }
            Ok(builder.finish(state.reader())?)
        })
        .await??;
        let bytes = copy.description.encode_to_vec();
        let prepared = PreparedCopy {
            description_digest: hex::encode(Sha256::digest(&bytes)),
            charm_digests: copy.description.charm_digests.clone(),
            copy_digest: copy.copy_digest.to_hex(),
            feed_from_index: feed_from,
            records: copy.records,
            bytes: Arc::new(bytes),
        };
        let (bytes_total, records_total) = (prepared.bytes.len() as u64, prepared.records);
        self.ctx.progress.update(&self.key, |p| {
            p.bytes_total = bytes_total;
            p.bytes_sent = 0;
            p.records_total = records_total;
        });
        info!(
            migration = %self.key,
            records = records_total,
            bytes = bytes_total,
            copy_digest = %prepared.copy_digest,
            "copied the model while it stays writable"
        );
        self.obs.copy = Some(CopyDigests {
            copy_digest: prepared.copy_digest.clone(),
            base_digest: copy.base_digest.to_hex(),
        });
        self.copy = Some(prepared);
        Ok(())
    }

    async fn stage_copy(
        &self,
        stored_record: &pb::MigrationRecord,
        copy: &PreparedCopy,
    ) -> ImportStatus {
        if let Some(reason) = failpoint("migration.source.stream") {
            return ImportStatus::Unreachable { error: reason };
        }
        let total = copy.bytes.len() as u64;
        let source = pb::SourceController {
            controller_uuid: self.ctx.identity.controller_uuid.clone(),
            name: self.ctx.identity.controller_name.clone(),
            endpoints: self.ctx.endpoints(),
            ca_cert: self.ctx.ca_cert.clone(),
            secret: stored_record.source_secret.clone(),
        };
        let progress = |sent: u64, to_send: u64| {
            let phase = self.phase_name();
            self.ctx.progress.update(&self.key, |p| {
                p.bytes_sent = sent;
                p.set_activity(
                    phase,
                    format!(
                        "PRECOPY {} of {}",
                        human_bytes(sent),
                        human_bytes(if to_send > 0 { to_send } else { total })
                    ),
                );
            });
        };
        staging::stage_and_import(&self.ctx, self.peer(), &self.key, copy, source, progress).await
    }

    /// CATCHUP (`seal` = `None`): sends the target one batch of feed entries after `after` and
    /// counts the entries still unsent. QUIESCE (`seal` = the lock index): sends every entry
    /// after `after` (all at or below the lock, since the model is locked) and seals the import.
    async fn stream_changes(
        &mut self,
        record: &MigrationRecord,
        after: FeedPosition,
        seal: Option<u64>,
    ) -> anyhow::Result<()> {
        let uuid = self.id.model_uuid.clone();
        let mut after = after;
        loop {
            let reader = self.ctx.handle.state().reader();
            let mut entries = feed::entries_after(
                reader,
                &uuid,
                &stored_position(after),
                seal,
                STREAM_BATCH_ENTRIES + 1,
            )?;
            let mut more = entries.len() > STREAM_BATCH_ENTRIES;
            entries.truncate(STREAM_BATCH_ENTRIES);
            let mut bytes = 0;
            if let Some(cut) = entries.iter().position(|e| {
                bytes += e.encoded_len();
                bytes > STREAM_BATCH_BYTES
            }) {
                entries.truncate(cut.max(1));
                more = true;
            }
            if entries.is_empty() && seal.is_none() {
                // Nothing to send: the target is caught up.
                self.note_lag(after, 0);
                return Ok(());
            }
            let sealing = seal.filter(|_| !more);
            let sent = entries.len() as u64;
            let mut request = pb::ApplyChangesRequest {
                migration_id: self.key.clone(),
                after: Some(stored_position(after)),
                changes: entries,
                seal_index: sealing.unwrap_or(0),
            };
            let planted =
                sealing.is_some() && starling_storage::planted::armed("fence-before-last-change");
            if planted {
                // Planted bug: seal the target where it is, without the last changes.
                warn!(migration = %self.key, dropped = sent, "planted bug: sealing without the last changes");
                request.changes.clear();
            }
            let answer = if let Some(reason) = failpoint(if sealing.is_some() {
                "migration.source.seal"
            } else {
                "migration.source.stream-changes"
            }) {
                Err(tonic::Status::unavailable(reason))
            } else {
                self.peer()
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.apply_changes(r).await }
                    })
                    .await
            };
            let status = match answer {
                Ok(answer) => import_answer(answer),
                Err(status) if retryable(&status) => ImportStatus::Unreachable {
                    error: status.message().to_owned(),
                },
                Err(status) => ImportStatus::Failed {
                    reason: status.message().to_owned(),
                },
            };
            let status = match status {
                ImportStatus::Imported(copy) if planted => ImportStatus::Imported(TargetCopy {
                    // ...and take the source's digest for the target's.
                    digest: record.source_digest.clone().unwrap_or(copy.digest),
                    ..copy
                }),
                status => status,
            };
            let position = match &status {
                ImportStatus::Imported(copy) => Some(copy.position),
                _ => None,
            };
            self.obs.import = Some(Observed::at(status, now_unix_ms()));
            let Some(position) = position else {
                return Ok(());
            };
            self.ctx
                .progress
                .update(&self.key, |p| p.changes_sent += sent);
            if seal.is_some() {
                if more && position > after {
                    after = position;
                    continue;
                }
                return Ok(());
            }
            let cap = usize::try_from(limits(&self.ctx).fence_lag_entries)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let lag = feed::count_after(
                self.ctx.handle.state().reader(),
                &uuid,
                &stored_position(position),
                cap,
            )?;
            self.note_lag(position, lag);
            return Ok(());
        }
    }

    fn note_lag(&mut self, after: FeedPosition, entries: u64) {
        self.obs.lag = Some(FeedLag { after, entries });
        let phase = self.phase_name();
        self.ctx.progress.update(&self.key, |p| {
            p.lag = Some(entries);
            p.set_activity(phase, format!("CATCHUP lag {entries} change(s)"));
        });
    }

    /// Tells the target that no more log records come (idempotent: the same request id).
    async fn end_log_transfer(&self) -> Result<(), tonic::Status> {
        if let Some(reason) = failpoint("migration.source.transfer-log") {
            return Err(tonic::Status::unavailable(reason));
        }
        let request = pb::TransferLogRequest {
            migration_id: self.key.clone(),
            records: Vec::new(),
            complete: true,
        };
        self.peer()
            .call(|mut c| {
                let r = request.clone();
                async move { c.transfer_log(r).await }
            })
            .await
            .map(|_| ())
    }

    async fn transfer_logs(&self, from: u64) -> LogTransferStatus {
        if let Some(reason) = failpoint("migration.source.logtransfer") {
            return LogTransferStatus::Failed { reason };
        }
        let mut position = from;
        loop {
            let records =
                match self
                    .ctx
                    .handle
                    .state()
                    .model_log(&self.id.model_uuid, position, LOG_BATCH)
                {
                    Ok(records) => records,
                    Err(e) => {
                        return LogTransferStatus::Failed {
                            reason: e.to_string(),
                        }
                    }
                };
            let Some(last) = records.last().map(|r| r.seq) else {
                // Tell the target the transfer has ended, so the model may migrate on.
                return match self.end_log_transfer().await {
                    Ok(()) => LogTransferStatus::Complete { position },
                    Err(status) if position > from => {
                        debug!(migration = %self.key, error = %status.message(), "log transfer end not acknowledged");
                        LogTransferStatus::InProgress { position }
                    }
                    Err(status) => LogTransferStatus::Failed {
                        reason: status.message().to_owned(),
                    },
                };
            };
            let request = pb::TransferLogRequest {
                migration_id: self.key.clone(),
                records,
                complete: false,
            };
            let answer = match failpoint("migration.source.transfer-log") {
                Some(reason) => Err(tonic::Status::unavailable(reason)),
                None => {
                    self.peer()
                        .call(|mut c| {
                            let r = request.clone();
                            async move { c.transfer_log(r).await }
                        })
                        .await
                }
            };
            match answer {
                // The target's transfer has ended (the sweeper ended it while this source
                // was away): it takes nothing more, so there is nothing more to send.
                Ok(answer) if answer.ended => return LogTransferStatus::Complete { position },
                Ok(answer) => position = answer.position.max(last),
                Err(status) => {
                    return if position > from {
                        LogTransferStatus::InProgress { position }
                    } else {
                        LogTransferStatus::Failed {
                            reason: status.message().to_owned(),
                        }
                    }
                }
            }
            if self.stop.is_cancelled() {
                return LogTransferStatus::InProgress { position };
            }
        }
    }
}

fn outcome<T>(result: Result<T, tonic::Status>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Acked,
        Err(status) if retryable(&status) => CallOutcome::Unreachable {
            error: status.message().to_owned(),
        },
        Err(status) => CallOutcome::Refused {
            reason: status.message().to_owned(),
        },
    }
}
