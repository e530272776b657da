//! Plumbing every service of a node uses, importing none of them: the clock, the one mapping of
//! errors to gRPC statuses (`status`), proposing a command and waiting for it with request ids
//! (`propose`), holding writes through a migration's fence (`hold`), reading and streaming
//! blobs (`blobs`), and the failpoints of the tests.

pub mod blobs;
pub mod hold;
pub mod propose;
pub mod status;

pub use blobs::{blob_chunks, charm_chunks, read_blob, BlobChunk, ChunkStream};
pub use hold::{propose_model_write, wait_for_activation};
pub use propose::{internal_command, propose, propose_and_wait, request_id_or_new};
pub use status::{command_result_status, proposal, redirect_status, refusal, storage_error};

/// Milliseconds since the Unix epoch, for commands' `proposed_unix_ms`.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Evaluates failpoint `name` (built with the `failpoints` feature; configured with the
/// `FAILPOINTS` environment variable, e.g. `migration.source.import=return`). Returns a reason
/// naming the failpoint when it is set to `return`, so the caller fails the step.
pub fn failpoint(name: &str) -> Option<String> {
    failpoint_value(name).map(|value| format!("failpoint {name}: {value}"))
}

/// The value of failpoint `name` when it is set to `return(VALUE)` ("failpoint" for a bare
/// `return`); `None` when it is off or the build has no failpoints. Only `return` is meant to
/// be used: `sleep` and `pause` would block an async worker thread.
pub fn failpoint_value(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        (|| {
            fail::fail_point!(name, |value| Some(
                value.unwrap_or_else(|| "failpoint".into())
            ));
            None
        })()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}
