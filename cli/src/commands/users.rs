//! `ctl add-user`, `grant`, `revoke`, `login` and `whoami`: users of a controller and their
//! access to models. A user's token is shown once, by `add-user`; `login` stores it in
//! `accounts.yaml` after the controller has accepted it.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use starling_proto::controller::{AddUserRequest, SetModelAccessRequest, WhoAmIRequest};
use starling_proto::model::Access;

use super::{model_ref, request_id, Context, ControllerArg};
use crate::client::{ConnectionInfo, ControllerClient};
use crate::format::short_for_user;
use crate::model_views::WhoAmIView;
use crate::render::Format;
use crate::store::AccountDetails;
use crate::target::{resolve_controller, resolve_model, split_model_name};
use crate::{Output, UsageError};

/// Arguments of `ctl add-user`.
#[derive(Debug, Args)]
pub struct AddUserArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The user's name.
    pub name: String,
    /// Give the user superuser access to the controller (default: login only).
    #[arg(long)]
    pub superuser: bool,
}

/// Runs `ctl add-user`.
pub async fn add_user(ctx: &Context, args: AddUserArgs) -> Result<Output> {
    if args.name.is_empty()
        || args.name.contains(['/', ':'])
        || args.name.contains(char::is_whitespace)
    {
        return Err(UsageError(format!("invalid user name \"{}\"", args.name)).into());
    }
    let client = ctx.connect(args.controller.controller.as_deref(), None, None)?;
    let request = AddUserRequest {
        name: args.name.clone(),
        controller_access: if args.superuser { "superuser" } else { "login" }.to_string(),
        request_id: request_id(),
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_user(request).await }
        })
        .await?;
    let name = &args.name;
    let token = &response.token;
    Ok(Output::stdout(format!(
        "User \"{name}\" added.\n\
         Its token is shown only this once: {token}\n\
         With controller \"{controller}\" registered, {name} logs in with:\n    \
         ctl login -c {controller} --user {name} --token {token}\n",
        controller = client.controller()
    )))
}

/// A model access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    /// Read the model.
    Read,
    /// Change the model.
    Write,
    /// Change the model and who has access to it.
    Admin,
}

impl From<AccessArg> for Access {
    fn from(access: AccessArg) -> Self {
        match access {
            AccessArg::Read => Access::Read,
            AccessArg::Write => Access::Write,
            AccessArg::Admin => Access::Admin,
        }
    }
}

/// Arguments of `ctl grant` and `ctl revoke`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The user.
    pub user: String,
    /// The access level (to grant, or to take away).
    #[arg(value_enum)]
    pub access: AccessArg,
    /// The model, `[controller:]model`.
    pub model: String,
}

/// Runs `ctl grant` (`grant`) or `ctl revoke` (`!grant`). Revoking a level leaves the user the
/// level below it, as `juju revoke` does: admin → write, write → read, read → none.
pub async fn grant(ctx: &Context, args: GrantArgs, grant: bool) -> Result<Output> {
    let (controller_part, model_part) = split_model_name(&args.model);
    if model_part.is_empty() {
        return Err(UsageError(format!("invalid model name \"{}\"", args.model)).into());
    }
    // -c names the controller of a model given without one.
    let model = match (&args.controller.controller, controller_part) {
        (Some(c), None) => format!("{c}:{}", args.model),
        _ => args.model.clone(),
    };
    let (client, target) = ctx.connect_model(Some(&model), None)?;
    let request = SetModelAccessRequest {
        model: Some(model_ref(&target)),
        user: args.user,
        access: Access::from(args.access) as i32,
        request_id: request_id(),
        revoke: !grant,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.set_model_access(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Arguments of `ctl login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The user.
    #[arg(long, short = 'u')]
    pub user: String,
    /// The user's token, as `ctl add-user` printed it.
    #[arg(long, env = "CTL_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Runs `ctl login`: checks the token with WhoAmI, then stores the account.
pub async fn login(ctx: &Context, args: LoginArgs) -> Result<Output> {
    let state = ctx.store.read()?;
    let controller = resolve_controller(&state, &ctx.env, args.controller.controller.as_deref())?;
    let details = state.controller(&controller)?;
    let info = ConnectionInfo {
        controller: controller.clone(),
        endpoints: details.api_endpoints.clone(),
        ca_cert: details.ca_cert.clone(),
        token: args.token.clone(),
        request_timeout: crate::client::REQUEST_TIMEOUT_DEFAULT,
    };
    let client = ControllerClient::new(info)?;
    let me = client
        .call(|mut c| async move { c.who_am_i(WhoAmIRequest {}).await })
        .await?;
    if !me.user.is_empty() && me.user != args.user {
        bail!(
            "the token belongs to user \"{}\", not \"{}\"",
            me.user,
            args.user
        );
    }
    let account = AccountDetails {
        user: args.user.clone(),
        token: args.token,
        last_known_access: me.controller_access,
    };
    ctx.store.update(|state| {
        state
            .accounts
            .controllers
            .insert(controller.clone(), account);
        Ok(())
    })?;
    Ok(Output::stdout(format!(
        "Logged in to controller \"{controller}\" as \"{}\".\n",
        args.user
    )))
}

/// Arguments of `ctl whoami`.
#[derive(Debug, Args)]
pub struct WhoAmIArgs {
    #[command(flatten)]
    controller: ControllerArg,
}

/// Runs `ctl whoami`: the selection and the user as the controller sees it.
pub async fn whoami(ctx: &Context, args: WhoAmIArgs) -> Result<Output> {
    let client = ctx.connect(args.controller.controller.as_deref(), None, None)?;
    let me = client
        .call(|mut c| async move { c.who_am_i(WhoAmIRequest {}).await })
        .await?;
    let controller = client.controller().to_string();
    let state = ctx.store.update(|state| {
        if let Some(account) = state.accounts.controllers.get_mut(&controller) {
            account.last_known_access = me.controller_access.clone();
        }
        Ok(state.clone())
    })?;
    // The model this controller's model-scoped commands would use.
    let model = resolve_model(&state, &ctx.env, Some(&format!("{controller}:")))
        .ok()
        .map(|t| short_for_user(&t.model, &me.user));
    let view = WhoAmIView {
        controller,
        model,
        user: me.user,
        controller_access: me.controller_access,
    };
    Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
}
