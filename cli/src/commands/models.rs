//! `ctl add-model`, `models`, `show-model` and `destroy-model`. The controller is the authority
//! on models; the client store's `models.yaml` caches names and uuids for `-m` and `switch`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use starling_proto::controller::{
    AddModelRequest, DestroyModelRequest, ListModelsRequest, ModelInfo,
};

use super::{model_ref, parse_assignments, request_id, Context, ControllerArg, ModelArg};
use crate::client::ControllerClient;
use crate::model_views::{ModelsView, ShowModelView};
use crate::render::Format;
use crate::store::qualify_model;
use crate::target::split_model_name;
use crate::{Output, UsageError};

/// Arguments of `ctl add-model`.
#[derive(Debug, Args)]
pub struct AddModelArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The model's name.
    pub name: String,
    /// Model config, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// The cloud (default: the controller's).
    #[arg(long)]
    pub cloud: Option<String>,
    /// The region (default: the controller's).
    #[arg(long)]
    pub region: Option<String>,
}

/// Runs `ctl add-model`: adds the model, caches it and makes it (and its controller) current.
pub async fn add_model(ctx: &Context, args: AddModelArgs) -> Result<Output> {
    if args.name.is_empty() || args.name.contains([':', '/']) {
        return Err(UsageError(format!("invalid model name \"{}\"", args.name)).into());
    }
    let config = parse_assignments(&args.config)?;
    let client = ctx.connect(args.controller.controller.as_deref(), None, None)?;
    let request = AddModelRequest {
        name: args.name.clone(),
        cloud: args.cloud.unwrap_or_default(),
        region: args.region.unwrap_or_default(),
        config,
        request_id: request_id(),
    };
    let info = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_model(request).await }
        })
        .await?;
    let model = info.model.unwrap_or_default();
    let controller = client.controller().to_string();
    let user = ctx.store.read()?.user(&controller);
    let owner = if model.owner.is_empty() {
        user.clone()
    } else {
        model.owner.clone()
    };
    let qualified = qualify_model(&owner, &args.name);
    ctx.store.update(|state| {
        state.add_model(&controller, &qualified, &model.uuid)?;
        state.set_current_model(&controller, &qualified)?;
        state.set_current_controller(&controller)
    })?;
    let region = if model.region.is_empty() {
        model.cloud.clone()
    } else {
        format!("{}/{}", model.cloud, model.region)
    };
    Ok(Output::stderr(format!(
        "Added '{}' model on {region} for user '{user}'\n",
        args.name
    )))
}

/// Arguments of `ctl models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    controller: ControllerArg,
}

/// Runs `ctl models`: lists the controller's models and refreshes the cached list.
pub async fn models(ctx: &Context, args: ModelsArgs) -> Result<Output> {
    let client = ctx.connect(args.controller.controller.as_deref(), None, None)?;
    let (models, user, current) = refresh_models(ctx, &client).await?;
    let view = ModelsView::new(client.controller(), &user, current.as_deref(), &models);
    Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
}

/// Lists the models of `client`'s controller and replaces the client store's cached list with
/// them. Returns the models, the account's user and the controller's current model.
pub async fn refresh_models(
    ctx: &Context,
    client: &ControllerClient,
) -> Result<(Vec<ModelInfo>, String, Option<String>)> {
    let response = client
        .call(|mut c| async move { c.list_models(ListModelsRequest {}).await })
        .await?;
    let controller = client.controller().to_string();
    let (user, current) = ctx.store.update(|state| {
        let user = state.user(&controller);
        let listed: BTreeMap<String, String> = response
            .models
            .iter()
            .filter_map(|info| info.model.as_ref())
            .map(|m| {
                let owner = if m.owner.is_empty() { &user } else { &m.owner };
                (qualify_model(owner, &m.name), m.uuid.clone())
            })
            .collect();
        state.replace_models(&controller, listed)?;
        Ok((user, state.current_model(&controller).map(str::to_string)))
    })?;
    Ok((response.models, user, current))
}

/// Arguments of `ctl show-model`.
#[derive(Debug, Args)]
pub struct ShowModelArgs {
    /// The model, `[controller:]model` (default: -m, else the current model).
    pub name: Option<String>,
    #[command(flatten)]
    model: ModelArg,
}

/// The one model a command names as `NAME` or `-m`, never both.
fn one_model<'a>(name: Option<&'a str>, flag: Option<&'a str>) -> Result<Option<&'a str>> {
    match (name, flag) {
        (Some(a), Some(b)) if a != b => {
            let message = "give the model either as NAME or as -m, not both";
            Err(UsageError(message.into()).into())
        }
        (a, b) => Ok(a.or(b)),
    }
}

/// Runs `ctl show-model`.
pub async fn show_model(ctx: &Context, args: ShowModelArgs) -> Result<Output> {
    let model = one_model(args.name.as_deref(), args.model.model.as_deref())?;
    let (client, target) = ctx.connect_model(model, None)?;
    let model_ref = model_ref(&target);
    let info = client
        .call(|mut c| {
            let model_ref = model_ref.clone();
            async move { c.show_model(model_ref).await }
        })
        .await?;
    let view = ShowModelView::new(&target.controller, &info);
    Ok(Output::stdout(view.render(ctx.format_or(Format::Yaml))?))
}

/// Arguments of `ctl destroy-model`.
#[derive(Debug, Args)]
pub struct DestroyModelArgs {
    /// The model, `[controller:]model`.
    pub name: String,
    /// Destroy it even though machines remain.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long = "no-prompt", alias = "yes")]
    pub no_prompt: bool,
}

/// Unless `no_prompt`, asks `question` on the terminal and fails with `declined` unless the
/// answer is yes; without a terminal it fails saying that `what` needs confirmation.
pub(super) fn confirm_unless(
    no_prompt: bool,
    what: &str,
    question: &str,
    declined: &str,
) -> Result<()> {
    if no_prompt {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what} needs confirmation: pass -y (--no-prompt) when stdin is not a terminal");
    }
    if !confirm(question)? {
        bail!("{declined}");
    }
    Ok(())
}

/// Asks `question` on the terminal; true for `y` or `yes`. The one place a command talks to the
/// user before it has finished, so it writes to stderr itself.
fn confirm(question: &str) -> Result<bool> {
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "{question} (y/N): ").context("cannot ask for confirmation")?;
    stderr.flush().context("cannot ask for confirmation")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Runs `ctl destroy-model`.
pub async fn destroy_model(ctx: &Context, args: DestroyModelArgs) -> Result<Output> {
    // Unlike -m, the model is never implied: `ctl destroy-model alpha:` names none.
    if split_model_name(&args.name).1.is_empty() {
        return Err(UsageError(format!("invalid model name \"{}\"", args.name)).into());
    }
    let (client, target) = ctx.connect_model(Some(&args.name), None)?;
    confirm_unless(
        args.no_prompt,
        &format!("destroying model \"{target}\""),
        &format!(
            "This destroys model \"{target}\" and everything in it{}. Continue?",
            if args.force {
                ", even its machines"
            } else {
                ""
            }
        ),
        &format!("model \"{target}\" not destroyed"),
    )?;
    let request = DestroyModelRequest {
        model: Some(model_ref(&target)),
        force: args.force,
        request_id: request_id(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.destroy_model(request).await }
        })
        .await?;
    ctx.store.update(|state| {
        state.remove_model(&target.controller, &target.model);
        Ok(())
    })?;
    Ok(Output::default())
}
