//! Multi-process tests and benchmark tooling for Starling: a harness that runs real `ctld`
//! processes on loopback ([`LocalCluster`]), the clients the tests and the load generator use,
//! and the registration file `ctld init` writes.
//!
//! Everything here talks only to 127.0.0.1 and bounds every wait with a deadline.

pub mod bins;
pub mod chaos;
pub mod client;
pub mod fleet;
pub mod history;
pub mod local_cluster;
pub mod netns;
pub mod precopy_model;
pub mod protocol_model;
pub mod registration;
pub mod seed;
pub mod side_port;
pub mod sim_agent;
pub mod webdriver;

pub use bins::Bins;
pub use client::{controller_client, tls_channel, AuthedControllerClient, BearerToken};
pub use local_cluster::{ClusterOptions, LocalCluster};
pub use registration::Registration;

/// Sends `tracing` output of a test to the test's captured output (`RUST_LOG`, default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
