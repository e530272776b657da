//! `agentd`: a Starling machine agent. Runs the units of one machine of one model, from the
//! agent config file `ctl add-machine` wrote.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use starling_agent::machine::{AgentExit, MachineAgent, MachineOptions};

#[derive(Parser)]
#[command(name = "agentd", version, about = "A Starling machine agent")]
struct Cli {
    /// The agent config file (`ctl add-machine --agent-config FILE` writes it).
    #[arg(long)]
    config: PathBuf,
    /// Data dir (charms, unit dirs, state); default: <dir of config>/machine-<id>-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
