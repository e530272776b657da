//! What Starling's two daemons (`ctld` and `agentd`) share, and nothing else: the tracing
//! subscriber, the shutdown signal, atomic file writes and the machine agent's config file.
//! `agentd` depends on this crate and `starling-proto` only, so everything here stays free of
//! storage, Raft and the controller's services.

pub mod agent_config;
pub mod files;
pub mod logging;
pub mod shutdown;

pub use logging::{init_tracing, LogFormat};
pub use shutdown::shutdown_signal;
