//! The openraft type configuration: node ids, nodes, and the application data (a protobuf
//! `Command`, or a `CommandBatch` of them) wrapped so openraft's serde bounds are met while the
//! durable form stays protobuf.

use std::io::Cursor;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use starling_proto::command::{Command, CommandBatch, CommandResult};

/// A node's Raft id.
pub type NodeId = u64;

/// What openraft knows of a node: its peer address.
pub type Node = openraft::BasicNode;

/// What one normal log entry carries, as openraft's application data: one command, or several
/// proposed together (`ProposalBatcher`) and applied in order as if each were its own entry.
// The large variant is the common one; boxing it would cost an allocation per entry.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// One command (`raft.LogEntry.command`).
    Command(Proto<Command>),
    /// Commands proposed together (`raft.LogEntry.batch`).
    Batch(Proto<CommandBatch>),
}

impl Request {
    /// One command.
    pub fn command(command: Command) -> Self {
        Request::Command(Proto(command))
    }

    /// Several commands in one entry.
    pub fn batch(commands: Vec<Command>) -> Self {
        Request::Batch(Proto(CommandBatch { commands }))
    }
}

/// A protobuf message whose serde form is its protobuf bytes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Proto<M>(pub M);

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
impl<M: Message> Serialize for Proto<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, M: Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
        M::decode(bytes.as_slice())
            .map(Proto)
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
        match self {
            Request::Command(command) => write!(f, "command {}", command.0.request_id),
            Request::Batch(batch) => write!(f, "batch of {} commands", batch.0.commands.len()),
        }
    }
}
