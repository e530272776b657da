//! The openraft type configuration: node ids, nodes, and the application data (a protobuf
//! `Command`) wrapped so openraft's serde bounds are met while the durable form stays protobuf.

use std::io::Cursor;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use starling_proto::command::{Command, CommandResult};

/// A node's Raft id.
pub type NodeId = u64;

/// What openraft knows of a node: its peer address.
pub type Node = openraft::BasicNode;

/// A replicated command, as openraft's application data.
#[derive(Clone, Debug, PartialEq)]
pub struct Request(pub Command);

/// The result of applying one command, as openraft's application response.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Response(pub CommandResult);

openraft::declare_raft_types!(
    /// Starling's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft instance of one controller node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership.
pub type Membership = openraft::Membership<NodeId, Node>;
/// A membership with the log id that carried it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A storage failure as openraft reports it.
pub type StorageError = openraft::StorageError<NodeId>;

// openraft's `serde` feature requires the application data to be serde types. The bytes are
// the protobuf encoding, so whatever serializer is used carries the durable form unchanged.
impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
        Command::decode(bytes.as_slice())
            .map(Request)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
        CommandResult::decode(bytes.as_slice())
            .map(Response)
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command {}", self.0.request_id)
    }
}
