//! `StorageError`: what failed in persistence, naming the tree (or file) and the operation.

use std::path::PathBuf;

/// The boxed cause of a storage failure; the concrete type (sled's error) stays private.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A persistence failure. Every variant says where and what; the underlying error, if any, is
/// the `source`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data dir was initialized for another controller.
    #[error("data dir {} belongs to controller {found}, not {expected}", path.display())]
    WrongController {
        /// The data dir.
        path: PathBuf,
        /// The controller uuid recorded in it.
        found: String,
        /// The controller uuid the caller asked for.
        expected: String,
    },
    /// Another `Store` (in this process or another one) holds the data dir's lock.
    #[error(
        "data dir {} is already in use (sled's lock on {}/sled/db is held); is another ctld running on it?",
        path.display(),
        path.display()
    )]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// A sled operation failed.
    #[error("sled {op} on tree `{tree}` failed")]
    Sled {
        /// Which tree (`meta`, `log`, `raft_meta`, `state`, or `db` for the whole database).
        tree: &'static str,
        /// Which operation.
        op: &'static str,
        /// sled's error.
        #[source]
        source: BoxError,
    },
    /// A file-system operation failed.
    #[error("{op} {} failed", path.display())]
    Io {
        /// Which operation.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in tree `{tree}` at key {key}: {why}")]
    Corrupt {
        /// Which tree.
        tree: &'static str,
        /// The key, printed lossily.
        key: String,
        /// What was wrong.
        why: String,
    },
    /// Applying an import needs a staged file this node does not have and could not get.
    #[error("staged file {digest} of migration {migration_id} is not available: {why}")]
    StagedFileMissing {
        /// The migration.
        migration_id: String,
        /// The file's sha256.
        digest: String,
        /// Why not (where it was looked for).
        why: String,
    },
    /// Snapshot bytes that do not decode to a valid state image; nothing was changed.
    #[error("malformed snapshot: {why}")]
    MalformedSnapshot {
        /// What was wrong.
        why: String,
    },
}

impl StorageError {
    /// Wraps a sled error (kept private to this crate's signatures).
    pub(crate) fn sled(tree: &'static str, op: &'static str, source: sled::Error) -> Self {
        StorageError::Sled {
            tree,
            op,
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A record that does not decode.
    pub(crate) fn corrupt(tree: &'static str, key: &[u8], why: impl ToString) -> Self {
        StorageError::Corrupt {
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            why: why.to_string(),
        }
    }
}
