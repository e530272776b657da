//! Simulated machine agents for load tools: the credential headers a real `agentd` sends, and an
//! agent that watches, heartbeats and follows a migration the way `agentd` does (acknowledges
//! the quiesce, logs in to the target in VALIDATION, switches on the redirect), without running
//! workloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;
use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::{
    HeartbeatRequest, MigrationReportRequest, ValidateLoginRequest, WatchRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::tls_channel;

/// The parts of an agent config (`ctl add-machine`'s file) a simulated agent needs.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentConfigYaml {
    /// The model.
    pub model_uuid: String,
    /// The machine.
    pub machine_id: String,
    /// The agent's credential.
    pub credential: String,
}

/// Adds an agent's three authentication headers to every call.
#[derive(Clone)]
pub struct AgentAuth {
    authorization: MetadataValue<Ascii>,
    model_uuid: MetadataValue<Ascii>,
    machine_id: MetadataValue<Ascii>,
}

impl Interceptor for AgentAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        metadata.insert("x-model-uuid", self.model_uuid.clone());
        metadata.insert("x-machine-id", self.machine_id.clone());
        Ok(request)
    }
}

impl AgentAuth {
    /// Where this agent starts in a list of `count` controller endpoints, as `agentd` does
    /// (`starling_proto::endpoints`).
    pub fn first_endpoint(&self, count: usize) -> usize {
        starling_proto::endpoints::first_endpoint(
            self.model_uuid.to_str().unwrap_or_default(),
            self.machine_id.to_str().unwrap_or_default(),
            count,
        )
    }

    /// The headers of the agent `config` describes.
    pub fn new(config: &AgentConfigYaml) -> Result<Self> {
        Ok(Self {
            authorization: format!("Bearer {}", config.credential).parse()?,
            model_uuid: config.model_uuid.parse()?,
            machine_id: config.machine_id.parse()?,
        })
    }
}

/// Makes (or shares) a channel to a controller endpoint, trusting a CA (PEM).
pub type ChannelFactory = Arc<dyn Fn(&str, &str) -> Result<Channel> + Send + Sync>;

/// What a fleet of simulated migrating agents observed.
#[derive(Default)]
pub struct MigrationCounters {
    /// Agents whose watch on their first controller delivered an update.
    pub connected: AtomicU64,
    /// Validation reports accepted.
    pub validated: AtomicU64,
    /// Agents that received an update from the controller they were redirected to.
    pub switched: AtomicU64,
    /// Failed calls (retried).
    pub errors: AtomicU64,
    /// When the last agent got its first update from the new controller.
    pub last_switch: Mutex<Option<Instant>>,
}

/// Validation logins a simulated agent makes against a target that is not ready, and the pause
/// between them.
const VALIDATION_ATTEMPTS: usize = 50;
const VALIDATION_RETRY: Duration = Duration::from_millis(200);

/// One simulated agent until `until`: watches through `channel`, heartbeats, and follows a
/// migration.
/// `target_channel` makes the channel to a controller named by a notice or redirect
/// (endpoint, CA PEM); agents of one fleet share them through it.
pub async fn run_migrating_agent(
    channel: Channel,
    auth: AgentAuth,
    counters: Arc<MigrationCounters>,
    target_channel: ChannelFactory,
    until: tokio::time::Instant,
) {
    let mut channel = channel;
    let mut redirected = false;
    let mut first_update = true;
    let mut validated: Option<String> = None;
    while tokio::time::Instant::now() < until {
        let mut client = AgentClient::with_interceptor(channel.clone(), auth.clone());
        let mut stream = match client.watch(WatchRequest { known_revision: 0 }).await {
            Ok(response) => response.into_inner(),
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut interval = Duration::from_secs(1);
        let mut next_heartbeat = tokio::time::Instant::now();
        let mut got_update_here = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                message = stream.message() => {
                    let Ok(Some(update)) = message else {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    };
                    if update.heartbeat_interval_ms > 0 {
                        interval = Duration::from_millis(update.heartbeat_interval_ms);
                    }
                    if !got_update_here {
                        got_update_here = true;
                        if first_update {
                            first_update = false;
                            counters.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        if redirected {
                            counters.switched.fetch_add(1, Ordering::Relaxed);
                            *counters.last_switch.lock().expect("lock") = Some(Instant::now());
                        }
                    }
                    if let Some(redirect) = update.redirect.filter(|r| !r.api_endpoints.is_empty()) {
                        let endpoint = &redirect.api_endpoints[auth.first_endpoint(redirect.api_endpoints.len())];
                        match target_channel(endpoint, &redirect.ca_cert) {
                            Ok(next) => {
                                channel = next;
                                redirected = true;
                            }
                            Err(_) => {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        break;
                    }
                    if let Some(notice) = update.migration {
                        let id = notice.migration_id.clone();
                        // Agents validate in CATCHUP, while the model is still writable; the fence
                        // (QUIESCE) asks nothing of them.
                        if notice.phase == "CATCHUP" && validated.as_deref() != Some(&id) {
                            let target = notice.target.unwrap_or_default();
                            // As agentd does: a target that is not ready (it does not know this
                            // machine yet, or its group is electing a leader) is asked again
                            // after a pause, a bounded number of times, then on the next update.
                            let mut outcome = Err((tonic::Code::Unavailable, String::new()));
                            match target
                                .api_endpoints
                                .get(auth.first_endpoint(target.api_endpoints.len()))
                                .map(|e| target_channel(e, &target.ca_cert))
                            {
                                Some(Ok(channel)) => {
                                    let mut client = AgentClient::with_interceptor(channel, auth.clone());
                                    for _ in 0..VALIDATION_ATTEMPTS {
                                        outcome = client
                                            .validate_login(ValidateLoginRequest {
                                                migration_id: id.clone(),
                                            })
                                            .await
                                            .map(|_| ())
                                            .map_err(|e| (e.code(), e.message().to_owned()));
                                        if !matches!(&outcome, Err((tonic::Code::Unavailable, _))) {
                                            break;
                                        }
                                        tokio::time::sleep(VALIDATION_RETRY).await;
                                    }
                                }
                                _ => {
                                    outcome = Err((tonic::Code::InvalidArgument, "no usable target endpoint".to_owned()));
                                }
                            }
                            if matches!(&outcome, Err((tonic::Code::Unavailable, _))) {
                                continue;
                            }
                            let outcome = outcome.map_err(|(_, message)| message);
                            let report = MigrationReportRequest {
                                migration_id: id.clone(),
                                phase: "CATCHUP".into(),
                                ok: outcome.is_ok(),
                                reason: outcome.err().unwrap_or_default(),
                            };
                            if client.migration_report(report).await.is_ok() {
                                validated = Some(id);
                                counters.validated.fetch_add(1, Ordering::Relaxed);
                            } else {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    if client.heartbeat(HeartbeatRequest {}).await.is_err() {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    next_heartbeat = tokio::time::Instant::now() + interval;
                }
            }
        }
    }
}

/// A channel factory that shares one channel per (endpoint, CA) among `per_channel` agents.
pub fn shared_channels(per_channel: usize, rpc_timeout: Duration) -> ChannelFactory {
    type Pool = std::collections::HashMap<String, (Vec<Channel>, usize)>;
    let pool: Arc<Mutex<Pool>> = Arc::default();
    Arc::new(move |endpoint: &str, ca: &str| {
        let mut pool = pool.lock().expect("lock");
        let (channels, uses) = pool.entry(endpoint.to_owned()).or_default();
        if channels.is_empty() || *uses >= per_channel {
            channels.push(tls_channel(endpoint, ca, None, rpc_timeout)?);
            *uses = 0;
        }
        *uses += 1;
        Ok(channels.last().expect("a channel").clone())
    })
}
