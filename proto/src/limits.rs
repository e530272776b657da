//! The limits both ends of a connection enforce, in one place: `ctl`, `agentd`, the controller's
//! services and its state machine import them from here, so a client never packs or sends what
//! the controller refuses. Units come last in every name.

/// Largest gRPC message a Starling service accepts or sends, and a client or peer decodes
/// (tonic's default is 4 MiB; a staged chunk or a full status of a large model is bigger).
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Largest blob: a charm archive (`ctl deploy` packs at most this, the controller stages at
/// most this, `agentd` downloads at most this) or a backup archive (the controller keeps and
/// restores at most this).
pub const BLOB_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Largest chunk of a blob upload or download; blobs are also stored in pieces of at most this
/// size.
pub const BLOB_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Largest chunk of a migration's staged file (source to target node, node to node): a bulk
/// stream, so bigger than a blob chunk, and well inside [`MESSAGE_BYTES_MAX`].
pub const STAGE_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest model description a migration stages and imports.
pub const DESCRIPTION_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Largest file a migration stages: a charm archive or a model description.
pub const STAGED_FILE_BYTES_MAX: u64 = if BLOB_BYTES_MAX > DESCRIPTION_BYTES_MAX {
    BLOB_BYTES_MAX
} else {
    DESCRIPTION_BYTES_MAX
};

/// HTTP/2 flow-control windows of the connections that carry staged files (and of the server
/// side of every node): a bulk stream should not wait for window updates every 64 KiB.
pub const STAGE_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// See [`STAGE_STREAM_WINDOW_BYTES`]; the whole connection's window.
pub const STAGE_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Most status reports, and separately most log records, one agent `Report` carries: `agentd`
/// batches its outbox to it, the controller refuses more, and so does the replicated
/// `AgentReport` command.
pub const REPORT_ITEMS_MAX: usize = 1000;
