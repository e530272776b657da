//! `ctl add-machine` and `ctl remove-machine`. `add-machine` prints the new machine's id alone on
//! stdout (scripts read it) and writes the agent config `agentd --config` reads, mode 0600.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use starling_proto::controller::{AddMachineRequest, RemoveMachineRequest};

use super::{model_ref, request_id, Context, ModelArg};
use crate::store::write_atomically;
use crate::Output;

/// Arguments of `ctl add-machine`.
#[derive(Debug, Args)]
pub struct AddMachineArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Write the agent config here (default:
    /// $CTL_DATA/agents/CONTROLLER/MODEL-UUID/machine-ID.yaml).
    #[arg(long, value_name = "FILE")]
    pub agent_config: Option<PathBuf>,
}

/// Where `add-machine` writes an agent config by default.
pub fn default_agent_config_path(
    store_dir: &Path,
    controller: &str,
    model_uuid: &str,
    machine_id: &str,
) -> PathBuf {
    store_dir
        .join("agents")
        .join(controller)
        .join(model_uuid)
        .join(format!("machine-{machine_id}.yaml"))
}

/// Runs `ctl add-machine`.
pub async fn add_machine(ctx: &Context, args: AddMachineArgs) -> Result<Output> {
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let model_ref = model_ref(&target);
    // The uuid names the default path; asking first also fails early on an unknown model.
    let model_uuid = match &args.agent_config {
        Some(_) => String::new(),
        None => {
            let info = client
                .call(|mut c| {
                    let model_ref = model_ref.clone();
                    async move { c.show_model(model_ref).await }
                })
                .await?;
            info.model.unwrap_or_default().uuid
        }
    };
    let request = AddMachineRequest {
        model: Some(model_ref),
        request_id: request_id(),
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_machine(request).await }
        })
        .await?;
    let machine_id = response.machine_id;
    let path = match args.agent_config {
        Some(path) => path,
        None => {
            let path = default_agent_config_path(
                ctx.store.dir(),
                &target.controller,
                &model_uuid,
                &machine_id,
            );
            let dir = path.parent().expect("has a parent");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            path
        }
    };
    // The machine exists now: say which one even if the file cannot be written.
    write_atomically(&path, &response.agent_config_yaml, 0o600).with_context(|| {
        format!("machine {machine_id} was added but its agent config was not written")
    })?;
    Ok(Output {
        stdout: format!("{machine_id}\n"),
        stderr: format!("agent config written to {}\n", path.display()),
    })
}

/// Arguments of `ctl remove-machine`.
#[derive(Debug, Args)]
pub struct RemoveMachineArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Machine ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Remove the machine even though units are on it.
    #[arg(long)]
    pub force: bool,
}

/// Runs `ctl remove-machine`.
pub async fn remove_machine(ctx: &Context, args: RemoveMachineArgs) -> Result<Output> {
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    for machine_id in args.ids {
        let request = RemoveMachineRequest {
            model: Some(model_ref(&target)),
            machine_id,
            force: args.force,
            request_id: request_id(),
        };
        client
            .call(|mut c| {
                let request = request.clone();
                async move { c.remove_machine(request).await }
            })
            .await?;
    }
    Ok(Output::default())
}
