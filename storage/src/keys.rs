//! The key layout of the replicated state (the `state` tree), in one place.
//!
//! | prefix | value |
//! |---|---|
//! | `cfg/<key>` | a controller-config value (UTF-8), only keys set by an operator |
//! | `req/<request_id>` | the encoded `CommandResult` of the first command with that id |
//! | `reqidx/<be u64 log index>` | the request id recorded at that index (oldest evicted first) |
//! | `sys/last_applied` | encoded `raft::LogId` of the last applied entry |
//! | `sys/last_membership` | encoded `raft::StoredMembership` |
//! | `sys/request_records` | be u64: how many `req/` records exist |

/// Controller-config values.
pub const CONFIG_PREFIX: &[u8] = b"cfg/";
/// Idempotency records by request id.
pub const REQUEST_PREFIX: &[u8] = b"req/";
/// Idempotency records by the log index that created them.
pub const REQUEST_INDEX_PREFIX: &[u8] = b"reqidx/";
/// Bookkeeping owned by the state machine itself.
pub const SYS_PREFIX: &[u8] = b"sys/";
/// The last applied log id.
pub const LAST_APPLIED: &[u8] = b"sys/last_applied";
/// The last applied membership.
pub const LAST_MEMBERSHIP: &[u8] = b"sys/last_membership";
/// The number of idempotency records.
pub const REQUEST_RECORDS: &[u8] = b"sys/request_records";

/// `prefix` followed by `suffix`.
pub fn join(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + suffix.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(suffix);
    key
}

/// The key of a controller-config value.
pub fn config_key(key: &str) -> Vec<u8> {
    join(CONFIG_PREFIX, key.as_bytes())
}

/// The key of an idempotency record.
pub fn request_key(request_id: &str) -> Vec<u8> {
    join(REQUEST_PREFIX, request_id.as_bytes())
}

/// The key of an idempotency record's index entry.
pub fn request_index_key(log_index: u64) -> Vec<u8> {
    join(REQUEST_INDEX_PREFIX, &log_index.to_be_bytes())
}
