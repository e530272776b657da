//! `ctl controllers`: the controllers in the local client store (no network).

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::render::{ControllersView, Format};
use crate::Output;

/// Arguments of `ctl controllers`.
#[derive(Debug, Args)]
pub struct ControllersArgs {}

/// Runs `ctl controllers`.
pub fn run(ctx: &Context, _args: ControllersArgs) -> Result<Output> {
    let state = ctx.store.read()?;
    let text = ControllersView::from_store(&state).render(ctx.format_or(Format::Tabular))?;
    Ok(Output::stdout(text))
}
