//! Conversions between openraft's types and their protobuf encoding (`starling_proto::raft`),
//! used both on the wire and for the durable log. Decoding fails with `CodecError` rather than
//! guessing: a malformed message from a peer or a corrupt record on disk is never half-read.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{EntryPayload, LeaderId};
use starling_proto::raft as pb;

use crate::type_config::{
    Entry, LogId, Membership, Node, NodeId, Proto, Request, SnapshotMeta, StoredMembership, Vote,
};

/// A protobuf message that does not describe a valid openraft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {why}")]
pub struct CodecError {
    /// Which message.
    pub what: &'static str,
    /// What was wrong with it.
    pub why: String,
}

fn missing(what: &'static str, field: &str) -> CodecError {
    CodecError {
        what,
        why: format!("field `{field}` is missing"),
    }
}

/// Encodes a log id.
pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
    pb::LogId {
        term: log_id.leader_id.term,
        leader_node_id: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

/// Decodes a log id.
pub fn log_id_from_pb(log_id: &pb::LogId) -> LogId {
    openraft::LogId::new(
        LeaderId::new(log_id.term, log_id.leader_node_id),
        log_id.index,
    )
}

/// Encodes an optional log id.
pub fn opt_log_id_to_pb(log_id: Option<&LogId>) -> Option<pb::LogId> {
    log_id.map(log_id_to_pb)
}

/// Decodes an optional log id.
pub fn opt_log_id_from_pb(log_id: Option<&pb::LogId>) -> Option<LogId> {
    log_id.map(log_id_from_pb)
}

/// Encodes a vote.
pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

/// Decodes a vote.
pub fn vote_from_pb(vote: &pb::Vote) -> Vote {
    if vote.committed {
        openraft::Vote::new_committed(vote.term, vote.node_id)
    } else {
        openraft::Vote::new(vote.term, vote.node_id)
    }
}

/// Decodes a required vote field.
pub fn req_vote_from_pb(vote: Option<&pb::Vote>, what: &'static str) -> Result<Vote, CodecError> {
    vote.map(vote_from_pb).ok_or_else(|| missing(what, "vote"))
}

/// Encodes a membership.
pub fn membership_to_pb(membership: &Membership) -> pb::Membership {
    pb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| pb::VoterSet {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| pb::Node {
                id: *id,
                address: node.addr.clone(),
            })
            .collect(),
    }
}

/// Decodes a membership.
pub fn membership_from_pb(membership: &pb::Membership) -> Result<Membership, CodecError> {
    if membership.configs.is_empty() {
        return Err(CodecError {
            what: "membership",
            why: "no voter set".into(),
        });
    }
    let configs: Vec<BTreeSet<NodeId>> = membership
        .configs
        .iter()
        .map(|set| set.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<NodeId, Node> = membership
        .nodes
        .iter()
        .map(|node| (node.id, Node::new(node.address.clone())))
        .collect();
    for id in configs.iter().flatten() {
        if !nodes.contains_key(id) {
            return Err(CodecError {
                what: "membership",
                why: format!("voter {id} has no node entry"),
            });
        }
    }
    Ok(openraft::Membership::new(configs, nodes))
}

/// Encodes a stored membership.
pub fn stored_membership_to_pb(membership: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(membership.log_id().as_ref()),
        membership: Some(membership_to_pb(membership.membership())),
    }
}

/// Decodes a stored membership. An absent membership decodes as the empty initial one.
pub fn stored_membership_from_pb(
    membership: Option<&pb::StoredMembership>,
) -> Result<StoredMembership, CodecError> {
    let Some(membership) = membership else {
        return Ok(StoredMembership::default());
    };
    let log_id = opt_log_id_from_pb(membership.log_id.as_ref());
    let inner = match &membership.membership {
        Some(m) if !m.configs.is_empty() => membership_from_pb(m)?,
        _ => Membership::default(),
    };
    Ok(StoredMembership::new(log_id, inner))
}

/// Encodes snapshot metadata.
pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(meta.last_log_id.as_ref()),
        last_membership: Some(stored_membership_to_pb(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

/// Decodes snapshot metadata.
pub fn snapshot_meta_from_pb(meta: &pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(meta.last_log_id.as_ref()),
        last_membership: stored_membership_from_pb(meta.last_membership.as_ref())?,
        snapshot_id: meta.snapshot_id.clone(),
    })
}

/// Encodes a log entry.
pub fn entry_to_pb(entry: &Entry) -> pb::LogEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::log_entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(Request::Command(command)) => {
            pb::log_entry::Payload::Command(command.0.clone())
        }
        EntryPayload::Normal(Request::Batch(batch)) => {
            pb::log_entry::Payload::Batch(batch.0.clone())
        }
        EntryPayload::Membership(membership) => {
            pb::log_entry::Payload::Membership(membership_to_pb(membership))
        }
    };
    pb::LogEntry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    }
}

/// Decodes a log entry.
pub fn entry_from_pb(entry: pb::LogEntry) -> Result<Entry, CodecError> {
    let log_id = entry
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or_else(|| missing("log entry", "log_id"))?;
    let payload = match entry.payload {
        Some(pb::log_entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(pb::log_entry::Payload::Command(command)) => {
            EntryPayload::Normal(Request::command(command))
        }
        Some(pb::log_entry::Payload::Batch(batch)) => {
            EntryPayload::Normal(Request::Batch(Proto(batch)))
        }
        Some(pb::log_entry::Payload::Membership(m)) => {
            EntryPayload::Membership(membership_from_pb(&m)?)
        }
        None => return Err(missing("log entry", "payload")),
    };
    Ok(openraft::Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::command::Command;

    #[test]
    fn entries_round_trip() {
        let membership = openraft::Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, Node::new("127.0.0.1:1")),
                (2, Node::new("127.0.0.1:2")),
                (3, Node::new("127.0.0.1:3")),
                (4, Node::new("127.0.0.1:4")),
            ]),
        );
        let log_id = openraft::LogId::new(LeaderId::new(7, 2), 42);
        let entries = [
            openraft::Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            openraft::Entry {
                log_id,
                payload: EntryPayload::Normal(Request::command(Command {
                    request_id: "r1".into(),
                    ..Default::default()
                })),
            },
            openraft::Entry {
                log_id,
                payload: EntryPayload::Normal(Request::batch(vec![
                    Command {
                        request_id: "r2".into(),
                        ..Default::default()
                    },
                    Command::default(),
                ])),
            },
            openraft::Entry {
                log_id,
                payload: EntryPayload::Membership(membership),
            },
        ];
        for entry in entries {
            let decoded = entry_from_pb(entry_to_pb(&entry)).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{entry:?}"));
        }
    }

    #[test]
    fn membership_with_unknown_voter_is_refused() {
        let bad = pb::Membership {
            configs: vec![pb::VoterSet { ids: vec![1, 9] }],
            nodes: vec![pb::Node {
                id: 1,
                address: "a".into(),
            }],
        };
        let err = membership_from_pb(&bad).expect_err("voter 9 has no node");
        assert!(err.to_string().contains("voter 9"), "{err}");
    }

    #[test]
    fn entry_without_payload_is_refused() {
        let bad = pb::LogEntry {
            log_id: Some(pb::LogId::default()),
            payload: None,
        };
        assert!(entry_from_pb(bad).is_err());
    }
}
