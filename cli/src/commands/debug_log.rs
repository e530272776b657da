//! `ctl debug-log`: the model's log as `ENTITY: TIME LEVEL MODULE MESSAGE` lines, the last
//! `--tail` records (or all with `--replay`) and then, unless `--no-tail`, new records as they
//! come until interrupted. Filtering happens on the controller; `web/0` and `0` are accepted
//! for `unit-web-0` and `machine-0`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use starling_proto::controller::DebugLogRequest;
use starling_proto::model::LogLevel;

use super::{model_ref, Context, ModelArg};
use crate::client::status_error;
use crate::model_views::log_line;
use crate::Output;

/// The deadline of a followed log stream: followed logs end when interrupted, this only makes
/// sure a forgotten `ctl debug-log` does not hold a stream open for ever.
pub const FOLLOW_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Arguments of `ctl debug-log`.
#[derive(Debug, Args)]
pub struct DebugLogArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Start from the oldest record kept instead of the last --tail ones.
    #[arg(long)]
    pub replay: bool,
    /// Show this many records before following (default 10).
    #[arg(short = 'n', long = "tail", visible_alias = "lines", value_name = "N")]
    pub tail: Option<u64>,
    /// Stop after the records already there instead of following new ones.
    #[arg(long)]
    pub no_tail: bool,
    /// The lowest level to show: TRACE, DEBUG, INFO, WARNING or ERROR.
    #[arg(long, value_parser = parse_level, value_name = "LEVEL")]
    pub level: Option<LogLevel>,
    /// Only these entities (repeatable): unit-web-0 or web/0, machine-0 or 0, controller.
    #[arg(long, value_name = "ENTITY")]
    pub include: Vec<String>,
    /// Not these entities (repeatable).
    #[arg(long, value_name = "ENTITY")]
    pub exclude: Vec<String>,
}

/// Parses a level name, any case.
pub fn parse_level(text: &str) -> Result<LogLevel, String> {
    match text.to_ascii_uppercase().as_str() {
        "TRACE" => Ok(LogLevel::Trace),
        "DEBUG" => Ok(LogLevel::Debug),
        "INFO" => Ok(LogLevel::Info),
        "WARNING" | "WARN" => Ok(LogLevel::Warning),
        "ERROR" => Ok(LogLevel::Error),
        _ => Err(format!(
            "unknown level \"{text}\": use TRACE, DEBUG, INFO, WARNING or ERROR"
        )),
    }
}

/// The log entity name of `name`: `web/0` → `unit-web-0`, `0` → `machine-0`, else unchanged.
pub fn entity_tag(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return format!("machine-{name}");
    }
    match name.split_once('/') {
        Some((app, n)) if !app.is_empty() && !n.is_empty() => format!("unit-{app}-{n}"),
        _ => name.to_string(),
    }
}

/// Runs `ctl debug-log`.
pub async fn run(ctx: &Context, args: DebugLogArgs) -> Result<Output> {
    let follow = !args.no_tail;
    let timeout = follow.then_some(FOLLOW_DEADLINE);
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), timeout)?;
    let request = DebugLogRequest {
        model: Some(model_ref(&target)),
        replay: args.replay,
        tail: args.tail.unwrap_or(0),
        follow,
        level: args.level.unwrap_or(LogLevel::Info) as i32,
        include: args.include.iter().map(|e| entity_tag(e)).collect(),
        exclude: args.exclude.iter().map(|e| entity_tag(e)).collect(),
    };
    let mut stream = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.debug_log(request).await }
        })
        .await?;
    let mut collected = String::new();
    loop {
        let record = stream
            .message()
            .await
            .map_err(|status| status_error(client.controller(), &status))?;
        let Some(record) = record else { break };
        let line = log_line(&record);
        if follow {
            // Followed lines are printed as they come, not when the command ends.
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => {}
                // `ctl debug-log | head` ends the stream quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e).context("cannot write output"),
            }
        } else {
            collected.push_str(&line);
        }
    }
    Ok(Output::stdout(collected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags() {
        assert_eq!(entity_tag("web/0"), "unit-web-0");
        assert_eq!(entity_tag("0"), "machine-0");
        assert_eq!(entity_tag("unit-web-0"), "unit-web-0");
        assert_eq!(entity_tag("controller"), "controller");
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("warning").unwrap(), LogLevel::Warning);
        assert_eq!(parse_level("DEBUG").unwrap(), LogLevel::Debug);
        assert!(parse_level("loud").is_err());
    }
}
