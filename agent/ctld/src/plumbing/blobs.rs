//! Blobs as the services read and stream them: a whole blob read in pieces, and a blob streamed
//! in chunks read from the state only when the receiver is ready for the next one.

use futures::StreamExt;
use starling_proto::controller as pb;
use starling_proto::limits::BLOB_CHUNK_BYTES_MAX;
use starling_raft::RaftHandle;
use tonic::Status;

use super::status::storage_error;

/// How much of a blob one state read returns.
const BLOB_READ_BYTES: u64 = 1024 * 1024;

/// A whole blob (`what` names it in errors: "charm", "backup archive"), read from the state in
/// pieces.
pub fn read_blob(handle: &RaftHandle, digest: &str, what: &str) -> Result<Vec<u8>, Status> {
    let state = handle.state();
    let header = state.blob(digest).map_err(storage_error)?.ok_or_else(|| {
        Status::failed_precondition(format!("{what} {digest} has not been uploaded"))
    })?;
    let mut bytes = Vec::with_capacity(usize::try_from(header.size).unwrap_or(0));
    while (bytes.len() as u64) < header.size {
        let piece = state
            .blob_range(digest, bytes.len() as u64, BLOB_READ_BYTES)
            .map_err(storage_error)?
            .ok_or_else(|| {
                Status::not_found(format!("{what} {digest} vanished while being read"))
            })?;
        if piece.is_empty() {
            return Err(Status::internal(format!(
                "{what} {digest} is shorter than its header says"
            )));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(bytes)
}

/// The stream type of `DownloadCharm`.
pub type ChunkStream = futures::stream::BoxStream<'static, Result<pb::CharmChunk, Status>>;

/// A blob as the client API streams it (`DownloadCharm`, `DownloadBackup`).
pub async fn charm_chunks(handle: RaftHandle, digest: String) -> Result<ChunkStream, Status> {
    let stream = blob_chunks(handle, digest).await?.map(|chunk| {
        chunk.map(|(digest, size, offset, data)| pb::CharmChunk {
            digest,
            size,
            offset,
            data,
        })
    });
    Ok(stream.boxed())
}

/// One chunk of a blob: digest, total size, offset and bytes.
pub type BlobChunk = (String, u64, u64, Vec<u8>);

/// Streams a blob in chunks of at most `BLOB_CHUNK_BYTES_MAX`, reading each from the state only
/// when the client is ready for it. Shared by the client and agent download calls.
pub async fn blob_chunks(
    handle: RaftHandle,
    digest: String,
) -> Result<impl futures::Stream<Item = Result<BlobChunk, Status>> + Send + 'static, Status> {
    let header = handle
        .state()
        .blob(&digest)
        .map_err(storage_error)?
        .ok_or_else(|| Status::not_found(format!("no charm with digest {digest}")))?;
    let size = header.size;
    Ok(futures::stream::unfold(0u64, move |offset| {
        let handle = handle.clone();
        let digest = digest.clone();
        async move {
            if offset >= size {
                return None;
            }
            let piece = handle
                .state()
                .blob_range(&digest, offset, BLOB_CHUNK_BYTES_MAX as u64)
                .map_err(storage_error)
                .and_then(|p| {
                    p.filter(|p| !p.is_empty())
                        .ok_or_else(|| Status::not_found(format!("charm {digest} vanished")))
                });
            match piece {
                Ok(data) => {
                    let next = offset + data.len() as u64;
                    Some((Ok((digest, size, offset, data)), next))
                }
                // Ending the stream after an error: the next poll sees offset == size.
                Err(e) => Some((Err(e), size)),
            }
        }
    }))
}
