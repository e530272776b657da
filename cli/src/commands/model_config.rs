//! `ctl model-config [KEY | KEY=VALUE ... | --reset KEY,...]`: a model's own config, free-form
//! settings that operators and tools keep with the model. Lists every key, prints one value
//! alone (for scripts), or sets and removes keys in one SetModelConfig call. The controller
//! checks keys and values; `ctl` passes its refusals on as they are worded.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use clap::Args;
use starling_proto::controller::{GetModelConfigRequest, SetModelConfigRequest};

use super::controller_config::ConfigRequest;
use super::{model_ref, request_id, Context, ModelArg};
use crate::model_views::ModelConfigView;
use crate::render::Format;
use crate::{Output, UsageError};

/// `ctl model-config --help`, after the options.
pub const MODEL_CONFIG_HELP: &str = "\
Model config holds free-form settings that operators and tools keep with a model: an owner, a
cost centre, a maintenance window, anything a script wants to find later. The keys are yours;
they are stored with the model and travel with it when it migrates to another controller.

Keys are 1 to 128 characters: lowercase letters, digits, '-', '.' and '_', starting with a
letter or digit. Values are at most 4096 bytes. The controller checks every key and value and
refuses the whole change if one is invalid. While a migration has the model locked, changes
are refused (reading still works).

  ctl model-config                      every key, in a Key/Value table (--format yaml|json:
                                        a map of keys to values)
  ctl model-config KEY                  the value alone, for scripts (exit status 1 if KEY is
                                        not set)
  ctl model-config KEY=VALUE ...        set keys, all in one change; KEY= removes KEY
  ctl model-config --reset KEY[,KEY2]   remove keys (may be combined with KEY=VALUE)

Exit status: 0 on success; 1 for errors, a KEY that is not set or a refused change; 2 for usage
errors (e.g. a bare KEY mixed with KEY=VALUE).

Examples:
  ctl model-config -m alpha:web owner=ops-team maintenance.window=sun-02:00
  ctl model-config owner
  ctl model-config --reset maintenance.window";

/// Arguments of `ctl model-config`.
#[derive(Debug, Args)]
pub struct ModelConfigArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Remove these keys (comma-separated; repeatable).
    #[arg(long, value_delimiter = ',', value_name = "KEY[,KEY...]")]
    pub reset: Vec<String>,
    /// Nothing to show all keys, KEY to print one value, or KEY=VALUE ... to set keys.
    #[arg(value_name = "KEY | KEY=VALUE")]
    pub args: Vec<String>,
}

/// Classifies the positional arguments like `controller-config` does, then folds the keys of
/// `--reset` into the change as removals (an empty value). `--reset` cannot go with a bare KEY,
/// nor name a key that an argument also sets.
pub fn parse_request(args: &[String], reset: &[String]) -> Result<ConfigRequest, UsageError> {
    let request = ConfigRequest::parse(args)?;
    if reset.is_empty() {
        return Ok(request);
    }
    let mut values = match request {
        ConfigRequest::All => BTreeMap::new(),
        ConfigRequest::Set(values) => values,
        ConfigRequest::Get(key) => {
            return Err(UsageError(format!(
                "cannot print key \"{key}\" and --reset keys in one command"
            )))
        }
    };
    for key in reset {
        if key.is_empty() {
            return Err(UsageError("empty key in --reset".into()));
        }
        match values.get(key) {
            Some(value) if !value.is_empty() => {
                return Err(UsageError(format!("key \"{key}\" is both set and reset")))
            }
            _ => {
                values.insert(key.clone(), String::new());
            }
        }
    }
    Ok(ConfigRequest::Set(values))
}

/// Runs `ctl model-config`.
pub async fn run(ctx: &Context, args: ModelConfigArgs) -> Result<Output> {
    let request = parse_request(&args.args, &args.reset)?;
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let get = GetModelConfigRequest {
        model: Some(model_ref(&target)),
    };
    let get_all = || async {
        client
            .call(|mut c| {
                let get = get.clone();
                async move { c.get_model_config(get).await }
            })
            .await
    };
    match request {
        ConfigRequest::All => {
            let config = get_all().await?;
            let view = ModelConfigView {
                model: target.model.clone(),
                values: config.values,
            };
            Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
        }
        ConfigRequest::Get(key) => {
            let mut config = get_all().await?;
            let value = config
                .values
                .remove(&key)
                .ok_or_else(|| anyhow!("model config key \"{key}\" is not set"))?;
            Ok(Output::stdout(format!("{value}\n")))
        }
        ConfigRequest::Set(values) => {
            // The id is fixed before the first attempt: a retry on another endpoint carries
            // the same id, so the controller applies the change once.
            let request = SetModelConfigRequest {
                model: Some(model_ref(&target)),
                values,
                request_id: request_id(),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.set_model_config(request).await }
                })
                .await?;
            Ok(Output::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn parse(args: &[&str], reset: &[&str]) -> Result<ConfigRequest, UsageError> {
        parse_request(&strings(args), &strings(reset))
    }

    fn set(pairs: &[(&str, &str)]) -> ConfigRequest {
        ConfigRequest::Set(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn list_get_and_set() {
        assert_eq!(parse(&[], &[]).unwrap(), ConfigRequest::All);
        assert_eq!(
            parse(&["owner"], &[]).unwrap(),
            ConfigRequest::Get("owner".into())
        );
        assert_eq!(
            parse(&["owner=ops", "note=a=b", "old="], &[]).unwrap(),
            set(&[("owner", "ops"), ("note", "a=b"), ("old", "")])
        );
    }

    #[test]
    fn reset_removes_with_empty_values() {
        assert_eq!(
            parse(&[], &["a", "b"]).unwrap(),
            set(&[("a", ""), ("b", "")])
        );
        assert_eq!(
            parse(&["owner=ops"], &["a"]).unwrap(),
            set(&[("owner", "ops"), ("a", "")])
        );
        // Removing a key twice is still one removal.
        assert_eq!(parse(&["a="], &["a", "a"]).unwrap(), set(&[("a", "")]));
    }

    #[test]
    fn usage_errors() {
        let err = |args: &[&str], reset: &[&str]| parse(args, reset).unwrap_err().0;
        assert_eq!(
            err(&["owner", "a=1"], &[]),
            "cannot mix KEY and KEY=VALUE arguments"
        );
        assert_eq!(
            err(&["a=1", "owner"], &[]),
            "cannot mix KEY and KEY=VALUE arguments"
        );
        assert!(err(&["a", "b"], &[]).starts_with("give a single KEY"));
        assert_eq!(err(&["=1"], &[]), "missing key in \"=1\"");
        assert_eq!(err(&["a=1", "a=2"], &[]), "key \"a\" given more than once");
        assert_eq!(
            err(&["owner"], &["a"]),
            "cannot print key \"owner\" and --reset keys in one command"
        );
        assert_eq!(err(&["a=1"], &["a"]), "key \"a\" is both set and reset");
        assert_eq!(err(&[], &["a", ""]), "empty key in --reset");
    }
}
