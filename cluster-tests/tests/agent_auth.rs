//! The `Agent` service against a real `ctld`: agents are authenticated by their own credential
//! and may touch only their own machine; refusals change nothing; a watch delivers the
//! machine's units and a new update when their config changes; heartbeats make the machine
//! `started`, and it turns `down` once they stop.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{AuthedControllerClient, ClusterOptions, LocalCluster};
use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::{
    AgentDownloadRequest, AgentUpdate, HeartbeatRequest, ReportRequest, StatusReport, WatchRequest,
};
use starling_proto::controller::{
    AddMachineRequest, AddModelRequest, AddUserRequest, CharmChunk, DeployRequest, FullStatus,
    GetModelConfigRequest, ModelRef, RemoveMachineRequest, SetApplicationConfigRequest,
    SetControllerConfigRequest, SetModelAccessRequest, SetModelConfigRequest, StatusRequest,
};
use starling_proto::model::{Access, Status as ModelStatus};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::info;

/// Generous: the machine may be slow and shared.
const CONDITION_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// What an agent config carries that these tests use.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct AgentConfig {
    model_uuid: String,
    machine_id: String,
    credential: String,
}

/// Sends an agent's credential, model uuid and machine id with every call.
#[derive(Clone)]
struct AgentAuth(Vec<(&'static str, MetadataValue<Ascii>)>);

impl AgentAuth {
    fn new(credential: &str, model_uuid: &str, machine_id: &str) -> Result<Self> {
        Ok(Self(vec![
            ("authorization", format!("Bearer {credential}").parse()?),
            ("x-model-uuid", model_uuid.parse()?),
            ("x-machine-id", machine_id.parse()?),
        ]))
    }

    fn of(config: &AgentConfig) -> Result<Self> {
        Self::new(&config.credential, &config.model_uuid, &config.machine_id)
    }
}

impl Interceptor for AgentAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in &self.0 {
            request.metadata_mut().insert(*key, value.clone());
        }
        Ok(request)
    }
}

type Agent = AgentClient<InterceptedService<Channel, AgentAuth>>;

fn agent(cluster: &LocalCluster, auth: AgentAuth) -> Result<Agent> {
    Ok(AgentClient::with_interceptor(cluster.channel(1)?, auth))
}

fn model_ref(name: &str) -> Option<ModelRef> {
    Some(ModelRef {
        name: name.to_owned(),
        ..Default::default()
    })
}

async fn add_machine(admin: &mut AuthedControllerClient, model: &str) -> Result<AgentConfig> {
    let response = admin
        .add_machine(AddMachineRequest {
            model: model_ref(model),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(serde_saphyr::from_str(std::str::from_utf8(
        &response.agent_config_yaml,
    )?)?)
}

async fn status(admin: &mut AuthedControllerClient, model: &str) -> Result<FullStatus> {
    Ok(admin
        .status(StatusRequest {
            model: model_ref(model),
        })
        .await?
        .into_inner())
}

/// The model as status shows it, minus what changes with time alone (the clock, presence).
async fn fingerprint(admin: &mut AuthedControllerClient, model: &str) -> Result<String> {
    let mut full = status(admin, model).await?;
    full.now_unix_ms = 0;
    // The answering node's own load measurement (reads count too), not model state.
    if let Some(info) = full.model.as_mut() {
        info.load = None;
    }
    for machine in &mut full.machines {
        machine.agent_status = None;
    }
    Ok(format!("{full:?}"))
}

/// A tar.gz charm archive holding `metadata.yaml`, and its hex sha256 (system `tar` and
/// `sha256sum`: this crate carries no archive or hash library).
fn charm_archive(metadata: &str) -> Result<(Vec<u8>, String)> {
    let dir = tempfile::tempdir()?;
    let charm = dir.path().join("charm");
    std::fs::create_dir(&charm)?;
    std::fs::write(charm.join("metadata.yaml"), metadata)?;
    let archive = dir.path().join("charm.tar.gz");
    let tar = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&charm)
        .arg("metadata.yaml")
        .status()
        .context("running tar")?;
    ensure!(tar.success(), "tar failed");
    let sum = std::process::Command::new("sha256sum")
        .arg(&archive)
        .output()
        .context("running sha256sum")?;
    ensure!(sum.status.success(), "sha256sum failed");
    let digest = String::from_utf8(sum.stdout)?
        .split_whitespace()
        .next()
        .context("no digest")?
        .to_owned();
    Ok((std::fs::read(&archive)?, digest))
}

async fn deploy(
    admin: &mut AuthedControllerClient,
    model: &str,
    application: &str,
    to: &[&str],
) -> Result<String> {
    let metadata = format!(
        "name: {application}\ncommand: sleep 600\nconfig:\n  options:\n    port:\n      default: \"80\"\n"
    );
    let (bytes, digest) = charm_archive(&metadata)?;
    let chunk = CharmChunk {
        digest: digest.clone(),
        size: bytes.len() as u64,
        offset: 0,
        data: bytes,
    };
    admin
        .upload_charm(tonic::codegen::tokio_stream::iter(vec![chunk]))
        .await?;
    admin
        .deploy(DeployRequest {
            model: model_ref(model),
            application: application.to_owned(),
            charm_digest: digest.clone(),
            to: to.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        })
        .await?;
    Ok(digest)
}

fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
) -> Result<Status> {
    match result {
        Ok(answer) => bail!("{what}: expected {code:?}, got OK {answer:?}"),
        Err(status) if status.code() == code => {
            info!(what, message = status.message(), "refused as expected");
            Ok(status)
        }
        Err(status) => bail!("{what}: expected {code:?}, got {status}"),
    }
}

async fn next_update(
    stream: &mut tonic::Streaming<AgentUpdate>,
    what: &str,
) -> Result<AgentUpdate> {
    tokio::time::timeout(CONDITION_WAIT, stream.message())
        .await
        .with_context(|| format!("no update ({what}) within {CONDITION_WAIT:?}"))??
        .with_context(|| format!("watch ended before {what}"))
}

fn report(seq: u64, entity: &str, current: &str) -> ReportRequest {
    ReportRequest {
        reports: vec![StatusReport {
            seq,
            entity: entity.to_owned(),
            kind: "workload".to_owned(),
            status: Some(ModelStatus {
                current: current.to_owned(),
                message: format!("report {seq}"),
                since_unix_ms: 0,
            }),
        }],
        logs: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_authenticated_confined_watched_and_present() -> Result<()> {
    init_tracing();
    let cluster = LocalCluster::start(ClusterOptions::new("agent-auth", 1)).await?;
    let mut admin = cluster.client(1)?;
    admin
        .set_controller_config(SetControllerConfigRequest {
            values: [("agent-heartbeat-interval".to_owned(), "200ms".to_owned())].into(),
            request_id: String::new(),
        })
        .await?;
    for name in ["alpha", "beta"] {
        admin
            .add_model(AddModelRequest {
                name: name.to_owned(),
                ..Default::default()
            })
            .await?;
    }
    let m0 = add_machine(&mut admin, "alpha").await?;
    let m1 = add_machine(&mut admin, "alpha").await?;
    let other_model = add_machine(&mut admin, "beta").await?;
    let digest = deploy(&mut admin, "alpha", "web", &["0", "1"]).await?;
    let before = fingerprint(&mut admin, "alpha").await?;

    info!("--- refused credentials change nothing");
    let refusals = [
        (
            "machine 0 with machine 1's credential",
            AgentAuth::new(&m1.credential, &m0.model_uuid, &m0.machine_id)?,
        ),
        (
            "a forged credential",
            AgentAuth::new("forged", &m0.model_uuid, &m0.machine_id)?,
        ),
        (
            "a machine id of another model",
            AgentAuth::new(&other_model.credential, &m0.model_uuid, "7")?,
        ),
        (
            "another model's machine under this model",
            AgentAuth::new(
                &other_model.credential,
                &m0.model_uuid,
                &other_model.machine_id,
            )?,
        ),
    ];
    for (what, auth) in refusals {
        let mut impostor = agent(&cluster, auth)?;
        let status = expect_refused(
            what,
            impostor.report(report(1, "unit-web-0", "active")).await,
            Code::Unauthenticated,
        )?;
        ensure!(
            status.message() == "unknown machine or bad credential",
            "{what}: the refusal says too much: {}",
            status.message()
        );
        expect_refused(
            what,
            impostor.heartbeat(HeartbeatRequest {}).await,
            Code::Unauthenticated,
        )?;
        expect_refused(
            what,
            impostor.watch(WatchRequest { known_revision: 0 }).await,
            Code::Unauthenticated,
        )?;
    }
    ensure!(
        fingerprint(&mut admin, "alpha").await? == before,
        "a refused agent changed the model"
    );

    info!("--- a report about another machine's unit is refused whole");
    let mut agent0 = agent(&cluster, AgentAuth::of(&m0)?)?;
    let mut mixed = report(1, "unit-web-0", "active");
    mixed
        .reports
        .extend(report(2, "unit-web-1", "active").reports);
    expect_refused(
        "report naming unit-web-1 from machine 0",
        agent0.report(mixed).await,
        Code::PermissionDenied,
    )?;
    ensure!(
        fingerprint(&mut admin, "alpha").await? == before,
        "a refused report changed the model"
    );

    info!("--- an own report applies once");
    let answer = agent0
        .report(report(1, "unit-web-0", "active"))
        .await?
        .into_inner();
    ensure!(
        answer.applied_seq == 1,
        "applied_seq {}",
        answer.applied_seq
    );
    let again = agent0
        .report(report(1, "unit-web-0", "blocked"))
        .await?
        .into_inner();
    ensure!(again.applied_seq == 1, "applied_seq {}", again.applied_seq);
    let unit = status(&mut admin, "alpha")
        .await?
        .units
        .into_iter()
        .find(|u| u.name == "web/0")
        .context("web/0")?;
    let workload = unit.workload_status.context("workload status")?;
    ensure!(
        workload.current == "active",
        "a re-sent seq was applied: {workload:?}"
    );

    info!("--- the charm of an own unit downloads; nothing else does");
    let mut chunks = agent0
        .download_charm(AgentDownloadRequest {
            digest: digest.clone(),
        })
        .await?
        .into_inner();
    let mut downloaded = 0;
    while let Some(chunk) = chunks.message().await? {
        downloaded += chunk.data.len();
    }
    ensure!(downloaded > 0, "empty charm download");
    expect_refused(
        "download of an unused digest",
        agent0
            .download_charm(AgentDownloadRequest {
                digest: "0".repeat(64),
            })
            .await
            .map(|_| ()),
        Code::PermissionDenied,
    )?;

    info!("--- a watch delivers the units, then the changed config");
    let mut watch = agent0
        .watch(WatchRequest { known_revision: 0 })
        .await?
        .into_inner();
    let first = next_update(&mut watch, "the first update").await?;
    ensure!(
        first.heartbeat_interval_ms == 200,
        "interval {}",
        first.heartbeat_interval_ms
    );
    let names: Vec<&str> = first.units.iter().map(|u| u.name.as_str()).collect();
    ensure!(names == ["web/0"], "units on machine 0: {names:?}");
    ensure!(
        first.units[0].config.get("port").map(String::as_str) == Some("80"),
        "config {:?}",
        first.units[0].config
    );
    ensure!(first.units[0].leader, "web/0 should lead");
    admin
        .set_application_config(SetApplicationConfigRequest {
            model: model_ref("alpha"),
            application: "web".to_owned(),
            values: [("port".to_owned(), "8080".to_owned())].into(),
            request_id: String::new(),
        })
        .await?;
    let changed = next_update(&mut watch, "the config change").await?;
    ensure!(
        changed.units[0].config.get("port").map(String::as_str) == Some("8080"),
        "config after the change {:?}",
        changed.units[0].config
    );
    ensure!(changed.revision > first.revision, "revision did not grow");
    drop(watch);

    info!("--- heartbeats make machine 0 started; it turns down once they stop");
    let machine_status = |full: &FullStatus, id: &str| {
        full.machines
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.agent_status.clone())
            .map(|s| s.current)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + CONDITION_WAIT;
    loop {
        agent0.heartbeat(HeartbeatRequest {}).await?;
        let full = status(&mut admin, "alpha").await?;
        if machine_status(&full, "0") == "started" {
            ensure!(
                machine_status(&full, "1") == "pending",
                "machine 1 never heartbeat but shows {}",
                machine_status(&full, "1")
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "machine 0 not started within {CONDITION_WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let deadline = Instant::now() + CONDITION_WAIT;
    loop {
        let full = status(&mut admin, "alpha").await?;
        let current = machine_status(&full, "0");
        if current == "down" || current == "lost" {
            info!(current, "machine 0 is no longer started");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "machine 0 still {current} {CONDITION_WAIT:?} after its last heartbeat"
        );
        tokio::time::sleep(POLL).await;
    }

    info!("--- a removed machine's watch says so, and its agent is refused clearly");
    let mut agent1 = agent(&cluster, AgentAuth::of(&m1)?)?;
    let mut watch1 = agent1
        .watch(WatchRequest { known_revision: 0 })
        .await?
        .into_inner();
    let first = next_update(&mut watch1, "machine 1's first update").await?;
    ensure!(!first.machine_removed, "machine 1 removed too early");
    admin
        .remove_machine(RemoveMachineRequest {
            model: model_ref("alpha"),
            machine_id: "1".to_owned(),
            force: true,
            request_id: String::new(),
        })
        .await?;
    let removed = next_update(&mut watch1, "the removal").await?;
    ensure!(removed.machine_removed, "no machine_removed: {removed:?}");
    expect_refused(
        "heartbeat of a removed machine",
        agent1.heartbeat(HeartbeatRequest {}).await,
        Code::PermissionDenied,
    )?;
    Ok(())
}

/// Sets (or, with `revoke`, takes away) `user`'s write access to `model`; returns once committed.
async fn write_access(
    admin: &mut AuthedControllerClient,
    model: &str,
    user: &str,
    revoke: bool,
) -> Result<()> {
    admin
        .set_model_access(SetModelAccessRequest {
            model: model_ref(model),
            user: user.to_owned(),
            access: Access::Write as i32,
            request_id: String::new(),
            revoke,
        })
        .await?;
    Ok(())
}

fn set_key(model: &str, key: &str) -> SetModelConfigRequest {
    SetModelConfigRequest {
        model: model_ref(model),
        values: [(key.to_owned(), key.to_owned())].into(),
        request_id: format!("wendy-{key}"),
    }
}

/// Issue 12, item 6 at process level: a user's write access is revoked while a follower is
/// frozen (SIGSTOP), and the user's write reaches that follower as it thaws, before it applied
/// the revocation: it must be refused, and never applied. The follower's own check sees the old
/// state; the refusal comes from applying, which checks the caller's authority again against the
/// state the write applies to. Several rounds, each granting again first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_cannot_write_through_a_lagging_follower() -> Result<()> {
    init_tracing();
    const ROUNDS: usize = 4;
    let mut cluster = LocalCluster::start(ClusterOptions::new("stale-auth", 3)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    let mut admin = cluster.client(leader)?;
    admin
        .add_model(AddModelRequest {
            name: "alpha".to_owned(),
            ..Default::default()
        })
        .await?;
    let token = admin
        .add_user(AddUserRequest {
            name: "wendy".into(),
            controller_access: "login".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .token;
    let mut user = cluster.client_with(follower, Some(&token), Duration::from_secs(30))?;
    for round in 0..ROUNDS {
        write_access(&mut admin, "alpha", "wendy", false).await?;
        // Through the follower once it applied the grant.
        let key = format!("ok-{round}");
        let deadline = Instant::now() + CONDITION_WAIT;
        loop {
            match user.set_model_config(set_key("alpha", &key)).await {
                Ok(_) => break,
                // The follower has not applied the model's creation or the grant yet.
                Err(status) if matches!(status.code(), Code::PermissionDenied | Code::NotFound) => {
                    ensure!(
                        Instant::now() < deadline,
                        "the model or the grant never reached node {follower}: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => bail!("write {key} through node {follower}: {status}"),
            }
        }
        info!(
            round,
            follower, "--- freeze the follower, revoke, write through it, thaw it"
        );
        cluster.pause(follower)?;
        write_access(&mut admin, "alpha", "wendy", true).await?;
        let late = format!("late-{round}");
        let write = {
            let mut user = user.clone();
            let request = set_key("alpha", &late);
            tokio::spawn(async move { user.set_model_config(request).await })
        };
        // The request waits in the frozen node's socket; it is served as the node thaws, next
        // to the Raft traffic that brings the revocation.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.resume(follower)?;
        match write.await? {
            Ok(_) => bail!(
                "round {round}: a write of a user whose access was revoked was acknowledged \
                 by node {follower}, which had not applied the revocation"
            ),
            Err(status) => ensure!(
                status.code() == Code::PermissionDenied,
                "round {round}: the late write was answered {status}, not a refusal"
            ),
        }
    }
    let config = admin
        .get_model_config(GetModelConfigRequest {
            model: model_ref("alpha"),
        })
        .await?
        .into_inner();
    let applied: Vec<&String> = config
        .values
        .keys()
        .filter(|k| k.starts_with("late-"))
        .collect();
    ensure!(
        applied.is_empty(),
        "writes applied after their revocation: {applied:?}"
    );
    Ok(())
}
