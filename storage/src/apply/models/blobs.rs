//! Applying blob uploads: chunks staged at their offset, then committed once the staged bytes
//! hash to the announced digest (a mismatch discards the upload).

use sha2::{Digest, Sha256};
use starling_proto::command as cmd;
use starling_proto::limits::{BLOB_BYTES_MAX, BLOB_CHUNK_BYTES_MAX};
use starling_proto::model::{Blob, BlobUpload};

use super::{Outcome, Refusal, Tx};
use crate::keys;
use crate::model::names;
use crate::model::ModelError;
use crate::records;
use crate::state::StateRead;
use crate::StorageError;

impl<R: StateRead + ?Sized> Tx<'_, '_, R> {
    pub(super) fn put_blob_chunk(&mut self, put: &cmd::PutBlobChunk) -> Outcome {
        names::check_digest(&put.digest)?;
        if put.data.is_empty() || put.data.len() > BLOB_CHUNK_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "a blob chunk holds 1 to {BLOB_CHUNK_BYTES_MAX} bytes, got {}",
                put.data.len()
            ))
            .into());
        }
        if records::read_blob(&self.state, &put.digest)?.is_some() {
            // Content-addressed: the blob is complete already, nothing to stage.
            return Ok(cmd::Ok::default());
        }
        let staged = records::read_blob_upload(&self.state, &put.digest)?;
        if put.offset == 0 {
            if staged.is_some() {
                self.discard_upload(&put.digest)?;
            }
        } else {
            let next = staged.as_ref().map_or(0, |u| u.next_offset);
            if put.offset != next {
                return Err(ModelError::BlobChunkOutOfOrder {
                    digest: put.digest.clone(),
                    offset: put.offset,
                    staged: next,
                }
                .into());
            }
        }
        let next_offset = put.offset + put.data.len() as u64;
        if next_offset > BLOB_BYTES_MAX {
            return Err(ModelError::invalid(format!(
                "blob {} would exceed {BLOB_BYTES_MAX} bytes",
                put.digest
            ))
            .into());
        }
        self.state.put(
            keys::blob_data_key(&put.digest, put.offset),
            put.data.clone(),
        );
        self.put(
            keys::blob_stage_key(&put.digest),
            &BlobUpload {
                digest: put.digest.clone(),
                next_offset,
            },
        );
        Ok(cmd::Ok::default())
    }

    /// Stores `bytes` as the complete blob `digest` (verified by the caller), in chunks.
    pub(super) fn put_blob(&mut self, digest: &str, bytes: &[u8]) {
        let mut chunk_offsets = Vec::with_capacity(bytes.len().div_ceil(BLOB_CHUNK_BYTES_MAX));
        for (i, chunk) in bytes.chunks(BLOB_CHUNK_BYTES_MAX).enumerate() {
            let offset = (i * BLOB_CHUNK_BYTES_MAX) as u64;
            self.state
                .put(keys::blob_data_key(digest, offset), chunk.to_vec());
            chunk_offsets.push(offset);
        }
        self.put(
            keys::blob_key(digest),
            &Blob {
                digest: digest.to_owned(),
                size: bytes.len() as u64,
                created_unix_ms: self.now_ms,
                chunk_offsets,
            },
        );
    }

    pub(super) fn discard_upload(&mut self, digest: &str) -> Result<(), StorageError> {
        for (key, _) in self
            .state
            .scan_prefix(&keys::blob_data_prefix(digest), usize::MAX)?
        {
            self.state.delete(key);
        }
        self.state.delete(keys::blob_stage_key(digest));
        Ok(())
    }

    pub(super) fn commit_blob(&mut self, commit: &cmd::CommitBlob) -> Outcome {
        names::check_digest(&commit.digest)?;
        if records::read_blob(&self.state, &commit.digest)?.is_some() {
            return Ok(cmd::Ok::default());
        }
        let upload = records::read_blob_upload(&self.state, &commit.digest)?.ok_or_else(|| {
            ModelError::BlobNotStaged {
                digest: commit.digest.clone(),
            }
        })?;
        if upload.next_offset != commit.size {
            return Err(ModelError::BlobSizeMismatch {
                digest: commit.digest.clone(),
                size: commit.size,
                staged: upload.next_offset,
            }
            .into());
        }
        // Hash page by page so a large blob is never all in memory.
        const PAGE_CHUNKS: usize = 16;
        let prefix = keys::blob_data_prefix(&commit.digest);
        let mut hasher = Sha256::new();
        let mut chunk_offsets = Vec::new();
        let mut cursor = prefix.clone();
        loop {
            let page = self.state.scan_prefix_from(&prefix, &cursor, PAGE_CHUNKS)?;
            let full = page.len() == PAGE_CHUNKS;
            for (key, chunk) in &page {
                let offset = keys::trailing_u64(key)
                    .ok_or_else(|| StorageError::corrupt("state", key, "no chunk offset"))?;
                chunk_offsets.push(offset);
                hasher.update(chunk);
            }
            match page.last() {
                Some((key, _)) if full => {
                    cursor = key.clone();
                    cursor.push(0);
                }
                _ => break,
            }
        }
        let actual = hex::encode(hasher.finalize());
        if actual != commit.digest {
            self.discard_upload(&commit.digest)?;
            return Err(Refusal::RuleKeepingWrites(ModelError::BlobDigestMismatch {
                expected: commit.digest.clone(),
                actual,
            }));
        }
        self.state.delete(keys::blob_stage_key(&commit.digest));
        self.put(
            keys::blob_key(&commit.digest),
            &Blob {
                digest: commit.digest.clone(),
                size: commit.size,
                created_unix_ms: self.now_ms,
                chunk_offsets,
            },
        );
        Ok(cmd::Ok::default())
    }
}
