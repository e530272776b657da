//! Which controller and model a command acts on: `-c NAME`, `-m [controller:]model`, the
//! `CTL_CONTROLLER`/`CTL_MODEL` environment variables and the store's current selections, in
//! that order of precedence.

use anyhow::{bail, Result};

use crate::store::StoreState;

/// The selection environment variables, read once so resolution stays a pure function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectionEnv {
    /// `CTL_CONTROLLER`, when set and not empty.
    pub controller: Option<String>,
    /// `CTL_MODEL`, when set and not empty.
    pub model: Option<String>,
}

impl SelectionEnv {
    /// Reads `CTL_CONTROLLER` and `CTL_MODEL` from the process environment.
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Self {
            controller: var("CTL_CONTROLLER"),
            model: var("CTL_MODEL"),
        }
    }
}

/// A resolved model: its controller and its qualified (`owner/name`) model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTarget {
    /// The controller's name in the client store.
    pub controller: String,
    /// The qualified model name, e.g. `admin/controller`.
    pub model: String,
}

impl std::fmt::Display for ModelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.controller, self.model)
    }
}

/// Splits `[controller:]model` at the first colon (Juju's `SplitModelName`).
pub fn split_model_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once(':') {
        Some((controller, model)) => (Some(controller), model),
        None => (None, name),
    }
}

/// The controller a controller-scoped command acts on: `-c`, else `CTL_CONTROLLER`, else the
/// current controller. It must be in the store.
pub fn resolve_controller(
    state: &StoreState,
    env: &SelectionEnv,
    flag: Option<&str>,
) -> Result<String> {
    let name = match flag.filter(|f| !f.is_empty()).or(env.controller.as_deref()) {
        Some(name) => name.to_string(),
        None => match &state.controllers.current_controller {
            Some(name) => name.clone(),
            None => bail!(
                "no controller selected; use -c NAME, set CTL_CONTROLLER or run 'ctl switch NAME'"
            ),
        },
    };
    state.controller(&name)?;
    Ok(name)
}

/// The model a model-scoped command acts on. `-m [controller:]model` wins, then `CTL_MODEL`
/// (same syntax), then the current model of the resolved controller. A model name without a
/// controller is on the controller that `CTL_CONTROLLER` or the store selects; an owner-less
/// model name is qualified with the account's user. The model need not be in the local cache
/// (the controller is the authority), but the controller must be in the store.
pub fn resolve_model(
    state: &StoreState,
    env: &SelectionEnv,
    flag: Option<&str>,
) -> Result<ModelTarget> {
    let given = flag.filter(|f| !f.is_empty()).or(env.model.as_deref());
    let (controller_part, model_part) = match given {
        Some(given) => split_model_name(given),
        None => (None, ""),
    };
    let controller = match controller_part.filter(|c| !c.is_empty()) {
        Some(c) => {
            state.controller(c)?;
            c.to_string()
        }
        None => resolve_controller(state, env, None)?,
    };
    let model = if model_part.is_empty() {
        match state.current_model(&controller) {
            Some(m) => m.to_string(),
            None => bail!(
                "no model selected on controller \"{controller}\"; use -m MODEL or run 'ctl switch {controller}:MODEL'"
            ),
        }
    } else {
        state.qualified_model_name(&controller, model_part)
    };
    Ok(ModelTarget { controller, model })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{account, details};

    fn state() -> StoreState {
        let mut s = StoreState::default();
        s.add_controller("alpha", details("u-a", &["h:1"]), account(), false)
            .unwrap();
        s.add_controller("beta", details("u-b", &["h:2"]), account(), false)
            .unwrap();
        s.set_current_controller("alpha").unwrap();
        s
    }

    fn env(controller: Option<&str>, model: Option<&str>) -> SelectionEnv {
        SelectionEnv {
            controller: controller.map(str::to_string),
            model: model.map(str::to_string),
        }
    }

    fn target(c: &str, m: &str) -> ModelTarget {
        ModelTarget {
            controller: c.to_string(),
            model: m.to_string(),
        }
    }

    #[test]
    fn controller_precedence_flag_env_current() {
        let s = state();
        let none = SelectionEnv::default();
        assert_eq!(resolve_controller(&s, &none, None).unwrap(), "alpha");
        assert_eq!(
            resolve_controller(&s, &env(Some("beta"), None), None).unwrap(),
            "beta"
        );
        assert_eq!(
            resolve_controller(&s, &env(Some("beta"), None), Some("alpha")).unwrap(),
            "alpha"
        );
    }

    #[test]
    fn unknown_or_missing_controller_is_an_error() {
        let s = state();
        let err = resolve_controller(&s, &SelectionEnv::default(), Some("gamma")).unwrap_err();
        assert_eq!(err.to_string(), "controller \"gamma\" not found");
        let err = resolve_controller(&s, &env(Some("gamma"), None), None).unwrap_err();
        assert_eq!(err.to_string(), "controller \"gamma\" not found");
        let err =
            resolve_controller(&StoreState::default(), &SelectionEnv::default(), None).unwrap_err();
        assert!(
            err.to_string().starts_with("no controller selected"),
            "{err}"
        );
    }

    #[test]
    fn model_defaults_to_current_model_of_current_controller() {
        let s = state();
        let none = SelectionEnv::default();
        assert_eq!(
            resolve_model(&s, &none, None).unwrap(),
            target("alpha", "admin/controller")
        );
    }

    #[test]
    fn model_flag_forms() {
        let s = state();
        let none = SelectionEnv::default();
        let r = |m| resolve_model(&s, &none, Some(m)).unwrap();
        assert_eq!(r("web"), target("alpha", "admin/web"));
        assert_eq!(r("bob/web"), target("alpha", "bob/web"));
        assert_eq!(r("beta:web"), target("beta", "admin/web"));
        assert_eq!(r("beta:admin/web"), target("beta", "admin/web"));
        assert_eq!(r(":web"), target("alpha", "admin/web"));
        assert_eq!(r("beta:"), target("beta", "admin/controller"));
        assert_eq!(r("beta:").to_string(), "beta:admin/controller");
    }

    #[test]
    fn model_env_and_controller_env() {
        let s = state();
        let r = |e: SelectionEnv, flag| resolve_model(&s, &e, flag).unwrap();
        assert_eq!(
            r(env(None, Some("beta:web")), None),
            target("beta", "admin/web")
        );
        assert_eq!(
            r(env(Some("beta"), None), None),
            target("beta", "admin/controller")
        );
        assert_eq!(
            r(env(Some("beta"), Some("web")), None),
            target("beta", "admin/web")
        );
        // The flag beats CTL_MODEL entirely, CTL_CONTROLLER still picks its controller.
        assert_eq!(
            r(env(Some("beta"), Some("alpha:x")), Some("web")),
            target("beta", "admin/web")
        );
        assert_eq!(
            r(env(None, Some("beta:x")), Some("alpha:web")),
            target("alpha", "admin/web")
        );
    }

    #[test]
    fn model_errors() {
        let s = state();
        let none = SelectionEnv::default();
        let err = resolve_model(&s, &none, Some("gamma:web")).unwrap_err();
        assert_eq!(err.to_string(), "controller \"gamma\" not found");
        let err = resolve_model(&StoreState::default(), &none, Some("web")).unwrap_err();
        assert!(
            err.to_string().starts_with("no controller selected"),
            "{err}"
        );
        let mut s = s;
        s.models.controllers.get_mut("alpha").unwrap().current_model = None;
        let err = resolve_model(&s, &none, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no model selected on controller \"alpha\""),
            "{err}"
        );
    }

    #[test]
    fn split() {
        assert_eq!(split_model_name("a:b"), (Some("a"), "b"));
        assert_eq!(split_model_name(":b"), (Some(""), "b"));
        assert_eq!(split_model_name("a:"), (Some("a"), ""));
        assert_eq!(split_model_name("b"), (None, "b"));
    }
}
