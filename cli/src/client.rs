//! `ControllerClient`: a connection to one controller over TLS with bearer-token auth and
//! failover across its endpoints, mapping gRPC statuses to the messages `ctl` prints.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use starling_proto::controller::controller_client::ControllerClient as GrpcClient;
use starling_proto::controller::{ErrorDetail, ModelRedirect};
use starling_proto::limits::MESSAGE_BYTES_MAX;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::store::StoreState;

/// How long to wait for a TCP + TLS connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The default deadline of one call.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// The generated gRPC client with auth attached, as `ControllerClient::call` hands it out.
pub type Grpc = GrpcClient<InterceptedService<Channel, BearerAuth>>;

/// Why a call failed: the message `ctl` prints, and the gRPC code when a controller answered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// The status code, or `None` when no endpoint could be reached.
    pub code: Option<Code>,
    /// What `ctl` prints.
    pub message: String,
}

impl CallError {
    /// Whether the same call may well succeed later: no endpoint was reachable, there was no
    /// leader, the answer did not come in time, or the connection broke mid-call. Only for
    /// calls that are safe to repeat (reads).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            None | Some(
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Aborted
                    | Code::Unknown
            )
        )
    }
}

/// Whether `error` is a [`CallError`] that [`CallError::is_transient`].
pub fn is_transient(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<CallError>()
        .is_some_and(CallError::is_transient)
}

/// Everything needed to reach one controller.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The controller's name in the client store (for messages).
    pub controller: String,
    /// Endpoints (host:port) in the order to try them.
    pub endpoints: Vec<String>,
    /// The controller's CA certificate (PEM).
    pub ca_cert: String,
    /// The bearer token.
    pub token: String,
    /// The deadline of one call.
    pub request_timeout: Duration,
}

impl ConnectionInfo {
    /// The connection details of controller `name` from the store.
    pub fn from_store(state: &StoreState, name: &str) -> Result<Self> {
        let details = state.controller(name)?;
        let account = state.account(name)?;
        if details.api_endpoints.is_empty() {
            bail!("controller \"{name}\" has no api endpoints");
        }
        Ok(Self {
            controller: name.to_string(),
            endpoints: details.api_endpoints.clone(),
            ca_cert: details.ca_cert.clone(),
            token: account.token.clone(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        })
    }
}

/// Where a client may follow a model that a migration moved while a call was in flight.
#[derive(Debug, Clone)]
pub struct RedirectFollower {
    /// The client store: the target controller must be in it, with an account.
    pub store: StoreState,
    /// Say on stderr when a call is sent again to the target (`ctl --debug`).
    pub debug: bool,
}

/// A client of one controller that fails over between its endpoints.
///
/// A connect error or an `Unavailable` status moves on to the next endpoint, starting from the
/// one that last worked; every other status is final. Writes are forwarded to the leader by the
/// server, so any node will do.
///
/// A call that a migration's fence held and that the model then left (the controller answers
/// with the redirect and `retry_on_target`) is sent once to the target controller, the same
/// request with the same request id, when the client store knows the target and holds an
/// account for it: the user sees the target's answer, not an error. The source never applied
/// the request (the fence refused it), and the target answers a request the source applied
/// before the fence from its cache, so the retry cannot apply twice.
pub struct ControllerClient {
    info: ConnectionInfo,
    auth: BearerAuth,
    /// The endpoint that last answered; where the next call starts.
    preferred_idx: AtomicUsize,
    /// How to follow a model that moved mid-call (`None`: do not).
    follow: Option<RedirectFollower>,
}

/// Why one endpoint could not be used.
enum Attempt {
    /// Try the next endpoint.
    Retry(String),
    /// Give up with this error.
    Fatal(anyhow::Error),
    /// The model moved to another controller while the call was held: send it there once.
    Moved(ModelRedirect, anyhow::Error),
}

/// The redirect a status carries in its details, when it asks the client to retry there.
fn retry_on_target(status: &Status) -> Option<ModelRedirect> {
    if status.code() != Code::FailedPrecondition || status.details().is_empty() {
        return None;
    }
    ErrorDetail::decode(status.details())
        .ok()?
        .redirect
        .filter(|redirect| redirect.retry_on_target)
}

impl ControllerClient {
    /// A client for `info`; nothing is connected until the first call.
    pub fn new(info: ConnectionInfo) -> Result<Self> {
        let header = format!("Bearer {}", info.token).parse().map_err(|_| {
            anyhow!(
                "the token for controller \"{}\" is not valid ASCII",
                info.controller
            )
        })?;
        Ok(Self {
            info,
            auth: BearerAuth { header },
            preferred_idx: AtomicUsize::new(0),
            follow: None,
        })
    }

    /// This client, following a model that moves mid-call (see the type's comment).
    pub fn following_redirects(mut self, follow: RedirectFollower) -> Self {
        self.follow = Some(follow);
        self
    }

    /// A client of the controller `redirect` names, from the store, when it knows it.
    fn target_client(&self, redirect: &ModelRedirect) -> Option<ControllerClient> {
        let follow = self.follow.as_ref()?;
        let name = follow
            .store
            .controllers
            .controllers
            .iter()
            .find(|(name, details)| {
                details.uuid == redirect.controller_uuid
                    || (details.uuid.is_empty() && **name == redirect.controller_name)
            })
            .map(|(name, _)| name.clone())?;
        let mut info = ConnectionInfo::from_store(&follow.store, &name).ok()?;
        info.request_timeout = self.info.request_timeout;
        ControllerClient::new(info).ok()
    }

    /// The controller's name.
    pub fn controller(&self) -> &str {
        &self.info.controller
    }

    /// Runs `f` against the endpoints in turn until one answers with something other than
    /// `Unavailable`. `f` may run more than once, so a write must carry a fixed request id.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Grpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.info.endpoints.len();
        let start = self.preferred_idx.load(Ordering::Relaxed) % n.max(1);
        let mut failures = Vec::new();
        for offset in 0..n {
            let idx = (start + offset) % n;
            let endpoint = &self.info.endpoints[idx];
            match self.call_one(endpoint, &f).await {
                Ok(value) => {
                    self.preferred_idx.store(idx, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Moved(redirect, e)) => {
                    let Some(target) = self.target_client(&redirect) else {
                        return Err(e);
                    };
                    if self.follow.as_ref().is_some_and(|f| f.debug) {
                        eprintln!(
                            "DEBUG model \"{}\" moved to controller \"{}\" while the call was \
                             held; sending it there",
                            redirect.model_name,
                            target.controller()
                        );
                    }
                    // Once: the target's answer is final (its client follows nothing).
                    return Box::pin(target.call(f)).await;
                }
                Err(Attempt::Retry(reason)) => failures.push((endpoint.clone(), reason)),
            }
        }
        let tried: Vec<&str> = failures.iter().map(|(e, _)| e.as_str()).collect();
        let reason = failures
            .last()
            .map(|(_, r)| r.as_str())
            .unwrap_or("no endpoints");
        Err(CallError {
            code: None,
            message: format!(
                "cannot connect to controller \"{}\": tried {}: {}",
                self.info.controller,
                tried.join(", "),
                reason
            ),
        }
        .into())
    }

    async fn call_one<T, F, Fut>(&self, endpoint: &str, f: &F) -> Result<T, Attempt>
    where
        F: Fn(Grpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let channel = self.connect(endpoint).await?;
        // The controller answers up to the shared limit (a large model's status), not tonic's 4 MiB.
        let grpc = GrpcClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        match f(grpc).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unavailable => {
                Err(Attempt::Retry(status_reason(&status)))
            }
            Err(status) => {
                let error = status_error(&self.info.controller, &status);
                match retry_on_target(&status) {
                    Some(redirect) if self.follow.is_some() => Err(Attempt::Moved(redirect, error)),
                    _ => Err(Attempt::Fatal(error)),
                }
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Channel, Attempt> {
        let host = endpoint_host(endpoint).map_err(Attempt::Fatal)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.info.ca_cert))
            .domain_name(host);
        let ep = Endpoint::from_shared(format!("https://{endpoint}"))
            .with_context(|| format!("invalid endpoint \"{endpoint}\""))
            .and_then(|ep| ep.tls_config(tls).context("invalid TLS configuration"))
            .map_err(Attempt::Fatal)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.info.request_timeout);
        ep.connect()
            .await
            .map_err(|e| Attempt::Retry(error_chain(&e)))
    }
}

/// The host part of `host:port` (without brackets for IPv6), for TLS name checking.
pub fn endpoint_host(endpoint: &str) -> Result<String> {
    let host = if let Some(rest) = endpoint.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h)
    } else {
        endpoint.rsplit_once(':').map(|(h, _)| h)
    };
    match host {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ => bail!("invalid endpoint \"{endpoint}\": want host:port"),
    }
}

/// An error and its sources on one line, repeated messages dropped.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

fn status_reason(status: &Status) -> String {
    let msg = status.message();
    let mut reason = if msg.is_empty() {
        status.code().description().to_string()
    } else {
        msg.to_string()
    };
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !reason.contains(&chain) {
            reason = format!("{reason}: {chain}");
        }
    }
    reason
}

/// The message `ctl` prints for a final gRPC status from controller `controller`.
pub fn status_error(controller: &str, status: &Status) -> anyhow::Error {
    CallError {
        code: Some(status.code()),
        message: status_message(controller, status),
    }
    .into()
}

fn status_message(controller: &str, status: &Status) -> String {
    let reason = status_reason(status);
    match status.code() {
        Code::Unauthenticated => {
            format!("authentication failed for controller \"{controller}\": {reason}")
        }
        Code::PermissionDenied => {
            format!("permission denied on controller \"{controller}\": {reason}")
        }
        // The server's message already says what is wrong.
        Code::NotFound
        | Code::AlreadyExists
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange => reason,
        Code::DeadlineExceeded | Code::Cancelled => {
            format!("controller \"{controller}\" did not answer in time: {reason}")
        }
        Code::Unimplemented => {
            format!("controller \"{controller}\" does not support this call: {reason}")
        }
        Code::Unavailable => format!("cannot connect to controller \"{controller}\": {reason}"),
        _ => format!("controller \"{controller}\": {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(endpoint_host("127.0.0.1:17070").unwrap(), "127.0.0.1");
        assert_eq!(endpoint_host("localhost:1").unwrap(), "localhost");
        assert_eq!(endpoint_host("[::1]:1").unwrap(), "::1");
        assert!(endpoint_host("nohost").is_err());
        assert!(endpoint_host(":1").is_err());
    }

    #[test]
    fn status_messages() {
        let e = status_error("alpha", &Status::unauthenticated("bad token"));
        assert_eq!(
            e.to_string(),
            "authentication failed for controller \"alpha\": bad token"
        );
        let e = status_error("alpha", &Status::not_found("node 7 not found"));
        assert_eq!(e.to_string(), "node 7 not found");
        let e = status_error("alpha", &Status::internal(""));
        assert_eq!(e.to_string(), "controller \"alpha\": Internal error");
    }

    #[test]
    fn a_redirect_is_passed_on_as_the_controller_words_it() {
        let message = "model \"web\" has been migrated to controller \"beta\". To access it run \
                       'ctl switch beta:web'.";
        let e = status_error("alpha", &Status::failed_precondition(message));
        assert_eq!(format!("{e:#}"), message);
        assert!(!is_transient(&e));
    }

    #[test]
    fn transient_failures_are_those_worth_waiting_out() {
        let transient = |status: Status| is_transient(&status_error("alpha", &status));
        assert!(transient(Status::unavailable("no leader")));
        assert!(transient(Status::deadline_exceeded("slow")));
        assert!(!transient(Status::not_found("no such model")));
        assert!(!transient(Status::permission_denied("no")));
        assert!(!transient(Status::internal("bug")));
        assert!(!is_transient(&anyhow!("not a call")));
    }

    #[tokio::test]
    async fn all_endpoints_unreachable_names_them_all() {
        // Ports 1 and 2 on loopback are closed on any sane test machine.
        let client = ControllerClient::new(ConnectionInfo {
            controller: "alpha".into(),
            endpoints: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            ca_cert: String::new(),
            token: "t".into(),
            request_timeout: Duration::from_secs(2),
        })
        .unwrap();
        let err = client
            .call(|mut c| async move {
                c.show_controller(starling_proto::controller::ShowControllerRequest {})
                    .await
            })
            .await
            .unwrap_err();
        assert!(is_transient(&err), "{err}");
        let err = err.to_string();
        assert!(
            err.starts_with(
                "cannot connect to controller \"alpha\": tried 127.0.0.1:1, 127.0.0.1:2: "
            ),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
