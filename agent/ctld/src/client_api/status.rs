//! Status in the client API: the full status of a model (machine agents' presence computed
//! now), an entity's status history, and the model's log (`debug-log`, followed as this node
//! applies new records).

use std::time::Duration;

use futures::StreamExt;
use starling_proto::controller as pb;
use starling_proto::model::{self as m, Access, StatusHistory};
use starling_storage::model::agent::machine_agent_status;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use starling_storage::model::deployment::{self, derived_application_status};
use starling_storage::model::names::Entity;
use starling_storage::{keys, records};
use tonic::{Request, Response, Status};

use super::{migrations, ClientApi};
use crate::plumbing::{failpoint_value, now_unix_ms, storage_error};

/// How many records `debug-log` shows before following when no `--tail` is given.
const DEBUG_LOG_TAIL_DEFAULT: u64 = 10;
/// How many log records one read of the state returns.
const DEBUG_LOG_PAGE: usize = 500;

/// The stream type of `DebugLog`.
pub type LogStream = futures::stream::BoxStream<'static, Result<m::LogRecord, Status>>;

impl ClientApi {
    /// `Status`.
    pub(super) async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::FullStatus>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        // A sealed import here (its source is in the fence) is waited for until it is active.
        self.hold_for_activation(&caller, message.model.as_ref())
            .await?;
        let group = self.ctx.load.group_load(&self.handle).await;
        let now = now_unix_ms();
        // One applied state for every read: the model, its records, the agents' presence and
        // the migration notes never mix two applies.
        // (`resolve` and `require`, not `model_for`: the closure may run twice, and the read
        // is counted once, below.)
        let status = self.handle.state().consistent(|state| {
            let model = self.resolve(&caller, message.model.as_ref())?;
            Self::require(&caller, &model, Access::Read, "read its status")?;
            let mut description = state
                .model_description(&model.uuid)
                .map_err(storage_error)?
                .unwrap_or_default();
            // Failpoint for the tests: `client.status.between-reads=return(MS)` blocks this read
            // (its worker thread, and applies too on the pass that holds them back) for MS ms
            // after the first read, so that a command can commit before the next one.
            if let Some(ms) =
                failpoint_value("client.status.between-reads").and_then(|v| v.parse().ok())
            {
                std::thread::sleep(Duration::from_millis(ms));
            }
            // Machine agent status comes from presence, computed now from every node's record.
            let seen = state.model_presence(&model.uuid).map_err(storage_error)?;
            let interval =
                agent_heartbeat_interval(&state.try_controller_config().map_err(storage_error)?);
            for machine in &mut description.machines {
                machine.agent_status = Some(machine_agent_status(
                    machine.agent_status.as_ref(),
                    seen.get(&machine.id).copied(),
                    now,
                    interval,
                ));
            }
            // An application shows the most severe status of its units, as in Juju.
            for application in &mut description.applications {
                let units: Vec<&m::Unit> = description
                    .units
                    .iter()
                    .filter(|u| u.application == application.name)
                    .collect();
                application.status =
                    derived_application_status(application.status.as_ref(), &units);
            }
            let (_, _, _, notes) =
                migrations::summary(state.reader(), &self.ctx.progress, &model.uuid)?;
            Ok::<_, Status>(pb::FullStatus {
                notes,
                model: Some(self.model_info(model, &group)?),
                machines: description.machines,
                applications: description.applications,
                units: description.units,
                relations: description.relations,
                now_unix_ms: now,
            })
        })?;
        if let Some(model) = status.model.as_ref().and_then(|info| info.model.as_ref()) {
            self.ctx.load.read(&model.uuid);
        }
        Ok(Response::new(status))
    }

    /// `StatusLog`: the kept status history of a unit (workload and agent), an application, a
    /// machine or the model, oldest first.
    pub(super) async fn status_log(
        &self,
        request: Request<pb::StatusLogRequest>,
    ) -> Result<Response<pb::StatusLogResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self
            .model_for(
                &caller,
                message.model.as_ref(),
                Access::Read,
                "read its status log",
            )
            .await?;
        // Only a malformed name is refused here.
        let source = deployment::status_log_source(&message.entity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.handle.state();
        let reader = state.reader();
        let uuid = &model.uuid;
        let exists = match &source.entity {
            Entity::Model => true,
            Entity::Machine(number) => state
                .machine(uuid, *number)
                .map_err(storage_error)?
                .is_some(),
            Entity::Application(name) => records::read_application(reader, uuid, name)
                .map_err(storage_error)?
                .is_some(),
            Entity::Unit {
                application,
                number,
            } => records::read_unit(reader, uuid, application, *number)
                .map_err(storage_error)?
                .is_some(),
        };
        if !exists {
            return Err(Status::not_found(format!("{} not found", message.entity)));
        }
        let mut histories = Vec::new();
        for (entity, kind) in &source.histories {
            let history: Option<StatusHistory> =
                records::read_record(reader, &keys::history_key(uuid, entity))
                    .map_err(storage_error)?;
            histories.push((*kind, history.unwrap_or_default()));
        }
        let entries = deployment::merge_status_log(&histories, message.limit as usize)
            .into_iter()
            .map(|(kind, status)| pb::StatusLogEntry {
                kind: kind.to_owned(),
                status: Some(status.clone()),
            })
            .collect();
        Ok(Response::new(pb::StatusLogResponse { entries }))
    }

    /// `DebugLog`: the last records, then (with `follow`) new ones as this node applies them.
    pub(super) async fn debug_log(
        &self,
        request: Request<pb::DebugLogRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        self.barrier().await?;
        let message = request.into_inner();
        let model = self
            .model_for(
                &caller,
                message.model.as_ref(),
                Access::Read,
                "read its log",
            )
            .await?;
        let state = self.handle.state().clone();
        let last = state
            .last_log_seq(&model.uuid)
            .map_err(storage_error)?
            .unwrap_or(0);
        let tail = if message.tail == 0 {
            DEBUG_LOG_TAIL_DEFAULT
        } else {
            message.tail
        };
        let start_after = if message.replay {
            0
        } else {
            last.saturating_sub(tail)
        };
        let filter = LogFilter::new(&message);
        let handle = self.handle.clone();
        let model_uuid = model.uuid;
        let follow = message.follow;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut after = start_after;
            let mut applied = handle.state().applied_index();
            loop {
                let records = match state.model_log(&model_uuid, after, DEBUG_LOG_PAGE) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(storage_error(e))).await;
                        return;
                    }
                };
                let full_page = records.len() == DEBUG_LOG_PAGE;
                for record in records {
                    after = record.seq;
                    if filter.admits(&record) && tx.send(Ok(record)).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !follow {
                    return;
                }
                // Wake on the next applied entry, or every few seconds to notice a gone client.
                applied = handle
                    .wait_applied_past(applied, Duration::from_secs(5))
                    .await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }
}

struct LogFilter {
    level: i32,
    include: Vec<String>,
    exclude: Vec<String>,
}
impl LogFilter {
    fn new(request: &pb::DebugLogRequest) -> Self {
        Self {
            level: level_rank(request.level),
            include: request.include.clone(),
            exclude: request.exclude.clone(),
        }
    }

    fn admits(&self, record: &m::LogRecord) -> bool {
        level_rank(record.level) >= self.level
            && (self.include.is_empty() || self.include.contains(&record.entity))
            && !self.exclude.contains(&record.entity)
    }
}

/// Orders levels by severity (the proto numbers them for compatibility, not by severity).
fn level_rank(level: i32) -> i32 {
    match m::LogLevel::try_from(level).unwrap_or(m::LogLevel::Info) {
        m::LogLevel::Trace => 0,
        m::LogLevel::Debug => 1,
        m::LogLevel::Info => 2,
        m::LogLevel::Warning => 3,
        m::LogLevel::Error => 4,
    }
}
