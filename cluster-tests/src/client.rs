//! gRPC clients over TLS: the controller client with a bearer token, and plain TLS channels for
//! tests that call a node as something other than a client.

use std::time::Duration;

use anyhow::{Context, Result};
use starling_proto::controller::controller_client::ControllerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Deadline of one RPC unless the caller chooses another.
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Deadline of establishing one connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Adds `authorization: Bearer <token>` to every call (or nothing, to test refusals).
#[derive(Clone, Debug)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// A token to send; `None` sends no authorization header.
    pub fn new(token: Option<&str>) -> Result<Self> {
        let value = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .context("token is not valid ASCII metadata")?;
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A controller client that sends a bearer token.
pub type AuthedControllerClient = ControllerClient<InterceptedService<Channel, BearerToken>>;

/// A lazily connecting TLS channel to `addr` (host:port) trusting `ca_pem`, presenting
/// `identity` when given, with `rpc_timeout` on every call. Needs a tokio runtime.
pub fn tls_channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<Identity>,
    rpc_timeout: Duration,
) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .with_context(|| format!("bad endpoint {addr}"))?
        .tls_config(tls)
        .context("TLS config")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(rpc_timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// A controller client for `addr` sending `token` (none when `None`).
pub fn controller_client(
    addr: &str,
    ca_pem: &str,
    token: Option<&str>,
    rpc_timeout: Duration,
) -> Result<AuthedControllerClient> {
    let channel = tls_channel(addr, ca_pem, None, rpc_timeout)?;
    Ok(ControllerClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}

/// The controller a refused call should be sent to once more, under the same request id: the
/// redirect a controller answers for a call its migration's fence held (or that arrived while
/// the migration was finishing), with `retry_on_target`. `None` for any other status.
pub fn retry_on_target(status: &Status) -> Option<String> {
    use prost::Message;
    if status.code() != tonic::Code::FailedPrecondition || status.details().is_empty() {
        return None;
    }
    starling_proto::controller::ErrorDetail::decode(status.details())
        .ok()?
        .redirect
        .filter(|redirect| redirect.retry_on_target)
        .map(|redirect| redirect.controller_name)
}
