//! The Raft transport over tonic: one lazily connected, cached TLS channel per peer, openraft's
//! RPCs mapped onto the `Raft` gRPC service, and transport failures mapped onto the error kinds
//! openraft acts on (unreachable peers are backed off, timeouts retried).

// openraft's `RaftNetwork` fixes the (large) error types these functions return.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use starling_proto::limits::{STAGE_CONNECTION_WINDOW_BYTES, STAGE_STREAM_WINDOW_BYTES};
use starling_proto::raft as pb;
use starling_proto::raft::raft_client::RaftClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::codec;
use crate::stages::{Mark, WriteTimeline};
use crate::type_config::{Node, NodeId, TypeConfig};

/// Largest gRPC message a peer accepts or sends: a batch of log entries or one snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How a node dials its peers: the TLS identity it presents (mTLS) and the connect timeout.
#[derive(Clone)]
pub struct PeerDialer {
    tls: ClientTlsConfig,
    connect_timeout: Duration,
}

impl PeerDialer {
    /// A dialer presenting `tls` (which must carry the node certificate and trust the CA).
    pub fn new(tls: ClientTlsConfig, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
        }
    }

    /// A lazily connecting channel to `address` (host:port). Nothing is dialled until first use.
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let host = address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(address);
        let endpoint = Endpoint::from_shared(format!("https://{address}"))?
            .tls_config(self.tls.clone().domain_name(host.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Peers carry bulk streams (snapshots, staged files): no window update every 64 KiB.
            .initial_stream_window_size(STAGE_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(STAGE_CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(endpoint.connect_lazy())
    }
}

/// A cache of one channel per peer, shared by the Raft network and request forwarding.
#[derive(Clone)]
pub struct PeerChannels {
    dialer: PeerDialer,
    // std Mutex: nothing awaits while it is held.
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl PeerChannels {
    /// An empty cache dialling with `dialer`.
    pub fn new(dialer: PeerDialer) -> Self {
        Self {
            dialer,
            channels: Arc::default(),
        }
    }

    /// The channel to node `id` at `address`; replaced when the address changed.
    pub fn get(&self, id: NodeId, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer channel cache poisoned");
        if let Some((cached_address, channel)) = channels.get(&id) {
            if cached_address == address {
                return Ok(channel.clone());
            }
        }
        let channel = self.dialer.channel(address)?;
        channels.insert(id, (address.to_string(), channel.clone()));
        Ok(channel)
    }

    /// A Raft-service client for node `id` at `address`, with the peer message limits set.
    pub fn client(
        &self,
        id: NodeId,
        address: &str,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.get(id, address)?)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }
}

/// openraft's network factory: hands out one [`PeerConnection`] per target.
#[derive(Clone)]
pub struct Network {
    controller_uuid: Arc<str>,
    channels: PeerChannels,
    timeline: Arc<WriteTimeline>,
}

impl Network {
    /// A network for the controller `controller_uuid`, dialling through `channels`, noting when
    /// entries leave and are acknowledged in `timeline`.
    pub fn new(
        controller_uuid: &str,
        channels: PeerChannels,
        timeline: Arc<WriteTimeline>,
    ) -> Self {
        Self {
            controller_uuid: controller_uuid.into(),
            channels,
            timeline,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            controller_uuid: self.controller_uuid.clone(),
            target,
            node: node.clone(),
            channels: self.channels.clone(),
            timeline: self.timeline.clone(),
        }
    }
}

/// The connection to one peer.
pub struct PeerConnection {
    controller_uuid: Arc<str>,
    target: NodeId,
    node: Node,
    channels: PeerChannels,
    timeline: Arc<WriteTimeline>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerConnection {
    fn client<E: std::error::Error>(&self) -> RpcResult<RaftClient<Channel>, E> {
        self.channels
            .client(self.target, &self.node.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    fn status_to_rpc_error<E: std::error::Error>(
        &self,
        status: tonic::Status,
        action: openraft::network::RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        use tonic::Code;
        match status.code() {
            // Connection refused, reset, TLS failure, or the peer shutting down.
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: 0,
                target: self.target,
                timeout: ttl,
            }),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    fn remote_error<E>(&self, json: &str) -> RPCError<NodeId, Node, RaftError<NodeId, E>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        match serde_json::from_str::<RaftError<NodeId, E>>(json) {
            Ok(source) => RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                source,
            )),
            Err(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn request<T>(&self, message: T, ttl: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(ttl);
        request
    }
}

fn decode_error<E: std::error::Error>(
    e: codec::CodecError,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let ttl = option.hard_ttl();
        let (first, last) = match (rpc.entries.first(), rpc.entries.last()) {
            (Some(first), Some(last)) => (first.log_id.index, last.log_id.index),
            _ => (1, 0),
        };
        self.timeline.mark(first, last, Mark::Sent);
        let message = pb::AppendEntriesRequest {
            controller_uuid: self.controller_uuid.to_string(),
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            prev_log_id: codec::opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
            entries: rpc.entries.iter().map(codec::entry_to_pb).collect(),
            leader_commit: codec::opt_log_id_to_pb(rpc.leader_commit.as_ref()),
        };
        let response = self
            .client()?
            .append_entries(self.request(message, ttl))
            .await
            .map_err(|s| {
                self.status_to_rpc_error(s, openraft::network::RPCTypes::AppendEntries, ttl)
            })?
            .into_inner();
        if !response.raft_error_json.is_empty() {
            return Err(self.remote_error(&response.raft_error_json));
        }
        use pb::append_entries_response::Result as R;
        match response.result {
            Some(R::Success(_)) => {
                self.timeline.mark(first, last, Mark::Acked);
                Ok(AppendEntriesResponse::Success)
            }
            Some(R::PartialSuccess(p)) => Ok(AppendEntriesResponse::PartialSuccess(
                codec::opt_log_id_from_pb(p.matched.as_ref()),
            )),
            Some(R::Conflict(_)) => Ok(AppendEntriesResponse::Conflict),
            Some(R::HigherVote(v)) => {
                Ok(AppendEntriesResponse::HigherVote(codec::vote_from_pb(&v)))
            }
            None => Err(decode_error(codec::CodecError {
                what: "append-entries response",
                why: "no result".into(),
            })),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let ttl = option.hard_ttl();
        let message = pb::InstallSnapshotRequest {
            controller_uuid: self.controller_uuid.to_string(),
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            meta: Some(codec::snapshot_meta_to_pb(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let response = self
            .client()?
            .install_snapshot(self.request(message, ttl))
            .await
            .map_err(|s| {
                self.status_to_rpc_error(s, openraft::network::RPCTypes::InstallSnapshot, ttl)
            })?
            .into_inner();
        if !response.raft_error_json.is_empty() {
            return Err(self.remote_error(&response.raft_error_json));
        }
        let vote = codec::req_vote_from_pb(response.vote.as_ref(), "install-snapshot response")
            .map_err(decode_error)?;
        Ok(InstallSnapshotResponse { vote })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let ttl = option.hard_ttl();
        let message = pb::VoteRequest {
            controller_uuid: self.controller_uuid.to_string(),
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        };
        let response = self
            .client()?
            .vote(self.request(message, ttl))
            .await
            .map_err(|s| self.status_to_rpc_error(s, openraft::network::RPCTypes::Vote, ttl))?
            .into_inner();
        if !response.raft_error_json.is_empty() {
            return Err(self.remote_error(&response.raft_error_json));
        }
        let vote = codec::req_vote_from_pb(response.vote.as_ref(), "vote response")
            .map_err(decode_error)?;
        Ok(VoteResponse {
            vote,
            vote_granted: response.vote_granted,
            last_log_id: codec::opt_log_id_from_pb(response.last_log_id.as_ref()),
        })
    }
}
