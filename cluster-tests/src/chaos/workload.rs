//! The recorded workload of a chaos run: clients writing unique keys to, and reading the config
//! maps of, many models on whichever controller owns each (following redirects), and an
//! observer asking every controller who owns each model. Everything lands in one
//! [`Recorder`]; every call has a deadline and every loop stops when told.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use starling_proto::controller::{GetModelConfigRequest, ModelRef, SetModelConfigRequest};
use tokio::task::JoinHandle;
use tonic::Code;

use crate::client::AuthedControllerClient;
use crate::history::{OpKind, Outcome, Ownership, Recorder};

/// Deadline of one client or observer call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The process id of the observer in the history (clients are 0..n).
pub const OBSERVER_PROCESS: u64 = 1000;
/// The process id of the final reads in the history.
pub const FINAL_READ_PROCESS: u64 = 1001;
/// The process id of the migration driver in the history.
pub const DRIVER_PROCESS: u64 = 1002;

/// The phases in which a source may hold a model locked (read-only, still at its epoch): the
/// fence, and ABORT (locked until ABORTDONE when it came from the fence; writable otherwise,
/// but at the same epoch either way).
pub const LOCKED_PHASES: [&str; 2] = ["QUIESCE", "ABORT"];

/// Admin clients of every node of every controller (lazily connecting channels, so a restarted
/// node is reached again on its port).
#[derive(Clone)]
pub struct Clients {
    /// By controller name: (node id, client) for each node.
    pub nodes: BTreeMap<String, Vec<(u64, AuthedControllerClient)>>,
}

impl Clients {
    fn controllers(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    fn client(&self, controller: &str, node: u64) -> Option<AuthedControllerClient> {
        self.nodes
            .get(controller)?
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, c)| c.clone())
    }

    fn random_node(&self, controller: &str, rng: &mut StdRng) -> u64 {
        let nodes = &self.nodes[controller];
        nodes[rng.gen_range(0..nodes.len())].0
    }
}

/// The controller a redirect error names (`… migrated to controller "Y" …`).
pub fn redirect_target(status: &tonic::Status) -> Option<String> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let rest = status
        .message()
        .split("has been migrated to controller \"")
        .nth(1)?;
    Some(rest.split('"').next()?.to_owned())
}

/// Whether `status` says the controller holds the model as an import, not active yet.
pub fn importing_here(status: &tonic::Status) -> bool {
    status.code() == Code::FailedPrecondition && status.message().contains("is being imported")
}

/// What a ShowModel answer says about ownership: `None` when it is no definite answer.
pub fn ownership_of(
    answer: &Result<starling_proto::controller::ModelInfo, tonic::Status>,
) -> Option<Ownership> {
    match answer {
        Ok(info) => {
            let epoch = info.model.as_ref().map(|m| m.ownership_epoch)?;
            if LOCKED_PHASES.contains(&info.migration.as_str()) {
                Some(Ownership::Locked { epoch })
            } else {
                // No migration, PRECHECK (the source still serves), or an old record of a
                // migration that ended (the model may have come back since).
                Some(Ownership::Active { epoch })
            }
        }
        Err(status) => {
            if let Some(controller) = redirect_target(status) {
                Some(Ownership::MigratedTo { controller })
            } else if importing_here(status) {
                Some(Ownership::Importing)
            } else if status.code() == Code::NotFound {
                Some(Ownership::Absent)
            } else {
                None
            }
        }
    }
}

fn model_ref(name: &str) -> Option<ModelRef> {
    Some(ModelRef {
        name: name.to_owned(),
        uuid: String::new(),
    })
}

/// The node a leader hint names, if any.
fn leader_hint(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("leader-hint")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The running workload: clients and the observer.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// Acknowledged writes so far (all clients).
    pub acked: Arc<AtomicU64>,
}

impl Workload {
    /// Starts `n_clients` clients and one observer over `models`, whose owners are first
    /// guessed from `homes`. `generation` tells apart the keys of a workload started again on
    /// the same recorder (values must be unique across a history).
    pub fn start(
        clients: &Clients,
        recorder: &Recorder,
        models: &[String],
        homes: &BTreeMap<String, String>,
        n_clients: u64,
        seed: u64,
        generation: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for client in 0..n_clients {
            tasks.push(tokio::spawn(client_loop(
                client,
                generation,
                clients.clone(),
                recorder.clone(),
                models.to_vec(),
                homes.clone(),
                StdRng::seed_from_u64(
                    seed ^ (client + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation << 32,
                ),
                stop.clone(),
                acked.clone(),
            )));
        }
        tasks.push(tokio::spawn(observer_loop(
            clients.clone(),
            recorder.clone(),
            models.to_vec(),
            StdRng::seed_from_u64(seed ^ 0x5eed),
            stop.clone(),
        )));
        Workload { stop, tasks, acked }
    }

    /// Stops every task and waits (bounded: each call has a deadline) for them to end.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            if tokio::time::timeout(CALL_TIMEOUT * 3, task).await.is_err() {
                tracing::warn!("a workload task did not stop in time");
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    process: u64,
    generation: u64,
    clients: Clients,
    recorder: Recorder,
    models: Vec<String>,
    mut homes: BTreeMap<String, String>,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) {
    let controllers = clients.controllers();
    let mut preferred: BTreeMap<String, u64> = controllers
        .iter()
        .map(|c| (c.clone(), clients.random_node(c, &mut rng)))
        .collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let model = models[rng.gen_range(0..models.len())].clone();
        let controller = homes
            .get(&model)
            .cloned()
            .unwrap_or_else(|| controllers[0].clone());
        let node = preferred[&controller];
        let Some(mut client) = clients.client(&controller, node) else {
            break;
        };
        let error = if rng.gen_bool(0.7) {
            n += 1;
            // The first generation keeps the keys it always had.
            let key = if generation <= 1 {
                format!("c{process}-{n}")
            } else {
                format!("c{process}g{generation}-{n}")
            };
            let id = recorder.invoke(process, OpKind::append(&model, &key, &controller));
            let request = SetModelConfigRequest {
                model: model_ref(&model),
                values: [(key.clone(), key.clone())].into(),
                request_id: format!("chaos-{key}"),
            };
            let answer = tokio::time::timeout(CALL_TIMEOUT, client.set_model_config(request)).await;
            match answer {
                Ok(Ok(_)) => {
                    recorder.complete(id, Outcome::Ok);
                    acked.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Ok(Err(status)) => {
                    let definite = status.code() == Code::NotFound
                        || (status.code() == Code::FailedPrecondition
                            && (status.message().contains("locked by migration")
                                || importing_here(&status)
                                || redirect_target(&status).is_some()));
                    recorder.complete(
                        id,
                        if definite {
                            Outcome::Fail
                        } else {
                            Outcome::Unknown
                        },
                    );
                    Some(status)
                }
                Err(_) => {
                    recorder.complete(id, Outcome::Unknown);
                    Some(tonic::Status::deadline_exceeded("client timeout"))
                }
            }
        } else {
            let id = recorder.invoke(process, OpKind::read_set(&model, &controller));
            let request = GetModelConfigRequest {
                model: model_ref(&model),
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.get_model_config(request)).await {
                Ok(Ok(config)) => {
                    let values: Vec<String> = config
                        .into_inner()
                        .values
                        .into_keys()
                        .filter(|k| k.starts_with('c'))
                        .collect();
                    recorder.complete_read(id, values);
                    None
                }
                Ok(Err(status)) => {
                    recorder.complete(id, Outcome::Fail);
                    Some(status)
                }
                Err(_) => {
                    recorder.complete(id, Outcome::Unknown);
                    Some(tonic::Status::deadline_exceeded("client timeout"))
                }
            }
        };
        if let Some(status) = error {
            if let Some(target) = redirect_target(&status) {
                homes.insert(model.clone(), target);
            } else if status.code() == Code::NotFound || importing_here(&status) {
                // Importing here (not active yet, or a leftover), or gone: try the next
                // controller next time.
                let index = controllers.iter().position(|c| *c == controller);
                let next = index.map_or(0, |i| (i + 1) % controllers.len());
                homes.insert(model.clone(), controllers[next].clone());
            } else if status.code() != Code::FailedPrecondition {
                let next = leader_hint(&status)
                    .filter(|hint| clients.client(&controller, *hint).is_some())
                    .unwrap_or_else(|| clients.random_node(&controller, &mut rng));
                preferred.insert(controller.clone(), next);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..60))).await;
    }
}

async fn observer_loop(
    clients: Clients,
    recorder: Recorder,
    models: Vec<String>,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
) {
    let controllers = clients.controllers();
    while !stop.load(Ordering::Relaxed) {
        for model in &models {
            for controller in &controllers {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let node = clients.random_node(controller, &mut rng);
                let Some(mut client) = clients.client(controller, node) else {
                    continue;
                };
                observe(&recorder, &mut client, OBSERVER_PROCESS, model, controller).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks `controller` (through `client`) who owns `model`, recording the question and answer.
pub async fn observe(
    recorder: &Recorder,
    client: &mut AuthedControllerClient,
    process: u64,
    model: &str,
    controller: &str,
) -> Option<Ownership> {
    let id = recorder.invoke(process, OpKind::ownership(model, controller));
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        client.show_model(ModelRef {
            name: model.to_owned(),
            uuid: String::new(),
        }),
    )
    .await;
    let answer = match answer {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("observer timeout")),
    };
    match ownership_of(&answer) {
        Some(observed) => {
            recorder.complete_ownership(id, observed.clone());
            Some(observed)
        }
        None => {
            recorder.complete(id, Outcome::Unknown);
            None
        }
    }
}
