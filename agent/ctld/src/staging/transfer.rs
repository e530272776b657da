//! Moving staged files: receiving a stream (from the source, fanned out to the group as it
//! arrives, or from a peer), pushing a file a peer lacks from this node's copy, and fetching a
//! file this node lacks from a peer.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use starling_proto::limits::{STAGED_FILE_BYTES_MAX, STAGE_CHUNK_BYTES_MAX};
use starling_proto::migration as pb;
use starling_proto::migration::staging_client::StagingClient;
use starling_raft::{NodeId, RaftHandle};
use starling_storage::staging::{read_piece, Receiver, StagingError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{debug, info, warn};

use super::NodeStaging;
use crate::plumbing::failpoint;

/// Chunks buffered towards one peer before the receiving stream waits for it.
const FANOUT_BUFFER: usize = 4;
/// Longest wait for a peer to take one forwarded chunk before it is left behind (it is caught
/// up from this node's copy before the import commits).
const FANOUT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one push or fetch of a whole file between two nodes.
const PEER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline of a status call to a peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Who a received stream comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// The migration's source: counted as received, and fanned out to the group.
    Source,
    /// Another node of this group.
    Peer,
}

/// The status of a staging error.
pub fn staging_status(e: StagingError) -> Status {
    match e {
        StagingError::Storage(e) => Status::internal(e.to_string()),
        StagingError::Invalid(_) | StagingError::TooLong { .. } => {
            Status::invalid_argument(e.to_string())
        }
        StagingError::DigestMismatch { .. } => Status::data_loss(e.to_string()),
        StagingError::Gap { .. } => Status::out_of_range(e.to_string()),
        StagingError::Busy { .. } => Status::unavailable(e.to_string()),
    }
}

fn check_chunk(chunk: &pb::StageFileChunk) -> Result<(), Status> {
    if chunk.size == 0 || chunk.size > STAGED_FILE_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "staged size {} is outside 1..={STAGED_FILE_BYTES_MAX}",
            chunk.size
        )));
    }
    if chunk.data.len() > STAGE_CHUNK_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "a staged chunk holds at most {STAGE_CHUNK_BYTES_MAX} bytes, got {}",
            chunk.data.len()
        )));
    }
    Ok(())
}

/// Runs blocking staging work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("staging task failed: {e}")))
}

/// Writes `chunk` through `receiver` on the blocking pool; the receiver comes back with the
/// number of new bytes.
async fn write(
    mut receiver: Receiver,
    chunk: pb::StageFileChunk,
) -> Result<(Receiver, Result<u64, StagingError>), Status> {
    blocking(move || {
        let written = receiver.write(chunk.offset, &chunk.data);
        (receiver, written)
    })
    .await
}

/// The other nodes of this node's group, with their addresses.
pub fn peers(handle: &RaftHandle) -> Vec<(NodeId, String)> {
    let me = handle.node_id();
    handle
        .membership()
        .1
        .into_iter()
        .filter(|(id, _)| *id != me)
        .collect()
}

fn client(
    handle: &RaftHandle,
    id: NodeId,
    address: &str,
) -> Result<StagingClient<Channel>, Status> {
    let channel = handle
        .channels()
        .get(id, address)
        .map_err(|e| Status::unavailable(format!("cannot dial node {id} at {address}: {e}")))?;
    Ok(StagingClient::new(channel)
        .max_decoding_message_size(starling_proto::limits::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(starling_proto::limits::MESSAGE_BYTES_MAX))
}

/// A forwarding of one received stream to one peer.
struct Forward {
    node: NodeId,
    tx: Option<mpsc::Sender<pb::StageFileChunk>>,
}

impl NodeStaging {
    fn running_handle(&self) -> Result<&RaftHandle, Status> {
        self.handle()
            .ok_or_else(|| Status::unavailable("this node is starting"))
    }

    /// Receives one file's stream (`first` is its first chunk). From the source, every chunk
    /// is also forwarded to the other nodes of the group as it arrives; the answer says how
    /// many hold the complete file once the stream ends.
    pub async fn receive(
        &self,
        first: pb::StageFileChunk,
        mut rest: impl Stream<Item = Result<pb::StageFileChunk, Status>> + Unpin,
        from: From,
    ) -> Result<pb::StageFileResponse, Status> {
        let handle = self.running_handle()?.clone();
        check_chunk(&first)?;
        let (migration_id, digest, size) =
            (first.migration_id.clone(), first.digest.clone(), first.size);
        if let Some(source) = first.source.as_ref() {
            let area = self.area().clone();
            let (id, bytes) = (migration_id.clone(), source.encode_to_vec());
            blocking(move || area.save_source(&id, &bytes))
                .await?
                .map_err(staging_status)?;
        }
        let area = self.area().clone();
        let (id, d) = (migration_id.clone(), digest.clone());
        let mut receiver = blocking(move || area.receive(&id, &d, size))
            .await?
            .map_err(staging_status)?;
        let mut forwards = Vec::new();
        let mut pushes = JoinSet::new();
        if from == From::Source && !receiver.is_complete() {
            for (node, address) in peers(&handle) {
                let (tx, rx) = mpsc::channel(FANOUT_BUFFER);
                match client(&handle, node, &address) {
                    Ok(mut client) => {
                        pushes.spawn(async move {
                            let mut request = tonic::Request::new(ReceiverStream::new(rx));
                            request.set_timeout(PEER_TRANSFER_TIMEOUT);
                            (node, client.push(request).await.map(|r| r.into_inner()))
                        });
                        forwards.push(Forward { node, tx: Some(tx) });
                    }
                    Err(e) => warn!(node, error = %e, "cannot forward a staged file"),
                }
            }
        }
        let mut next: Option<Result<pb::StageFileChunk, Status>> = Some(Ok(first));
        loop {
            let chunk = match next.take() {
                Some(chunk) => chunk?,
                None => match rest.next().await {
                    Some(chunk) => chunk?,
                    None => break,
                },
            };
            if chunk.digest != digest || chunk.migration_id != migration_id || chunk.size != size {
                return Err(Status::invalid_argument(
                    "one stream stages one file: every chunk names the same file and size",
                ));
            }
            check_chunk(&chunk)?;
            let forwarded = (!forwards.is_empty()).then(|| pb::StageFileChunk {
                controller_uuid: handle.controller_uuid().to_owned(),
                ..chunk.clone()
            });
            let (back, written) = write(receiver, chunk).await?;
            receiver = back;
            let new = written.map_err(staging_status)?;
            let counter = match from {
                From::Source => "starling_migration_stage_bytes_received_total",
                From::Peer => "starling_migration_stage_bytes_replicated_total",
            };
            metrics::counter!(counter).increment(new);
            if let Some(chunk) = forwarded {
                for forward in &mut forwards {
                    let Some(tx) = forward.tx.as_ref() else {
                        continue;
                    };
                    if tokio::time::timeout(FANOUT_SEND_TIMEOUT, tx.send(chunk.clone()))
                        .await
                        .map_or(true, |sent| sent.is_err())
                    {
                        debug!(node = forward.node, "a peer fell behind the staging stream; it is caught up before the import");
                        forward.tx = None;
                    }
                }
            }
            // Breaks the stream after this chunk is staged (e.g. `2*off->1*return`).
            if from == From::Source {
                if let Some(reason) = failpoint("migration.target.stage-chunk") {
                    return Err(Status::unavailable(reason));
                }
            }
        }
        let complete = receiver.is_complete();
        let staged_bytes = receiver.len();
        drop(receiver);
        // The peers finish what they were sent; their answers count the holders.
        for forward in &mut forwards {
            forward.tx = None;
        }
        let mut holders = u32::from(complete);
        while let Some(joined) = pushes.join_next().await {
            match joined {
                Ok((_, Ok(answer))) if answer.complete => holders += 1,
                Ok((node, Ok(_))) => debug!(node, "a peer holds part of the staged file"),
                Ok((node, Err(status))) => {
                    debug!(node, error = %status.message(), "a peer did not take the staged file")
                }
                Err(e) => warn!(error = %e, "a forwarding task failed"),
            }
        }
        if complete && from == From::Source {
            info!(migration = %migration_id, digest, size, holders, "staged file received");
        }
        Ok(pb::StageFileResponse {
            staged_bytes,
            complete,
            holders,
            members: u32::try_from(handle.membership().1.len()).unwrap_or(u32::MAX),
        })
    }

    /// How much of each of `files` this node holds, and which are blobs of its state already.
    pub fn status(
        &self,
        migration_id: &str,
        files: &[pb::StagedFile],
    ) -> Result<pb::StageStatusResponse, Status> {
        let handle = self.running_handle()?;
        let mut states = Vec::with_capacity(files.len());
        for file in files {
            let present = handle
                .state()
                .blob(&file.digest)
                .map_err(crate::plumbing::storage_error)?
                .is_some_and(|b| b.size == file.size);
            let state = self
                .area()
                .state(migration_id, &file.digest)
                .map_err(staging_status)?;
            states.push(pb::StagedFileState {
                digest: file.digest.clone(),
                staged_bytes: state.bytes(),
                complete: state.is_complete() && state.bytes() == file.size,
                present,
            });
        }
        Ok(pb::StageStatusResponse { files: states })
    }

    /// Makes sure the files of an import are where it can be applied: complete on this node
    /// (fetched from a peer if not) and on a majority of the group's voters (pushed from this
    /// node's copy to every reachable peer that lacks one). The others fetch them when they
    /// apply the import.
    pub async fn ensure_held(
        &self,
        migration_id: &str,
        files: &[pb::StagedFile],
    ) -> Result<(), Status> {
        let handle = self.running_handle()?.clone();
        for file in files {
            let state = self
                .area()
                .state(migration_id, &file.digest)
                .map_err(staging_status)?;
            if !state.is_complete() {
                fetch_from_peers(self, migration_id, &file.digest, file.size)
                    .await
                    .map_err(|e| {
                        Status::failed_precondition(format!(
                            "staged file {} of migration {migration_id} is not complete on any \
                             node of this controller ({e}); stage it again",
                            file.digest
                        ))
                    })?;
            }
        }
        let (voters, _) = handle.membership();
        let mut holders: BTreeSet<NodeId> = [handle.node_id()].into();
        let mut tasks = JoinSet::new();
        for (node, address) in peers(&handle) {
            let (this, id, files) = (self.clone(), migration_id.to_owned(), files.to_vec());
            let handle = handle.clone();
            tasks.spawn(async move {
                let held = this
                    .push_missing(&handle, node, &address, &id, &files)
                    .await;
                (node, held)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((node, Ok(()))) => {
                    holders.insert(node);
                }
                Ok((node, Err(e))) => {
                    warn!(node, error = %e, "a peer does not hold the staged files; it fetches them when it applies the import")
                }
                Err(e) => warn!(error = %e, "a push task failed"),
            }
        }
        let holding = voters.iter().filter(|v| holders.contains(v)).count();
        if holding * 2 <= voters.len() {
            return Err(Status::unavailable(format!(
                "only {holding} of {} voters hold the staged files of migration {migration_id}",
                voters.len()
            )));
        }
        Ok(())
    }

    /// Pushes to `node` every one of `files` it does not hold completely, from where it stopped.
    async fn push_missing(
        &self,
        handle: &RaftHandle,
        node: NodeId,
        address: &str,
        migration_id: &str,
        files: &[pb::StagedFile],
    ) -> Result<(), Status> {
        let mut client = client(handle, node, address)?;
        let mut request = tonic::Request::new(pb::StageStatusRequest {
            migration_id: migration_id.to_owned(),
            files: files.to_vec(),
            controller_uuid: handle.controller_uuid().to_owned(),
        });
        request.set_timeout(PEER_STATUS_TIMEOUT);
        let status = client.status(request).await?.into_inner();
        for (file, state) in files.iter().zip(status.files) {
            if state.complete {
                continue;
            }
            let chunks = self.file_chunks(
                migration_id,
                file,
                state.staged_bytes,
                handle.controller_uuid(),
            )?;
            let mut request = tonic::Request::new(chunks);
            request.set_timeout(PEER_TRANSFER_TIMEOUT);
            let answer = client.push(request).await?.into_inner();
            if !answer.complete {
                return Err(Status::unavailable(format!(
                    "node {node} holds {} of {} bytes of {}",
                    answer.staged_bytes, file.size, file.digest
                )));
            }
            info!(node, migration = migration_id, digest = %file.digest, from = state.staged_bytes, "pushed a staged file to a peer");
        }
        Ok(())
    }

    /// The chunks of this node's complete copy of `file` from `offset`, read as the receiver
    /// takes them.
    pub fn file_chunks(
        &self,
        migration_id: &str,
        file: &pb::StagedFile,
        offset: u64,
        controller_uuid: &str,
    ) -> Result<ReceiverStream<pb::StageFileChunk>, Status> {
        let (mut source, len) = self
            .area()
            .open_complete(migration_id, &file.digest)
            .map_err(staging_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "staged file {} of migration {migration_id} is not complete here",
                    file.digest
                ))
            })?;
        let (tx, rx) = mpsc::channel(2);
        let template = pb::StageFileChunk {
            migration_id: migration_id.to_owned(),
            digest: file.digest.clone(),
            size: len,
            controller_uuid: controller_uuid.to_owned(),
            ..Default::default()
        };
        tokio::task::spawn_blocking(move || {
            let mut offset = offset;
            // An empty chunk at the start tells a receiver that already holds everything so.
            if offset >= len {
                let _ = tx.blocking_send(pb::StageFileChunk {
                    offset: len,
                    ..template
                });
                return;
            }
            while offset < len {
                let data = match read_piece(&mut source, offset, STAGE_CHUNK_BYTES_MAX, len) {
                    Ok(data) => data,
                    Err(e) => {
                        warn!(error = %e, "cannot read a staged file");
                        return;
                    }
                };
                let next = offset + data.len() as u64;
                let chunk = pb::StageFileChunk {
                    offset,
                    data,
                    ..template.clone()
                };
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
                offset = next;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Fetches `digest` of `migration_id` from the first peer that has it (its staged file, or
/// the blob of its state for a charm), resuming this node's partial copy. The node it came
/// from, or why no peer gave it.
pub async fn fetch_from_peers(
    staging: &NodeStaging,
    migration_id: &str,
    digest: &str,
    size: u64,
) -> Result<NodeId, String> {
    let handle = staging
        .handle()
        .ok_or_else(|| "this node is starting".to_owned())?;
    let peers = peers(handle);
    if peers.is_empty() {
        return Err("this node has no peers".into());
    }
    let mut errors = Vec::new();
    for (node, address) in peers {
        match fetch_from(staging, handle, node, &address, migration_id, digest, size).await {
            Ok(()) => return Ok(node),
            Err(e) => errors.push(format!("node {node}: {}", e.message())),
        }
    }
    Err(errors.join("; "))
}

async fn fetch_from(
    staging: &NodeStaging,
    handle: &RaftHandle,
    node: NodeId,
    address: &str,
    migration_id: &str,
    digest: &str,
    size: u64,
) -> Result<(), Status> {
    let area = staging.area().clone();
    let (id, d) = (migration_id.to_owned(), digest.to_owned());
    let mut receiver = blocking(move || area.receive(&id, &d, size))
        .await?
        .map_err(staging_status)?;
    if receiver.is_complete() {
        return Ok(());
    }
    let mut client = client(handle, node, address)?;
    let mut request = tonic::Request::new(pb::FetchStagedRequest {
        controller_uuid: handle.controller_uuid().to_owned(),
        migration_id: migration_id.to_owned(),
        digest: digest.to_owned(),
        size,
        offset: receiver.len(),
    });
    request.set_timeout(PEER_TRANSFER_TIMEOUT);
    let mut stream = client.fetch(request).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        let (back, written) = write(receiver, chunk).await?;
        receiver = back;
        let new = written.map_err(staging_status)?;
        metrics::counter!("starling_migration_stage_bytes_replicated_total").increment(new);
        if receiver.is_complete() {
            return Ok(());
        }
    }
    Err(Status::unavailable(format!(
        "node {node} sent {} of {size} bytes",
        receiver.len()
    )))
}
