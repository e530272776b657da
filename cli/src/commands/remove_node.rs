//! `ctl remove-node ID`: removes a node from a controller's Raft group.

use anyhow::Result;
use clap::Args;
use starling_proto::controller::RemoveNodeRequest;

use super::{Context, ControllerArg};
use crate::Output;

/// Arguments of `ctl remove-node`.
#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The node id.
    pub node_id: u64,
}

/// Runs `ctl remove-node`.
pub async fn run(ctx: &Context, args: RemoveNodeArgs) -> Result<Output> {
    let client = ctx.connect(args.controller.controller.as_deref(), None, None)?;
    let node_id = args.node_id;
    client
        .call(|mut c| async move { c.remove_node(RemoveNodeRequest { node_id }).await })
        .await?;
    Ok(Output::stdout(format!(
        "Node {node_id} removed from controller \"{}\".\n",
        client.controller()
    )))
}
