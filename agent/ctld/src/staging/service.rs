//! The `Staging` peer service: what the other nodes of this controller call to forward a staged
//! file to this node (`Push`), to ask what it holds (`Status`) and to fetch a file from it
//! (`Fetch`, served from the staging area, or from the state for a charm it holds as a blob).
//! Only nodes of this controller are served: the caller presents a node certificate of its CA.

use futures::StreamExt;
use starling_proto::limits::{BLOB_CHUNK_BYTES_MAX, MESSAGE_BYTES_MAX};
use starling_proto::migration as pb;
use starling_proto::migration::staging_server::{Staging, StagingServer};
use starling_raft::admit_peer;
use tonic::{Request, Response, Status, Streaming};

use super::transfer::From;
use super::NodeStaging;
use crate::plumbing::{blob_chunks, storage_error};

/// The stream type of `Fetch`.
pub type FetchStream = futures::stream::BoxStream<'static, Result<pb::StageFileChunk, Status>>;

/// Serves the staging of one node to its peers.
#[derive(Clone)]
pub struct StagingService {
    staging: NodeStaging,
}

impl StagingService {
    /// The service of the node `staging` belongs to.
    pub fn new(staging: NodeStaging) -> Self {
        StagingService { staging }
    }

    /// As a tonic server.
    pub fn into_server(self) -> StagingServer<Self> {
        StagingServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn admit<T>(&self, request: &Request<T>, controller_uuid: &str) -> Result<(), Status> {
        let handle = self
            .staging
            .handle()
            .ok_or_else(|| Status::unavailable("this node is starting"))?;
        admit_peer(
            request,
            handle.controller_uuid(),
            controller_uuid,
            "staging",
        )
    }
}

#[tonic::async_trait]
impl Staging for StagingService {
    async fn push(
        &self,
        request: Request<Streaming<pb::StageFileChunk>>,
    ) -> Result<Response<pb::StageFileResponse>, Status> {
        // The certificate is checked before the first chunk; the uuid with it.
        let has_certificate = request.peer_certs().map(|c| !c.is_empty()).unwrap_or(false);
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await.transpose()? else {
            return Err(Status::invalid_argument("an empty push stream"));
        };
        let handle = self
            .staging
            .handle()
            .ok_or_else(|| Status::unavailable("this node is starting"))?;
        if !has_certificate {
            return Err(Status::unauthenticated(
                "the staging service requires a node certificate of this controller",
            ));
        }
        if first.controller_uuid != handle.controller_uuid() {
            return Err(Status::permission_denied(format!(
                "request for controller {} reached a node of controller {}",
                first.controller_uuid,
                handle.controller_uuid()
            )));
        }
        let answer = self.staging.receive(first, stream, From::Peer).await?;
        Ok(Response::new(answer))
    }

    async fn status(
        &self,
        request: Request<pb::StageStatusRequest>,
    ) -> Result<Response<pb::StageStatusResponse>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        Ok(Response::new(
            self.staging.status(&message.migration_id, &message.files)?,
        ))
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<pb::FetchStagedRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        self.admit(&request, &request.get_ref().controller_uuid)?;
        let message = request.into_inner();
        let file = pb::StagedFile {
            digest: message.digest.clone(),
            size: message.size,
        };
        let handle = self
            .staging
            .handle()
            .ok_or_else(|| Status::unavailable("this node is starting"))?
            .clone();
        match self.staging.file_chunks(
            &message.migration_id,
            &file,
            message.offset,
            handle.controller_uuid(),
        ) {
            Ok(chunks) => return Ok(Response::new(chunks.map(Ok).boxed())),
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status),
        }
        // A charm this node holds as a blob (its staged copy is gone once the import ended).
        let blob = handle
            .state()
            .blob(&message.digest)
            .map_err(storage_error)?
            .filter(|b| b.size == message.size)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} holds neither staged file {} of migration {} nor a blob of it",
                    handle.node_id(),
                    message.digest,
                    message.migration_id
                ))
            })?;
        let (migration_id, offset) = (message.migration_id, message.offset);
        let skip = offset - offset % BLOB_CHUNK_BYTES_MAX as u64;
        let chunks = blob_chunks(handle, blob.digest)
            .await?
            .filter_map(move |chunk| {
                let migration_id = migration_id.clone();
                async move {
                    match chunk {
                        Ok((digest, size, at, data)) if at >= skip => {
                            Some(Ok(pb::StageFileChunk {
                                migration_id,
                                digest,
                                size,
                                offset: at,
                                data,
                                ..Default::default()
                            }))
                        }
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    }
                }
            })
            .boxed();
        Ok(Response::new(chunks))
    }
}
