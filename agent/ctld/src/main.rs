//! `ctld`: a Starling controller node. `ctld init` creates a controller's nodes; `ctld run`
//! runs one of them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_ctld::identity::DataDir;
use starling_ctld::init::{self, InitOptions, NodeSpec};
use starling_ctld::node::{self, RunOptions};
use starling_daemon::{init_tracing, shutdown_signal, LogFormat};
use starling_raft::RaftTiming;

/// `ctld --version`: the build's version and the test-only features it was built with.
#[cfg(all(feature = "failpoints", feature = "planted-bugs"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " +failpoints +planted-bugs");
#[cfg(all(feature = "failpoints", not(feature = "planted-bugs")))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " +failpoints");
#[cfg(all(not(feature = "failpoints"), feature = "planted-bugs"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " +planted-bugs");
#[cfg(not(any(feature = "failpoints", feature = "planted-bugs")))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(name = "ctld", version = VERSION, about = "A Starling controller node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a controller: its uuid, CA, admin credential and the data dir of every initial node.
    ///
    /// Writes OUT/node-ID/ for every --node and OUT/registration.yaml (give it to
    /// `ctl register`). Start each node with `ctld run --data-dir OUT/node-ID`.
    Init {
        /// Controller name.
        #[arg(long)]
        name: String,
        /// Directory for the node data dirs and the registration file.
        #[arg(long)]
        out: PathBuf,
        /// An initial member: ID,GRPC_ADDR,HTTP_ADDR (repeat for each node; 1, 3 or 5 nodes).
        #[arg(long = "node", required = true)]
        nodes: Vec<NodeSpec>,
        /// Cloud the controller runs in.
        #[arg(long, default_value = "local")]
        cloud: String,
        /// Region the controller runs in.
        #[arg(long, default_value = "default")]
        region: String,
        /// Version the controller advertises (for upgrade and precheck tests).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
    },
    /// Run one node from its data dir. SIGTERM or SIGINT stops it gracefully.
    Run {
        /// The node's data dir, as written by `ctld init` or `ctl add-node`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Leader heartbeat period, also the AppendEntries RPC timeout (openraft 0.9). Shorter
        /// detects nothing sooner by itself but cuts off appends a slow follower disk needs;
        /// keep it several times below the minimum election timeout.
        #[arg(long, default_value_t = RaftTiming::default().heartbeat_ms)]
        heartbeat_ms: u64,
        /// Minimum election timeout, and the leader lease: a voter that heard from its leader
        /// less than this long ago refuses to vote for another. Failover takes about this plus
        /// a share of (max - min); lower fails over sooner, but a leader stalled this long by
        /// CPU or disk (its Raft core waits for its own log fsync) loses leadership.
        #[arg(long, default_value_t = RaftTiming::default().election_timeout_min_ms)]
        election_timeout_min_ms: u64,
        /// Maximum election timeout: a follower without leader contact campaigns, after a
        /// pre-vote, at a random time between min and max, drawn again for every attempt; a
        /// wider range makes split votes rarer and failover slower on average.
        #[arg(long, default_value_t = RaftTiming::default().election_timeout_max_ms)]
        election_timeout_max_ms: u64,
        /// Build a snapshot after this many applied entries.
        #[arg(long, default_value_t = RaftTiming::default().snapshot_logs_since_last)]
        snapshot_logs_since_last: u64,
    },
}

fn main() -> ExitCode {
    // Test builds (`--features failpoints`) read FAILPOINTS; the scenario lives as long as main.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            name,
            out,
            nodes,
            cloud,
            region,
            version,
        } => init::init(&InitOptions {
            name,
            out,
            nodes,
            cloud,
            region,
            version,
        })
        .map(|registration| {
            println!("{}", registration.display());
        }),
        Command::Run {
            data_dir,
            log_format,
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_logs_since_last,
        } => {
            init_tracing(log_format, "info,openraft=warn");
            let options = RunOptions {
                data_dir: DataDir::new(data_dir),
                timing: RaftTiming {
                    heartbeat_ms,
                    election_timeout_min_ms,
                    election_timeout_max_ms,
                    snapshot_logs_since_last,
                    ..RaftTiming::default()
                },
            };
            run(options)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: RunOptions) -> anyhow::Result<()> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(node::run(options, prometheus, shutdown_signal()))
}
