//! `LogStore`: openraft's `RaftLogStorage` over a `LogBackend`. Entries are stored as
//! prost-encoded `raft::LogEntry`, the vote as `raft::Vote`, log ids as `raft::LogId`.
// openraft's `StorageError` is large, but it is the error type the storage traits prescribe.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, StorageIOError};
use prost::Message;
use starling_proto::raft as pb;
use starling_storage::{LogBackend, RaftMetaKey};

use super::{blocking, record_sync};
use crate::codec;
use crate::stages::{Mark, WriteTimeline};
use crate::type_config::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log and vote of a node over a backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogStore<B> {
    backend: B,
    timeline: Arc<WriteTimeline>,
}

/// A reader of the log for replication tasks. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogReader<B> {
    backend: B,
}

impl<B: LogBackend> LogStore<B> {
    pub(super) fn new(backend: B, timeline: Arc<WriteTimeline>) -> Self {
        LogStore { backend, timeline }
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn decode_log_id(bytes: &[u8]) -> Result<LogId, StorageError> {
    pb::LogId::decode(bytes)
        .map(|log_id| codec::log_id_from_pb(&log_id))
        .map_err(read_err)
}

fn read_entries<B: LogBackend>(
    backend: &B,
    range: impl RangeBounds<u64>,
) -> Result<Vec<Entry>, StorageError> {
    let rows = backend.log_range(range).map_err(read_err)?;
    rows.into_iter()
        .map(|(index, bytes)| {
            let entry = pb::LogEntry::decode(bytes.as_slice()).map_err(read_err)?;
            let entry = codec::entry_from_pb(entry).map_err(read_err)?;
            // Invariant: the key is the entry's index; anything else is corruption.
            assert_eq!(
                entry.log_id.index, index,
                "log entry stored under the wrong index"
            );
            Ok(entry)
        })
        .collect()
}

impl<B: LogBackend> RaftLogReader<TypeConfig> for LogReader<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.backend, range)
    }
}

impl<B: LogBackend> RaftLogReader<TypeConfig> for LogStore<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.backend, range)
    }
}

impl<B: LogBackend> RaftLogStorage<TypeConfig> for LogStore<B> {
    type LogReader = LogReader<B>;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = match self
            .backend
            .raft_meta_get(RaftMetaKey::LastPurged)
            .map_err(read_err)?
        {
            Some(bytes) => Some(decode_log_id(&bytes)?),
            None => None,
        };
        let last_log_id = match self.backend.log_last().map_err(read_err)? {
            Some((_, bytes)) => {
                let entry = pb::LogEntry::decode(bytes.as_slice()).map_err(read_err)?;
                Some(codec::entry_from_pb(entry).map_err(read_err)?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            backend: self.backend.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let backend = self.backend.clone();
        let bytes = codec::vote_to_pb(vote).encode_to_vec();
        let took = blocking(move || backend.raft_meta_put(RaftMetaKey::Vote, bytes))
            .await
            .map_err(StorageIOError::write_vote)?;
        record_sync("vote", took);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let bytes = self
            .backend
            .raft_meta_get(RaftMetaKey::Vote)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)))?;
        match bytes {
            Some(bytes) => pb::Vote::decode(bytes.as_slice())
                .map(|vote| Some(codec::vote_from_pb(&vote)))
                .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into()),
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // `committed` never moves back to `None`; there is nothing to record for it.
        let Some(committed) = committed else {
            return Ok(());
        };
        let backend = self.backend.clone();
        let bytes = codec::log_id_to_pb(&committed).encode_to_vec();
        blocking(move || backend.raft_meta_put(RaftMetaKey::Committed, bytes))
            .await
            .map_err(StorageIOError::write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        match self
            .backend
            .raft_meta_get(RaftMetaKey::Committed)
            .map_err(read_err)?
        {
            Some(bytes) => Ok(Some(decode_log_id(&bytes)?)),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| {
                (
                    entry.log_id.index,
                    codec::entry_to_pb(&entry).encode_to_vec(),
                )
            })
            .collect();
        let (first, last) = match (rows.first(), rows.last()) {
            (Some((first, _)), Some((last, _))) => (*first, *last),
            _ => (1, 0),
        };
        self.timeline.mark(first, last, Mark::AppendStart);
        let backend = self.backend.clone();
        // One batch, one sync; the callback only after the sync.
        match blocking(move || backend.log_append(rows)).await {
            Ok(took) => {
                self.timeline.mark(first, last, Mark::Synced);
                record_sync("append", took);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let backend = self.backend.clone();
        let took = blocking(move || backend.log_truncate_from(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        record_sync("truncate", took);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let backend = self.backend.clone();
        let bytes = codec::log_id_to_pb(&log_id).encode_to_vec();
        let took = blocking(move || backend.log_purge_through(log_id.index, bytes))
            .await
            .map_err(StorageIOError::write_logs)?;
        record_sync("purge", took);
        Ok(())
    }
}
