//! The HTTPS side port: `/metrics` (Prometheus: the process's own metrics and the per-model
//! load families), `/healthz` (the process serves), `/readyz` (the node is in touch with a
//! leader and has applied entries), and the status page: `/` is a static, self-contained HTML
//! document (no external asset, a Content-Security-Policy that allows only its own script) that
//! asks for a token and polls `/status.json`, which requires `Authorization: Bearer <token>` and
//! answers the overview of `client_api::overview` (the models the caller can read).
//!
//! Concurrent connections are bounded: one over `MAX_CONNECTIONS` is closed at once, before its
//! TLS handshake, so a flood of connections cannot grow the node's tasks without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use starling_raft::RaftHandle;
use starling_storage::migration as stored;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::client_api::ClientApi;
use crate::context::NodeContext;

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (an idle kept-alive connection is
/// closed after it too).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The status page: one HTML document with its style and script inline.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// The page's Content-Security-Policy: nothing loads but the page's own inline script (by its
/// hash) and style, and the script may fetch only from this origin.
static STATUS_PAGE_CSP: LazyLock<String> = LazyLock::new(|| {
    let script = inline_script(STATUS_PAGE);
    let hash = base64_encode(&Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

/// The text of the one `<script>` element of `page`.
fn inline_script(page: &str) -> &str {
    let start = page.find("<script>").expect("the status page has a script") + "<script>".len();
    let end = page[start..]
        .find("</script>")
        .expect("the status page's script ends")
        + start;
    &page[start..end]
}

/// Standard base64 with padding (what CSP hashes use).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Clone)]
struct SidePort {
    raft: RaftHandle,
    ctx: NodeContext,
    api: ClientApi,
    prometheus: PrometheusHandle,
}

/// Headers every page and JSON answer carries: never cached, never sniffed, never framed.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn status_page() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
        .into_response();
    if let Ok(csp) = HeaderValue::from_str(&STATUS_PAGE_CSP) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    hardened(response)
}

/// `value` as a JSON answer with status `code`.
fn json(code: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}\n"),
        )
            .into_response(),
    }
}

/// The overview for the bearer of the request's token, as JSON; 401 without a valid one.
async fn status_json(State(side): State<SidePort>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let response = match side.api.overview(authorization).await {
        Ok(overview) => json(StatusCode::OK, &overview),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut response = json(code, &serde_json::json!({ "error": status.message() }));
            if code == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    };
    hardened(response)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(side): State<SidePort>) -> (StatusCode, String) {
    let status = side.raft.node_status();
    match side.raft.leader_in_contact() {
        Some(leader) if status.applied_index > 0 => (
            StatusCode::OK,
            format!("ready: leader {leader}, applied {}\n", status.applied_index),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: state {}, no leader in contact (last known: {:?})\n",
                status.state, status.leader_id
            ),
        ),
    }
}

async fn metrics(State(side): State<SidePort>) -> String {
    let mut text = side.prometheus.render();
    match model_labels(&side.ctx) {
        Ok(models) => text.push_str(&side.ctx.load.render_metrics(side.raft.state(), &models)),
        Err(e) => warn!(error = %e, "cannot list the models for /metrics"),
    }
    text
}

/// The models active here with their uuid, `owner/name` and the phase of a migration in flight.
fn model_labels(
    ctx: &NodeContext,
) -> Result<Vec<(String, String, Option<String>)>, starling_storage::StorageError> {
    let state = ctx.handle.state();
    let reader = state.reader();
    let mut labels = Vec::new();
    for model in state.list_models()? {
        if stored::read_import(reader, &model.uuid)?.is_some()
            || stored::read_redirect(reader, &model.uuid)?.is_some()
        {
            continue;
        }
        let phase = stored::latest_migration(reader, &model.uuid)?
            .filter(|record| !stored::is_terminal(record))
            .map(|record| record.phase);
        labels.push((model.uuid, format!("{}/{}", model.owner, model.name), phase));
    }
    Ok(labels)
}

/// Serves the side port on `listener` over TLS until `shutdown` completes; `/status.json`
/// answers through `api`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: ClientApi,
    ctx: NodeContext,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    let router = Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(SidePort {
            raft: ctx.handle.clone(),
            ctx,
            api,
            prometheus,
        });
    accept_loop(
        listener,
        TlsAcceptor::from(tls),
        router,
        MAX_CONNECTIONS,
        HANDSHAKE_TIMEOUT,
        shutdown,
    )
    .await;
}

/// Accepts connections on `listener` and serves `router` on each, at most `bound` at once,
/// until `shutdown` completes.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    bound: usize,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(bound));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "side port accept failed");
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Dropping the stream closes it: the client sees the connection end at once.
            metrics::counter!("starling_side_port_refused_connections_total").increment(1);
            debug!(%peer, bound, "side port connection refused: too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, router, stream, peer, handshake_timeout).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    router: Router,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handshake_timeout: Duration,
) {
    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "side port TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "side port TLS handshake timed out");
            return;
        }
    };
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(tls_stream), service)
        .await
    {
        debug!(%peer, error = %e, "side port connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (input, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), encoded, "{input:?}");
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn the_page_allows_only_its_own_script_and_builds_no_html_from_data() {
        let script = inline_script(STATUS_PAGE);
        assert!(script.contains("/status.json"), "not the page's script");
        let hash = base64_encode(&Sha256::digest(script.as_bytes()));
        assert!(STATUS_PAGE_CSP.contains(&format!("script-src 'sha256-{hash}'")));
        assert!(STATUS_PAGE_CSP.starts_with("default-src 'none'"));
        assert_eq!(
            STATUS_PAGE.matches("<script").count(),
            1,
            "one inline script"
        );
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "the page's script uses {sink}");
        }
        for external in ["http://", "https://", "src=", "<link"] {
            assert!(!STATUS_PAGE.contains(external), "the page loads {external}");
        }
    }

    /// One GET over TLS (verified against `ca_pem`); the status and body.
    async fn https_get(addr: SocketAddr, ca_pem: &str, path: &str) -> std::io::Result<String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA cert");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn connections_over_the_bound_are_closed_at_once() {
        let ca = pki::new_ca("bound", "00000000-0000-0000-0000-000000000000").unwrap();
        let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", axum::routing::get(healthz));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // A handshake timeout far beyond the test: the idle connections keep their permits.
        let server = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(pki::http_server_tls(&node).unwrap()),
            router,
            2,
            Duration::from_secs(3600),
            async {
                let _ = stopped.await;
            },
        ));
        let first = https_get(addr, &ca.cert, "/healthz").await.unwrap();
        assert!(
            first.starts_with("HTTP/1.1 200") && first.ends_with("ok\n"),
            "{first}"
        );

        // Two connections that never start their handshake hold both permits (the server
        // accepts in arrival order); the third is closed without a byte.
        let idle = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        // Bounded only so that a regression fails instead of hanging.
        let read = tokio::time::timeout(Duration::from_secs(120), third.read(&mut byte))
            .await
            .expect("the connection over the bound was kept open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // Once one idle connection goes, a client is served again.
        let [one, two] = idle;
        drop(one);
        let mut served = None;
        for _ in 0..200 {
            match https_get(addr, &ca.cert, "/healthz").await {
                Ok(answer) if answer.starts_with("HTTP/1.1 200") => {
                    served = Some(answer);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(
            served.is_some(),
            "no connection served after a permit came back"
        );
        drop(two);
        let _ = stop.send(());
        server.await.unwrap();
    }
}
