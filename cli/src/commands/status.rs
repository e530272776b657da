//! `ctl status [--watch DURATION [--watch-count N]]`: the model's status as the controller
//! reports it; `ctl show-status-log ENTITY`: the status history it keeps of one entity. With
//! `--watch` the status is redrawn every DURATION (the screen is cleared first when stdout is a
//! terminal) until interrupted or until N redraws; frames are printed as they come, so `-o FILE`
//! receives nothing. When stdout is not a terminal `--watch-count` is required, so a script can
//! never loop forever by accident.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use starling_proto::controller::{StatusLogRequest, StatusRequest};

use super::{model_ref, Context, ModelArg};
use crate::client::ControllerClient;
use crate::format::parse_duration;
use crate::model_views::{StatusLogView, StatusView};
use crate::render::Format;
use crate::target::ModelTarget;
use crate::{Output, UsageError};

/// The shortest `--watch` interval.
pub const WATCH_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// Arguments of `ctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Redraw every DURATION (e.g. 2s) until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = parse_watch)]
    pub watch: Option<Duration>,
    /// With --watch: stop after N redraws (required when stdout is not a terminal).
    #[arg(long, value_name = "N", requires = "watch")]
    pub watch_count: Option<u64>,
}

fn parse_watch(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text).map_err(|e| e.to_string())?;
    if interval < WATCH_INTERVAL_MIN {
        return Err(format!(
            "the interval must be at least {WATCH_INTERVAL_MIN:?}"
        ));
    }
    Ok(interval)
}

async fn render_once(
    ctx: &Context,
    client: &ControllerClient,
    target: &ModelTarget,
) -> Result<String> {
    let request = StatusRequest {
        model: Some(model_ref(target)),
    };
    let status = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.status(request).await }
        })
        .await?;
    StatusView::new(&target.controller, &status).render(ctx.format_or(Format::Tabular))
}

/// Runs `ctl status`.
pub async fn run(ctx: &Context, args: StatusArgs) -> Result<Output> {
    let tty = std::io::stdout().is_terminal();
    let Some(interval) = args.watch else {
        let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
        return Ok(Output::stdout(render_once(ctx, &client, &target).await?));
    };
    if args.watch_count.is_none() && !tty {
        let message = "--watch needs --watch-count N when stdout is not a terminal";
        return Err(UsageError(message.into()).into());
    }
    if args.watch_count == Some(0) {
        return Err(UsageError("--watch-count must be at least 1".into()).into());
    }
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let mut n_frames = 0u64;
    loop {
        let frame = render_once(ctx, &client, &target).await?;
        let mut stdout = std::io::stdout().lock();
        let separator = match (tty, n_frames) {
            // Clear the screen and home the cursor.
            (true, _) => "\x1b[2J\x1b[H",
            (false, 0) => "",
            (false, _) => "\n",
        };
        write!(stdout, "{separator}{frame}")
            .and_then(|()| stdout.flush())
            .context("cannot write output")?;
        drop(stdout);
        n_frames += 1;
        if args.watch_count.is_some_and(|max| n_frames >= max) {
            return Ok(Output::default());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Arguments of `ctl show-status-log`.
#[derive(Debug, Args)]
pub struct StatusLogArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A unit (`web/0`), an application (`web`), a machine (`0`) or `model`.
    pub entity: String,
    /// Show only the last N entries (0: every kept one; the controller keeps the last
    /// `status-history-size` of each history).
    #[arg(short = 'n', value_name = "N", default_value_t = 0)]
    pub limit: u32,
}

/// Runs `ctl show-status-log`: a unit's workload and agent (`juju-unit`) histories merged, or
/// the history of an application, a machine or the model, oldest first.
pub async fn status_log(ctx: &Context, args: StatusLogArgs) -> Result<Output> {
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let request = StatusLogRequest {
        model: Some(model_ref(&target)),
        entity: args.entity.clone(),
        limit: args.limit,
    };
    let log = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.status_log(request).await }
        })
        .await?;
    let view = StatusLogView::new(&log);
    Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
}
