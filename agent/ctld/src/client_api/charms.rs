//! Charms in the client API: uploads staged through Raft chunk by chunk and committed once the
//! digest checks out, downloads streamed from the state, and reading a charm's metadata.yaml.

use std::io::Read;

use sha2::{Digest, Sha256};
use starling_proto::command::command;
use starling_proto::controller as pb;
use starling_proto::limits::{BLOB_BYTES_MAX, BLOB_CHUNK_BYTES_MAX};
use starling_proto::model::Access;
use tonic::{Request, Response, Status, Streaming};

use super::ClientApi;
use crate::plumbing::{charm_chunks, storage_error, ChunkStream};

impl ClientApi {
    /// `UploadCharm`: stages the streamed archive through Raft chunk by chunk and commits it
    /// once the digest checks out. Any logged-in user may upload (blobs are content-addressed
    /// and only used by a deploy, which needs write access).
    pub(super) async fn upload_charm(
        &self,
        request: Request<Streaming<pb::CharmChunk>>,
    ) -> Result<Response<pb::UploadCharmResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty charm upload"))?;
        let digest = first.digest.clone();
        let size = first.size;
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "charm digest {digest:?} is not a hex sha256"
            )));
        }
        if size == 0 || size > BLOB_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "charm size {size} is outside 1..={BLOB_BYTES_MAX} bytes"
            )));
        }
        if self
            .handle
            .state()
            .blob(&digest)
            .map_err(storage_error)?
            .is_some()
        {
            return Ok(Response::new(pb::UploadCharmResponse {
                digest,
                already_present: true,
            }));
        }
        // Each upload gets its own request ids, so a retried upload re-stages from offset 0.
        let session = uuid::Uuid::new_v4();
        let mut hasher = Sha256::new();
        let mut expected_offset = 0u64;
        let mut next = Some(first);
        while let Some(chunk) = next {
            if chunk.offset != expected_offset {
                return Err(Status::invalid_argument(format!(
                    "charm chunk at offset {} where {expected_offset} was expected",
                    chunk.offset
                )));
            }
            if chunk.data.len() > BLOB_CHUNK_BYTES_MAX {
                return Err(Status::invalid_argument(format!(
                    "charm chunk of {} bytes exceeds {BLOB_CHUNK_BYTES_MAX}",
                    chunk.data.len()
                )));
            }
            if chunk.offset + chunk.data.len() as u64 > size {
                return Err(Status::invalid_argument(
                    "charm chunks exceed the announced size",
                ));
            }
            hasher.update(&chunk.data);
            expected_offset += chunk.data.len() as u64;
            let op = command::Op::PutBlobChunk(starling_proto::command::PutBlobChunk {
                digest: digest.clone(),
                offset: chunk.offset,
                data: chunk.data,
            });
            let authority = caller.authority("", Access::Unspecified, false, "upload charms");
            self.propose(
                &caller,
                authority,
                format!("upload-{session}-{}", chunk.offset),
                op,
            )
            .await?;
            next = stream.message().await?;
        }
        if expected_offset != size {
            return Err(Status::invalid_argument(format!(
                "charm upload ended after {expected_offset} of {size} bytes"
            )));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return Err(Status::invalid_argument(format!(
                "charm archive hashes to {actual}, not the announced {digest}"
            )));
        }
        let op = command::Op::CommitBlob(starling_proto::command::CommitBlob {
            digest: digest.clone(),
            size,
        });
        let authority = caller.authority("", Access::Unspecified, false, "upload charms");
        self.propose(&caller, authority, format!("upload-{session}-commit"), op)
            .await?;
        Ok(Response::new(pb::UploadCharmResponse {
            digest,
            already_present: false,
        }))
    }

    /// `DownloadCharm`: the blob in chunks read from the state one at a time; the client
    /// verifies the digest.
    pub(super) async fn download_charm(
        &self,
        request: Request<pb::DownloadCharmRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.auth.authenticate(&request)?;
        let digest = request.into_inner().digest;
        Ok(Response::new(
            charm_chunks(self.handle.clone(), digest).await?,
        ))
    }
}

/// Reads `metadata.yaml` from a charm archive (a tar.gz of the charm directory).
pub(super) fn charm_metadata_from_archive(archive: &[u8]) -> Result<String, Status> {
    let invalid = |what: String| Status::invalid_argument(format!("invalid charm archive: {what}"));
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar.entries().map_err(|e| invalid(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?;
        let name = path.to_string_lossy().trim_start_matches("./").to_string();
        if name == "metadata.yaml" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(1024 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| invalid(format!("metadata.yaml: {e}")))?;
            return Ok(text);
        }
    }
    Err(invalid("no metadata.yaml at its top level".into()))
}
