//! The agents' watch: each agent's desired state (computed once per applied index per model and
//! shared by the model's watchers), the migration notice and the redirect, sent only when they
//! changed; and charm downloads, limited to the charms of the agent's own units.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use starling_proto::agent as pb;
use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use starling_storage::model::controller_config::agent_heartbeat_interval;
use starling_storage::model::desired::{read_desired_inputs, ModelDesired};
use starling_storage::model::migration::Phase;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};
use tracing::{debug, instrument};

use super::{AgentIdentity, AgentService};
use crate::plumbing::{blob_chunks, storage_error};

/// Updates a watch stream buffers for a slow agent before it waits.
const WATCH_CHANNEL_CAPACITY: usize = 2;
/// Longest a watch sleeps without re-checking that this node is still in its group.
const WATCH_WAKE_MAX: Duration = Duration::from_secs(2);

/// The stream type of `Watch`.
pub type WatchStream = futures::stream::BoxStream<'static, Result<pb::AgentUpdate, Status>>;
/// The stream type of `DownloadCharm`.
pub type AgentChunkStream = futures::stream::BoxStream<'static, Result<pb::AgentChunk, Status>>;

/// One model's desired state at the newest index any watcher asked for.
type DesiredSlot = (u64, Arc<OnceCell<Arc<ModelDesired>>>);

/// Per-model cache of `ModelDesired`. std Mutex, not tokio's: it only guards the map lookup;
/// the computation runs outside it, once per index, in the slot's `OnceCell`.
#[derive(Default)]
pub(super) struct DesiredCache {
    models: Mutex<HashMap<String, DesiredSlot>>,
}

impl DesiredCache {
    pub(super) async fn get(
        &self,
        handle: &RaftHandle,
        model_uuid: &str,
    ) -> Result<Arc<ModelDesired>, Status> {
        let index = handle.state().applied_index();
        let cell = {
            let mut models = self.models.lock().expect("desired cache lock");
            match models.get(model_uuid) {
                // A slot at this index or a newer one serves (newer is only fresher).
                Some((at, cell)) if *at >= index => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    models.insert(model_uuid.to_owned(), (index, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async {
            let state = handle.state();
            let description =
                read_desired_inputs(state.reader(), model_uuid).map_err(storage_error)?;
            let config = state.try_controller_config().map_err(storage_error)?;
            let interval_ms =
                u64::try_from(agent_heartbeat_interval(&config).as_millis()).unwrap_or(u64::MAX);
            if description.is_none() {
                // Forget a destroyed model's slot, so the map stays bounded by live models.
                self.models
                    .lock()
                    .expect("desired cache lock")
                    .remove(model_uuid);
            }
            Ok(Arc::new(ModelDesired::compute(
                description.as_ref(),
                interval_ms,
            )))
        })
        .await
        .cloned()
    }
}

impl AgentService {
    /// Where the agent should go instead of this controller: the model's redirect, from
    /// SUCCESS on.
    pub(super) fn redirect_for(&self, model_uuid: &str) -> Result<Option<pb::Redirect>, Status> {
        Ok(
            stored::read_redirect(self.handle.state().reader(), model_uuid)
                .map_err(storage_error)?
                .map(|r| pb::Redirect {
                    controller_name: r.controller_name,
                    controller_uuid: r.controller_uuid,
                    api_endpoints: r.endpoints,
                    ca_cert: r.ca_cert,
                }),
        )
    }

    /// The migration the model is in while its agents are told about it (CATCHUP, when they
    /// validate against the target, and the fence), as the agents see it.
    pub(super) fn migration_notice(
        &self,
        model_uuid: &str,
    ) -> Result<Option<pb::MigrationNotice>, Status> {
        let reader = self.handle.state().reader();
        let Some(record) = stored::latest_migration(reader, model_uuid).map_err(storage_error)?
        else {
            return Ok(None);
        };
        let phase = Phase::parse(&record.phase);
        if !phase.is_some_and(Phase::notifies_agents) {
            return Ok(None);
        }
        let migration_id = stored::record_id(&record).to_string();
        let target = record.target.unwrap_or_default();
        Ok(Some(pb::MigrationNotice {
            migration_id,
            phase: record.phase,
            target: Some(pb::Redirect {
                controller_name: target.name,
                controller_uuid: target.controller_uuid,
                api_endpoints: target.endpoints,
                ca_cert: target.ca_cert,
            }),
        }))
    }

    /// The update to send now, or `None` when the agent already has it.
    pub(super) async fn next_update(
        &self,
        agent: &AgentIdentity,
        last_sent: &mut Option<pb::AgentUpdate>,
    ) -> Result<Option<pb::AgentUpdate>, Status> {
        let revision = self.handle.state().applied_index();
        let desired = self.desired.get(&self.handle, &agent.model_uuid).await?;
        let redirect = self.redirect_for(&agent.model_uuid)?;
        let migration = if redirect.is_some() {
            None
        } else {
            self.migration_notice(&agent.model_uuid)?
        };
        // A migrated model: the agent needs nothing but where to go.
        let (units, machine_removed) = if redirect.is_some() {
            (&[][..], false)
        } else {
            (
                desired.units_for(&agent.machine_id),
                desired.machine_removed(&agent.machine_id),
            )
        };
        // Compared before anything is cloned: most applied entries change nothing an agent
        // sees, and every watcher of the model asks at every one.
        let same = last_sent.as_ref().is_some_and(|sent| {
            sent.units.as_slice() == units
                && sent.heartbeat_interval_ms == desired.heartbeat_interval_ms
                && sent.redirect == redirect
                && sent.machine_removed == machine_removed
                && sent.migration == migration
        });
        if same {
            return Ok(None);
        }
        let update = pb::AgentUpdate {
            revision,
            units: units.to_vec(),
            heartbeat_interval_ms: desired.heartbeat_interval_ms,
            redirect,
            migration,
            machine_removed,
        };
        *last_sent = Some(update.clone());
        Ok(Some(update))
    }

    /// Sends the machine's desired state into `tx` until the machine is removed, the client
    /// goes away or the node stops.
    pub(super) async fn watch_loop(
        self,
        agent: AgentIdentity,
        tx: tokio::sync::mpsc::Sender<Result<pb::AgentUpdate, Status>>,
    ) {
        let mut last_sent = None;
        let mut applied = self.handle.state().applied_index();
        // The desired state changes only with the applied state; a wake-up without a new
        // entry only re-checks that this node is still in its group.
        let mut changed = true;
        loop {
            if let Err(status) = self.refuse_if_cut_off() {
                debug!(machine = %agent.machine_id, "watch ended: this node is cut off");
                let _ = tx.send(Err(status)).await;
                return;
            }
            let next = if changed {
                self.next_update(&agent, &mut last_sent).await
            } else {
                Ok(None)
            };
            match next {
                Ok(Some(update)) => {
                    let ends = update.machine_removed || update.redirect.is_some();
                    tokio::select! {
                        sent = tx.send(Ok(update)) => if sent.is_err() { return },
                        _ = self.stop.cancelled() => return,
                    }
                    if ends {
                        debug!(machine = %agent.machine_id, "watch ended: machine removed or moved");
                        return;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            tokio::select! {
                now = self.handle.wait_applied_past(applied, WATCH_WAKE_MAX) => {
                    changed = now != applied;
                    applied = now;
                }
                _ = tx.closed() => return,
                _ = self.stop.cancelled() => return,
            }
        }
    }

    #[instrument(skip_all, fields(node_id = self.handle.node_id()))]
    pub(super) async fn watch_call(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.refuse_if_cut_off()?;
        let agent = self.authenticate(&request).await?;
        self.refuse_importing(&agent.model_uuid).await?;
        self.mark_present(&agent).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_CHANNEL_CAPACITY);
        // Counted as connected here while its watch lives.
        let connection = self.load.agent_connected(&agent.model_uuid);
        let watch = self.clone().watch_loop(agent, tx);
        tokio::spawn(async move {
            watch.await;
            drop(connection);
        });
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }

    pub(super) async fn download_charm_call(
        &self,
        request: Request<pb::AgentDownloadRequest>,
    ) -> Result<Response<AgentChunkStream>, Status> {
        let agent = self.authenticate(&request).await?;
        let digest = request.into_inner().digest;
        let desired = self.desired.get(&self.handle, &agent.model_uuid).await?;
        let used = desired
            .units_by_machine
            .get(&agent.machine_id)
            .is_some_and(|units| units.iter().any(|u| u.charm_digest == digest));
        if !used {
            return Err(Status::permission_denied(format!(
                "no unit on machine {} uses charm {digest}",
                agent.machine_id
            )));
        }
        let chunks = blob_chunks(self.handle.clone(), digest).await?;
        Ok(Response::new(
            chunks
                .map(|chunk| {
                    chunk.map(|(digest, size, offset, data)| pb::AgentChunk {
                        digest,
                        size,
                        offset,
                        data,
                    })
                })
                .boxed(),
        ))
    }
}
