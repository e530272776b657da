//! `ctl balance`: evens out the write load of controllers by migrating their busiest models. The
//! controllers are those of the client store (or `-c`); each reports its models' loads
//! (`ListModels`), the plan is [`crate::balance::plan`], every planned move is checked with the
//! migration prechecks (`Migrate` with `dry_run`) and the plan is made again without the moves
//! they refuse, then the moves run as ordinary migrations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use starling_proto::controller::{ListModelsRequest, MigrateRequest};
use tokio::task::JoinSet;

use super::migrate::{
    arrived, follow, parse_timeout, target_controller, POLL_CALL_TIMEOUT, WAIT_DEFAULT,
};
use super::{model_ref, Context};
use crate::balance::{plan, spread, Plan, PlanModel};
use crate::client::ControllerClient;
use crate::format::rate_cell;
use crate::migration_view::{aborted_message, is_in_progress, outcome, Line, Outcome};
use crate::render::table;
use crate::store::qualify_model;
use crate::target::ModelTarget;
use crate::{Output, UsageError};

/// How many times the plan is made again after prechecks refused some of its moves.
const REPLANS_MAX: usize = 10;

/// `ctl balance --help`, after the options.
pub const BALANCE_HELP: &str = "\
The load of a controller is the rate of writes applied to its models (commands and agent
reports, decayed over about the last minute: 'ctl models' shows it per model). The plan moves
the fewest models that bring the busiest controller within --tolerance of the least busy one;
among plans with as many moves, the one that leaves the smallest spread. When no plan of at
most --max-moves moves reaches the tolerance (one model busier than the rest together, say),
the plan narrows the spread as far as single moves can. It never moves a controller model or a
model that is migrating, and every planned move passes the migration prechecks first: a move
they refuse is left out and the plan made again.

The plan is printed (each model with its load, from, to and the expected load of both after);
--dry-run stops there and changes nothing. Otherwise the moves run as migrations ('ctl migrate'
documents their phases). Without --wait they are all started and ctl returns; with --wait ctl
follows them, --parallel at a time, with a progress line each, and stops at the first move that
fails, saying why (the moves not started yet are not started; the model of a failed move is back
on its controller, as every aborted migration leaves it).

Examples:
  ctl balance --dry-run
  ctl balance -c alpha -c beta -c gamma --wait --parallel 2";

/// Arguments of `ctl balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// A controller to balance, by its name in the client store (repeatable; default: every
    /// controller in the client store).
    #[arg(short = 'c', long = "controller", value_name = "NAME")]
    pub controllers: Vec<String>,
    /// Print the plan and change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Plan at most N moves.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_moves: usize,
    /// With --wait: run up to N migrations at once.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "wait",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Follow the moves until they end.
    #[arg(long)]
    pub wait: bool,
    /// How far above the least busy controller the busiest may stay, e.g. 25% or 0.25.
    #[arg(long, value_name = "P", default_value = "25%", value_parser = parse_tolerance)]
    pub tolerance: f64,
    /// With --wait: stop waiting for one move after DURATION (default 30m).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

fn parse_tolerance(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (text, 1.0),
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("expected a percentage like 25% or a fraction like 0.25, got \"{text}\"")
    })?;
    let value = value / scale;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("the tolerance must be 0% or more, got \"{text}\""));
    }
    Ok(value)
}

/// A controller to balance: its name in the client store and a client.
struct Member {
    name: String,
    client: ControllerClient,
}

/// The controllers of `args` (default: the client store's), one name per controller uuid.
fn members(ctx: &Context, args: &BalanceArgs) -> Result<Vec<Member>> {
    let state = ctx.store.read()?;
    let names: Vec<String> = if args.controllers.is_empty() {
        state.controllers.controllers.keys().cloned().collect()
    } else {
        args.controllers.clone()
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut members = Vec::new();
    for name in names {
        let uuid = state.controller(&name)?.uuid.clone();
        if let Some(first) = seen.insert(uuid.clone(), name.clone()) {
            if !args.controllers.is_empty() {
                return Err(UsageError(format!(
                    "controllers \"{first}\" and \"{name}\" are the same controller (uuid {uuid})"
                ))
                .into());
            }
            seen.insert(uuid, first);
            continue;
        }
        let client = ctx.connect(Some(&name), None, None)?;
        members.push(Member { name, client });
    }
    if members.len() < 2 {
        return Err(UsageError(
            "balancing needs at least two controllers: register more with 'ctl register FILE' \
             or name them with -c"
                .into(),
        )
        .into());
    }
    Ok(members)
}

/// Every model of `members` with its write load; models that cannot move are pinned.
async fn planned_models(ctx: &Context, members: &[Member]) -> Result<Vec<PlanModel>> {
    let mut models = Vec::new();
    for member in members {
        let response = member
            .client
            .call(|mut c| async move { c.list_models(ListModelsRequest {}).await })
            .await
            .map_err(|e| e.context(format!("cannot list the models of \"{}\"", member.name)))?;
        let user = ctx.store.read()?.user(&member.name);
        for info in response.models {
            let model = info.model.clone().unwrap_or_default();
            let owner = if model.owner.is_empty() {
                &user
            } else {
                &model.owner
            };
            let pinned = if model.uuid == info.controller_uuid {
                Some("the controller model".to_string())
            } else if is_in_progress(&info.migration) {
                Some(format!("migrating ({})", info.migration))
            } else {
                None
            };
            models.push(PlanModel {
                uuid: model.uuid,
                name: qualify_model(owner, &model.name),
                controller: member.name.clone(),
                load: info.load.unwrap_or_default().writes_per_second,
                pinned,
            });
        }
    }
    Ok(models)
}

/// Why the migration prechecks refuse moving `model` to `to`, if they do.
async fn precheck(
    ctx: &Context,
    client: &ControllerClient,
    model: &PlanModel,
    to: &str,
) -> Option<String> {
    let source = ModelTarget {
        controller: model.controller.clone(),
        model: model.name.clone(),
    };
    let target = match ctx
        .store
        .read()
        .and_then(|state| target_controller(&state, &source.controller, to))
    {
        Ok(target) => target,
        Err(e) => return Some(format!("{e:#}")),
    };
    let request = MigrateRequest {
        model: Some(model_ref(&source)),
        target: Some(target),
        dry_run: true,
    };
    match client
        .call(|mut c| {
            let request = request.clone();
            async move { c.migrate(request).await }
        })
        .await
    {
        Ok(response) if response.precheck_failures.is_empty() => None,
        Ok(response) => Some(response.precheck_failures.join("; ")),
        Err(e) => Some(format!("{e:#}")),
    }
}

/// The plan with every move checked: moves the prechecks refuse are left out (with why).
async fn checked_plan(
    ctx: &Context,
    members: &[Member],
    models: &[PlanModel],
    args: &BalanceArgs,
) -> Result<(Plan, Vec<(String, String, String)>)> {
    let controllers: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let mut refused: BTreeSet<(String, String)> = BTreeSet::new();
    let mut reasons = Vec::new();
    let mut passed: BTreeSet<(String, String)> = BTreeSet::new();
    for _ in 0..REPLANS_MAX {
        let planned = plan(
            &controllers,
            models,
            &refused,
            args.tolerance,
            args.max_moves,
        );
        let mut clean = true;
        for step in &planned.moves {
            let pair = (step.uuid.clone(), step.to.clone());
            if passed.contains(&pair) {
                continue;
            }
            let model = models
                .iter()
                .find(|m| m.uuid == step.uuid)
                .expect("a planned model");
            let client = &members
                .iter()
                .find(|m| m.name == step.from)
                .expect("a listed controller")
                .client;
            match precheck(ctx, client, model, &step.to).await {
                None => {
                    passed.insert(pair);
                }
                Some(reason) => {
                    reasons.push((step.model.clone(), step.to.clone(), reason));
                    refused.insert(pair);
                    clean = false;
                }
            }
        }
        if clean {
            return Ok((planned, reasons));
        }
    }
    bail!(
        "the prechecks kept refusing planned moves ({} refused): run 'ctl balance --dry-run' to \
         see why",
        reasons.len()
    )
}

/// The plan as `ctl balance` prints it.
pub fn render_plan(plan: &Plan, tolerance: f64, refused: &[(String, String, String)]) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = plan
        .before
        .iter()
        .map(|(name, before)| {
            vec![
                name.clone(),
                rate_cell(*before),
                rate_cell(plan.after[name]),
            ]
        })
        .collect();
    out.push_str(&table(&["Controller", "Writes/s", "After"], &rows, &[1, 2]));
    let percent = tolerance * 100.0;
    let ratio = |r: f64| {
        if r.is_finite() {
            format!("{r:.2}×")
        } else {
            "∞ (a controller has no load)".to_string()
        }
    };
    let _ = writeln!(
        out,
        "\nSpread (busiest over least busy): {} now, {} after (tolerance {percent:.0}%).",
        ratio(spread(&plan.before)),
        ratio(spread(&plan.after))
    );
    for (model, to, reason) in refused {
        let _ = writeln!(out, "Left out: {model} to {to}: {reason}");
    }
    if plan.moves.is_empty() {
        if plan.balanced {
            out.push_str("The controllers are balanced: nothing to move.\n");
        } else {
            out.push_str("No move narrows the spread: nothing to move.\n");
        }
        return out;
    }
    let rows: Vec<Vec<String>> = plan
        .moves
        .iter()
        .map(|m| {
            vec![
                m.model.clone(),
                rate_cell(m.load),
                m.from.clone(),
                m.to.clone(),
                rate_cell(m.from_after),
                rate_cell(m.to_after),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["Model", "Writes/s", "From", "To", "From after", "To after"],
        &rows,
        &[1, 4, 5],
    ));
    if !plan.balanced {
        out.push_str("\nThese moves narrow the spread but cannot bring it within the tolerance.\n");
    }
    out
}

/// Runs `ctl balance`.
pub async fn run(ctx: &Context, args: BalanceArgs) -> Result<Output> {
    let members = members(ctx, &args)?;
    let models = planned_models(ctx, &members).await?;
    let (plan, refused) = checked_plan(ctx, &members, &models, &args).await?;
    let mut out = render_plan(&plan, args.tolerance, &refused);
    if plan.moves.is_empty() {
        return Ok(Output::stdout(out));
    }
    if args.dry_run {
        out.push_str("\nNothing was changed (--dry-run).\n");
        return Ok(Output::stdout(out));
    }
    if !args.wait {
        return start_all(ctx, &members, &plan, out).await;
    }
    print!("{out}");
    let report = run_moves(ctx, &plan, &args).await?;
    Ok(Output::stdout(report))
}

/// Starts every move and returns: the migrations' ids, or the first refusal.
async fn start_all(
    ctx: &Context,
    members: &[Member],
    plan: &Plan,
    mut out: String,
) -> Result<Output> {
    out.push('\n');
    for step in &plan.moves {
        let client = &members
            .iter()
            .find(|m| m.name == step.from)
            .expect("listed")
            .client;
        let source = ModelTarget {
            controller: step.from.clone(),
            model: step.model.clone(),
        };
        match start(ctx, client, &source, &step.to).await {
            Ok(id) => {
                let _ = writeln!(
                    out,
                    "Moving {source} to {}: migration \"{id}\" started",
                    step.to
                );
            }
            Err(e) => {
                print!("{out}");
                return Err(e.context(format!("cannot move {source} to \"{}\"", step.to)));
            }
        }
    }
    out.push_str("Follow them with 'ctl status' or 'ctl show-model CONTROLLER:MODEL'.\n");
    Ok(Output::stdout(out))
}

/// Starts the migration of `source` to `to`: its id.
async fn start(
    ctx: &Context,
    client: &ControllerClient,
    source: &ModelTarget,
    to: &str,
) -> Result<String> {
    let target = target_controller(&ctx.store.read()?, &source.controller, to)?;
    let request = MigrateRequest {
        model: Some(model_ref(source)),
        target: Some(target),
        dry_run: false,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.migrate(request).await }
        })
        .await?;
    Ok(response.migration_id)
}

/// How one move ended.
struct Moved {
    source: ModelTarget,
    to: String,
    result: Result<String>,
}

/// Runs the moves, `--parallel` at a time, each followed to its end with a progress line; stops
/// starting moves at the first failure. What happened, one line per move.
async fn run_moves(ctx: &Context, plan: &Plan, args: &BalanceArgs) -> Result<String> {
    let tty = std::io::stdout().is_terminal();
    let bars = indicatif::MultiProgress::new();
    if !tty {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let timeout = args.timeout.unwrap_or(WAIT_DEFAULT);
    let mut pending = plan.moves.iter();
    let mut running: JoinSet<Moved> = JoinSet::new();
    let mut report = String::new();
    let mut failure: Option<String> = None;
    loop {
        while failure.is_none() && running.len() < usize::from(args.parallel) {
            let Some(step) = pending.next() else { break };
            let source = ModelTarget {
                controller: step.from.clone(),
                model: step.model.clone(),
            };
            let bar = bars.add(super::migrate::progress_bar(
                indicatif::ProgressDrawTarget::hidden(),
            ));
            let ctx = ctx.clone();
            let to = step.to.clone();
            let prefix = format!("{source} → {to}");
            let printer = bars.clone();
            running.spawn(async move {
                let result = move_one(&ctx, &source, &to, timeout, tty, |line| {
                    match line {
                        Line::Phase(text) => {
                            let text = format!("{prefix}: {text}");
                            if tty {
                                let _ = printer.println(text);
                            } else {
                                println!("{text}");
                            }
                        }
                        Line::Progress(text) if tty => {
                            bar.set_message(format!("{prefix}: {}", text.trim()))
                        }
                        Line::Progress(text) => println!("{prefix}: {}", text.trim()),
                    }
                    Ok(())
                })
                .await;
                bar.finish_and_clear();
                Moved { source, to, result }
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let moved = joined?;
        match moved.result {
            Ok(note) => {
                let _ = writeln!(
                    report,
                    "Moved {} to \"{}\". {}",
                    moved.source,
                    moved.to,
                    note.trim_end()
                );
            }
            Err(e) => {
                let reason = format!("moving {} to \"{}\" failed: {e:#}", moved.source, moved.to);
                if failure.is_none() {
                    failure = Some(reason);
                } else {
                    let _ = writeln!(report, "Also: {reason}");
                }
            }
        }
    }
    bars.clear()?;
    match failure {
        None => {
            let _ = writeln!(report, "Balanced: {} moves done.", plan.moves.len());
            Ok(report)
        }
        Some(reason) => {
            print!("{report}");
            let left = pending.count();
            bail!(
                "{reason}{}",
                if left > 0 {
                    format!(" ({left} planned moves not started)")
                } else {
                    String::new()
                }
            )
        }
    }
}

/// Migrates `source` to `to` and follows it to its end: what `ctl migrate --wait` would say.
async fn move_one(
    ctx: &Context,
    source: &ModelTarget,
    to: &str,
    timeout: Duration,
    tty: bool,
    mut print: impl FnMut(&Line) -> Result<()>,
) -> Result<String> {
    let client = ctx.connect(
        Some(&source.controller),
        None,
        Some(super::migrate::MIGRATE_CALL_TIMEOUT),
    )?;
    let id = start(ctx, &client, source, to).await?;
    let poller = ctx.connect(Some(&source.controller), None, Some(POLL_CALL_TIMEOUT))?;
    let info = follow(&poller, source, &id, timeout, tty, &mut print).await?;
    match outcome(&info.phase) {
        Some(Outcome::Aborted) => bail!("{}", aborted_message(&info)),
        _ => Ok(arrived(ctx, source, to, &info)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::models;

    #[test]
    fn tolerances_parse_as_percent_or_fraction() {
        assert_eq!(parse_tolerance("25%").unwrap(), 0.25);
        assert_eq!(parse_tolerance("0.1").unwrap(), 0.1);
        assert_eq!(parse_tolerance("0%").unwrap(), 0.0);
        assert!(parse_tolerance("-5%").is_err());
        assert!(parse_tolerance("lots").is_err());
    }

    #[test]
    fn the_plan_names_each_move_and_both_loads_after() {
        let controllers = ["a".to_string(), "b".to_string()];
        let m = models(&[
            ("admin/web", "a", 30.0),
            ("admin/db", "a", 12.0),
            ("admin/x", "b", 4.0),
        ]);
        let planned = plan(&controllers, &m, &BTreeSet::new(), 0.25, 10);
        let refused = vec![(
            "admin/web".to_string(),
            "b".to_string(),
            "no space".to_string(),
        )];
        let text = render_plan(&planned, 0.25, &refused);
        assert_eq!(
            text,
            "Controller  Writes/s  After\n\
             a                 42     30\n\
             b                4.0     16\n\
             \n\
             Spread (busiest over least busy): 10.50× now, 1.88× after (tolerance 25%).\n\
             Left out: admin/web to b: no space\n\
             \n\
             Model     Writes/s  From  To  From after  To after\n\
             admin/db        12  a     b           30        16\n\
             \n\
             These moves narrow the spread but cannot bring it within the tolerance.\n"
        );
    }
}
