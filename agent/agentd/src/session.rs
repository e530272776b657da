//! `Session`: the machine agent's connection to its controller. Dials the endpoints in turn
//! (backoff 100ms..5s with jitter), keeps one Watch stream open and forwards every
//! `AgentUpdate`, heartbeats, flushes the report outbox in order, and follows a redirect to
//! another controller by rewriting the agent config. Network trouble is never fatal; a refused
//! credential is (except from a controller the agent was just redirected to, which may not
//! know the model yet).
//!
//! The outbox is flushed once the connection's first update has arrived (it says whether the
//! model moved). While an update carries a `MigrationNotice` (see `migration`) reports go on as
//! usual and a per-connection task validates the agent's login against the target.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::{
    AgentUpdate, HeartbeatRequest, MigrationNotice, Redirect, ReportRequest, WatchRequest,
};
use starling_proto::endpoints::first_endpoint;
use starling_proto::limits::MESSAGE_BYTES_MAX;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::context::AgentContext;
use crate::migration::{run_duties, MigrationChange, MigrationTracker};
use crate::reports::status;
use starling_daemon::agent_config::AgentConfig;
use starling_daemon::files::write_yaml;

/// Deadline of one unary call.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a TCP + TLS connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat period until the controller says otherwise.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Reconnect backoff bounds.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often the outbox is retried even without news.
const FLUSH_PERIOD: Duration = Duration::from_secs(1);
/// Batches sent per flush before the session looks at its stream again.
const FLUSH_BATCHES_MAX: usize = 8;
/// After following a redirect, how long the new controller's "unauthenticated" is taken for
/// "not ready for this model yet" rather than a refused credential.
const REDIRECT_AUTH_GRACE: Duration = Duration::from_secs(60);
/// A redirect followed sooner than this after the previous one waits a backoff first (two
/// controllers sending the agent to each other must not make it spin).
const REDIRECT_REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// The agent's credentials as call metadata (`authorization: Bearer`, `x-model-uuid`,
/// `x-machine-id`): the same on every controller the model lives on.
#[derive(Debug, Clone)]
pub struct AuthMetadata {
    authorization: AsciiMetadataValue,
    model_uuid: AsciiMetadataValue,
    machine_id: AsciiMetadataValue,
}

impl AuthMetadata {
    /// The metadata of `config`'s credential (fails when a value is not printable ASCII).
    pub fn new(config: &AgentConfig) -> Result<Self> {
        Ok(Self {
            authorization: format!("Bearer {}", config.credential)
                .parse()
                .context("the agent config's credential is not printable ASCII")?,
            model_uuid: config
                .model_uuid
                .parse()
                .context("the agent config's model-uuid is not printable ASCII")?,
            machine_id: config
                .machine_id
                .parse()
                .context("the agent config's machine-id is not printable ASCII")?,
        })
    }

    /// Where this agent starts in a list of `count` controller endpoints (see
    /// `starling_proto::endpoints`).
    pub fn first_endpoint(&self, count: usize) -> usize {
        first_endpoint(
            self.model_uuid.to_str().unwrap_or_default(),
            self.machine_id.to_str().unwrap_or_default(),
            count,
        )
    }

    /// Adds the credential to a call's metadata.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        metadata.insert("authorization", self.authorization.clone());
        metadata.insert("x-model-uuid", self.model_uuid.clone());
        metadata.insert("x-machine-id", self.machine_id.clone());
    }
}

/// A connected client plus the agent's auth metadata.
#[derive(Debug, Clone)]
pub struct ControllerCaller {
    client: AgentClient<Channel>,
    auth: Arc<AuthMetadata>,
}

impl ControllerCaller {
    /// The gRPC client (cheap clone of one channel).
    pub fn client(&self) -> AgentClient<Channel> {
        self.client.clone()
    }

    /// `message` with the auth metadata.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.auth.apply(request.metadata_mut());
        request
    }

    /// The agent's credential as call metadata.
    pub fn auth(&self) -> &AuthMetadata {
        &self.auth
    }
}

/// Aborts a spawned task when dropped (the per-connection migration duties end with the
/// connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A redirect the agent followed and whose controller has not sent an update yet.
#[derive(Debug, Clone)]
struct PendingSwitch {
    since: Instant,
    /// The migration that moved the model, when the agent saw its notice.
    migration: Option<String>,
}

/// Checks what the session needs from the config before it starts (fatal when wrong).
pub fn validate_config(config: &AgentConfig) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    AuthMetadata::new(config)?;
    if config.api_endpoints.is_empty() {
        bail!("the agent config has no api-endpoints");
    }
    let certs = CertificateDer::pem_slice_iter(config.ca_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the agent config's ca-cert is not valid PEM: {e}"))?;
    if certs.is_empty() {
        bail!("the agent config's ca-cert holds no certificate");
    }
    Ok(())
}

/// Why a connection ended.
enum Ended {
    /// Try again (another endpoint, after a backoff).
    Retry(String),
    /// The model moved: the config now names the new controller.
    Redirected,
}

/// The controller connection.
pub struct Session {
    ctx: Arc<AgentContext>,
    config_path: PathBuf,
    config: AgentConfig,
    updates: watch::Sender<Option<AgentUpdate>>,
    known_revision: u64,
    heartbeat: Duration,
    migration: MigrationTracker,
    switch: Option<PendingSwitch>,
    last_redirect: Option<Instant>,
}

impl Session {
    /// A session for `config` (read from `config_path`), publishing updates on `updates`.
    pub fn new(
        ctx: Arc<AgentContext>,
        config_path: PathBuf,
        config: AgentConfig,
        updates: watch::Sender<Option<AgentUpdate>>,
    ) -> Self {
        Self {
            ctx,
            config_path,
            config,
            updates,
            known_revision: 0,
            heartbeat: HEARTBEAT_DEFAULT,
            migration: MigrationTracker::default(),
            switch: None,
            last_redirect: None,
        }
    }

    /// Runs until the controller refuses the credential (the error) or the task is dropped.
    pub async fn run(mut self) -> Result<()> {
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        // Each agent starts at its own endpoint, so a model's agents spread over the nodes.
        let first = |config: &AgentConfig| {
            first_endpoint(
                &config.model_uuid,
                &config.machine_id,
                config.api_endpoints.len(),
            )
        };
        let mut endpoint_idx = first(&self.config);
        loop {
            let endpoints = self.config.api_endpoints.clone();
            let endpoint = endpoints[endpoint_idx % endpoints.len()].clone();
            let auth = Arc::new(AuthMetadata::new(&self.config)?);
            let ended = match connect(&endpoint, &self.config.ca_cert).await {
                Ok(channel) => {
                    let caller = ControllerCaller {
                        // A machine with many units gets updates beyond tonic's 4 MiB default.
                        client: AgentClient::new(channel)
                            .max_decoding_message_size(MESSAGE_BYTES_MAX),
                        auth,
                    };
                    let ended = self.serve(&endpoint, caller, &mut backoff).await;
                    self.ctx.set_caller(None);
                    ended?
                }
                Err(reason) => Ended::Retry(reason),
            };
            match ended {
                Ended::Redirected => {
                    endpoint_idx = first(&self.config);
                    let now = Instant::now();
                    let repeated = self
                        .last_redirect
                        .is_some_and(|at| now.duration_since(at) < REDIRECT_REPEAT_WINDOW);
                    self.last_redirect = Some(now);
                    if repeated {
                        let delay = backoff.next_delay();
                        warn!(
                            controller = %self.config.controller_name,
                            retry_in_ms = delay.as_millis() as u64,
                            "redirected again shortly after the last redirect; backing off"
                        );
                        tokio::time::sleep(delay).await;
                    } else {
                        backoff.reset();
                    }
                }
                Ended::Retry(reason) => {
                    let delay = backoff.next_delay();
                    if self.switch.is_some() {
                        info!(
                            controller = %self.config.controller_name,
                            endpoint = %endpoint,
                            %reason,
                            retry_in_ms = delay.as_millis() as u64,
                            "waiting for controller {} to take the model over; workloads keep running",
                            self.config.controller_name
                        );
                    } else {
                        warn!(
                            controller = %self.config.controller_name,
                            endpoint = %endpoint,
                            %reason,
                            retry_in_ms = delay.as_millis() as u64,
                            "controller connection lost; workloads keep running"
                        );
                    }
                    endpoint_idx = endpoint_idx.wrapping_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection: Watch stream, heartbeats, report flushing, migration duties.
    async fn serve(
        &mut self,
        endpoint: &str,
        caller: ControllerCaller,
        backoff: &mut Backoff,
    ) -> Result<Ended> {
        let mut client = caller.client();
        let watch = tokio::time::timeout(
            RPC_TIMEOUT,
            client.watch(caller.request(WatchRequest {
                known_revision: self.known_revision,
            })),
        )
        .await;
        let mut stream = match watch {
            Err(_) => return Ok(Ended::Retry("Watch timed out".into())),
            Ok(Err(status)) => return self.classify(status, "Watch"),
            Ok(Ok(response)) => response.into_inner(),
        };
        info!(controller = %self.config.controller_name, %endpoint, "connected to the controller");
        self.ctx.set_caller(Some(caller.clone()));
        self.ctx
            .report_status(&self.ctx.machine_entity(), "agent", status("started", ""));
        // The acknowledgements a migration notice calls for, sent beside the stream so a slow
        // target never holds up heartbeats; they end with this connection.
        let (notices, notices_rx) = watch::channel::<Option<MigrationNotice>>(None);
        let _duties = AbortOnDrop(tokio::spawn(run_duties(
            caller.clone(),
            self.config.controller_name.clone(),
            notices_rx,
        )));
        // Nothing is flushed before the first update says whether the model is migrating.
        let mut synced = false;
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        let mut flush_tick = tokio::time::interval(FLUSH_PERIOD);
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(update)) => {
                        if let Some(redirect) = update.redirect.as_ref().filter(|r| !r.api_endpoints.is_empty()) {
                            // `run` decides the backoff: redirects in quick succession grow it.
                            self.follow_redirect(redirect)?;
                            return Ok(Ended::Redirected);
                        }
                        backoff.reset();
                        if !synced {
                            synced = true;
                            self.switched_over();
                            self.ctx.outbox_ready.notify_one();
                        }
                        self.observe_migration(update.migration.as_ref());
                        notices.send_if_modified(|current| {
                            if *current == update.migration {
                                false
                            } else {
                                current.clone_from(&update.migration);
                                true
                            }
                        });
                        self.known_revision = update.revision;
                        if let Some(period) = heartbeat_period(update.heartbeat_interval_ms) {
                            if period != self.heartbeat {
                                self.heartbeat = period;
                                heartbeat = tokio::time::interval_at(Instant::now() + period, period);
                            }
                        }
                        self.updates.send_replace(Some(update));
                    }
                    Ok(None) => return Ok(Ended::Retry("the Watch stream ended".into())),
                    Err(status) => return self.classify(status, "Watch"),
                },
                _ = heartbeat.tick() => {
                    let mut client = caller.client();
                    let call = client.heartbeat(caller.request(HeartbeatRequest {}));
                    match tokio::time::timeout(RPC_TIMEOUT, call).await {
                        Err(_) => return Ok(Ended::Retry("Heartbeat timed out".into())),
                        Ok(Err(status)) => return self.classify(status, "Heartbeat"),
                        Ok(Ok(response)) => {
                            let period = heartbeat_period(response.into_inner().heartbeat_interval_ms);
                            if let Some(period) = period.filter(|p| *p != self.heartbeat) {
                                self.heartbeat = period;
                                heartbeat = tokio::time::interval_at(Instant::now() + period, period);
                            }
                        }
                    }
                }
                _ = self.ctx.outbox_ready.notified(), if synced => {
                    if let Some(ended) = self.flush(&caller).await? {
                        return Ok(ended);
                    }
                }
                _ = flush_tick.tick() => {
                    if !synced {
                        continue;
                    }
                    if let Some(ended) = self.flush(&caller).await? {
                        return Ok(ended);
                    }
                }
            }
        }
    }

    /// The first update of a controller the agent was redirected to: the switch is complete.
    fn switched_over(&mut self) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        let queued = self.ctx.with_outbox(|o| o.reports_len());
        let controller = &self.config.controller_name;
        let waited_ms = switch.since.elapsed().as_millis() as u64;
        match switch.migration {
            Some(id) => info!(
                migration = %id,
                %controller,
                queued,
                waited_ms,
                "migration {id}: switched to controller {controller}; delivering {queued} buffered report(s)"
            ),
            None => info!(
                %controller,
                queued,
                waited_ms,
                "switched to controller {controller}; delivering {queued} buffered report(s)"
            ),
        }
    }

    /// Takes in an update's migration notice (or its absence) and logs what changed.
    fn observe_migration(&mut self, notice: Option<&MigrationNotice>) {
        let controller = &self.config.controller_name;
        let queued = || self.ctx.with_outbox(|o| o.reports_len());
        match self.migration.observe(notice) {
            MigrationChange::Unchanged => {}
            MigrationChange::Began(m) => {
                let id = &m.id;
                info!(
                    migration = %id,
                    phase = %m.phase,
                    %controller,
                    "migration {id}: the model is moving (phase {}); reports and workloads carry on",
                    m.phase
                );
            }
            MigrationChange::Phase { migration: m, from } => {
                let id = &m.id;
                info!(
                    migration = %id,
                    phase = %m.phase,
                    %from,
                    queued = queued(),
                    "migration {id}: phase {}",
                    m.phase
                );
            }
            MigrationChange::Replaced {
                aborted,
                migration: m,
            } => {
                let id = &m.id;
                info!(
                    migration = %id,
                    %aborted,
                    phase = %m.phase,
                    "migration {aborted}: aborted; migration {id} follows (phase {})",
                    m.phase
                );
            }
            MigrationChange::Resumed { aborted } => {
                info!(
                    migration = %aborted,
                    %controller,
                    queued = queued(),
                    "migration {aborted}: aborted; the model stays with controller {controller}"
                );
                self.ctx.outbox_ready.notify_one();
            }
        }
    }

    /// Sends queued reports in order until the outbox is empty (bounded per call). While the
    /// model migrates they go on as usual: the controller holds a report that meets the fence.
    async fn flush(&self, caller: &ControllerCaller) -> Result<Option<Ended>> {
        for _ in 0..FLUSH_BATCHES_MAX {
            let (reports, logs) = self.ctx.with_outbox(|o| o.batch());
            if reports.is_empty() && logs.is_empty() {
                return Ok(None);
            }
            let logs_sent = logs.len();
            let last_seq = reports.last().map(|r| r.seq);
            let mut client = caller.client();
            let call = client.report(caller.request(ReportRequest { reports, logs }));
            match tokio::time::timeout(RPC_TIMEOUT, call).await {
                Err(_) => return Ok(Some(Ended::Retry("Report timed out".into()))),
                Ok(Err(status)) => return self.classify(status, "Report").map(Some),
                Ok(Ok(response)) => {
                    let applied_seq = response.into_inner().applied_seq;
                    self.ctx
                        .with_outbox(|o| o.acknowledge(applied_seq, logs_sent));
                    if last_seq.is_some_and(|seq| applied_seq < seq) {
                        // The controller kept some back; try again on the next tick.
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Rewrites the agent config for the new controller (model, machine and credential stay).
    /// The file is replaced atomically (temp file, fsync, rename, fsync of the directory), so
    /// a crash leaves either the old controller or the new one, never a torn file.
    fn follow_redirect(&mut self, redirect: &Redirect) -> Result<()> {
        let mut config = self.config.clone();
        config.controller_name = redirect.controller_name.clone();
        config.controller_uuid = redirect.controller_uuid.clone();
        config.api_endpoints = redirect.api_endpoints.clone();
        if !redirect.ca_cert.is_empty() {
            config.ca_cert = redirect.ca_cert.clone();
        }
        validate_config(&config).context("the redirect names an unusable controller")?;
        let migration = self.migration.switched().map(|m| m.id);
        match &migration {
            Some(id) => info!(
                migration = %id,
                from = %self.config.controller_name,
                to = %config.controller_name,
                endpoints = ?config.api_endpoints,
                "migration {id}: switching to controller {}",
                config.controller_name
            ),
            None => info!(
                from = %self.config.controller_name,
                to = %config.controller_name,
                endpoints = ?config.api_endpoints,
                "the model moved: switching to controller {}",
                config.controller_name
            ),
        }
        let write = || write_yaml(&self.config_path, &config, 0o600);
        // Two fsyncs: block_in_place keeps the other tasks (the workloads' supervisors) moving.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let written = if multi_thread {
            tokio::task::block_in_place(write)
        } else {
            write()
        };
        written.with_context(|| {
            format!(
                "cannot rewrite the agent config {}",
                self.config_path.display()
            )
        })?;
        info!(
            path = %self.config_path.display(),
            controller = %config.controller_name,
            "the agent config now names controller {}",
            config.controller_name
        );
        self.config = config;
        self.known_revision = 0;
        self.switch = Some(PendingSwitch {
            since: Instant::now(),
            migration,
        });
        Ok(())
    }

    /// [`classify`], lenient with a controller the agent was just redirected to.
    fn classify(&self, status: Status, call: &str) -> Result<Ended> {
        let grace = self
            .switch
            .as_ref()
            .is_some_and(|s| s.since.elapsed() < REDIRECT_AUTH_GRACE);
        classify(status, call, grace)
    }
}

fn heartbeat_period(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms.clamp(100, 60_000)))
}

/// Unauthenticated is fatal (the credential will not start working by itself), unless the
/// agent was just redirected (`after_redirect`: the new controller may not have taken the
/// model over yet); anything else is a reason to reconnect.
fn classify(status: Status, call: &str, after_redirect: bool) -> Result<Ended> {
    if status.code() == Code::Unauthenticated && !after_redirect {
        bail!(
            "the controller refused the agent's credential ({call}: {}); the machine may have been removed or the agent config is stale",
            status.message()
        );
    }
    Ok(Ended::Retry(format!(
        "{call}: {:?}: {}",
        status.code(),
        status.message()
    )))
}

/// A TLS channel to `endpoint` trusting only `ca_cert` (PEM); the error says why not.
pub(super) async fn connect(endpoint: &str, ca_cert: &str) -> Result<Channel, String> {
    let host = endpoint
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']').map(|(h, _)| h))
        .or_else(|| endpoint.rsplit_once(':').map(|(h, _)| h))
        .unwrap_or(endpoint)
        .to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_cert))
        .domain_name(host);
    let channel = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| format!("invalid endpoint \"{endpoint}\": {e}"))?
        .tls_config(tls)
        .map_err(|e| format!("invalid TLS configuration: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Finds a dead controller under a quiet Watch stream.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(channel)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_is_fatal_unavailable_is_not() {
        assert!(classify(Status::unauthenticated("bad credential"), "Watch", false).is_err());
        assert!(matches!(
            classify(Status::unavailable("no leader"), "Watch", false),
            Ok(Ended::Retry(_))
        ));
    }

    #[test]
    fn a_new_controller_not_active_yet_is_retried() {
        let importing =
            Status::failed_precondition("model default is being imported; not active yet");
        assert!(matches!(
            classify(importing, "Watch", false),
            Ok(Ended::Retry(_))
        ));
        assert!(matches!(
            classify(Status::unauthenticated("unknown model"), "Watch", true),
            Ok(Ended::Retry(_))
        ));
    }
}
