//! `ctl switch [controller:][model]`: selects or shows the current controller and model, with
//! the rules of `juju switch` (cmd/juju/commands/switch.go).
//!
//! - no argument prints the current `controller:model`;
//! - `NAME` is a controller if one has that name, else a model on the current controller;
//! - `C:` is controller C, `:M` model M on the current controller, `C:M` model M on C;
//! - model names may omit the `owner/` prefix (the account's user is assumed);
//! - a model the client store does not list is looked for on its controller first (Juju
//!   refreshes its model list the same way), so `ctl switch TARGET:MODEL` finds a model that
//!   has just migrated to TARGET.

use anyhow::{bail, Result};
use clap::Args;

use super::models::refresh_models;
use super::Context;
use crate::store::StoreState;
use crate::target::split_model_name;
use crate::Output;

/// Arguments of `ctl switch`.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// `controller`, `model`, `controller:`, `:model` or `controller:model`.
    #[arg(value_name = "[CONTROLLER:][MODEL]")]
    pub target: Option<String>,
}

/// What `switch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// No argument: the current selection, machine-readable.
    Current(String),
    /// The selection changed (or not, when `from == to`).
    Switched {
        /// The selection before.
        from: String,
        /// The selection after.
        to: String,
    },
}

impl SwitchOutcome {
    /// The text Juju prints: the current name on stdout, or `from -> to` on stderr.
    pub fn into_output(self) -> Output {
        match self {
            Self::Current(name) => Output::stdout(format!("{name}\n")),
            Self::Switched { from, to } if from == to => {
                Output::stderr(format!("{to} (no change)\n"))
            }
            Self::Switched { from, to } => {
                Output::stderr(format!("{} -> {to}\n", from).trim_start().to_string())
            }
        }
    }
}

/// `controller:model`, or the controller alone when it has no current model (with
/// ` (controller)` unless machine-readable), or empty without a controller.
fn selection_name(state: &StoreState, controller: Option<&str>, machine_readable: bool) -> String {
    let Some(controller) = controller else {
        return String::new();
    };
    match state.current_model(controller) {
        Some(model) => format!("{controller}:{model}"),
        None if machine_readable => controller.to_string(),
        None => format!("{controller} (controller)"),
    }
}

fn unknown_target(target: &str) -> anyhow::Error {
    anyhow::anyhow!("\"{target}\" is not the name of a model or controller")
}

/// Applies `ctl switch TARGET` to `state`. `env_model` is `CTL_MODEL`: like `JUJU_MODEL`, it
/// forbids switching because it would hide the result.
pub fn switch(
    state: &mut StoreState,
    target: Option<&str>,
    env_model: Option<&str>,
) -> Result<SwitchOutcome> {
    let current_controller = state.controllers.current_controller.clone();
    let Some(target) = target.filter(|t| !t.is_empty()) else {
        let name = selection_name(state, current_controller.as_deref(), true);
        if name.is_empty() {
            bail!("no currently specified model");
        }
        return Ok(SwitchOutcome::Current(name));
    };
    let from = selection_name(state, current_controller.as_deref(), false);
    if let Some(model) = env_model {
        bail!("cannot switch when CTL_MODEL is overriding the model (set to \"{model}\")");
    }

    // A controller by that name, or explicitly a controller with a trailing colon.
    let (controller_name, force_controller) = match target.strip_suffix(':') {
        Some(name) => (name, true),
        None => (target, false),
    };
    if state.controllers.controllers.contains_key(controller_name) {
        if current_controller.as_deref() != Some(controller_name) {
            state.set_current_controller(controller_name)?;
        }
        let to = selection_name(state, Some(controller_name), false);
        return Ok(SwitchOutcome::Switched { from, to });
    }
    if force_controller {
        bail!("controller \"{controller_name}\" not found");
    }

    // Not a controller: a model, qualified with a controller or on the current one.
    let (controller_part, model_part) = split_model_name(target);
    let controller = match controller_part.filter(|c| !c.is_empty()) {
        Some(c) => {
            state.controller(c)?;
            c.to_string()
        }
        None => current_controller
            .clone()
            .ok_or_else(|| unknown_target(target))?,
    };
    if model_part.is_empty() {
        return Err(unknown_target(target));
    }
    let model = state.qualified_model_name(&controller, model_part);
    // FIXME(models): Juju refreshes the model list from the controller before giving up; do so
    // once the controller can list models.
    if !state.has_model(&controller, &model) {
        return Err(if controller_part.is_some() {
            anyhow::anyhow!("model \"{controller}:{model}\" not found")
        } else {
            unknown_target(target)
        });
    }
    state.set_current_model(&controller, &model)?;
    if current_controller.as_deref() != Some(controller.as_str()) {
        state.set_current_controller(&controller)?;
    }
    let to = selection_name(state, Some(&controller), false);
    Ok(SwitchOutcome::Switched { from, to })
}

/// The controller whose model list to refresh before `ctl switch TARGET`: the controller of the
/// model TARGET names, when the client store does not list that model. `None` when TARGET names
/// a controller, a listed model or nothing valid.
pub fn uncached_model_controller(state: &StoreState, target: &str) -> Option<String> {
    if target.ends_with(':') || state.controllers.controllers.contains_key(target) {
        return None;
    }
    let (controller_part, model_part) = split_model_name(target);
    let controller = match controller_part.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => state.controllers.current_controller.clone()?,
    };
    if model_part.is_empty() || state.controller(&controller).is_err() {
        return None;
    }
    let model = state.qualified_model_name(&controller, model_part);
    (!state.has_model(&controller, &model)).then_some(controller)
}

/// Runs `ctl switch`, first refreshing the model list of the controller of a model the client
/// store does not list.
pub async fn run(ctx: &Context, args: SwitchArgs) -> Result<Output> {
    let target = args.target.as_deref().filter(|t| !t.is_empty());
    if let (Some(target), None) = (target, &ctx.env.model) {
        let uncached = uncached_model_controller(&ctx.store.read()?, target);
        if let Some(controller) = uncached {
            // Best effort: when the controller cannot be asked, the model is not found.
            if let Ok(client) = ctx.connect(Some(&controller), None, None) {
                let _ = refresh_models(ctx, &client).await;
            }
        }
    }
    run_local(ctx, args)
}

/// Runs `ctl switch` on the client store alone.
pub fn run_local(ctx: &Context, args: SwitchArgs) -> Result<Output> {
    let target = args.target.as_deref().filter(|t| !t.is_empty());
    let outcome = match target {
        // Showing the selection writes nothing.
        None => switch(&mut ctx.store.read()?, None, None)?,
        Some(_) => ctx
            .store
            .update(|state| switch(state, target, ctx.env.model.as_deref()))?,
    };
    Ok(outcome.into_output())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{account, details};
    use crate::store::{ClientStore, ModelDetails};
    use crate::target::SelectionEnv;

    /// alpha (current, models controller + web) and beta (model controller).
    fn store() -> (tempfile::TempDir, ClientStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path().join("ctl"));
        store
            .update(|s| {
                s.add_controller("beta", details("u-b", &["h:2"]), account(), false)?;
                s.add_controller("alpha", details("u-a", &["h:1"]), account(), false)?;
                s.models
                    .controllers
                    .get_mut("alpha")
                    .unwrap()
                    .models
                    .insert(
                        "admin/web".to_string(),
                        ModelDetails {
                            uuid: "m-web".into(),
                            model_type: "iaas".into(),
                        },
                    );
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    fn ctx(store: &ClientStore, env_model: Option<&str>) -> Context {
        Context {
            store: store.clone(),
            env: SelectionEnv {
                controller: None,
                model: env_model.map(str::to_string),
            },
            format: None,
            debug: false,
        }
    }

    fn sw(store: &ClientStore, target: Option<&str>) -> Result<Output> {
        run_local(
            &ctx(store, None),
            SwitchArgs {
                target: target.map(str::to_string),
            },
        )
    }

    fn current(store: &ClientStore) -> String {
        sw(store, None).unwrap().stdout
    }

    #[test]
    fn no_argument_prints_current() {
        let (_d, store) = store();
        assert_eq!(current(&store), "alpha:admin/controller\n");
    }

    #[test]
    fn no_argument_without_controller_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        assert_eq!(
            sw(&store, None).unwrap_err().to_string(),
            "no currently specified model"
        );
    }

    #[test]
    fn bare_controller_name() {
        let (_d, store) = store();
        let out = sw(&store, Some("beta")).unwrap();
        assert_eq!(
            out.stderr,
            "alpha:admin/controller -> beta:admin/controller\n"
        );
        assert_eq!(out.stdout, "");
        assert_eq!(current(&store), "beta:admin/controller\n");
    }

    #[test]
    fn same_controller_is_no_change() {
        let (_d, store) = store();
        let out = sw(&store, Some("alpha")).unwrap();
        assert_eq!(out.stderr, "alpha:admin/controller (no change)\n");
    }

    #[test]
    fn bare_model_name_on_current_controller() {
        let (_d, store) = store();
        let out = sw(&store, Some("web")).unwrap();
        assert_eq!(out.stderr, "alpha:admin/controller -> alpha:admin/web\n");
        assert_eq!(current(&store), "alpha:admin/web\n");
        // Qualified with the owner works too.
        sw(&store, Some("admin/controller")).unwrap();
        assert_eq!(current(&store), "alpha:admin/controller\n");
    }

    #[test]
    fn controller_colon() {
        let (_d, store) = store();
        sw(&store, Some("beta:")).unwrap();
        assert_eq!(current(&store), "beta:admin/controller\n");
        let err = sw(&store, Some("gamma:")).unwrap_err().to_string();
        assert_eq!(err, "controller \"gamma\" not found");
    }

    #[test]
    fn colon_model_on_current_controller() {
        let (_d, store) = store();
        sw(&store, Some(":web")).unwrap();
        assert_eq!(current(&store), "alpha:admin/web\n");
    }

    #[test]
    fn controller_colon_model() {
        let (_d, store) = store();
        sw(&store, Some("alpha:web")).unwrap();
        let out = sw(&store, Some("beta:admin/controller")).unwrap();
        assert_eq!(out.stderr, "alpha:admin/web -> beta:admin/controller\n");
        // Switching back to alpha's controller keeps alpha's own current model.
        let out = sw(&store, Some("alpha")).unwrap();
        assert_eq!(out.stderr, "beta:admin/controller -> alpha:admin/web\n");
    }

    #[test]
    fn unknown_names() {
        let (_d, store) = store();
        let err = |t| sw(&store, Some(t)).unwrap_err().to_string();
        assert_eq!(
            err("nope"),
            "\"nope\" is not the name of a model or controller"
        );
        assert_eq!(err(":nope"), "model \"alpha:admin/nope\" not found");
        assert_eq!(err("gamma:web"), "controller \"gamma\" not found");
        assert_eq!(err("beta:web"), "model \"beta:admin/web\" not found");
        // Nothing changed.
        assert_eq!(current(&store), "alpha:admin/controller\n");
    }

    #[test]
    fn model_without_current_controller() {
        let (_d, store) = store();
        store
            .update(|s| {
                s.controllers.current_controller = None;
                Ok(())
            })
            .unwrap();
        let err = sw(&store, Some("web")).unwrap_err().to_string();
        assert_eq!(err, "\"web\" is not the name of a model or controller");
        let out = sw(&store, Some("alpha:web")).unwrap();
        assert_eq!(out.stderr, "-> alpha:admin/web\n");
    }

    #[test]
    fn controller_without_current_model() {
        let (_d, store) = store();
        store
            .update(|s| {
                s.models.controllers.get_mut("beta").unwrap().current_model = None;
                Ok(())
            })
            .unwrap();
        let out = sw(&store, Some("beta")).unwrap();
        assert_eq!(out.stderr, "alpha:admin/controller -> beta (controller)\n");
        assert_eq!(current(&store), "beta\n");
    }

    #[test]
    fn ctl_model_forbids_switching() {
        let (_d, store) = store();
        let err = run_local(
            &ctx(&store, Some("web")),
            SwitchArgs {
                target: Some("beta".into()),
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cannot switch when CTL_MODEL is overriding the model (set to \"web\")"
        );
        // Showing is still allowed.
        run_local(&ctx(&store, Some("web")), SwitchArgs { target: None }).unwrap();
    }

    #[test]
    fn only_unlisted_models_are_looked_for_on_their_controller() {
        let (_d, store) = store();
        let state = store.read().unwrap();
        let look = |t| uncached_model_controller(&state, t);
        assert_eq!(look("beta:web").as_deref(), Some("beta"));
        assert_eq!(look("nope").as_deref(), Some("alpha"));
        assert_eq!(look(":nope").as_deref(), Some("alpha"));
        assert_eq!(look("web"), None);
        assert_eq!(look("alpha:admin/web"), None);
        assert_eq!(look("beta"), None);
        assert_eq!(look("beta:"), None);
        assert_eq!(look("gamma:web"), None);
    }
}
