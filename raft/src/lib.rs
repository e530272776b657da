//! Starling's consensus layer: the openraft type configuration, the log store and state machine
//! adapters over `starling-storage`, the Raft transport over tonic (client and peer service),
//! and `RaftHandle`, the small surface the daemon uses (propose, linearizable read, membership,
//! status), with the proposal batcher and the election watchdog behind it. This is the only
//! crate that names openraft.

pub mod batcher;
pub mod codec;
pub mod handle;
pub mod network;
pub mod service;
pub mod stages;
pub mod store;
pub mod type_config;
mod watchdog;

pub use batcher::BatchLimits;
pub use handle::{
    LeaderChange, LoadSource, NodeOptions, ProposeError, Proposed, RaftHandle, RaftTiming,
    StartError, LEADER_HANDOFF_LIMIT,
};
pub use network::{PeerChannels, PeerDialer};
pub use service::{admit_peer, propose_error_status, RaftService};
pub use type_config::{Node, NodeId, TypeConfig};
