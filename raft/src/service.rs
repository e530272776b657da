//! The `Raft` gRPC service: the server side of the peer transport. Only callers that presented a
//! node certificate of this controller's CA (mTLS) and name this controller's uuid are served.

use openraft::error::RaftError;
use starling_proto::raft as pb;
use starling_proto::raft::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::codec;
use crate::handle::{ProposeError, RaftHandle};

/// Serves the peer RPCs of one node.
#[derive(Clone)]
pub struct RaftService {
    handle: RaftHandle,
}

impl RaftService {
    /// A service answering for `handle`'s node.
    pub fn new(handle: RaftHandle) -> Self {
        Self { handle }
    }

    /// The tonic server, with the peer message size limits.
    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(crate::network::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::network::PEER_MESSAGE_BYTES_MAX)
    }

    fn admit<T>(&self, request: &Request<T>, controller_uuid: &str) -> Result<(), Status> {
        admit_peer(
            request,
            self.handle.controller_uuid(),
            controller_uuid,
            "raft",
        )
    }
}

/// Admits a call of another node of this controller (`service` names the service in the
/// refusal): refuses callers without a verified client certificate (only nodes of this
/// controller's CA have one) and requests naming another controller than `own_uuid`.
pub fn admit_peer<T>(
    request: &Request<T>,
    own_uuid: &str,
    controller_uuid: &str,
    service: &str,
) -> Result<(), Status> {
    let has_node_certificate = request
        .peer_certs()
        .map(|certs| !certs.is_empty())
        .unwrap_or(false);
    if !has_node_certificate {
        return Err(Status::unauthenticated(format!(
            "the {service} service requires a node certificate of this controller"
        )));
    }
    if controller_uuid != own_uuid {
        return Err(Status::permission_denied(format!(
            "request for controller {controller_uuid} reached a node of controller {own_uuid}"
        )));
    }
    Ok(())
}

fn malformed(e: codec::CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn error_json<E: serde::Serialize>(e: &RaftError<u64, E>) -> String {
    serde_json::to_string(e).unwrap_or_else(|se| format!("{{\"unencodable\":\"{se}\"}}"))
}

/// Maps a proposal failure to a status, with the leader hint in the `leader-hint` metadata.
pub fn propose_error_status(e: &ProposeError) -> Status {
    let (mut status, hint) = match e {
        ProposeError::NotLeader { leader_hint } => {
            (Status::unavailable(e.to_string()), *leader_hint)
        }
        ProposeError::Unavailable { leader_hint, .. } => {
            (Status::unavailable(e.to_string()), *leader_hint)
        }
        ProposeError::Fatal(_) => (Status::internal(e.to_string()), None),
    };
    if let Some(hint) = hint {
        if let Ok(value) = hint.to_string().parse() {
            status.metadata_mut().insert("leader-hint", value);
        }
    }
    status
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        let entries = message
            .entries
            .into_iter()
            .map(codec::entry_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        let vote = codec::req_vote_from_pb(message.vote.as_ref(), "append-entries request")
            .map_err(malformed)?;
        self.handle.note_append_entries(&vote);
        let arrived = (!entries.is_empty()).then(std::time::Instant::now);
        let rpc = openraft::raft::AppendEntriesRequest {
            vote,
            prev_log_id: codec::opt_log_id_from_pb(message.prev_log_id.as_ref()),
            entries,
            leader_commit: codec::opt_log_id_from_pb(message.leader_commit.as_ref()),
        };
        use openraft::raft::AppendEntriesResponse as A;
        use pb::append_entries_response::Result as R;
        let response = match self.handle.raft().append_entries(rpc).await {
            Ok(A::Success) => pb::AppendEntriesResponse {
                result: Some(R::Success(pb::Blank {})),
                ..Default::default()
            },
            Ok(A::PartialSuccess(matched)) => pb::AppendEntriesResponse {
                result: Some(R::PartialSuccess(pb::PartialSuccess {
                    matched: codec::opt_log_id_to_pb(matched.as_ref()),
                })),
                ..Default::default()
            },
            Ok(A::Conflict) => pb::AppendEntriesResponse {
                result: Some(R::Conflict(pb::Blank {})),
                ..Default::default()
            },
            Ok(A::HigherVote(vote)) => pb::AppendEntriesResponse {
                result: Some(R::HigherVote(codec::vote_to_pb(&vote))),
                ..Default::default()
            },
            Err(e) => pb::AppendEntriesResponse {
                raft_error_json: error_json(&e),
                ..Default::default()
            },
        };
        if let Some(arrived) = arrived {
            metrics::histogram!("starling_raft_follower_append_seconds")
                .record(arrived.elapsed().as_secs_f64());
        }
        Ok(Response::new(response))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        let rpc = openraft::raft::VoteRequest {
            vote: codec::req_vote_from_pb(message.vote.as_ref(), "vote request")
                .map_err(malformed)?,
            last_log_id: codec::opt_log_id_from_pb(message.last_log_id.as_ref()),
        };
        let response = match self.handle.raft().vote(rpc).await {
            Ok(r) => pb::VoteResponse {
                vote: Some(codec::vote_to_pb(&r.vote)),
                vote_granted: r.vote_granted,
                last_log_id: codec::opt_log_id_to_pb(r.last_log_id.as_ref()),
                raft_error_json: String::new(),
            },
            Err(e) => pb::VoteResponse {
                raft_error_json: error_json(&e),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        let meta = message
            .meta
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("install-snapshot request without meta"))?;
        let rpc = openraft::raft::InstallSnapshotRequest {
            vote: codec::req_vote_from_pb(message.vote.as_ref(), "install-snapshot request")
                .map_err(malformed)?,
            meta: codec::snapshot_meta_from_pb(meta).map_err(malformed)?,
            offset: message.offset,
            data: message.data,
            done: message.done,
        };
        debug!(offset = rpc.offset, done = rpc.done, "snapshot chunk");
        let response = match self.handle.raft().install_snapshot(rpc).await {
            Ok(r) => pb::InstallSnapshotResponse {
                vote: Some(codec::vote_to_pb(&r.vote)),
                raft_error_json: String::new(),
            },
            Err(e) => pb::InstallSnapshotResponse {
                vote: None,
                raft_error_json: error_json(&e),
            },
        };
        Ok(Response::new(response))
    }

    async fn forward(
        &self,
        request: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let command = request
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("forward request without a command"))?;
        let proposed = self
            .handle
            .propose_local(command)
            .await
            .map_err(|e| propose_error_status(&e))?;
        Ok(Response::new(pb::ForwardResponse {
            result: Some(proposed.result),
            log_index: proposed.log_index,
        }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let read_index = self
            .handle
            .read_index_local()
            .await
            .map_err(|e| propose_error_status(&e))?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::PreVoteRequest>,
    ) -> Result<Response<pb::PreVoteResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        let answer = self
            .handle
            .pre_vote_answer(message.candidate_id, message.last_log_index);
        Ok(Response::new(pb::PreVoteResponse {
            granted: answer.is_ok(),
            reason: answer.err().unwrap_or_default(),
            initialized: self.handle.in_a_group(),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        self.handle
            .campaign_for_transfer(message.leader_id, message.leader_last_log_index)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::TransferLeaderResponse {}))
    }

    async fn remove_node_at_leader(
        &self,
        request: Request<pb::RemoveNodeAtLeaderRequest>,
    ) -> Result<Response<pb::RemoveNodeAtLeaderResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let node_id = request.into_inner().node_id;
        self.handle
            .change_voters(Default::default(), [node_id].into())
            .await
            .map_err(|e| propose_error_status(&e))?;
        Ok(Response::new(pb::RemoveNodeAtLeaderResponse {}))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        Ok(Response::new(if request.get_ref().with_load {
            self.handle.node_status_with_load()
        } else {
            self.handle.node_status()
        }))
    }
}
