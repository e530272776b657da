//! The test harness shared by the apply-level tests: commands applied one by one through
//! `ApplyBatch` on a `MemStore`, successes and refusals checked.

#![allow(dead_code)]

use std::sync::Arc;

use sha2::{Digest, Sha256};
use starling_proto::command::{self as cmd, command::Op, command_error::Code, Command};
use starling_proto::migration::StagedFile;
use starling_proto::model::ModelDescription;
use starling_storage::staging::{StagedFiles, StagingArea, StagingEvent};
use starling_storage::{
    export_model, keys, ApplyBatch, ApplyLimits, MemStore, StateBackend, StateRead, StorageError,
};

pub const UUID: &str = "0b5f6d2e-1c3a-4e4f-9a7b-2d3c4e5f6a7b";
pub const NOW: i64 = 1_700_000_000_000;

pub struct Harness {
    pub store: MemStore,
    pub index: u64,
    /// The node's staging area (bulk imports read their files from it).
    pub staging: Arc<StagingArea>,
    /// What applied batches told the staging area.
    pub staging_events: Vec<StagingEvent>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Harness {
            store: MemStore::new(),
            index: 0,
            staging: StagingArea::open(&dir.path().join("staging")).expect("staging area"),
            staging_events: Vec::new(),
            _dir: dir,
        }
    }

    /// Applies `op` in its own batch; a storage failure (a staged file missing) is the error.
    pub fn try_apply(&mut self, op: Op) -> Result<cmd::command_result::Result, StorageError> {
        self.try_apply_as("alice", None, "", op)
    }

    /// Applies `op` under request id `request_id` ("" for none).
    pub fn apply_with_id(&mut self, op: Op, request_id: &str) -> cmd::command_result::Result {
        self.try_apply_as("alice", None, request_id, op)
            .expect("applies")
    }

    /// Applies `op` for `caller` with `authority` (what applying checks again).
    pub fn apply_as(
        &mut self,
        caller: &str,
        authority: Option<cmd::Authority>,
        op: Op,
    ) -> cmd::command_result::Result {
        self.try_apply_as(caller, authority, "", op)
            .expect("applies")
    }

    fn try_apply_as(
        &mut self,
        caller: &str,
        authority: Option<cmd::Authority>,
        request_id: &str,
        op: Op,
    ) -> Result<cmd::command_result::Result, StorageError> {
        self.index += 1;
        let command = Command {
            request_id: request_id.into(),
            op: Some(op),
            proposed_unix_ms: NOW + self.index as i64,
            caller: caller.into(),
            authority,
        };
        let staging = self.staging.clone();
        let mut batch = ApplyBatch::new(&self.store, ApplyLimits::default())
            .with_staged_files(staging.as_ref());
        let result = batch.apply_command(self.index, &command)?;
        let events = batch.staging_events().to_vec();
        self.store
            .state_commit(batch.into_writes())
            .expect("commits");
        staging.committed(&events);
        self.staging_events.extend(events);
        Ok(result.result.expect("has a result"))
    }

    pub fn apply(&mut self, op: Op) -> cmd::command_result::Result {
        self.try_apply(op).expect("applies")
    }

    /// Puts `bytes` in the staging area as a complete file of migration `id`.
    pub fn stage(&mut self, id: &str, bytes: &[u8]) -> StagedFile {
        let digest = digest_of(bytes);
        let mut receiver = self
            .staging
            .receive(id, &digest, bytes.len() as u64)
            .expect("receives");
        receiver.write(0, bytes).expect("writes");
        assert!(receiver.is_complete());
        StagedFile {
            digest,
            size: bytes.len() as u64,
        }
    }

    #[track_caller]
    pub fn ok(&mut self, op: Op) -> cmd::Ok {
        match self.apply(op) {
            cmd::command_result::Result::Ok(ok) => ok,
            cmd::command_result::Result::Error(e) => panic!("refused: {e:?}"),
        }
    }

    /// Applies `op`, expects refusal with `code`, checks nothing changed; returns the message.
    #[track_caller]
    pub fn refused(&mut self, op: Op, code: Code) -> String {
        let before = self.store.export_state().expect("exports").entries;
        match self.apply(op) {
            cmd::command_result::Result::Error(e) => {
                assert_eq!(e.code, code as i32, "{}", e.message);
                assert_eq!(
                    self.store.export_state().expect("exports").entries,
                    before,
                    "a refusal wrote something"
                );
                e.message
            }
            cmd::command_result::Result::Ok(ok) => panic!("accepted: {ok:?}"),
        }
    }

    /// Stages `bytes` as a blob in chunks of `chunk_bytes` and commits it; its digest.
    pub fn upload(&mut self, bytes: &[u8], chunk_bytes: usize) -> String {
        let digest = digest_of(bytes);
        let mut offset = 0;
        for chunk in bytes.chunks(chunk_bytes) {
            self.ok(Op::PutBlobChunk(cmd::PutBlobChunk {
                digest: digest.clone(),
                offset,
                data: chunk.to_vec(),
            }));
            offset += chunk.len() as u64;
        }
        self.ok(Op::CommitBlob(cmd::CommitBlob {
            digest: digest.clone(),
            size: bytes.len() as u64,
        }));
        digest
    }

    /// Every key of model `UUID` the migration copies (all but its log), with its value.
    pub fn model_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store
            .scan_prefix(&keys::model_prefix(UUID), usize::MAX)
            .expect("scans")
            .into_iter()
            .filter(|(key, _)| keys::fed_model(key).is_some())
            .collect()
    }

    pub fn description(&self) -> ModelDescription {
        export_model(&self.store, UUID)
            .expect("reads")
            .expect("model exists")
    }
}

/// Hex sha256 of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
