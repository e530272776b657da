//! `ctl migrate MODEL TARGET`, `ctl abort-migration MODEL` and `ctl end-log-transfer MODEL`:
//! live model migration between two controllers (docs/migration.md, docs/ctl.md). The source
//! controller runs the migration; `ctl` hands it the target's endpoints, CA and token from the
//! client store. With `--wait` it polls the migration's status and prints each phase change as it
//! comes (like `status --watch`, so `-o FILE` receives nothing), until the migration ends or
//! `--timeout`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use sha2::{Digest, Sha256};
use starling_proto::controller::{
    AbortMigrationRequest, EndLogTransferRequest, MigrateRequest, MigrationInfo,
    MigrationStatusRequest,
};
use starling_proto::migration::TargetController;
use tonic::Code;

use super::{model_ref, Context};
use crate::client::{is_transient, CallError, ControllerClient};
use crate::format::parse_duration;
use crate::format::short_for_user;
use crate::migration_view::{
    aborted_message, is_committed, outcome, reap_failed_warning, timeout_message, Follow, Line,
    Outcome, ABORT, POLL_INTERVAL, PRECHECK,
};
use crate::store::StoreState;
use crate::target::{split_model_name, ModelTarget};
use crate::{DetailedError, Output, UsageError};

/// The deadline of the Migrate call: the source runs every precheck, some against the target.
pub const MIGRATE_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The deadline of one status poll of `--wait`.
pub const POLL_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `--wait` waits without `--timeout`.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(30 * 60);
/// Progress lines on a terminal are cut to this many characters, so that one line is redrawn.
const TTY_PROGRESS_CHARS: usize = 79;

/// `ctl migrate --help`, after the options.
pub const MIGRATE_HELP: &str = "\
The source controller runs the migration in phases; --wait prints each phase change as it
happens, with its reason:
  PRECHECK     the model and the target are checked; nothing changes yet
  PRECOPY      the model is copied to the target, which imports it (invisible there); the
               model stays writable and every change is recorded
  CATCHUP      the recorded changes are streamed to the target until few are left; every
               agent proves it can log in to the target; the model stays writable
  QUIESCE      the fence: the model is locked, writes are held (not refused) for at most
               migration-fence-hold, the last changes go to the target and the copies are
               compared; it lasts a few commits, whatever the model's size
  SUCCESS      the point of no return: the target activates the model, the source keeps a
               redirect to it; held writes are sent to the target by ctl and the agents
  LOGTRANSFER  the model's log is copied to the target
  REAP         the source deletes its copy of the model
  DONE         finished: the model lives on the target
  REAPFAILED   finished: the model lives on the target, but the source could not delete all of
               its old copy
  ABORT        any failure before SUCCESS: the target is told to drop its import; held
               writes apply on the source
  ABORTDONE    the model is unlocked on the source, with every write it acknowledged

When a migration aborts, its reason says why: a failed precheck, a target that did not catch up
in time, copies that differ at the fence, an agent that could not log in to the target, the
target's import error, or the operator's abort. Fix the cause and run 'ctl migrate' again: the new attempt gets
a new ID, and whatever the aborted attempt left on the target does not block it. --dry-run runs
the prechecks alone and lists every failure.

Interrupting --wait, or its --timeout expiring, does not stop the migration: 'ctl show-model'
shows its phase and 'ctl status' its progress, and 'ctl abort-migration' stops it before
SUCCESS.

Exit status: 0 once the migration started (with --wait: once it reached DONE or REAPFAILED);
1 for errors, failed prechecks, a migration that ended in ABORTDONE, or an expired --timeout.

Examples:
  ctl migrate web beta --dry-run
  ctl migrate alpha:web beta --wait --timeout 20m";

/// `ctl abort-migration --help`, after the options.
pub const ABORT_MIGRATION_HELP: &str = "\
The abort is recorded on the source controller, whichever of its nodes runs the migration. The
source tells the target to drop its import, then unlocks the model (ABORTDONE): the model is on
the source, exactly as it was before. Nothing needs cleaning up by hand, and a later
'ctl migrate' is not blocked by what the aborted attempt left on the target.

A migration can be aborted until it reaches SUCCESS, its point of no return; after that the
controller refuses and says why. The model is active on the target then: to bring it back,
migrate it again from the target.

Example:
  ctl abort-migration alpha:web --reason \"wrong target\"";

/// `ctl end-log-transfer --help`, after the options.
pub const END_LOG_TRANSFER_HELP: &str = "\
After SUCCESS the source controller sends the model's log to the controller the model moved
to. Until that transfer ends, the model may not migrate on and no backup is restored there
('the log of model ... is still arriving'). The transfer ends by itself: when the source sends
its last batch, or, should the source give up (migration-log-transfer-timeout) while out of
reach, when this controller hears from the source that it is past the transfer.

When the source controller is gone for good, nothing will end it: this command does. It runs
on the controller the model is on now, which first asks the source; it refuses while the
source answers that it is still sending the log (add --force to end the transfer anyway). Log
records the source had not sent are not kept here; later batches are refused.

Example:
  ctl end-log-transfer beta:web --reason \"alpha was decommissioned\"";

/// Arguments of `ctl migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The model to migrate, `[SOURCE:]MODEL`.
    #[arg(value_name = "[SOURCE:]MODEL")]
    pub model: String,
    /// The controller to migrate it to, by its name in the client store.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The controller the model is on (default: $CTL_CONTROLLER, else the current controller).
    #[arg(short = 'c', long = "controller", value_name = "SOURCE")]
    pub controller: Option<String>,
    /// Only run the prechecks and list every failure; nothing changes.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Follow the migration until it ends, printing each phase change.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after DURATION, e.g. 90s, 10m or 1h (default 30m). The
    /// migration itself continues.
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// Arguments of `ctl abort-migration`.
#[derive(Debug, Args)]
pub struct AbortMigrationArgs {
    /// The migrating model, `[SOURCE:]MODEL`.
    #[arg(value_name = "[SOURCE:]MODEL")]
    pub model: String,
    /// The controller the model is migrating from (default: $CTL_CONTROLLER, else the current
    /// controller).
    #[arg(short = 'c', long = "controller", value_name = "SOURCE")]
    pub controller: Option<String>,
    /// Why; kept in the migration's record as part of its abort reason.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Arguments of `ctl end-log-transfer`.
#[derive(Debug, Args)]
pub struct EndLogTransferArgs {
    /// The model that arrived, `[CONTROLLER:]MODEL`.
    #[arg(value_name = "[CONTROLLER:]MODEL")]
    pub model: String,
    /// The controller the model is on now (default: $CTL_CONTROLLER, else the current
    /// controller).
    #[arg(short = 'c', long = "controller", value_name = "CONTROLLER")]
    pub controller: Option<String>,
    /// End the transfer even while the source says it is still sending the log.
    #[arg(long)]
    pub force: bool,
    /// Why; written to the controller's log with the end of the transfer.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// A `--timeout` value: a humantime duration above zero (also used by `ctl balance`).
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text).map_err(|e| e.to_string())?;
    if timeout.is_zero() {
        return Err("the timeout must be more than 0s".to_string());
    }
    Ok(timeout)
}

/// The model of a migration command as `-m` would name it: `[SOURCE:]MODEL`, with `-c SOURCE`
/// as another way to name the controller (but not a different one). The model is never implied.
pub fn source_model(model: &str, controller: Option<&str>) -> Result<String, UsageError> {
    let (prefix, name) = split_model_name(model);
    if name.is_empty() || name.contains(':') {
        return Err(UsageError(format!("invalid model name \"{model}\"")));
    }
    let prefix = prefix.filter(|p| !p.is_empty());
    match (prefix, controller.filter(|c| !c.is_empty())) {
        (Some(p), Some(c)) if p != c => Err(UsageError(format!(
            "model \"{model}\" names controller \"{p}\" but -c names \"{c}\""
        ))),
        (Some(c), _) | (None, Some(c)) => Ok(format!("{c}:{name}")),
        (None, None) => Ok(name.to_string()),
    }
}

/// Hex sha256 of a CA certificate's PEM bytes, as the migration protocol identifies CAs.
pub fn ca_fingerprint(ca_cert: &str) -> String {
    hex::encode(Sha256::digest(ca_cert.as_bytes()))
}

/// What the source needs to reach controller `target` (a name in the client store) for a model
/// on controller `source`: its uuid, endpoints, CA and token.
pub fn target_controller(
    state: &StoreState,
    source: &str,
    target: &str,
) -> Result<TargetController> {
    let Some(details) = state.controllers.controllers.get(target) else {
        bail!(
            "target controller \"{target}\" is not in the client store: register it with \
             'ctl register FILE' first"
        );
    };
    if target == source {
        bail!("the model is already on controller \"{target}\": name another controller as TARGET");
    }
    let source_uuid = &state.controller(source)?.uuid;
    if !details.uuid.is_empty() && details.uuid == *source_uuid {
        bail!(
            "controllers \"{target}\" and \"{source}\" are the same controller (uuid {}): name \
             another controller as TARGET",
            details.uuid
        );
    }
    let token = state
        .accounts
        .controllers
        .get(target)
        .map(|a| a.token.as_str())
        .unwrap_or_default();
    if token.is_empty() {
        bail!(
            "no account with a token for target controller \"{target}\": log in with \
             'ctl login -c {target} --user USER' first (a superuser of \"{target}\")"
        );
    }
    if details.api_endpoints.is_empty() {
        bail!("target controller \"{target}\" has no api endpoints in the client store");
    }
    if details.ca_cert.trim().is_empty() {
        bail!("target controller \"{target}\" has no CA certificate in the client store");
    }
    Ok(TargetController {
        controller_uuid: details.uuid.clone(),
        name: target.to_string(),
        endpoints: details.api_endpoints.clone(),
        ca_cert: details.ca_cert.clone(),
        ca_fingerprint: ca_fingerprint(&details.ca_cert),
        token: token.to_string(),
    })
}

/// Runs `ctl migrate`.
pub async fn migrate(ctx: &Context, args: MigrateArgs) -> Result<Output> {
    let model = source_model(&args.model, args.controller.as_deref())?;
    let (client, source) = ctx.connect_model(Some(&model), Some(MIGRATE_CALL_TIMEOUT))?;
    let target = target_controller(&ctx.store.read()?, &source.controller, &args.target)?;
    let request = MigrateRequest {
        model: Some(model_ref(&source)),
        target: Some(target),
        dry_run: args.dry_run,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.migrate(request).await }
        })
        .await?;
    if args.dry_run {
        if response.precheck_failures.is_empty() {
            return Ok(Output::stdout(format!(
                "Prechecks passed: model \"{source}\" can migrate to controller \"{}\" now. \
                 Nothing was changed.\n",
                args.target
            )));
        }
        return Err(DetailedError {
            message: "migration prechecks failed:".to_string(),
            details: response.precheck_failures,
        }
        .into());
    }
    let id = response.migration_id;
    let started = format!("Migration started with ID \"{id}\"\n");
    if !args.wait {
        return Ok(Output::stdout(started));
    }

    let tty = std::io::stdout().is_terminal();
    let bar = progress_bar(indicatif::ProgressDrawTarget::stdout());
    let mut printer = Printer::new(std::io::stdout(), tty, bar);
    printer.text(&started)?;
    let (poller, _) = ctx.connect_model(Some(&model), Some(POLL_CALL_TIMEOUT))?;
    let timeout = args.timeout.unwrap_or(WAIT_DEFAULT);
    let followed = follow(&poller, &source, &id, timeout, tty, &mut |line| {
        printer.line(line)
    })
    .await;
    printer.finish()?;
    let info = followed?;
    match outcome(&info.phase) {
        Some(Outcome::Aborted) => bail!("{}", aborted_message(&info)),
        Some(Outcome::ReapFailed) => {
            let mut stderr = reap_failed_warning(&info, &source.controller);
            stderr.push_str(&arrived(ctx, &source, &args.target, &info));
            Ok(Output::stderr(stderr))
        }
        _ => Ok(Output::stderr(arrived(ctx, &source, &args.target, &info))),
    }
}

/// Records the migrated model under its new controller in the client store, so that
/// `ctl switch TARGET:MODEL` finds it, and says so. The old entry stays: the source answers
/// for it with a redirect naming the target.
pub fn arrived(ctx: &Context, source: &ModelTarget, target: &str, info: &MigrationInfo) -> String {
    let recorded = ctx.store.update(|state| {
        state.add_model(target, &source.model, &info.model_uuid)?;
        Ok(state.user(target))
    });
    match recorded {
        Ok(user) => format!(
            "Model \"{}\" is on controller \"{target}\" now: to use it run 'ctl switch {target}:{}'.\n",
            source.model,
            short_for_user(&source.model, &user)
        ),
        Err(e) => format!(
            "WARNING model \"{}\" is on controller \"{target}\" now, but the client store could \
             not record it: {e:#}\n",
            source.model
        ),
    }
}

/// Polls the status of migration `id` of `source` until it ends (its last status) or until
/// `timeout` (an error that says how to follow or stop it), passing `print` each line [`Follow`]
/// makes of it for a terminal (`tty`) or not.
/// Transient failures are retried until the deadline.
pub async fn follow(
    client: &ControllerClient,
    source: &ModelTarget,
    id: &str,
    timeout: Duration,
    tty: bool,
    print: &mut impl FnMut(&Line) -> Result<()>,
) -> Result<MigrationInfo> {
    let request = MigrationStatusRequest {
        model: Some(model_ref(source)),
    };
    let start = Instant::now();
    let mut view = Follow::new(tty);
    let mut phase: Option<String> = None;
    loop {
        let elapsed = start.elapsed();
        let call = client.call(|mut c| {
            let request = request.clone();
            async move { c.migration_status(request).await }
        });
        // The call's own deadline is the client's; this one is the wait's.
        let Ok(answer) = tokio::time::timeout(timeout.saturating_sub(elapsed), call).await else {
            break;
        };
        match answer {
            // A node that has not caught up may still answer with an older attempt.
            Ok(info) if info.migration_id != id && phase.is_none() => {
                let waiting = format!(
                    "controller \"{}\" does not report migration {id} yet",
                    source.controller
                );
                if let Some(line) = view.unanswered(&waiting, elapsed) {
                    print(&line)?;
                }
            }
            Ok(info) => {
                if info.migration_id != id {
                    bail!(
                        "migration {id} is no longer the latest migration of model \"{source}\": \
                         {} is, in {}",
                        info.migration_id,
                        info.phase
                    );
                }
                for line in view.observe(&info, elapsed) {
                    print(&line)?;
                }
                if outcome(&info.phase).is_some() {
                    return Ok(info);
                }
                phase = Some(info.phase);
            }
            // A node that has not caught up may not know the migration it just started yet.
            Err(e) if is_transient(&e) || (phase.is_none() && is_not_found(&e)) => {
                if let Some(line) = view.unanswered(&format!("{e:#}"), elapsed) {
                    print(&line)?;
                }
            }
            Err(e) => {
                return Err(e);
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL.min(timeout - elapsed)).await;
    }
    bail!(
        "{}",
        timeout_message(id, phase.as_deref(), timeout, &source.to_string())
    )
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<CallError>()
        .is_some_and(|e| e.code == Some(Code::NotFound))
}

/// Prints followed lines as they come. Phase lines are lines; on a terminal the progress line is
/// an `indicatif` bar redrawn in place (cleared while a phase line is printed and at the end),
/// elsewhere it is a line too. A closed pipe stops the printing, not the following.
pub struct Printer<W: Write> {
    out: W,
    tty: bool,
    bar: indicatif::ProgressBar,
    closed: bool,
}

/// The progress bar of `migrate --wait` on stdout: only its message, the current activity.
pub fn progress_bar(target: indicatif::ProgressDrawTarget) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(None, target);
    bar.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("a valid template"));
    bar
}

impl<W: Write> Printer<W> {
    /// A printer to `out`; on a terminal (`tty`) progress goes to `bar`, else it is hidden and
    /// progress lines are printed as lines.
    pub fn new(out: W, tty: bool, bar: indicatif::ProgressBar) -> Self {
        if !tty {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Self {
            out,
            tty,
            bar,
            closed: false,
        }
    }

    /// The writer, e.g. to read what was printed in tests.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn write(&mut self, text: &str) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        match self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e).context("cannot write output")),
        }
    }

    /// Prints whole lines of `text`, above the progress bar.
    pub fn text(&mut self, text: &str) -> Result<()> {
        let bar = self.bar.clone();
        bar.suspend(|| self.write(text))
    }

    /// Prints `line`.
    pub fn line(&mut self, line: &Line) -> Result<()> {
        match line {
            Line::Phase(text) => self.text(&format!("{text}\n")),
            Line::Progress(text) if self.tty => {
                let cut: String = text.chars().take(TTY_PROGRESS_CHARS).collect();
                self.bar.set_message(cut);
                Ok(())
            }
            Line::Progress(text) => self.write(&format!("{text}\n")),
        }
    }

    /// Clears the progress bar: the output ends with the last whole line.
    pub fn finish(&mut self) -> Result<()> {
        self.bar.finish_and_clear();
        Ok(())
    }
}

/// Runs `ctl abort-migration`.
pub async fn abort_migration(ctx: &Context, args: AbortMigrationArgs) -> Result<Output> {
    let model = source_model(&args.model, args.controller.as_deref())?;
    let (client, source) = ctx.connect_model(Some(&model), None)?;
    let request = AbortMigrationRequest {
        model: Some(model_ref(&source)),
        reason: args.reason.unwrap_or_default(),
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.abort_migration(request).await }
        })
        .await?;
    Ok(Output::stdout(abort_requested(
        &source,
        &response.migration_id,
        &response.phase,
    )))
}

/// Runs `ctl end-log-transfer`.
pub async fn end_log_transfer(ctx: &Context, args: EndLogTransferArgs) -> Result<Output> {
    let model = source_model(&args.model, args.controller.as_deref())?;
    let (client, here) = ctx.connect_model(Some(&model), None)?;
    let request = EndLogTransferRequest {
        model: Some(model_ref(&here)),
        reason: args.reason.unwrap_or_default(),
        force: args.force,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.end_log_transfer(request).await }
        })
        .await?;
    let from = if response.source.is_empty() {
        String::new()
    } else {
        format!(" from controller \"{}\"", response.source)
    };
    Ok(Output::stdout(format!(
        "Ended the log transfer of model \"{here}\"{from} (migration \"{}\"): {}.\n\
         Records it had not sent are not kept; the model may migrate on.\n",
        response.migration_id, response.source_answer
    )))
}

/// What `ctl abort-migration` prints once the controller recorded the request for migration
/// `id`, which was in `phase`.
pub fn abort_requested(source: &ModelTarget, id: &str, phase: &str) -> String {
    let controller = &source.controller;
    let then = match phase {
        PRECHECK => format!(
            "Nothing was sent to the target yet: the model stays on controller \
             \"{controller}\", writable as it was."
        ),
        ABORT => format!(
            "It was already aborting: the model will be unlocked on controller \"{controller}\" \
             once the target has dropped its import."
        ),
        // The controller refuses from SUCCESS on; should it answer anyway, say nothing false.
        p if is_committed(p) => {
            "The migration is past its point of no return, so the controller may not honour it."
                .to_string()
        }
        _ => format!(
            "The model stays on controller \"{controller}\"; the migration ends once the \
             target has dropped its copy (a model locked by the fence is unlocked then)."
        ),
    };
    format!(
        "Abort of migration \"{id}\" requested (it was in {phase}).\n{then}\n\
         Follow it with 'ctl show-model {source}'.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{account, details};

    #[test]
    fn source_model_forms() {
        assert_eq!(source_model("web", None).unwrap(), "web");
        assert_eq!(source_model("web", Some("alpha")).unwrap(), "alpha:web");
        assert_eq!(source_model("alpha:web", None).unwrap(), "alpha:web");
        assert_eq!(
            source_model("alpha:admin/web", Some("alpha")).unwrap(),
            "alpha:admin/web"
        );
        assert_eq!(source_model(":web", Some("beta")).unwrap(), "beta:web");
        assert!(source_model("alpha:web", Some("beta")).is_err());
        assert!(source_model("alpha:", None).is_err());
        assert!(source_model("", None).is_err());
        assert!(source_model("a:b:c", None).is_err());
    }

    fn state() -> StoreState {
        let mut s = StoreState::default();
        s.add_controller("alpha", details("u-a", &["h:1"]), account(), false)
            .unwrap();
        s.add_controller("beta", details("u-b", &["h:2", "h:3"]), account(), false)
            .unwrap();
        s.add_controller("alpha2", details("u-a", &["h:1"]), account(), false)
            .unwrap();
        s
    }

    #[test]
    fn the_target_comes_from_the_client_store() {
        let s = state();
        let t = target_controller(&s, "alpha", "beta").unwrap();
        let beta = s.controller("beta").unwrap();
        assert_eq!(t.name, "beta");
        assert_eq!(t.controller_uuid, "u-b");
        assert_eq!(t.endpoints, ["h:2", "h:3"]);
        assert_eq!(t.ca_cert, beta.ca_cert);
        assert_eq!(t.token, s.account("beta").unwrap().token);
        assert_eq!(t.ca_fingerprint, ca_fingerprint(&beta.ca_cert));
        assert_eq!(t.ca_fingerprint.len(), 64);
    }

    #[test]
    fn unusable_targets_are_refused_clearly() {
        let mut s = state();
        let err = |s: &StoreState, target| {
            target_controller(s, "alpha", target)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&s, "gamma"),
            "target controller \"gamma\" is not in the client store: register it with \
             'ctl register FILE' first"
        );
        assert!(err(&s, "alpha").starts_with("the model is already on controller \"alpha\""));
        assert!(err(&s, "alpha2").contains("are the same controller (uuid u-a)"));
        s.accounts
            .controllers
            .get_mut("beta")
            .unwrap()
            .token
            .clear();
        assert!(err(&s, "beta").starts_with("no account with a token for target controller"));
        s.accounts.controllers.remove("beta");
        assert!(err(&s, "beta").contains("'ctl login -c beta --user USER'"));
    }

    #[test]
    fn timeouts_parse_like_durations() {
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn abort_messages_are_honest_about_what_happens_next() {
        let source = ModelTarget {
            controller: "alpha".into(),
            model: "admin/web".into(),
        };
        assert_eq!(
            abort_requested(&source, "m:2", "CATCHUP"),
            "Abort of migration \"m:2\" requested (it was in CATCHUP).\n\
             The model stays on controller \"alpha\"; the migration ends once the target has \
             dropped its copy (a model locked by the fence is unlocked then).\nFollow it with \
             'ctl show-model alpha:admin/web'.\n"
        );
        assert!(abort_requested(&source, "m:2", "PRECHECK").contains("Nothing was sent"));
        assert!(abort_requested(&source, "m:2", "ABORT").contains("already aborting"));
    }

    #[test]
    fn a_terminal_gets_one_redrawn_progress_line() {
        let term = indicatif::InMemoryTerm::new(10, 120);
        let target = indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 200);
        let bar = progress_bar(target);
        let mut p = Printer::new(Vec::new(), true, bar);
        p.text("Migration started with ID \"m:1\"\n").unwrap();
        p.line(&Line::Progress("  a".into())).unwrap();
        assert_eq!(term.contents(), "  a");
        p.line(&Line::Progress("  b".repeat(50))).unwrap();
        // One line, redrawn in place and cut short.
        let cut: String = "  b".repeat(50).chars().take(TTY_PROGRESS_CHARS).collect();
        assert_eq!(term.contents(), cut.trim_end());
        p.line(&Line::Phase("IMPORT       x".into())).unwrap();
        p.finish().unwrap();
        // Cleared at the end; the lines themselves never contain the progress.
        assert_eq!(term.contents(), "");
        assert_eq!(
            String::from_utf8(p.into_inner()).unwrap(),
            "Migration started with ID \"m:1\"\nIMPORT       x\n"
        );
        let mut p = Printer::new(
            Vec::new(),
            false,
            progress_bar(indicatif::ProgressDrawTarget::hidden()),
        );
        p.line(&Line::Progress("  a".into())).unwrap();
        p.line(&Line::Phase("DONE".into())).unwrap();
        p.finish().unwrap();
        assert_eq!(String::from_utf8(p.into_inner()).unwrap(), "  a\nDONE\n");
    }
}
