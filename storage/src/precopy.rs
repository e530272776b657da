//! The pre-copy's export of a model that stays writable: the model's keys are read page by page,
//! each page in one applied state whose log index the reader notes (`read_copy_page`, called
//! inside the daemon's consistent read), so no commit waits longer than one page. The pages
//! together are a *fuzzy* copy: each at least as new as the migration's start, none older. The
//! change feed holds every change since the start, so replaying it over the copy (in order,
//! whole values) arrives at the model's state at the last entry; the copy needs no lock.
//!
//! [`CopyBuilder`] turns the pages into the `ModelDescription` the target imports and computes
//! two model digests: of the pairs read (the target must find the same after import), and of
//! the model *at the migration's start* (the base the feed's running delta is added to): the
//! pairs' digest minus, page by page, the changes the feed recorded after the start that the
//! page had already seen (same page's key range, log index at or below the page's).

use prost::Message;
use starling_proto::model::{
    AgentSeq, Application, Machine, Model, ModelDescription, Relation, StatusHistory, Unit,
};

use crate::export::DESCRIPTION_FORMAT_VERSION;
use crate::feed::{change_delta, entries_after, position};
use crate::keys;
use crate::model::digest::ModelDigest;
use crate::model::ModelError;
use crate::state::{KeyValues, StateRead};
use crate::StorageError;

/// Keys one page reads (about a millisecond of reading).
pub const COPY_PAGE_KEYS: usize = 1000;
/// Feed entries read at once while computing the base digest.
const FEED_READ_ENTRIES: usize = 10_000;

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The model holds something the copy cannot carry, or is gone.
    #[error(transparent)]
    Rule(#[from] ModelError),
    /// Reading the state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The key after which the model's log range ends (`m/<uuid>/log0`, since `0` follows `/`).
fn after_log(uuid: &str) -> Vec<u8> {
    let mut key = keys::log_prefix(uuid);
    *key.last_mut().expect("non-empty prefix") = b'0';
    key
}

/// Up to `limit` of model `uuid`'s fed keys (every key but the log's) from `start` on (the
/// model's prefix for the first page), and where the next page starts (`None`: this was the
/// last). Read it inside one consistent read, with the applied index.
pub fn read_copy_page(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    start: &[u8],
    limit: usize,
) -> Result<(KeyValues, Option<Vec<u8>>), StorageError> {
    let prefix = keys::model_prefix(uuid);
    let log = keys::log_prefix(uuid);
    let rows = state.scan_prefix_from(&prefix, start, limit)?;
    let full = rows.len() == limit;
    let mut pairs = Vec::with_capacity(rows.len());
    for (key, value) in rows {
        if key.starts_with(&log) {
            // The log is transferred after SUCCESS; skip its whole range.
            return Ok((pairs, Some(after_log(uuid))));
        }
        pairs.push((key, value));
    }
    let next = match pairs.last() {
        Some((last, _)) if full => {
            let mut next = last.clone();
            next.push(0);
            Some(next)
        }
        _ => None,
    };
    Ok((pairs, next))
}

/// A model copied for a migration.
#[derive(Debug, Clone)]
pub struct ModelCopy {
    /// The copy in the import format.
    pub description: ModelDescription,
    /// The model digest of the pairs read: what the target holds after importing it.
    pub copy_digest: ModelDigest,
    /// The model digest of the model at the feed's start.
    pub base_digest: ModelDigest,
    /// Records in the copy.
    pub records: u64,
}

/// One page read: where it starts, the log index it saw, the digest of its pairs.
struct Page {
    start: Vec<u8>,
    applied_index: u64,
}

/// Collects the pages of a copy (in key order) and makes the [`ModelCopy`].
pub struct CopyBuilder {
    uuid: String,
    feed_from: u64,
    pages: Vec<Page>,
    digest: ModelDigest,
    description: ModelDescription,
    records: u64,
}

fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes).map_err(|e| StorageError::corrupt("state", key, e))
}

impl CopyBuilder {
    /// A copy of model `uuid` whose feed records from log index `feed_from` on.
    pub fn new(uuid: &str, feed_from: u64) -> Self {
        CopyBuilder {
            uuid: uuid.to_owned(),
            feed_from,
            pages: Vec::new(),
            digest: ModelDigest::EMPTY,
            description: ModelDescription {
                format_version: DESCRIPTION_FORMAT_VERSION,
                ..Default::default()
            },
            records: 0,
        }
    }

    /// Adds the page that starts at `start`, read at `applied_index`. Pages come in key order.
    pub fn add_page(
        &mut self,
        start: &[u8],
        applied_index: u64,
        pairs: KeyValues,
    ) -> Result<(), CopyError> {
        if applied_index < self.feed_from {
            return Err(ModelError::invalid(format!(
                "a page of the copy was read at log index {applied_index}, before the feed's \
                 start at {}",
                self.feed_from
            ))
            .into());
        }
        self.pages.push(Page {
            start: start.to_vec(),
            applied_index,
        });
        let prefix = keys::model_prefix(&self.uuid);
        let d = &mut self.description;
        for (key, value) in pairs {
            self.digest.add_pair(&key, &value);
            self.records += 1;
            let rest = &key[prefix.len()..];
            if rest == b"model" {
                d.model = Some(decode::<Model>(&key, &value)?);
            } else if rest.starts_with(b"machine/") {
                d.machines.push(decode::<Machine>(&key, &value)?);
            } else if rest.starts_with(b"app/") {
                d.applications.push(decode::<Application>(&key, &value)?);
            } else if rest.starts_with(b"unit/") {
                d.units.push(decode::<Unit>(&key, &value)?);
            } else if rest.starts_with(b"rel/") {
                d.relations.push(decode::<Relation>(&key, &value)?);
            } else if rest.starts_with(b"hist/") {
                d.status_history
                    .push(decode::<StatusHistory>(&key, &value)?);
            } else if rest.starts_with(b"agentseq/") {
                let machine = keys::trailing_u64(&key)
                    .ok_or_else(|| StorageError::corrupt("state", &key, "no machine number"))?;
                let seq = u64::from_be_bytes(
                    value
                        .as_slice()
                        .try_into()
                        .map_err(|_| StorageError::corrupt("state", &key, "not a be u64"))?,
                );
                d.agent_seqs.push(AgentSeq {
                    machine_id: machine.to_string(),
                    seq,
                });
            } else {
                return Err(ModelError::invalid(format!(
                    "model {} holds a record this version cannot copy: {}",
                    self.uuid,
                    String::from_utf8_lossy(&key)
                ))
                .into());
            }
        }
        Ok(())
    }

    /// The copy, with its base digest computed from the feed in `state` (whose entries since
    /// the start must not have been trimmed yet).
    pub fn finish(self, state: &(impl StateRead + ?Sized)) -> Result<ModelCopy, CopyError> {
        let CopyBuilder {
            uuid,
            feed_from,
            pages,
            digest,
            mut description,
            records,
        } = self;
        if description.model.is_none() {
            return Err(ModelError::ModelNotFound { model: uuid }.into());
        }
        let mut charms: Vec<String> = description
            .applications
            .iter()
            .map(|a| a.charm_digest.clone())
            .filter(|d| !d.is_empty())
            .collect();
        charms.sort();
        charms.dedup();
        description.charm_digests = charms;
        // The changes each page already holds, taken back out.
        let newest = pages.iter().map(|p| p.applied_index).max().unwrap_or(0);
        let mut seen = ModelDigest::EMPTY;
        let mut after = position(feed_from, 0);
        loop {
            let entries = entries_after(state, &uuid, &after, Some(newest), FEED_READ_ENTRIES)?;
            let Some(last) = entries.last().and_then(|e| e.at) else {
                break;
            };
            for entry in &entries {
                let index = entry.at.unwrap_or_default().index;
                for change in &entry.changes {
                    let page = pages
                        .partition_point(|p| p.start.as_slice() <= change.key.as_slice())
                        .saturating_sub(1);
                    if pages.get(page).is_some_and(|p| index <= p.applied_index) {
                        seen = seen.plus(change_delta(change));
                    }
                }
            }
            after = last;
        }
        Ok(ModelCopy {
            description,
            copy_digest: digest,
            base_digest: digest.minus(seen),
            records,
        })
    }
}

/// Reads a whole copy of model `uuid` from `state` in one go (for tests and tools: without
/// concurrent writes every page sees the same state).
pub fn copy_model(
    state: &(impl StateRead + ?Sized),
    uuid: &str,
    feed_from: u64,
    applied_index: u64,
) -> Result<ModelCopy, CopyError> {
    let mut builder = CopyBuilder::new(uuid, feed_from);
    let mut start = Some(keys::model_prefix(uuid));
    while let Some(page_start) = start {
        let (pairs, next) = read_copy_page(state, uuid, &page_start, COPY_PAGE_KEYS)?;
        builder.add_page(&page_start, applied_index, pairs)?;
        start = next;
    }
    builder.finish(state)
}
