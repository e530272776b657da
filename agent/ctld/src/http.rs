//! The HTTPS side port: `/metrics` (Prometheus), `/healthz` (the process serves) and `/readyz`
//! (the node is in touch with a leader and has applied entries).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use starling_raft::RaftHandle;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

#[derive(Clone)]
struct SidePort {
    raft: RaftHandle,
    prometheus: PrometheusHandle,
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
    side.prometheus.render()
}

/// Serves the side port on `listener` over TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    raft: RaftHandle,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(SidePort { raft, prometheus });
    let acceptor = TlsAcceptor::from(tls);
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
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(acceptor, router, stream, peer).await;
        });
    }
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    router: Router,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let handshake =
        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await;
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
    if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls_stream), service)
        .await
    {
        debug!(%peer, error = %e, "side port connection ended with an error");
    }
}
