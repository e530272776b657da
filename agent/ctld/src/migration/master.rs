//! The migration master. On the node that leads the source's Raft group, one driver per
//! migration that has not ended: it reads the persisted record (after a read-index barrier),
//! asks `next_action` what to do, and does it: a proposal for a commit, a call to the target or
//! a read for an observation. It keeps nothing but observations, so the master of a new leader
//! resumes from the persisted phase; every step is idempotent on the migration id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::command::{
    command, migration_progress::Fact, AgentValidation, Command, MigrationProgress,
    MigrationTransition, ReapModel,
};
use starling_proto::migration as pb;
use starling_proto::model::Life;
use starling_storage::export::{description_bytes, description_digest};
use starling_storage::migration as stored;
use starling_storage::model::migration::{
    next_action, Action, AgentReport, CallOutcome, ImportStatus, Limits, LogTransferStatus,
    MigrationId, MigrationRecord, Observations, Observed, Phase, PrecheckReport, Progress,
    ReapResult, RefusedCommit,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::peer::{retryable, Peer};
use super::{failpoint, failpoint_value, prechecks, stager};
use crate::context::NodeContext;
use crate::plumbing::now_unix_ms;

/// How often the supervisor looks for migrations to drive.
const SCAN_INTERVAL: Duration = Duration::from_millis(300);
/// Longest sleep of a waiting driver before it re-reads the record (abort requests, agents).
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Log records per transfer call.
const LOG_BATCH: usize = 500;
/// Deadline of one call to the target.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs until `stop`: while this node leads, a driver for every migration that has not ended.
pub async fn run_masters(ctx: NodeContext, stop: CancellationToken) {
    let mut drivers: BTreeMap<String, (CancellationToken, JoinHandle<()>)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
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

/// The master's deadlines: the defaults, with `migration-quiesce-timeout`,
/// `migration-import-timeout` and `migration-abort-drop-timeout` from the controller config.
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
    limits
}

/// One migration's driver.
struct Driver {
    ctx: NodeContext,
    id: MigrationId,
    key: String,
    stop: CancellationToken,
    obs: Observations,
    peer: Option<Peer>,
}

impl Driver {
    fn new(ctx: NodeContext, id: MigrationId, stop: CancellationToken) -> Self {
        let key = id.to_string();
        Driver {
            ctx,
            id,
            key,
            stop,
            obs: Observations::default(),
            peer: None,
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
        self.ctx.progress.update(&self.key, |p| p.activity = text);
    }

    /// Reads the record, decides, acts. `false` when the migration has ended.
    async fn step(&mut self) -> anyhow::Result<bool> {
        self.ctx
            .handle
            .linearizable_barrier()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(stored_record) =
            stored::read_migration(self.ctx.handle.state().reader(), &self.id)?
        else {
            warn!(migration = %self.key, "the migration record vanished");
            return Ok(false);
        };
        let record = stored::to_logic(&stored_record)?;
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
        self.act(&stored_record, &record, action).await?;
        Ok(true)
    }

    async fn propose(
        &self,
        request_id: String,
        op: command::Op,
    ) -> anyhow::Result<Result<(), String>> {
        let command = Command {
            request_id,
            op: Some(op),
            proposed_unix_ms: now_unix_ms(),
            caller: String::new(),
            authority: None,
        };
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
            Some(starling_proto::command::command_result::Result::Error(e)) => Err(e.message),
            _ => Ok(()),
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
    /// acts on (it aborts with the reason, or waits a retry interval), never proposed again
    /// at once. A refusal because the record moved on is from an older phase and is ignored.
    fn refused(&mut self, from: Phase, to: Option<Phase>, reason: String) {
        warn!(migration = %self.key, %from, to = ?to, reason, "commit refused");
        self.obs.refused = Some(Observed::at(
            RefusedCommit { from, to, reason },
            now_unix_ms(),
        ));
    }

    async fn transition(&mut self, from: Phase, to: Phase, reason: &str) -> anyhow::Result<()> {
        let op = command::Op::MigrationTransition(MigrationTransition {
            migration_id: self.key.clone(),
            to: to.as_str().to_owned(),
            reason: reason.to_owned(),
        });
        match self.propose(self.request_id(to.as_str()), op).await? {
            Ok(()) => info!(migration = %self.key, phase = %to, reason, "migration phase"),
            Err(refused) => self.refused(from, Some(to), refused),
        }
        Ok(())
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
            Progress::SourceDigest(d) => Fact::SourceDigest(d),
            Progress::TargetDigest(d) => Fact::TargetDigest(d),
            Progress::LogPosition(p) => Fact::LogPosition(p),
        };
        let op = command::Op::MigrationProgress(MigrationProgress {
            migration_id: self.key.clone(),
            fact: Some(fact),
        });
        if let Err(refused) = self.propose(self.request_id("fact"), op).await? {
            self.refused(from, None, refused);
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
            Action::Lock
            | Action::CommitSuccess
            | Action::Transition { .. }
            | Action::Unlock { .. } => {
                let (to, reason) = action
                    .commits(record.phase)
                    .expect("a commit action names its phase");
                if to == Phase::Success {
                    if let Some(reason) = failpoint("migration.source.commit-success") {
                        warn!(migration = %self.key, reason, "not committing SUCCESS yet");
                        self.sleep(Duration::from_secs(1)).await;
                        return Ok(());
                    }
                }
                self.transition(record.phase, to, &reason).await?;
            }
            Action::ReadMachines => {
                let description = self
                    .ctx
                    .handle
                    .state()
                    .model_description(&self.id.model_uuid)?
                    .unwrap_or_default();
                let machines: BTreeSet<String> = description
                    .machines
                    .iter()
                    .filter(|m| m.life == Life::Alive as i32)
                    .map(|m| m.id.clone())
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
                let what = if record.phase == Phase::Quiesce {
                    "waiting for agents to quiesce"
                } else {
                    "waiting for agents to log in to the target"
                };
                self.activity(format!(
                    "{what} ({} missing: machine(s) {})",
                    missing.len(),
                    missing.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                self.wait_until(until_unix_ms).await;
            }
            Action::StreamExport { .. } => {
                let (digest, status) = self.stream_export(stored_record).await?;
                self.obs.source_digest = Some(digest);
                self.obs.import = Some(Observed::at(status, now_unix_ms()));
            }
            Action::Record(progress) => self.record(record.phase, progress).await?,
            Action::CompareDigests => {
                self.activity("comparing digests");
                let description = self
                    .ctx
                    .handle
                    .state()
                    .model_description(&self.id.model_uuid)?
                    .ok_or_else(|| anyhow::anyhow!("the locked model vanished"))?;
                self.obs.source_digest = Some(description_digest(&description));
                let status = self.import_status().await;
                self.obs.import = Some(Observed::at(status, now_unix_ms()));
            }
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
                    self.transition(
                        record.phase,
                        Phase::Abort,
                        "planted bug: Activate was not acknowledged",
                    )
                    .await?;
                    return Ok(());
                } else {
                    warn!(migration = %self.key, ?outcome, "activate not acknowledged; retrying");
                }
                self.obs.activate = Some(Observed::at(outcome, now_unix_ms()));
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
                let op = command::Op::ReapModel(ReapModel {
                    migration_id: self.key.clone(),
                });
                self.obs.reap = Some(match self.propose(self.request_id("reap"), op).await? {
                    Ok(()) => ReapResult::Done,
                    Err(reason) => ReapResult::Failed { reason },
                });
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
            Action::Wait { until_unix_ms } => self.wait_until(until_unix_ms).await,
        }
        Ok(())
    }

    async fn wait_until(&self, until_unix_ms: i64) {
        let left = until_unix_ms.saturating_sub(now_unix_ms()).max(0) as u64;
        self.sleep(Duration::from_millis(left).min(POLL_INTERVAL))
            .await;
    }

    async fn prechecks(&self, record: &MigrationRecord) -> anyhow::Result<Vec<String>> {
        let Some(model) = self.ctx.handle.state().model(&self.id.model_uuid)? else {
            return Ok(vec![format!(
                "model {} no longer exists",
                self.id.model_uuid
            )]);
        };
        let mut failures = prechecks::source_checks(&self.ctx, &model, Some(&self.key))
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
            Ok(answer) => import_answer(answer, true),
            Err(status) => ImportStatus::Unreachable {
                error: status.message().to_owned(),
            },
        }
    }

    /// Stages the locked model's description and the charms the target lacks on the target
    /// (each resumed where the target stopped), then asks it to import them.
    async fn stream_export(
        &self,
        stored_record: &pb::MigrationRecord,
    ) -> anyhow::Result<(String, ImportStatus)> {
        let state = self.ctx.handle.state().clone();
        let description = state
            .model_description(&self.id.model_uuid)?
            .ok_or_else(|| anyhow::anyhow!("the locked model vanished"))?;
        let bytes = description_bytes(&description);
        let digest = description_digest(&description);
        let records = (1
            + description.machines.len()
            + description.applications.len()
            + description.units.len()
            + description.relations.len()
            + description.status_history.len()) as u64;
        if let Some(reason) = failpoint("migration.source.stream") {
            return Ok((digest, ImportStatus::Unreachable { error: reason }));
        }
        self.ctx.progress.update(&self.key, |p| {
            p.bytes_total = bytes.len() as u64;
            p.records_total = records;
        });
        let mut files = Vec::with_capacity(description.charm_digests.len() + 1);
        for charm in &description.charm_digests {
            let blob = state
                .blob(charm)?
                .ok_or_else(|| anyhow::anyhow!("charm {charm} is missing on this controller"))?;
            files.push(stager::Outgoing {
                file: pb::StagedFile {
                    digest: charm.clone(),
                    size: blob.size,
                },
                content: stager::Content::Blob(state.clone()),
            });
        }
        files.push(stager::Outgoing {
            file: pb::StagedFile {
                digest: digest.clone(),
                size: bytes.len() as u64,
            },
            content: stager::Content::Bytes(Arc::new(bytes)),
        });
        let source = pb::SourceController {
            controller_uuid: self.ctx.identity.controller_uuid.clone(),
            name: self.ctx.identity.controller_name.clone(),
            endpoints: self.ctx.endpoints(),
            ca_cert: self.ctx.ca_cert.clone(),
            secret: stored_record.source_secret.clone(),
        };
        let started = Instant::now();
        let staged = stager::stage(self.peer(), &self.key, &source, &files, |sent, total| {
            self.ctx.progress.update(&self.key, |p| {
                p.bytes_sent = sent;
                p.bytes_total = total;
                p.activity = format!(
                    "staging the model on controller \"{}\"",
                    stored_record
                        .target
                        .as_ref()
                        .map_or("", |t| t.name.as_str()),
                );
            });
        })
        .await;
        let staged = match staged {
            Ok(staged) => staged,
            Err(status) => return Ok((digest, stage_failure(status))),
        };
        self.activity("importing model");
        let request = pb::ImportRequest {
            migration_id: self.key.clone(),
            description_digest: digest,
            source: Some(source),
            staged: staged.files,
        };
        let status = match self
            .peer()
            .call(|mut c| {
                let r = request.clone();
                async move { c.import(r).await }
            })
            .await
        {
            Ok(answer) => import_answer(answer, false),
            Err(status) if retryable(&status) => ImportStatus::Unreachable {
                error: status.message().to_owned(),
            },
            Err(status) => ImportStatus::Failed {
                reason: format!("the target refused the import: {}", status.message()),
            },
        };
        if let ImportStatus::Imported { .. } = status {
            let took = started.elapsed();
            info!(
                migration = %self.key,
                bytes = staged.bytes_staged,
                sent = staged.bytes_sent,
                records,
                ms = took.as_millis() as u64,
                "staged and imported"
            );
            self.ctx.progress.update(&self.key, |p| {
                p.import_ms = took.as_millis() as u64;
                p.import_bytes = staged.bytes_staged;
            });
        }
        Ok((request.description_digest, status))
    }

    /// Tells the target that no more log records come (idempotent: the same request id).
    async fn end_log_transfer(&self) -> Result<(), tonic::Status> {
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
            match self
                .peer()
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.transfer_log(r).await }
                })
                .await
            {
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

fn stage_failure(status: tonic::Status) -> ImportStatus {
    if retryable(&status) {
        ImportStatus::Unreachable {
            error: format!("staging the model on the target: {}", status.message()),
        }
    } else {
        ImportStatus::Failed {
            reason: format!("the target refused the staged model: {}", status.message()),
        }
    }
}

fn import_answer(answer: pb::ImportStatusResponse, repeat: bool) -> ImportStatus {
    use pb::import_status_response::State;
    match State::try_from(answer.state).unwrap_or(State::NotStarted) {
        State::NotStarted => ImportStatus::NotStarted,
        State::Imported | State::Active if repeat => ImportStatus::AlreadyImported {
            digest: answer.digest,
        },
        State::Imported | State::Active => ImportStatus::Imported {
            digest: answer.digest,
        },
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
