//! `ctl show-controller [NAME]`: the controller's own view of its members (ShowController).

use anyhow::Result;
use clap::Args;
use starling_proto::controller::ShowControllerRequest;

use super::{Context, ControllerArg};
use crate::render::{Format, ShowControllerView};
use crate::{Output, UsageError};

/// Arguments of `ctl show-controller`.
#[derive(Debug, Args)]
pub struct ShowControllerArgs {
    /// The controller (default: $CTL_CONTROLLER, else the current controller).
    pub name: Option<String>,
    #[command(flatten)]
    controller: ControllerArg,
    /// Ask this node (host:port) instead of failing over across the controller's endpoints.
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
}

/// Runs `ctl show-controller`.
pub async fn run(ctx: &Context, args: ShowControllerArgs) -> Result<Output> {
    let name = match (args.name.as_deref(), args.controller.controller.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            let message = "give the controller either as NAME or as -c, not both";
            return Err(UsageError(message.into()).into());
        }
        (a, b) => a.or(b),
    };
    let client = ctx.connect(name, args.endpoint.as_deref(), None)?;
    let info = client
        .call(|mut c| async move { c.show_controller(ShowControllerRequest {}).await })
        .await?;
    let controller = client.controller().to_string();
    // Keep what `ctl controllers` shows fresh, as `juju show-controller` does. The endpoint list
    // is left alone: the registered endpoints may be proxies the controller does not know of.
    ctx.store.update(|state| {
        if let Some(details) = state.controllers.controllers.get_mut(&controller) {
            if !info.members.is_empty() {
                details.node_count = info.members.len();
            }
            if !info.version.is_empty() {
                details.agent_version = info.version.clone();
            }
        }
        Ok(())
    })?;
    let text = ShowControllerView::new(&controller, &info).render(ctx.format_or(Format::Yaml))?;
    Ok(Output::stdout(text))
}
