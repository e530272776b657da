//! `ctl controller-config [KEY | KEY=VALUE ...]`: shows all values, prints one value alone (for
//! scripts), or sets values in one SetControllerConfig call.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use clap::Args;
use starling_proto::controller::{GetControllerConfigRequest, SetControllerConfigRequest};

use super::{Context, ControllerArg};
use crate::render::{ControllerConfigView, Format};
use crate::{Output, UsageError};

/// Arguments of `ctl controller-config`.
#[derive(Debug, Args)]
pub struct ControllerConfigArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// Read from the answering node's own applied state instead of a linearizable read.
    #[arg(long)]
    pub local: bool,
    /// Ask this node (host:port) instead of failing over across the controller's endpoints.
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// Nothing to show all values, KEY to print one value, or KEY=VALUE ... to set values.
    #[arg(value_name = "KEY | KEY=VALUE")]
    pub args: Vec<String>,
}

/// What the positional arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigRequest {
    /// Show every value.
    All,
    /// Print one value.
    Get(String),
    /// Set these values.
    Set(BTreeMap<String, String>),
}

impl ConfigRequest {
    /// Classifies the arguments; mixing forms or giving several bare keys is a usage error.
    pub fn parse(args: &[String]) -> Result<Self, UsageError> {
        let n_assignments = args.iter().filter(|a| a.contains('=')).count();
        match (args.len(), n_assignments) {
            (0, _) => Ok(Self::All),
            (1, 0) => Ok(Self::Get(args[0].clone())),
            (_, 0) => Err(UsageError(
                "give a single KEY to print, or KEY=VALUE pairs to set".into(),
            )),
            (n, m) if n != m => Err(UsageError("cannot mix KEY and KEY=VALUE arguments".into())),
            _ => {
                let mut values = BTreeMap::new();
                for arg in args {
                    let (key, value) = arg.split_once('=').expect("counted above");
                    if key.is_empty() {
                        return Err(UsageError(format!("missing key in \"{arg}\"")));
                    }
                    if values.insert(key.to_string(), value.to_string()).is_some() {
                        return Err(UsageError(format!("key \"{key}\" given more than once")));
                    }
                }
                Ok(Self::Set(values))
            }
        }
    }
}

/// Runs `ctl controller-config`.
pub async fn run(ctx: &Context, args: ControllerConfigArgs) -> Result<Output> {
    let request = ConfigRequest::parse(&args.args)?;
    let client = ctx.connect(
        args.controller.controller.as_deref(),
        args.endpoint.as_deref(),
        None,
    )?;
    let local = args.local;
    let get_all = || async {
        client
            .call(|mut c| async move {
                c.get_controller_config(GetControllerConfigRequest { local })
                    .await
            })
            .await
    };
    match request {
        ConfigRequest::All => {
            let response = get_all().await?;
            let view = ControllerConfigView(response.values.into_iter().collect());
            Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
        }
        ConfigRequest::Get(key) => {
            let mut response = get_all().await?;
            let value = response.values.remove(&key).ok_or_else(|| {
                anyhow!(
                    "key \"{key}\" not found in the config of controller \"{}\"",
                    client.controller()
                )
            })?;
            Ok(Output::stdout(format!("{value}\n")))
        }
        ConfigRequest::Set(values) => {
            // One id for every attempt, so a retry after failover is applied once.
            let request_id = uuid::Uuid::new_v4().to_string();
            let values: BTreeMap<String, String> = values.into_iter().collect();
            client
                .call(|mut c| {
                    let request = SetControllerConfigRequest {
                        values: values.clone(),
                        request_id: request_id.clone(),
                    };
                    async move { c.set_controller_config(request).await }
                })
                .await?;
            Ok(Output::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ConfigRequest, UsageError> {
        ConfigRequest::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn forms() {
        assert_eq!(parse(&[]).unwrap(), ConfigRequest::All);
        assert_eq!(parse(&["a"]).unwrap(), ConfigRequest::Get("a".into()));
        assert_eq!(
            parse(&["a=1", "b=x=y", "c="]).unwrap(),
            ConfigRequest::Set(BTreeMap::from([
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("c".into(), "".into()),
            ]))
        );
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&["a", "b"]).is_err());
        assert!(parse(&["a", "b=1"]).is_err());
        assert!(parse(&["b=1", "a"]).is_err());
        assert!(parse(&["=1"]).is_err());
        assert!(parse(&["a=1", "a=2"]).is_err());
    }
}
