//! The HTTPS side port: `/metrics` (Prometheus: the process's own metrics and the per-model
//! load families), `/healthz` (the process serves) and `/readyz` (the node is in touch with a
//! leader and has applied entries).

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
use starling_storage::migration as stored;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::context::NodeContext;

#[derive(Clone)]
struct SidePort {
    raft: RaftHandle,
    ctx: NodeContext,
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

/// Serves the side port on `listener` over TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: NodeContext,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(SidePort {
            raft: ctx.handle.clone(),
            ctx,
            prometheus,
        });
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
