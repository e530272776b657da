//! A node refuses what it must not accept: clients without a valid token, Raft calls from a peer
//! without a node certificate, malformed requests (which change nothing), and a data dir that
//! belongs to another controller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::local_cluster::run_bounded;
use starling_cluster_tests::{BearerToken, ClusterOptions, LocalCluster};
use starling_proto::controller::{
    GetControllerConfigRequest, SetControllerConfigRequest, ShowControllerRequest,
};
use starling_proto::raft::raft_client::RaftClient;
use starling_proto::raft::{AppendEntriesRequest, NodeStatusRequest};
use std::process::Command;
use tonic::Code;
use tracing::info;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const TERMINATE_WAIT: Duration = Duration::from_secs(30);
const REFUSAL_WAIT: Duration = Duration::from_secs(60);

fn expect_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    allowed: &[Code],
) -> Result<()> {
    match result {
        Ok(answer) => bail!("{what}: expected one of {allowed:?}, got OK {answer:?}"),
        Err(status) if allowed.contains(&status.code()) => {
            info!(what, code = ?status.code(), message = status.message(), "refused as expected");
            Ok(())
        }
        Err(status) => bail!("{what}: expected one of {allowed:?}, got {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_malformed_calls_are_refused() -> Result<()> {
    init_tracing();
    let cluster = LocalCluster::start(ClusterOptions::new("bad-input", 3)).await?;
    let token = cluster.registration().token.clone();

    info!("--- a client without a token");
    let mut anonymous = cluster.client_with(1, None, RPC_TIMEOUT)?;
    expect_code(
        "ShowController without a token",
        anonymous
            .show_controller(ShowControllerRequest {})
            .await
            .map(|r| r.into_inner()),
        &[Code::Unauthenticated],
    )?;
    expect_code(
        "SetControllerConfig without a token",
        anonymous
            .set_controller_config(SetControllerConfigRequest {
                values: [("custom.anonymous".to_owned(), "x".to_owned())].into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner()),
        &[Code::Unauthenticated],
    )?;

    info!("--- a client with a wrong token");
    let mut impostor = cluster.client_with(2, Some("not-the-admin-token"), RPC_TIMEOUT)?;
    expect_code(
        "GetControllerConfig with a wrong token",
        impostor
            .get_controller_config(GetControllerConfigRequest { local: false })
            .await
            .map(|r| r.into_inner()),
        &[Code::Unauthenticated],
    )?;

    info!("--- a peer without a node certificate calling the Raft service");
    let append = AppendEntriesRequest {
        controller_uuid: cluster.registration().uuid.clone(),
        ..Default::default()
    };
    let mut bare_peer = RaftClient::new(cluster.channel(1)?);
    expect_code(
        "AppendEntries without a node certificate",
        bare_peer
            .append_entries(append.clone())
            .await
            .map(|r| r.into_inner()),
        &[Code::Unauthenticated, Code::PermissionDenied],
    )?;
    // The admin's bearer token is a client credential, not a node's.
    let mut admin_as_peer =
        RaftClient::with_interceptor(cluster.channel(2)?, BearerToken::new(Some(&token))?);
    expect_code(
        "AppendEntries with the admin token but no node certificate",
        admin_as_peer
            .append_entries(append)
            .await
            .map(|r| r.into_inner()),
        &[Code::Unauthenticated, Code::PermissionDenied],
    )?;

    // Control: the same call path with a node certificate of this controller is let in, so the
    // refusals above are about the missing certificate and not a broken channel.
    let mut peer = RaftClient::new(cluster.channel_as(1, Some(cluster.node_identity(2)?))?);
    let status = peer
        .node_status(NodeStatusRequest {
            controller_uuid: cluster.registration().uuid.clone(),
            with_load: false,
        })
        .await
        .context("NodeStatus with node 2's certificate")?
        .into_inner();
    ensure!(
        status.node_id == 1,
        "node 1 answered NodeStatus as {status:?}"
    );

    info!("--- malformed requests are refused and change nothing");
    let mut admin = cluster.client(3)?;
    let before = admin
        .get_controller_config(GetControllerConfigRequest { local: false })
        .await?
        .into_inner()
        .values;
    expect_code(
        "SetControllerConfig of an unknown key",
        admin
            .set_controller_config(SetControllerConfigRequest {
                values: [("no-such-key".to_owned(), "x".to_owned())].into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner()),
        &[Code::InvalidArgument],
    )?;
    expect_code(
        "SetControllerConfig of a valid and an unknown key together",
        admin
            .set_controller_config(SetControllerConfigRequest {
                values: [
                    ("custom.valid".to_owned(), "y".to_owned()),
                    ("no-such-key".to_owned(), "x".to_owned()),
                ]
                .into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner()),
        &[Code::InvalidArgument],
    )?;
    let after = admin
        .get_controller_config(GetControllerConfigRequest { local: false })
        .await?
        .into_inner()
        .values;
    ensure!(
        before == after,
        "a refused write changed the config:\nbefore {before:?}\nafter {after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_the_data_dir_of_another_controller() -> Result<()> {
    init_tracing();
    info!("--- controller A runs once so its node 1 has state");
    let mut owner = LocalCluster::start(ClusterOptions::new("owner-a", 1)).await?;
    let status = owner.terminate(1, TERMINATE_WAIT)?;
    info!(%status, "controller A's node stopped");
    let a_store = store_dir(owner.data_dir(1))?;

    info!("--- controller B's node 1 gets A's store");
    let other = LocalCluster::init(ClusterOptions::new("owner-b", 1))?;
    let relative = a_store.strip_prefix(owner.data_dir(1))?;
    let b_store = other.data_dir(1).join(relative);
    if b_store.exists() {
        std::fs::remove_dir_all(&b_store)?;
    }
    copy_dir(&a_store, &b_store)?;

    info!("--- ctld run on it must refuse, naming both controllers");
    let log = other.root().join("foreign-run.log");
    let mut run = Command::new(&other.bins().ctld);
    run.arg("run").arg("--data-dir").arg(other.data_dir(1));
    let status = run_bounded(&mut run, &log, REFUSAL_WAIT)?;
    let output = std::fs::read_to_string(&log)?;
    ensure!(
        !status.success(),
        "ctld ran on another controller's data dir and exited with {status}:\n{output}"
    );
    let a_uuid = &owner.registration().uuid;
    let b_uuid = &other.registration().uuid;
    ensure!(
        output.contains(a_uuid.as_str()) && output.contains(b_uuid.as_str()),
        "the refusal should name both controllers ({a_uuid} and {b_uuid}):\n{output}"
    );
    Ok(())
}

/// The node's persistent store: its `sled` dir, or the `state` dir that holds it.
fn store_dir(data_dir: &Path) -> Result<PathBuf> {
    for candidate in ["state", "sled"] {
        let dir = data_dir.join(candidate);
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!(
        "controller A's node has no state/ or sled/ dir in {}; it holds: {:?}",
        data_dir.display(),
        list_dir(data_dir)
    )
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
