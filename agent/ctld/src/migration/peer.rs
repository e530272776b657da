//! Dialing the other controller of a migration: TLS trusting its CA, a bearer token, and every
//! one of its endpoints tried in turn, so a dead node (a killed leader) costs one failed attempt,
//! not the call.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_proto::limits::{
    MESSAGE_BYTES_MAX, STAGE_CONNECTION_WINDOW_BYTES, STAGE_STREAM_WINDOW_BYTES,
};
use starling_proto::migration::migration_client::MigrationClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A `Migration` client of the other controller.
pub type Client = MigrationClient<InterceptedService<Channel, Bearer>>;

/// The other controller: its endpoints, each a lazily connected channel.
#[derive(Clone)]
pub struct Peer {
    channels: Arc<Vec<(String, Channel)>>,
    bearer: Bearer,
    /// The endpoint that answered last; calls start there.
    preferred: Arc<AtomicUsize>,
    /// Per-call deadline.
    timeout: Duration,
}

/// `host` of `host:port` (or of `[v6]:port`), the TLS name the node's certificate carries.
fn host_of(endpoint: &str) -> String {
    endpoint
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']').map(|(h, _)| h))
        .or_else(|| endpoint.rsplit_once(':').map(|(h, _)| h))
        .unwrap_or(endpoint)
        .to_owned()
}

impl Peer {
    /// A peer reached at `endpoints`, trusting `ca_pem`, calling with `token`; each call is
    /// bounded by `timeout`.
    pub fn new(
        endpoints: &[String],
        ca_pem: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, Status> {
        if endpoints.is_empty() {
            return Err(Status::invalid_argument("the controller has no endpoints"));
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name(host_of(endpoint));
            let channel = Endpoint::from_shared(format!("https://{endpoint}"))
                .map_err(|e| {
                    Status::invalid_argument(format!("invalid endpoint {endpoint:?}: {e}"))
                })?
                .tls_config(tls)
                .map_err(|e| Status::invalid_argument(format!("invalid TLS configuration: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                // Staged files stream in bulk: no window update every 64 KiB.
                .initial_stream_window_size(STAGE_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(STAGE_CONNECTION_WINDOW_BYTES)
                .connect_lazy();
            channels.push((endpoint.clone(), channel));
        }
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
        Ok(Peer {
            channels: Arc::new(channels),
            bearer: Bearer(bearer),
            preferred: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls `call` on each endpoint in turn, starting with the last one that answered, until
    /// one answers with anything but "unavailable". The last error when none answers.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let count = self.channels.len();
        let start = self.preferred.load(Ordering::Relaxed) % count;
        let mut last = Status::unavailable("no endpoint tried");
        for step in 0..count {
            let index = (start + step) % count;
            let endpoint = &self.channels[index].0;
            match call(self.client(index)).await {
                Ok(response) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Err(status) if retryable(&status) => {
                    last = Status::new(status.code(), format!("{endpoint}: {}", status.message()));
                }
                Err(status) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Err(status);
                }
            }
        }
        Err(last)
    }

    fn client(&self, index: usize) -> Client {
        MigrationClient::with_interceptor(self.channels[index].1.clone(), self.bearer.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Calls `call` once, on the endpoint that answered last (a stream whose position that
    /// node reported: another node may hold another position).
    pub async fn call_preferred<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let index = self.preferred.load(Ordering::Relaxed) % self.channels.len();
        call(self.client(index))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                Status::new(
                    status.code(),
                    format!("{}: {}", self.channels[index].0, status.message()),
                )
            })
    }
}

/// Whether another endpoint may answer where this one failed: the node is down, has no
/// leader, or took too long.
pub fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}
