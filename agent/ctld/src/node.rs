//! `ctld run`: one controller node — storage, Raft, the gRPC services on one TLS port, and the
//! HTTPS side port — until the shutdown future completes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use starling_raft::{
    Node, NodeOptions, PeerChannels, PeerDialer, RaftHandle, RaftService, RaftTiming,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, instrument, warn};

use crate::agent_api::AgentService;
use crate::auth::Authenticator;
use crate::client_api::ClientApi;
use crate::context::{NodeContext, ProgressBoard};
use crate::http;
use crate::identity::DataDir;
use crate::load::LoadBoard;
use crate::migration::leftovers::{run_staging_sweeper, run_sweeper};
use crate::migration::master::run_masters;
use crate::migration::service::MigrationService;
use crate::migration::MigrationChanges;
use crate::pki::{self, CertKeyPem};
use crate::plumbing::now_unix_ms;
use crate::presence::{run_presence, PresenceTable};
use crate::staging::service::StagingService;
use crate::staging::NodeStaging;
use starling_proto::limits::{STAGE_CONNECTION_WINDOW_BYTES, STAGE_STREAM_WINDOW_BYTES};
use starling_storage::staging::StagingArea;

/// What `ctld run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The node's data dir.
    pub data_dir: DataDir,
    /// Raft timing.
    pub timing: RaftTiming,
}

/// The name of the model every controller has; it holds controller-level state and is never
/// migrated.
pub const CONTROLLER_MODEL: &str = "controller";

/// Creates the controller model once the group has a leader. Every bootstrap node tries; the
/// fixed request id makes the first one win and the others no-ops, and a later attempt that
/// finds the model (after its idempotency record was evicted) is refused harmlessly.
async fn ensure_controller_model(
    handle: RaftHandle,
    identity: crate::identity::NodeIdentity,
    stop: CancellationToken,
) {
    use starling_proto::command::{command, AddModel, Command};
    let command = Command {
        request_id: format!("bootstrap-controller-model-{}", identity.controller_uuid),
        op: Some(command::Op::AddModel(AddModel {
            // The controller model shares the controller's uuid.
            uuid: identity.controller_uuid.clone(),
            name: CONTROLLER_MODEL.into(),
            owner: "admin".into(),
            cloud: identity.cloud.clone(),
            region: identity.region.clone(),
            config: Default::default(),
            agent_version: identity.version.clone(),
        })),
        proposed_unix_ms: now_unix_ms(),
        caller: "admin".into(),
        authority: None,
    };
    // Bounded: a group that has no leader for this long has bigger problems, and the next
    // start of a bootstrap node tries again.
    for _ in 0..60 {
        if stop.is_cancelled() {
            return;
        }
        match handle.state().model(&identity.controller_uuid) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the controller model");
                return;
            }
        }
        match handle.propose(command.clone()).await {
            Ok(_) => {
                info!("controller model created");
                return;
            }
            Err(e) => warn!(error = %e, "cannot create the controller model yet; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs the node until `shutdown` completes, then stops serving and shuts Raft down.
#[instrument(skip_all, fields(data_dir = %options.data_dir.root().display()))]
pub async fn run(
    options: RunOptions,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let data_dir = &options.data_dir;
    let identity = data_dir.read_identity()?;
    let auth_file = data_dir.read_auth()?;
    let ca = CertKeyPem {
        cert: data_dir.read_pem(&data_dir.ca_cert())?,
        key: data_dir.read_pem(&data_dir.ca_key())?,
    };
    let node_cert = CertKeyPem {
        cert: data_dir.read_pem(&data_dir.node_cert())?,
        key: data_dir.read_pem(&data_dir.node_key())?,
    };
    info!(
        controller = %identity.controller_name,
        controller_uuid = %identity.controller_uuid,
        node_id = identity.node_id,
        version = %identity.version,
        "starting controller node"
    );

    let (log_store, state_machine, state) =
        starling_raft::store::open_sled(&data_dir.state(), &identity.controller_uuid)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "cannot open the node's state in {}",
                    data_dir.root().display()
                )
            })?;
    let staging_dir = data_dir.state().join("staging");
    let staging = NodeStaging::new(
        StagingArea::open(&staging_dir)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot open the staging area {}", staging_dir.display()))?,
    );
    let state_machine = state_machine.with_staged_files(staging.as_staged_files());

    // Counted from the first command applied after the start.
    let load = LoadBoard::new(data_dir.root());
    let migration_changes = MigrationChanges::default();
    {
        let (counted, changes) = (load.apply_observer(), migration_changes.clone());
        state.observe_applies(Arc::new(move |command, result| {
            counted(command, result);
            changes.applied(command);
        }));
    }

    // Bind both ports before starting Raft so a port clash fails fast.
    let grpc_listener = TcpListener::bind(&identity.address)
        .await
        .with_context(|| format!("cannot listen on {}", identity.address))?;
    let http_listener = TcpListener::bind(&identity.http_address)
        .await
        .with_context(|| format!("cannot listen on {}", identity.http_address))?;

    let channels = PeerChannels::new(PeerDialer::new(
        pki::peer_client_tls(&ca.cert, &node_cert),
        Duration::from_secs(2),
    ));
    let raft_options = NodeOptions {
        node_id: identity.node_id,
        controller_uuid: identity.controller_uuid.clone(),
        version: identity.version.clone(),
        timing: options.timing.clone(),
        channels,
    };
    let handle = RaftHandle::start(raft_options, log_store, state_machine, state)
        .await
        .context("cannot start raft")?;
    staging.set_handle(handle.clone());

    handle.set_load_source(std::sync::Arc::new({
        let load = load.clone();
        move || load.node_load()
    }));

    let stop = CancellationToken::new();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<starling_proto::controller::controller_server::ControllerServer<ClientApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(starling_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let ctx = NodeContext {
        handle: handle.clone(),
        identity: identity.clone(),
        ca_cert: ca.cert.clone(),
        progress: ProgressBoard::default(),
        bootstrap_users: auth_file.users.iter().map(|u| u.name.clone()).collect(),
        load,
        staging: staging.clone(),
        migration_changes,
    };
    let migration_service = MigrationService::new(
        ctx.clone(),
        Authenticator::new(auth_file.clone(), Some(handle.state().clone())),
    )
    .into_server();
    let masters_task = tokio::spawn(run_masters(ctx.clone(), stop.clone()));
    let sweeper_task = tokio::spawn(run_sweeper(ctx.clone(), stop.clone()));
    let staging_sweeper_task = tokio::spawn(run_staging_sweeper(ctx.clone(), stop.clone()));
    let client_api = ClientApi::new(ctx.clone(), auth_file, ca.clone());
    let controller = client_api.clone().into_server();
    // Agents' watch streams end on `stop`, so the server's graceful shutdown is not held up.
    let presence = std::sync::Arc::new(PresenceTable::new());
    let agents = AgentService::new(&ctx, presence.clone(), stop.clone()).into_server();
    let presence_task = tokio::spawn(run_presence(handle.clone(), presence, stop.clone()));
    let grpc = tonic::transport::Server::builder()
        .tls_config(pki::server_tls(&ca.cert, &node_cert))
        .context("invalid TLS configuration")?
        // Staged files and snapshots stream in bulk: no window update every 64 KiB.
        .initial_stream_window_size(STAGE_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(STAGE_CONNECTION_WINDOW_BYTES)
        .add_service(RaftService::new(handle.clone()).into_server())
        .add_service(StagingService::new(staging.clone()).into_server())
        .add_service(controller)
        .add_service(agents)
        .add_service(migration_service)
        .add_service(health_service)
        .add_service(reflection)
        // `Server::tcp_nodelay` only applies to listeners tonic binds itself: without NODELAY on
        // the accepted sockets, a reply split over two segments (HTTP/2 headers, data, trailers)
        // waited for the peer's delayed ACK (~40 ms) behind Nagle's algorithm.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    #[cfg(feature = "failpoints")]
    let grpc = async move {
        // Test hook: the gRPC server stops as if it had failed, so the node's reaction to a dead
        // server is exercised.
        fail::fail_point!("node.grpc-server", |_| Ok(()));
        grpc.await
    };
    let mut grpc_task = tokio::spawn(grpc);
    let mut http_task = tokio::spawn(http::serve(
        http_listener,
        pki::http_server_tls(&node_cert)?,
        client_api,
        ctx.clone(),
        prometheus.clone(),
        stop.clone().cancelled_owned(),
    ));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            // Histograms are summarized on render; upkeep keeps their memory bounded.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !stop.is_cancelled() {
                tick.tick().await;
                prometheus.run_upkeep();
            }
        }
    });
    info!(address = %identity.address, http_address = %identity.http_address, "serving");

    if identity.bootstrap {
        let members: BTreeMap<u64, Node> = identity
            .initial_members
            .iter()
            .map(|m| (m.id, Node::new(m.address.clone())))
            .collect();
        if !members.contains_key(&identity.node_id) {
            bail!(
                "identity of node {} does not list it among the initial members",
                identity.node_id
            );
        }
        handle
            .initialize_if_new(members)
            .await
            .context("cannot initialize the raft group")?;
        tokio::spawn(ensure_controller_model(
            handle.clone(),
            identity.clone(),
            stop.clone(),
        ));
    }

    // A server task that ends before the shutdown leaves a node that looks alive (Raft still
    // runs) but cannot be reached: stop the node with an error, so a supervisor restarts it.
    let dead_server = tokio::select! {
        () = shutdown => None,
        ended = &mut grpc_task => Some(("gRPC server", server_end(ended.map(|r| r.err().map(|e| e.to_string()))))),
        ended = &mut http_task => Some(("HTTPS side port", server_end(ended.map(|()| None)))),
    };
    if let Some((server, reason)) = dead_server {
        error!(server, %reason, "a server task ended while the node runs; stopping the node");
        stop.cancel();
        handle.shutdown().await;
        bail!("the {server} stopped while the node was running: {reason}");
    }
    info!("shutting down");
    // A leader hands over first, while this node still serves, so its stop costs the group no
    // election timeout (a rolling restart pauses writes for one hand-off, not one failover).
    if let Some(new_leader) = handle
        .transfer_leadership(starling_raft::LEADER_HANDOFF_LIMIT)
        .await
    {
        info!(new_leader, "handed leadership over before stopping");
    }
    stop.cancel();
    if let Err(e) = grpc_task.await {
        warn!(error = %e, "grpc server task failed");
    }
    if let Err(e) = http_task.await {
        warn!(error = %e, "side port task failed");
    }
    if let Err(e) = presence_task.await {
        warn!(error = %e, "presence task failed");
    }
    for (name, task) in [
        ("migration master", masters_task),
        ("import sweeper", sweeper_task),
        ("staging sweeper", staging_sweeper_task),
    ] {
        if let Err(e) = task.await {
            warn!(error = %e, "{name} task failed");
        }
    }
    handle.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Why a server task ended: its panic, its error, or that it returned without one.
fn server_end(ended: Result<Option<String>, tokio::task::JoinError>) -> String {
    match ended {
        Err(e) => format!("the task failed: {e}"),
        Ok(Some(error)) => error,
        Ok(None) => "it returned without an error".to_owned(),
    }
}
