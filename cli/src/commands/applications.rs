//! `ctl deploy`, `add-unit`, `remove-unit`, `remove-application`, `integrate`,
//! `remove-relation` and `config`: the application commands of a model. Writes print nothing
//! (as Juju's do); `config APP KEY` prints the value alone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use starling_proto::controller::{
    AddUnitRequest, DeployRequest, GetApplicationConfigRequest, IntegrateRequest,
    RemoveApplicationRequest, RemoveRelationRequest, RemoveUnitRequest,
    SetApplicationConfigRequest,
};

use super::controller_config::ConfigRequest;
use super::{model_ref, parse_assignments, request_id, Context, ModelArg};
use crate::charm::CharmArchive;
use crate::client::ControllerClient;
use crate::model_views::AppConfigView;
use crate::render::Format;
use crate::{Output, UsageError};

/// Where new units go: one per machine the operator named, or a number of units the controller
/// spreads over the model's machines with the fewest units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One unit per listed machine (`--to`).
    Pinned(Vec<String>),
    /// This many units, placed by the controller.
    Spread(u32),
}

impl Placement {
    /// The `to` and `num_units` fields of a deploy or add-unit request.
    pub fn request_fields(self) -> (Vec<String>, u32) {
        match self {
            Placement::Pinned(to) => (to, 0),
            Placement::Spread(n) => (Vec::new(), n),
        }
    }
}

/// Checks `-n` against `--to`: with `--to`, one unit per listed machine (`-n`, when given, must
/// match); without it, `-n` units (default 1) go to the machines with the fewest units, as
/// `juju deploy -n` and nomad place them. `-n 0` deploys an application without units.
pub fn placement(n_units: Option<usize>, to: &[String]) -> Result<Placement, UsageError> {
    if let Some(bad) = to.iter().find(|m| m.trim().is_empty()) {
        return Err(UsageError(format!("invalid machine \"{bad}\" in --to")));
    }
    if to.is_empty() {
        let n = n_units.unwrap_or(1);
        let n = u32::try_from(n).map_err(|_| UsageError(format!("-n {n} is too many units")))?;
        return Ok(Placement::Spread(n));
    }
    match n_units {
        Some(n) if n != to.len() => Err(UsageError(format!(
            "-n {n} needs {n} machines in --to, got {}",
            to.len()
        ))),
        _ => Ok(Placement::Pinned(to.to_vec())),
    }
}

/// Arguments of `ctl deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A local charm directory (with metadata.yaml).
    pub charm: PathBuf,
    /// The application's name (default: the charm's name).
    pub application: Option<String>,
    /// The number of units (default 1). Without --to they go to the model's machines with the
    /// fewest units; with --to it must match the machines listed.
    #[arg(short = 'n', long = "num-units", value_name = "N")]
    pub num_units: Option<usize>,
    /// Pin the units to machines, one unit each: 0,1,...
    #[arg(long, value_delimiter = ',', value_name = "MACHINE,...")]
    pub to: Vec<String>,
    /// Application config, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
}

/// Uploads `archive` in chunks; the controller verifies the digest.
pub async fn upload_charm(client: &ControllerClient, archive: CharmArchive) -> Result<()> {
    let archive = Arc::new(archive);
    let response = client
        .call(|mut c| {
            let archive = archive.clone();
            async move {
                let chunks = (0..archive.chunk_count()).map(move |idx| archive.chunk(idx));
                c.upload_charm(tokio_stream::iter(chunks)).await
            }
        })
        .await?;
    if response.digest != archive.digest {
        bail!(
            "the controller stored the charm as {} but its sha256 is {}",
            response.digest,
            archive.digest
        );
    }
    Ok(())
}

/// Runs `ctl deploy`.
pub async fn deploy(ctx: &Context, args: DeployArgs) -> Result<Output> {
    // The charm first: a missing directory is the more basic mistake.
    let archive = CharmArchive::pack(&args.charm)?;
    let (to, num_units) = placement(args.num_units, &args.to)?.request_fields();
    let config = parse_assignments(&args.config)?;
    let application = args.application.unwrap_or_else(|| archive.name.clone());
    let digest = archive.digest.clone();
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    upload_charm(&client, archive).await?;
    let request = DeployRequest {
        model: Some(model_ref(&target)),
        application,
        charm_digest: digest,
        config,
        to,
        request_id: request_id(),
        num_units,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.deploy(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Arguments of `ctl add-unit`.
#[derive(Debug, Args)]
pub struct AddUnitArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The application.
    pub application: String,
    /// The number of units (default 1). Without --to they go to the model's machines with the
    /// fewest units; with --to it must match the machines listed.
    #[arg(short = 'n', long = "num-units", value_name = "N")]
    pub num_units: Option<usize>,
    /// Pin the new units to machines, one unit each: 0,1,...
    #[arg(long, value_delimiter = ',', value_name = "MACHINE,...")]
    pub to: Vec<String>,
}

/// Runs `ctl add-unit`.
pub async fn add_unit(ctx: &Context, args: AddUnitArgs) -> Result<Output> {
    if args.num_units == Some(0) {
        return Err(UsageError("-n must be at least 1".into()).into());
    }
    let (to, num_units) = placement(args.num_units, &args.to)?.request_fields();
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let request = AddUnitRequest {
        model: Some(model_ref(&target)),
        application: args.application,
        to,
        request_id: request_id(),
        num_units,
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_unit(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Arguments of `ctl remove-unit`.
#[derive(Debug, Args)]
pub struct RemoveUnitArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Units, e.g. web/0.
    #[arg(required = true, value_name = "UNIT")]
    pub units: Vec<String>,
}

/// Runs `ctl remove-unit`.
pub async fn remove_unit(ctx: &Context, args: RemoveUnitArgs) -> Result<Output> {
    if let Some(bad) = args.units.iter().find(|u| !is_unit_name(u)) {
        return Err(UsageError(format!("invalid unit name \"{bad}\": want APP/N")).into());
    }
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let request = RemoveUnitRequest {
        model: Some(model_ref(&target)),
        units: args.units,
        request_id: request_id(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.remove_unit(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Arguments of `ctl remove-application`.
#[derive(Debug, Args)]
pub struct RemoveApplicationArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The application.
    pub application: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long = "no-prompt", alias = "yes")]
    pub no_prompt: bool,
}

/// Runs `ctl remove-application`: the application, its units (their agents stop the
/// workloads) and its relations go.
pub async fn remove_application(ctx: &Context, args: RemoveApplicationArgs) -> Result<Output> {
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let application = &args.application;
    super::models::confirm_unless(
        args.no_prompt,
        &format!("removing application \"{application}\""),
        &format!(
            "This removes application \"{application}\" from model \"{target}\" with all its units \
             (their workloads stop) and relations. Continue?"
        ),
        &format!("application \"{application}\" not removed"),
    )?;
    let request = RemoveApplicationRequest {
        model: Some(model_ref(&target)),
        application: application.clone(),
        request_id: request_id(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.remove_application(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Whether `name` looks like `app/N`.
pub fn is_unit_name(name: &str) -> bool {
    name.split_once('/').is_some_and(|(app, n)| {
        !app.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Arguments of `ctl integrate` and `ctl remove-relation`.
#[derive(Debug, Args)]
pub struct RelationArgs {
    #[command(flatten)]
    model: ModelArg,
    /// `app[:endpoint]`.
    #[arg(value_name = "APP[:ENDPOINT]")]
    pub a: String,
    /// `app[:endpoint]`.
    #[arg(value_name = "APP[:ENDPOINT]")]
    pub b: String,
}

fn check_endpoints(args: &RelationArgs) -> Result<(), UsageError> {
    for e in [&args.a, &args.b] {
        let app = e.split_once(':').map_or(e.as_str(), |(app, _)| app);
        if app.is_empty() || e.ends_with(':') {
            return Err(UsageError(format!(
                "invalid endpoint \"{e}\": want APP or APP:ENDPOINT"
            )));
        }
    }
    Ok(())
}

/// Runs `ctl integrate`.
pub async fn integrate(ctx: &Context, args: RelationArgs) -> Result<Output> {
    check_endpoints(&args)?;
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let request = IntegrateRequest {
        model: Some(model_ref(&target)),
        endpoint_a: args.a,
        endpoint_b: args.b,
        request_id: request_id(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.integrate(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Runs `ctl remove-relation`.
pub async fn remove_relation(ctx: &Context, args: RelationArgs) -> Result<Output> {
    check_endpoints(&args)?;
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let request = RemoveRelationRequest {
        model: Some(model_ref(&target)),
        endpoint_a: args.a,
        endpoint_b: args.b,
        request_id: request_id(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.remove_relation(request).await }
        })
        .await?;
    Ok(Output::default())
}

/// Arguments of `ctl config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The application.
    pub application: String,
    /// Nothing to show all values, KEY to print one value, or KEY=VALUE ... to set values.
    #[arg(value_name = "KEY | KEY=VALUE")]
    pub args: Vec<String>,
}

/// Runs `ctl config`.
pub async fn config(ctx: &Context, args: ConfigArgs) -> Result<Output> {
    let request = ConfigRequest::parse(&args.args)?;
    let (client, target) = ctx.connect_model(args.model.model.as_deref(), None)?;
    let application = args.application;
    let get = GetApplicationConfigRequest {
        model: Some(model_ref(&target)),
        application: application.clone(),
    };
    let get_all = || async {
        client
            .call(|mut c| {
                let get = get.clone();
                async move { c.get_application_config(get).await }
            })
            .await
    };
    match request {
        ConfigRequest::All => {
            let config = get_all().await?;
            let view = AppConfigView::new(&application, &config);
            Ok(Output::stdout(view.render(ctx.format_or(Format::Tabular))?))
        }
        ConfigRequest::Get(key) => {
            let mut config = get_all().await?;
            let value = config.values.remove(&key).ok_or_else(|| {
                anyhow!("key \"{key}\" not found in the config of application \"{application}\"")
            })?;
            Ok(Output::stdout(format!("{value}\n")))
        }
        ConfigRequest::Set(values) => {
            let request = SetApplicationConfigRequest {
                model: Some(model_ref(&target)),
                application,
                values: values.into_iter().collect(),
                request_id: request_id(),
            };
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.set_application_config(request).await }
                })
                .await?;
            Ok(Output::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placements() {
        let pinned = |list: &[&str]| Placement::Pinned(to(list));
        assert_eq!(
            placement(None, &to(&["0", "1"])).unwrap(),
            pinned(&["0", "1"])
        );
        assert_eq!(
            placement(Some(2), &to(&["0", "1"])).unwrap(),
            pinned(&["0", "1"])
        );
        assert_eq!(placement(Some(0), &[]).unwrap(), Placement::Spread(0));
        assert_eq!(placement(None, &[]).unwrap(), Placement::Spread(1));
        assert_eq!(placement(Some(3), &[]).unwrap(), Placement::Spread(3));
        assert_eq!(
            Placement::Spread(3).request_fields(),
            (Vec::<String>::new(), 3)
        );
        assert_eq!(pinned(&["2"]).request_fields(), (to(&["2"]), 0));
        assert_eq!(
            placement(Some(3), &to(&["0", "1"])).unwrap_err().0,
            "-n 3 needs 3 machines in --to, got 2"
        );
        assert!(placement(None, &to(&["0", ""])).is_err());
    }

    #[test]
    fn unit_names() {
        assert!(is_unit_name("web/0"));
        assert!(is_unit_name("web/10"));
        assert!(!is_unit_name("web"));
        assert!(!is_unit_name("web/"));
        assert!(!is_unit_name("/0"));
        assert!(!is_unit_name("web/x"));
    }
}
