//! The command line (clap) and one module per command, or per small family of commands that
//! share their arguments (`models`, `users`, `machines`, `applications`); [`run`] dispatches.

pub mod add_node;
pub mod applications;
pub mod backups;
pub mod balance;
pub mod completion;
pub mod controller_config;
pub mod controllers;
pub mod debug_log;
pub mod machines;
pub mod migrate;
pub mod model_config;
pub mod models;
pub mod register;
pub mod remove_node;
pub mod show_controller;
pub mod status;
pub mod switch;
pub mod unregister;
pub mod users;

use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use starling_proto::controller::ModelRef;

use crate::client::{ConnectionInfo, ControllerClient, RedirectFollower, REQUEST_TIMEOUT_DEFAULT};
use crate::render::Format;
use crate::store::ClientStore;
use crate::target::{resolve_controller, resolve_model, ModelTarget, SelectionEnv};
use crate::{Output, UsageError};

/// The operator's client for Starling controllers.
#[derive(Debug, Parser)]
#[command(name = "ctl", version, about, max_term_width = 100)]
pub struct Cli {
    /// Output format (the default depends on the command).
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
    /// Write the output to FILE instead of stdout.
    #[arg(short = 'o', long = "output", global = true, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Say on stderr what ctl does behind the scenes (a call sent again to the controller a
    /// model moved to while the call was held in the migration's fence).
    #[arg(long, global = true)]
    pub debug: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `ctl` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a controller from a registration file written by `ctld init`.
    Register(register::RegisterArgs),
    /// Forget a controller (removes it from the client store only).
    Unregister(unregister::UnregisterArgs),
    /// List the controllers in the client store.
    Controllers(controllers::ControllersArgs),
    /// Show a controller's members as the controller reports them.
    ShowController(show_controller::ShowControllerArgs),
    /// Select or show the current controller and model.
    Switch(switch::SwitchArgs),
    /// Show or set controller configuration.
    ControllerConfig(controller_config::ControllerConfigArgs),
    /// Add a node to a controller and write its data dir.
    AddNode(add_node::AddNodeArgs),
    /// Remove a node from a controller.
    RemoveNode(remove_node::RemoveNodeArgs),
    /// Add a model to a controller and switch to it.
    AddModel(models::AddModelArgs),
    /// List a controller's models (and refresh the client store's list).
    Models(models::ModelsArgs),
    /// Show one model.
    ShowModel(models::ShowModelArgs),
    /// Destroy a model.
    DestroyModel(models::DestroyModelArgs),
    /// Show, print or set a model's config: free-form settings kept with the model.
    #[command(after_long_help = model_config::MODEL_CONFIG_HELP)]
    ModelConfig(model_config::ModelConfigArgs),
    /// Migrate a model to another controller.
    #[command(after_long_help = migrate::MIGRATE_HELP)]
    Migrate(migrate::MigrateArgs),
    /// Abort a model's migration (possible until it reaches SUCCESS).
    #[command(after_long_help = migrate::ABORT_MIGRATION_HELP)]
    AbortMigration(migrate::AbortMigrationArgs),
    /// End the log transfer into a model that arrived here, when its source is gone for good.
    #[command(after_long_help = migrate::END_LOG_TRANSFER_HELP)]
    EndLogTransfer(migrate::EndLogTransferArgs),
    /// Add a machine to a model, print its id and write its agent config.
    AddMachine(machines::AddMachineArgs),
    /// Remove machines from a model.
    RemoveMachine(machines::RemoveMachineArgs),
    /// Deploy an application from a local charm directory.
    Deploy(applications::DeployArgs),
    /// Add units of an application to machines.
    AddUnit(applications::AddUnitArgs),
    /// Remove units.
    RemoveUnit(applications::RemoveUnitArgs),
    /// Remove an application with its units and relations.
    RemoveApplication(applications::RemoveApplicationArgs),
    /// Relate two application endpoints.
    Integrate(applications::RelationArgs),
    /// Remove the relation between two application endpoints.
    RemoveRelation(applications::RelationArgs),
    /// Show, print or set an application's config.
    Config(applications::ConfigArgs),
    /// Show the status of a model.
    Status(status::StatusArgs),
    /// Show the status history of a unit, application, machine or the model.
    ShowStatusLog(status::StatusLogArgs),
    /// Show the model's log.
    DebugLog(debug_log::DebugLogArgs),
    /// Add a user to a controller and print its token (once).
    AddUser(users::AddUserArgs),
    /// Give a user access to a model.
    Grant(users::GrantArgs),
    /// Take a level of a user's access to a model away (admin leaves write, write leaves read,
    /// read leaves none).
    Revoke(users::GrantArgs),
    /// Store a user's token for a registered controller, after checking it.
    Login(users::LoginArgs),
    /// Show the current controller, model and user.
    Whoami(users::WhoAmIArgs),
    /// Back up the whole controller, keep the backup on it and download it.
    CreateBackup(backups::CreateBackupArgs),
    /// List the backups kept on a controller.
    Backups(backups::BackupsArgs),
    /// Download a backup kept on a controller.
    DownloadBackup(backups::DownloadBackupArgs),
    /// Restore a backup onto a freshly initialized controller.
    RestoreBackup(backups::RestoreBackupArgs),
    /// Even out the controllers' write load by migrating their busiest models.
    #[command(after_long_help = balance::BALANCE_HELP)]
    Balance(balance::BalanceArgs),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_long_help = completion::COMPLETION_HELP)]
    Completion(completion::CompletionArgs),
}

/// `-c NAME` for controller-scoped commands.
#[derive(Debug, Clone, Args, Default)]
pub struct ControllerArg {
    /// The controller to act on (default: $CTL_CONTROLLER, else the current controller).
    #[arg(short = 'c', long = "controller", value_name = "NAME")]
    pub controller: Option<String>,
}

/// `-m [controller:]model` for model-scoped commands.
#[derive(Debug, Clone, Args, Default)]
pub struct ModelArg {
    /// The model to act on (default: $CTL_MODEL, else the current model).
    #[arg(short = 'm', long = "model", value_name = "[CONTROLLER:]MODEL")]
    pub model: Option<String>,
}

/// A fresh request id: one per command, reused by every retry of its call.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The `ModelRef` of a resolved model (by qualified name: the controller is the authority on
/// uuids, and the cached ones may be stale).
pub fn model_ref(target: &ModelTarget) -> ModelRef {
    ModelRef {
        name: target.model.clone(),
        uuid: String::new(),
    }
}

/// Parses `KEY=VALUE` arguments (the value may hold `=`); anything else is a usage error.
pub fn parse_assignments(args: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    let mut values = BTreeMap::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(UsageError(format!("expected KEY=VALUE, got \"{arg}\"")));
        };
        if values.insert(key.to_string(), value.to_string()).is_some() {
            return Err(UsageError(format!("key \"{key}\" given more than once")));
        }
    }
    Ok(values)
}

/// What every command gets besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    /// The client store.
    pub store: ClientStore,
    /// `CTL_CONTROLLER` / `CTL_MODEL`.
    pub env: SelectionEnv,
    /// `--format`, if given.
    pub format: Option<Format>,
    /// `--debug`.
    pub debug: bool,
}

impl Context {
    /// The context of this process: the store at `$CTL_DATA` and the selection env vars.
    pub fn from_process(format: Option<Format>) -> Result<Self> {
        Ok(Self {
            store: ClientStore::from_env()?,
            env: SelectionEnv::from_process(),
            format,
            debug: false,
        })
    }

    /// `--format`, else `default`.
    pub fn format_or(&self, default: Format) -> Format {
        self.format.unwrap_or(default)
    }

    /// Resolves the controller for a controller-scoped command and opens a client for it.
    /// `endpoint` replaces the controller's endpoint list with one node (no failover).
    pub fn connect(
        &self,
        controller: Option<&str>,
        endpoint: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<ControllerClient> {
        let state = self.store.read()?;
        let name = resolve_controller(&state, &self.env, controller)?;
        let mut info = ConnectionInfo::from_store(&state, &name)?;
        if let Some(endpoint) = endpoint {
            info.endpoints = vec![endpoint.to_string()];
        }
        info.request_timeout = timeout.unwrap_or(REQUEST_TIMEOUT_DEFAULT);
        Ok(
            ControllerClient::new(info)?.following_redirects(RedirectFollower {
                store: state.clone(),
                debug: self.debug,
            }),
        )
    }

    /// Resolves the model for a model-scoped command and opens a client for its controller.
    pub fn connect_model(
        &self,
        model: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(ControllerClient, ModelTarget)> {
        let state = self.store.read()?;
        let target = resolve_model(&state, &self.env, model)?;
        let mut info = ConnectionInfo::from_store(&state, &target.controller)?;
        info.request_timeout = timeout.unwrap_or(REQUEST_TIMEOUT_DEFAULT);
        let client = ControllerClient::new(info)?.following_redirects(RedirectFollower {
            store: state.clone(),
            debug: self.debug,
        });
        Ok((client, target))
    }
}

/// Runs the parsed command line in this process's environment.
pub async fn run(cli: Cli) -> Result<Output> {
    let mut ctx = Context::from_process(cli.format)?;
    ctx.debug = cli.debug;
    run_with(&ctx, cli.command).await
}

/// Runs `command` in `ctx` (tests pass their own store and env).
pub async fn run_with(ctx: &Context, command: Command) -> Result<Output> {
    match command {
        Command::Register(args) => register::run(ctx, args),
        Command::Unregister(args) => unregister::run(ctx, args),
        Command::Controllers(args) => controllers::run(ctx, args),
        Command::ShowController(args) => show_controller::run(ctx, args).await,
        Command::Switch(args) => switch::run(ctx, args).await,
        Command::ControllerConfig(args) => controller_config::run(ctx, args).await,
        Command::AddNode(args) => add_node::run(ctx, args).await,
        Command::RemoveNode(args) => remove_node::run(ctx, args).await,
        Command::AddModel(args) => models::add_model(ctx, args).await,
        Command::Models(args) => models::models(ctx, args).await,
        Command::ShowModel(args) => models::show_model(ctx, args).await,
        Command::DestroyModel(args) => models::destroy_model(ctx, args).await,
        Command::ModelConfig(args) => model_config::run(ctx, args).await,
        Command::Migrate(args) => migrate::migrate(ctx, args).await,
        Command::AbortMigration(args) => migrate::abort_migration(ctx, args).await,
        Command::EndLogTransfer(args) => migrate::end_log_transfer(ctx, args).await,
        Command::AddMachine(args) => machines::add_machine(ctx, args).await,
        Command::RemoveMachine(args) => machines::remove_machine(ctx, args).await,
        Command::Deploy(args) => applications::deploy(ctx, args).await,
        Command::AddUnit(args) => applications::add_unit(ctx, args).await,
        Command::RemoveUnit(args) => applications::remove_unit(ctx, args).await,
        Command::RemoveApplication(args) => applications::remove_application(ctx, args).await,
        Command::Integrate(args) => applications::integrate(ctx, args).await,
        Command::RemoveRelation(args) => applications::remove_relation(ctx, args).await,
        Command::Config(args) => applications::config(ctx, args).await,
        Command::Status(args) => status::run(ctx, args).await,
        Command::ShowStatusLog(args) => status::status_log(ctx, args).await,
        Command::DebugLog(args) => debug_log::run(ctx, args).await,
        Command::AddUser(args) => users::add_user(ctx, args).await,
        Command::Grant(args) => users::grant(ctx, args, true).await,
        Command::Revoke(args) => users::grant(ctx, args, false).await,
        Command::Login(args) => users::login(ctx, args).await,
        Command::Whoami(args) => users::whoami(ctx, args).await,
        Command::CreateBackup(args) => backups::create_backup(ctx, args).await,
        Command::Backups(args) => backups::backups(ctx, args).await,
        Command::DownloadBackup(args) => backups::download_backup(ctx, args).await,
        Command::RestoreBackup(args) => backups::restore_backup(ctx, args).await,
        Command::Balance(args) => balance::run(ctx, args).await,
        Command::Completion(args) => completion::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
