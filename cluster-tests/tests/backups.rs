//! Backups against real `ctld` processes and the real `ctl` (issue "Backups"): a backup taken
//! while writes continue restores onto a new controller with every model identical; restored
//! agents keep their credentials; the backup survives the loss of the node that made it; bad
//! archives (corrupted, truncated, a wrong file, a newer version) are refused, by `ctl` and by the
//! controller itself, and change nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{AuthedControllerClient, ClusterOptions, LocalCluster};
use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::HeartbeatRequest;
use starling_proto::controller::{
    CharmChunk, ModelRef, RestoreBackupRequest, SetApplicationConfigRequest, StatusRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};
use tracing::info;

/// Deadline of one `ctl` run.
const CTL_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline of the conditions the test waits for.
const CONDITION_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// Most config writes the background writer makes.
const WRITES_MAX: u64 = 2_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// What one `ctl` run printed.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The `ctl` binary with its own client store.
struct Ctl {
    bin: PathBuf,
    data: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Result<Run> {
        let output = assert_cmd::Command::new(&self.bin)
            .args(args)
            .env("CTL_DATA", &self.data)
            .env_remove("CTL_CONTROLLER")
            .env_remove("CTL_MODEL")
            .env_remove("CTL_TOKEN")
            .current_dir(&self.data)
            .timeout(CTL_TIMEOUT)
            .output()
            .with_context(|| format!("running ctl {args:?}"))?;
        Ok(Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let run = self.run(args)?;
        ensure!(run.code == 0, "ctl {args:?} failed: {run:?}");
        Ok(run.stdout)
    }

    /// Runs a command that must fail with exit 1 and an `ERROR` naming `expected`.
    fn refused(&self, args: &[&str], expected: &str) -> Result<()> {
        let run = self.run(args)?;
        ensure!(run.code == 1, "ctl {args:?}: expected exit 1, got {run:?}");
        ensure!(
            run.stderr.starts_with("ERROR ") && run.stderr.contains(expected),
            "ctl {args:?}: expected an ERROR naming {expected:?}, got {run:?}"
        );
        info!(?args, stderr = run.stderr.trim(), "refused as expected");
        Ok(())
    }
}

/// What an agent config carries that this test uses.
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

impl Interceptor for AgentAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in &self.0 {
            request.metadata_mut().insert(*key, value.clone());
        }
        Ok(request)
    }
}

fn model_ref(name: &str) -> Option<ModelRef> {
    Some(ModelRef {
        name: name.to_owned(),
        ..Default::default()
    })
}

/// The model as status shows it, minus the answering controller, what changes with time alone
/// (the clock, presence) and
/// minus the application config values named in `ignore` (set while the backup was taken).
async fn fingerprint(
    admin: &mut AuthedControllerClient,
    model: &str,
    ignore: &[(&str, &str)],
) -> Result<String> {
    let mut full = admin
        .status(StatusRequest {
            model: model_ref(model),
        })
        .await?
        .into_inner();
    full.now_unix_ms = 0;
    // The answering controller's own identity, not the model's.
    if let Some(info) = full.model.as_mut() {
        info.controller_uuid.clear();
        info.controller_name.clear();
        // Covers the config values in `ignore`; models are compared by digest separately.
        info.description_digest.clear();
        // The answering node's own load measurement, not model state.
        info.load = None;
    }
    for machine in &mut full.machines {
        machine.agent_status = None;
    }
    for (application, key) in ignore {
        for app in full
            .applications
            .iter_mut()
            .filter(|a| a.name == *application)
        {
            app.config.remove(*key);
        }
    }
    Ok(format!("{full:?}"))
}

async fn app_config(admin: &mut AuthedControllerClient, model: &str, app: &str) -> Result<String> {
    let full = admin
        .status(StatusRequest {
            model: model_ref(model),
        })
        .await?
        .into_inner();
    let app = full
        .applications
        .iter()
        .find(|a| a.name == app)
        .context("no such application")?;
    Ok(app.config.get("interval").cloned().unwrap_or_default())
}

fn sha256_file(path: &Path) -> Result<String> {
    let sum = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    ensure!(sum.status.success(), "sha256sum failed");
    Ok(String::from_utf8(sum.stdout)?
        .split_whitespace()
        .next()
        .context("no digest")?
        .to_owned())
}

/// Uploads `path` and asks the controller itself to restore it (no client-side checks).
async fn restore_via_api(admin: &mut AuthedControllerClient, path: &Path) -> Result<Status> {
    let bytes = std::fs::read(path)?;
    let digest = sha256_file(path)?;
    let chunk = CharmChunk {
        digest: digest.clone(),
        size: bytes.len() as u64,
        offset: 0,
        data: bytes,
    };
    admin
        .upload_charm(tonic::codegen::tokio_stream::iter(vec![chunk]))
        .await?;
    match admin
        .restore_backup(RestoreBackupRequest {
            archive_sha256: digest,
            force: true,
            request_id: String::new(),
        })
        .await
    {
        Ok(answer) => bail!("restore of {} accepted: {answer:?}", path.display()),
        Err(status) => Ok(status),
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + CONDITION_WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {CONDITION_WAIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_consistent_durable_restorable_and_verified() -> Result<()> {
    init_tracing();
    let charms = repo_root().join("scripts/charms");
    let charm = |name: &str| charms.join(name).display().to_string();
    let work = tempfile::tempdir()?;
    let mut source = LocalCluster::start(ClusterOptions::new("bk-source", 3)).await?;
    let ctl = Ctl {
        bin: source.bins().ctl.clone(),
        data: work.path().to_path_buf(),
    };
    let registration = |cluster: &LocalCluster| cluster.root().join("registration.yaml");
    ctl.ok(&["register", &registration(&source).display().to_string()])?;

    info!("--- build two models: machines, units, relations, charm blobs");
    let m0 = work.path().join("alpha-0.yaml");
    ctl.ok(&["add-model", "alpha", "-c", "bk-source"])?;
    for machine in [&m0, &work.path().join("alpha-1.yaml")] {
        let path = machine.display().to_string();
        ctl.ok(&[
            "add-machine",
            "-m",
            "bk-source:alpha",
            "--agent-config",
            &path,
        ])?;
    }
    ctl.ok(&[
        "deploy",
        &charm("counter"),
        "-m",
        "bk-source:alpha",
        "--to",
        "0,1",
    ])?;
    ctl.ok(&[
        "deploy",
        &charm("web"),
        "-m",
        "bk-source:alpha",
        "--to",
        "0",
    ])?;
    ctl.ok(&["deploy", &charm("db"), "-m", "bk-source:alpha", "--to", "1"])?;
    ctl.ok(&["integrate", "web", "db", "-m", "bk-source:alpha"])?;
    ctl.ok(&["config", "counter", "interval=2", "-m", "bk-source:alpha"])?;
    ctl.ok(&["add-model", "beta", "-c", "bk-source"])?;
    let beta0 = work.path().join("beta-0.yaml").display().to_string();
    ctl.ok(&[
        "add-machine",
        "-m",
        "bk-source:beta",
        "--agent-config",
        &beta0,
    ])?;
    ctl.ok(&[
        "deploy",
        &charm("counter"),
        "-m",
        "bk-source:beta",
        "--to",
        "0",
    ])?;

    info!("--- take a backup while config writes continue");
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writer_client = source.client(1)?;
    let writer = tokio::spawn({
        let stop = stop.clone();
        let written = written.clone();
        async move {
            for n in 1..=WRITES_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                writer_client
                    .set_application_config(SetApplicationConfigRequest {
                        model: model_ref("beta"),
                        application: "counter".into(),
                        values: [("interval".to_owned(), n.to_string())].into(),
                        request_id: String::new(),
                    })
                    .await?;
                written.store(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    wait_for("the writer's first writes", || {
        written.load(Ordering::Relaxed) >= 3
    })
    .await?;
    let archive = work.path().join("source.bin");
    let archive_arg = archive.display().to_string();
    let created = ctl.ok(&[
        "create-backup",
        "nightly",
        "-m",
        "bk-source:controller",
        "--filename",
        &archive_arg,
    ])?;
    info!(created = created.trim(), "backup taken");
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let last_written = written.load(Ordering::Relaxed);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&archive)?.permissions());
    ensure!(mode & 0o777 == 0o600, "archive mode {mode:o}");
    let mut admin = source.client(1)?;
    let mut expected = Vec::new();
    for model in ["alpha", "beta"] {
        expected.push(fingerprint(&mut admin, model, &[("counter", "interval")]).await?);
    }
    let alpha_interval = app_config(&mut admin, "alpha", "counter").await?;
    // Nothing writes to alpha, so its exported description must come back byte for byte.
    let alpha_digest = admin
        .show_model(model_ref("alpha").context("model ref")?)
        .await?
        .into_inner()
        .description_digest;
    ensure!(
        alpha_digest.len() == 64,
        "no digest for alpha: {alpha_digest:?}"
    );

    info!("--- the backup survives the loss of the node that made it");
    let listed: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["backups", "-c", "bk-source", "--format", "json"])?)?;
    let backups = listed["backups"].as_array().context("no backups list")?;
    ensure!(backups.len() == 1, "{listed}");
    ensure!(backups[0]["notes"] == "nightly", "{listed}");
    let id = backups[0]["id"].as_str().context("no id")?.to_owned();
    let maker = backups[0]["node-id"].as_u64().context("no node id")?;
    source.kill(maker)?;
    source.wait_for_leader(CONDITION_WAIT).await?;
    let again = work.path().join("again.bin");
    let again_arg = again.display().to_string();
    ctl.ok(&[
        "download-backup",
        &id,
        "-c",
        "bk-source",
        "--filename",
        &again_arg,
    ])?;
    ensure!(
        std::fs::read(&again)? == std::fs::read(&archive)?,
        "the backup downloaded through another node differs"
    );

    info!("--- restore onto a new controller");
    let target = LocalCluster::start(ClusterOptions::new("bk-target", 1)).await?;
    ctl.ok(&["register", &registration(&target).display().to_string()])?;
    let restored = ctl.ok(&["restore-backup", &archive_arg, "-c", "bk-target"])?;
    info!(restored = restored.trim(), "restored");
    let mut restored_admin = target.client(1)?;
    for (model, expected) in ["alpha", "beta"].iter().zip(&expected) {
        let actual = fingerprint(&mut restored_admin, model, &[("counter", "interval")]).await?;
        ensure!(
            &actual == expected,
            "model {model} differs after restore:\n{actual}\nvs\n{expected}"
        );
    }
    ensure!(app_config(&mut restored_admin, "alpha", "counter").await? == alpha_interval);
    let restored_alpha_digest = restored_admin
        .show_model(model_ref("alpha").context("model ref")?)
        .await?
        .into_inner()
        .description_digest;
    ensure!(
        restored_alpha_digest == alpha_digest,
        "alpha's description digest changed: {alpha_digest} -> {restored_alpha_digest}"
    );
    let beta_interval: u64 = app_config(&mut restored_admin, "beta", "counter")
        .await?
        .parse()
        .context("beta's interval")?;
    ensure!(
        (3..=last_written).contains(&beta_interval),
        "restored interval {beta_interval} was never written (last {last_written})"
    );

    info!("--- restored agents keep their credentials");
    let config: AgentConfig = serde_saphyr::from_str(&std::fs::read_to_string(&m0)?)?;
    let auth = AgentAuth(vec![
        (
            "authorization",
            format!("Bearer {}", config.credential).parse()?,
        ),
        ("x-model-uuid", config.model_uuid.parse()?),
        ("x-machine-id", config.machine_id.parse()?),
    ]);
    AgentClient::with_interceptor(target.channel(1)?, auth)
        .heartbeat(HeartbeatRequest {})
        .await
        .context("a restored machine's agent credential was refused")?;

    info!("--- bad archives are refused and change nothing");
    let before: Vec<String> = {
        let mut prints = Vec::new();
        for model in ["alpha", "beta"] {
            prints.push(fingerprint(&mut restored_admin, model, &[]).await?);
        }
        prints
    };
    let good = std::fs::read(&archive)?;
    let corrupted = work.path().join("corrupted.bin");
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&corrupted, &bytes)?;
    let truncated = work.path().join("truncated.bin");
    std::fs::write(&truncated, &good[..good.len() - 100])?;
    let wrong = work.path().join("wrong.bin");
    std::fs::write(&wrong, b"PK\x03\x04 certainly not a backup")?;
    let path = |p: &Path| p.display().to_string();
    ctl.refused(
        &["restore-backup", &archive_arg, "-c", "bk-target"],
        "already holds 2 model(s)",
    )?;
    ctl.refused(
        &[
            "restore-backup",
            &path(&corrupted),
            "-c",
            "bk-target",
            "--force",
        ],
        "corrupted",
    )?;
    ctl.refused(
        &[
            "restore-backup",
            &path(&truncated),
            "-c",
            "bk-target",
            "--force",
        ],
        "truncated",
    )?;
    ctl.refused(
        &[
            "restore-backup",
            &path(&wrong),
            "-c",
            "bk-target",
            "--force",
        ],
        "not a Starling backup",
    )?;
    for bad in [&corrupted, &truncated, &wrong] {
        let status = restore_via_api(&mut restored_admin, bad).await?;
        ensure!(
            status.code() == Code::InvalidArgument,
            "{}: {status}",
            bad.display()
        );
    }

    info!("--- a backup from a newer version is refused");
    let mut options = ClusterOptions::new("bk-newer", 1);
    options.version = Some("9.9.9".into());
    let newer = LocalCluster::start(options).await?;
    ctl.ok(&["register", &registration(&newer).display().to_string()])?;
    ctl.ok(&["add-model", "gamma", "-c", "bk-newer"])?;
    let newer_archive = work.path().join("newer.bin");
    ctl.ok(&[
        "create-backup",
        "-c",
        "bk-newer",
        "--filename",
        &path(&newer_archive),
    ])?;
    ctl.refused(
        &[
            "restore-backup",
            &path(&newer_archive),
            "-c",
            "bk-target",
            "--force",
        ],
        "newer than this controller's",
    )?;
    let status = restore_via_api(&mut restored_admin, &newer_archive).await?;
    ensure!(
        status.code() == Code::FailedPrecondition && status.message().contains("9.9.9"),
        "{status}"
    );
    for (model, before) in ["alpha", "beta"].iter().zip(&before) {
        let after = fingerprint(&mut restored_admin, model, &[]).await?;
        ensure!(
            &after == before,
            "model {model} changed after refused restores"
        );
    }
    // alpha, beta and the target's own controller model.
    let models = restored_admin
        .list_models(starling_proto::controller::ListModelsRequest {})
        .await?
        .into_inner()
        .models;
    ensure!(
        models.len() == 3,
        "models after refused restores: {models:?}"
    );
    Ok(())
}
