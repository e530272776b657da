//! Starling's wire format (gRPC services) and the durable encoding of Raft log entries,
//! snapshots and commands. Generated from `proto/starling/*.proto`; nothing here is hand-written
//! except this module tree, the services' codec (`codec`), the limits both ends of a connection
//! enforce (`limits`), the migration phases every side names (`phase`) and which endpoint an
//! agent dials first (`endpoints`).

pub mod codec;
pub mod endpoints;
pub mod limits;
pub mod phase;

/// Models and their entities, and the exported model description.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod model {
    tonic::include_proto!("starling.model");
}

/// Replicated commands and their results.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod command {
    tonic::include_proto!("starling.command");
}

/// The Raft peer service and the log/snapshot encodings.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod raft {
    tonic::include_proto!("starling.raft");
}

/// The client API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod controller {
    tonic::include_proto!("starling.controller");
}

/// The machine agents' API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod agent {
    tonic::include_proto!("starling.agent");
}

/// Live migration: persisted records and the controller-to-controller service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod migration {
    tonic::include_proto!("starling.migration");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/starling_descriptor.bin"));
