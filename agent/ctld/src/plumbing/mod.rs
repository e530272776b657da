//! Plumbing every service of a node uses, importing none of them: the clock, the one mapping of
//! errors to gRPC statuses (`status`), proposing a command and waiting for it with request ids
//! (`propose`), and reading and streaming blobs (`blobs`).

pub mod blobs;
pub mod propose;
pub mod status;

pub use blobs::{blob_chunks, charm_chunks, read_blob, BlobChunk, ChunkStream};
pub use propose::{propose, propose_and_wait, request_id_or_new};
pub use status::{command_result_status, proposal, refusal, storage_error};

/// Milliseconds since the Unix epoch, for commands' `proposed_unix_ms`.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
