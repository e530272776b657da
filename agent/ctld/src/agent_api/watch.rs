//! The agents' watch: each agent's desired state (computed once per change of what it depends
//! on, per model, and shared by the model's watchers), the migration notice and the redirect,
//! sent only when they changed; and charm downloads, limited to the charms of the agent's own
//! units.

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

/// Values of one model shared by the model's watchers on this node: each computed once, by
/// whichever watcher asks first, from reads that began at the applied index the slot names.
/// std Mutex, not tokio's: it only guards the map lookup; the computation runs outside it, in
/// the slot's `OnceCell`.
struct Slots<T> {
    models: Mutex<HashMap<String, (u64, Slot<T>)>>,
}

/// One shared value, computed at most once.
type Slot<T> = Arc<OnceCell<Arc<T>>>;

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            models: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Slots<T> {
    /// Model `uuid`'s slot if it was begun at `current_from` or later, else a new one begun at
    /// `index` (a newer slot is only fresher).
    fn slot(&self, uuid: &str, index: u64, current_from: u64) -> Slot<T> {
        let mut models = self.models.lock().expect("watch slots lock");
        match models.get(uuid) {
            Some((at, cell)) if *at >= current_from => cell.clone(),
            _ => {
                let cell = Arc::new(OnceCell::new());
                models.insert(uuid.to_owned(), (index, cell.clone()));
                cell
            }
        }
    }

    /// Forgets a destroyed model's slot, so the map stays bounded by live models (the desired
    /// state's computation finds the model gone and forgets both of its slots).
    fn forget(&self, uuid: &str) {
        self.models.lock().expect("watch slots lock").remove(uuid);
    }
}

/// Where a model is going or went, as its agents are told: the redirect (from SUCCESS on)
/// and, before it, the migration notice.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Movement {
    redirect: Option<pb::Redirect>,
    migration: Option<pb::MigrationNotice>,
}

/// What the model's watchers on this node share: the desired state, recomputed only when
/// something it depends on changed (`StateView::desired_inputs_changed_at`), and the
/// movement, read once per applied index for all of them instead of once per watcher.
#[derive(Default)]
pub(super) struct DesiredCache {
    desired: Slots<ModelDesired>,
    movement: Slots<Movement>,
}

impl DesiredCache {
    pub(super) async fn get(
        &self,
        handle: &RaftHandle,
        model_uuid: &str,
    ) -> Result<Arc<ModelDesired>, Status> {
        let state = handle.state();
        let index = state.applied_index();
        let changed = state.desired_inputs_changed_at(model_uuid);
        let cell = self.desired.slot(model_uuid, index, changed);
        cell.get_or_try_init(|| async {
            let state = handle.state();
            let description =
                read_desired_inputs(state.reader(), model_uuid).map_err(storage_error)?;
            let config = state.try_controller_config().map_err(storage_error)?;
            let interval_ms =
                u64::try_from(agent_heartbeat_interval(&config).as_millis()).unwrap_or(u64::MAX);
            if description.is_none() {
                self.desired.forget(model_uuid);
                self.movement.forget(model_uuid);
            }
            Ok(Arc::new(ModelDesired::compute(
                description.as_ref(),
                interval_ms,
            )))
        })
        .await
        .cloned()
    }

    async fn movement(
        &self,
        handle: &RaftHandle,
        model_uuid: &str,
    ) -> Result<Arc<Movement>, Status> {
        let index = handle.state().applied_index();
        let cell = self.movement.slot(model_uuid, index, index);
        cell.get_or_try_init(|| async {
            let redirect = redirect_for(handle, model_uuid)?;
            let migration = if redirect.is_some() {
                None
            } else {
                migration_notice(handle, model_uuid)?
            };
            Ok(Arc::new(Movement {
                redirect,
                migration,
            }))
        })
        .await
        .cloned()
    }
}

/// Where the agent should go instead of this controller: the model's redirect, from SUCCESS
/// on.
fn redirect_for(handle: &RaftHandle, model_uuid: &str) -> Result<Option<pb::Redirect>, Status> {
    Ok(stored::read_redirect(handle.state().reader(), model_uuid)
        .map_err(storage_error)?
        .map(|r| pb::Redirect {
            controller_name: r.controller_name,
            controller_uuid: r.controller_uuid,
            api_endpoints: r.endpoints,
            ca_cert: r.ca_cert,
        }))
}

/// The migration the model is in while its agents are told about it (CATCHUP, when they
/// validate against the target, and the fence), as the agents see it.
fn migration_notice(
    handle: &RaftHandle,
    model_uuid: &str,
) -> Result<Option<pb::MigrationNotice>, Status> {
    let reader = handle.state().reader();
    let Some(record) = stored::latest_migration(reader, model_uuid).map_err(storage_error)? else {
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

/// The last update a watch sent, with the desired state it was taken from.
pub(super) struct Sent {
    update: pb::AgentUpdate,
    desired: Arc<ModelDesired>,
    movement: Arc<Movement>,
}

impl AgentService {
    /// The update to send now, or `None` when the agent already has it.
    pub(super) async fn next_update(
        &self,
        agent: &AgentIdentity,
        last_sent: &mut Option<Sent>,
    ) -> Result<Option<pb::AgentUpdate>, Status> {
        let revision = self.handle.state().applied_index();
        let desired = self.desired.get(&self.handle, &agent.model_uuid).await?;
        let movement = self
            .desired
            .movement(&self.handle, &agent.model_uuid)
            .await?;
        // A migrated model: the agent needs nothing but where to go.
        let (units, machine_removed) = if movement.redirect.is_some() {
            (&[][..], false)
        } else {
            (
                desired.units_for(&agent.machine_id),
                desired.machine_removed(&agent.machine_id),
            )
        };
        // Most applied entries change nothing an agent sees, and every watcher of the model
        // asks at every one: the same shared values need no comparison, and nothing is cloned
        // before a difference is found.
        let same = last_sent.as_ref().is_some_and(|sent| {
            let same_source = Arc::ptr_eq(&sent.desired, &desired)
                && sent.update.redirect.is_some() == movement.redirect.is_some();
            (same_source || sent.update.units.as_slice() == units)
                && sent.update.heartbeat_interval_ms == desired.heartbeat_interval_ms
                && (Arc::ptr_eq(&sent.movement, &movement)
                    || (sent.update.redirect == movement.redirect
                        && sent.update.migration == movement.migration))
                && sent.update.machine_removed == machine_removed
        });
        if same {
            return Ok(None);
        }
        let update = pb::AgentUpdate {
            revision,
            units: units.to_vec(),
            heartbeat_interval_ms: desired.heartbeat_interval_ms,
            redirect: movement.redirect.clone(),
            migration: movement.migration.clone(),
            machine_removed,
        };
        *last_sent = Some(Sent {
            update: update.clone(),
            desired,
            movement,
        });
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
