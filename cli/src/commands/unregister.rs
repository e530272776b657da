//! `ctl unregister NAME`: forgets a controller (all three store files); the controller itself
//! is untouched.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::Output;

/// Arguments of `ctl unregister`.
#[derive(Debug, Args)]
pub struct UnregisterArgs {
    /// The controller to forget.
    pub name: String,
}

/// Runs `ctl unregister`.
pub fn run(ctx: &Context, args: UnregisterArgs) -> Result<Output> {
    ctx.store
        .update(|state| state.remove_controller(&args.name))?;
    Ok(Output::default())
}
