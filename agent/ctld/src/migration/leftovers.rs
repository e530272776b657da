//! The target's sweeper for imports nobody finishes (the fix for Juju's leftover imports that
//! block every retry). On the leader, every import idle for `migration-leftover-idle` (default
//! 5m) is asked about at its source (`SourceStatus`, authenticated with the secret the source
//! handed over), and dropped only when the source answers that it aborted the migration or has
//! no record of it. Silence never drops an import: the source may have committed SUCCESS. The
//! same question decides about files staged for an import that was never made, and about an
//! inbound log transfer that never ended (the source gave up LOGTRANSFER while this controller
//! was out of its reach): it is ended once the source answers that it is past LOGTRANSFER or
//! has no record of the migration, so the model may migrate on and backups work again.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use starling_proto::command::{command, command_result, EndLogTransfer};
use starling_proto::migration as pb;
use starling_raft::{ProposeError, Proposed};
use starling_storage::migration as stored;
use starling_storage::model::migration::{
    inbound_log_transfer_decision, target_leftover_decision, InboundLogTransfer, LogTransferAction,
    MigrationId, Observed, Phase, SourceAnswer, TargetAction, TargetImport, TargetImportState,
    TargetLimits,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::drop_import_in_chunks;
use super::peer::Peer;
use crate::context::NodeContext;
use crate::plumbing::{internal_command, now_unix_ms};

/// The longest pause between two looks at the imports.
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// The sweeper's timing: the defaults, with `migration-leftover-idle` from the controller
/// config; an answer stays fresh for at most that long too.
fn limits(ctx: &NodeContext) -> TargetLimits {
    let mut limits = TargetLimits::default();
    if let Some(idle) = ctx.config_ms("migration-leftover-idle") {
        limits.idle_before_asking_ms = idle;
        limits.ask_interval_ms = limits.ask_interval_ms.min(idle);
    }
    limits
}

/// Runs until `stop`.
pub async fn run_sweeper(ctx: NodeContext, stop: CancellationToken) {
    let mut answers: BTreeMap<String, Observed<SourceAnswer>> = BTreeMap::new();
    let mut transfer_answers: BTreeMap<String, Observed<SourceAnswer>> = BTreeMap::new();
    loop {
        let limits = limits(&ctx);
        let pause = Duration::from_millis(limits.idle_before_asking_ms / 2)
            .clamp(Duration::from_millis(500), SWEEP_INTERVAL_MAX);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if ctx.handle.current_leader() != Some(ctx.handle.node_id()) {
            continue;
        }
        sweep_log_transfers(&ctx, &limits, &mut transfer_answers).await;
        let imports = match stored::read_imports(ctx.handle.state().reader()) {
            Ok(imports) => imports,
            Err(e) => {
                warn!(error = %e, "cannot read imports");
                continue;
            }
        };
        answers.retain(|id, _| imports.iter().any(|i| &i.migration_id == id));
        for import in imports {
            let Ok(migration_id) = MigrationId::parse(&import.migration_id) else {
                continue;
            };
            let held = TargetImport {
                migration_id,
                state: TargetImportState::Imported {
                    digest: import.digest.clone(),
                    position: stored::feed_position(import.position.as_ref()),
                    sealed_index: import.sealed_index,
                },
                last_activity_unix_ms: import.imported_unix_ms,
            };
            let now = now_unix_ms();
            match target_leftover_decision(&held, answers.get(&import.migration_id), now, &limits) {
                TargetAction::Keep { .. } => {}
                TargetAction::AskSource => {
                    let answer = ask_source(
                        &import.migration_id,
                        import.source.clone().unwrap_or_default(),
                    )
                    .await;
                    info!(migration = %import.migration_id, ?answer, "asked the source about an idle import");
                    answers.insert(
                        import.migration_id.clone(),
                        Observed::at(answer, now_unix_ms()),
                    );
                }
                TargetAction::Drop { reason } => {
                    info!(migration = %import.migration_id, reason, "dropping a leftover import");
                    let dropped = drop_import_in_chunks(
                        &import.migration_id,
                        &reason,
                        "leftover-drop",
                        |request_id, op| {
                            let ctx = &ctx;
                            async move {
                                match propose(ctx, request_id, op).await {
                                    Ok(proposed) => match proposed.result.result {
                                        Some(command_result::Result::Ok(ok)) => Ok(ok),
                                        other => Err(format!("refused: {other:?}")),
                                    },
                                    Err(e) => Err(e.to_string()),
                                }
                            }
                        },
                    )
                    .await;
                    if let Err(e) = dropped {
                        warn!(error = %e, "cannot drop the leftover import yet");
                    }
                }
            }
        }
    }
}

/// One look at the inbound log transfers that have not ended (`inbound_log_transfer_decision`):
/// asks the source about an idle one, and ends one whose source is past LOGTRANSFER or has no
/// record of it. `answers` holds the source's last answer per migration id.
async fn sweep_log_transfers(
    ctx: &NodeContext,
    limits: &TargetLimits,
    answers: &mut BTreeMap<String, Observed<SourceAnswer>>,
) {
    let transfers = match stored::read_log_transfers(ctx.handle.state().reader()) {
        Ok(transfers) => transfers,
        Err(e) => {
            warn!(error = %e, "cannot read the inbound log transfers");
            return;
        }
    };
    answers.retain(|id, _| transfers.iter().any(|(_, t)| &t.migration_id == id));
    for (_, transfer) in transfers {
        let Ok(migration_id) = MigrationId::parse(&transfer.migration_id) else {
            continue;
        };
        let open = InboundLogTransfer {
            migration_id,
            last_activity_unix_ms: transfer.activated_unix_ms.max(transfer.last_batch_unix_ms),
        };
        let id = &transfer.migration_id;
        match inbound_log_transfer_decision(&open, answers.get(id), now_unix_ms(), limits) {
            LogTransferAction::Keep { .. } => {}
            LogTransferAction::AskSource => {
                // A transfer recorded by an older version has no source to ask: it stays open.
                let Some(source) = transfer.source.clone() else {
                    continue;
                };
                let answer = ask_source(id, source).await;
                info!(migration = %id, ?answer, "asked the source about an idle inbound log transfer");
                answers.insert(id.clone(), Observed::at(answer, now_unix_ms()));
            }
            LogTransferAction::End { reason } => {
                info!(migration = %id, reason, "ending an inbound log transfer");
                let op = command::Op::EndLogTransfer(EndLogTransfer {
                    migration_id: id.clone(),
                    reason,
                });
                if let Err(e) = propose(ctx, format!("leftover-log-end-{id}"), op).await {
                    warn!(error = %e, "cannot end the inbound log transfer yet");
                }
            }
        }
    }
}

/// Proposes the sweeper's internal command `op` (no caller: not checked again when it applies).
async fn propose(
    ctx: &NodeContext,
    request_id: String,
    op: command::Op,
) -> Result<Proposed, ProposeError> {
    ctx.handle.propose(internal_command(request_id, op)).await
}

/// Runs until `stop`, on every node: cleans up the node's staging area at start and then
/// periodically (`NodeStaging::sweep`), and deletes files staged for an import nobody made once
/// they have been idle for `migration-leftover-idle` and their source answers that it aborted
/// the migration or has no record of it.
pub async fn run_staging_sweeper(ctx: NodeContext, stop: CancellationToken) {
    loop {
        let idle = Duration::from_millis(limits(&ctx).idle_before_asking_ms);
        for dir in ctx.staging.sweep(idle) {
            let id = dir.migration_id.to_string();
            let source = ctx
                .staging
                .area()
                .source(&id)
                .ok()
                .flatten()
                .and_then(|bytes| pb::SourceController::decode(bytes.as_slice()).ok());
            let Some(source) = source else {
                // Nobody to ask: files that came without a source are dropped once idle.
                if let Err(e) = ctx
                    .staging
                    .remove(&dir.migration_id, "idle, with no source recorded")
                {
                    warn!(migration = %id, error = %e, "cannot delete staged files");
                }
                continue;
            };
            let answer = ask_source(&id, source).await;
            if matches!(answer, SourceAnswer::Aborted { .. } | SourceAnswer::Unknown) {
                if let Err(e) = ctx.staging.remove(
                    &dir.migration_id,
                    &format!("idle, and the source answered {answer:?}"),
                ) {
                    warn!(migration = %id, error = %e, "cannot delete staged files");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_INTERVAL_MAX) => {}
        }
    }
}

/// Asks `source` what it knows of migration `migration_id` (`SourceStatus`), within a bounded
/// time: every endpoint once, 10 s each; no answer is `Unreachable`.
pub async fn ask_source(migration_id: &str, source: pb::SourceController) -> SourceAnswer {
    use pb::source_status_response::Answer;
    let Ok(peer) = Peer::new(
        &source.endpoints,
        &source.ca_cert,
        &source.secret,
        Duration::from_secs(10),
    ) else {
        return SourceAnswer::Unreachable;
    };
    let request = pb::SourceStatusRequest {
        migration_id: migration_id.to_owned(),
    };
    let answer = peer
        .call(|mut c| {
            let r = request.clone();
            async move { c.source_status(r).await }
        })
        .await;
    let Ok(answer) = answer else {
        return SourceAnswer::Unreachable;
    };
    let phase = Phase::parse(&answer.phase).unwrap_or(Phase::Precheck);
    match Answer::try_from(answer.answer).unwrap_or(Answer::Unknown) {
        Answer::Unknown => SourceAnswer::Unknown,
        Answer::InProgress => SourceAnswer::InProgress { phase },
        Answer::Aborted => SourceAnswer::Aborted { phase },
        Answer::Committed => SourceAnswer::Committed { phase },
    }
}
