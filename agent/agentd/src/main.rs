//! `agentd`: a Starling machine agent. Runs the units of one machine of one model, from the
//! agent config file `ctl add-machine` wrote.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use starling_agentd::{AgentExit, MachineAgent, MachineOptions};
use starling_daemon::{init_tracing, shutdown_signal, LogFormat};

#[derive(Parser)]
#[command(name = "agentd", version, about = "A Starling machine agent")]
struct Cli {
    /// The agent config file (`ctl add-machine --agent-config FILE` writes it).
    #[arg(long)]
    config: PathBuf,
    /// Data dir (charms, unit dirs, state, undelivered reports); default:
    /// <dir of config>/machine-<id>-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, "info");
    let options = MachineOptions {
        config_path: cli.config,
        data_dir: cli.data_dir,
    };
    match run(&options) {
        Ok(exit) => {
            tracing::info!(?exit, "machine agent stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ERROR {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &MachineOptions) -> anyhow::Result<AgentExit> {
    let agent = MachineAgent::load(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(agent.run(shutdown_signal()))
}
