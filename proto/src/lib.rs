//! Starling's wire format (gRPC services) and the durable encoding of Raft log entries,
//! snapshots and commands. Generated from `proto/starling/*.proto`; nothing here is hand-written
//! except this module tree and the services' codec (`codec`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

/// Models and their entities, and the exported model description.
pub mod model {
    tonic::include_proto!("starling.model");
}

/// Replicated commands and their results.
pub mod command {
    tonic::include_proto!("starling.command");
}

/// The Raft peer service and the log/snapshot encodings.
pub mod raft {
    tonic::include_proto!("starling.raft");
}

/// The client API.
pub mod controller {
    tonic::include_proto!("starling.controller");
}

/// The machine agents' API.
pub mod agent {
    tonic::include_proto!("starling.agent");
}

/// Live migration: persisted records and the controller-to-controller service.
pub mod migration {
    tonic::include_proto!("starling.migration");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/starling_descriptor.bin"));
