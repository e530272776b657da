//! The source's half of handing the target a copy of the model: stage the copy's description
//! and the charms its applications use that the target lacks (`stager`, the bulk transfer),
//! then ask it to import them as an **importing** model whose change feed starts at
//! the copy's `feed_from_index`. This is the seam between the pre-copy protocol (the master) and
//! the transport of bytes: whatever carries the copy, the target must end up with the import
//! record `ImportStatus` describes (the copy's model digest, the feed position), because the
//! change stream, the fence and Activate build on that alone.

use std::sync::Arc;
use std::time::Instant;

use starling_proto::migration as pb;
use starling_storage::model::migration::{FeedPosition, ImportStatus, TargetCopy};
use tracing::info;

use super::peer::{retryable, Peer};
use super::stager;
use crate::context::NodeContext;

/// A copy ready to hand over: its encoded description and what the target must report after
/// importing it.
#[derive(Clone, Debug)]
pub struct PreparedCopy {
    /// The encoded `ModelDescription`.
    pub bytes: Arc<Vec<u8>>,
    /// Hex sha256 of `bytes` (the staged blob's name).
    pub description_digest: String,
    /// The charm blobs the copy's applications use.
    pub charm_digests: Vec<String>,
    /// The model digest of the copy (what the target must hold after importing it).
    pub copy_digest: String,
    /// The log index the source's feed starts at.
    pub feed_from_index: u64,
    /// Records in the copy.
    pub records: u64,
}

/// Hands `copy` to the target of migration `migration_id`: stages the description and the
/// charms the target lacks (`stager`: one stream to one target node, which fans them out to its
/// group) and asks it to import them. `source` is how the target reaches this controller.
/// `progress` hears the bytes sent so far and the bytes to send.
pub async fn stage_and_import(
    ctx: &NodeContext,
    peer: &Peer,
    migration_id: &str,
    copy: &PreparedCopy,
    source: pb::SourceController,
    progress: impl Fn(u64, u64),
) -> ImportStatus {
    let state = ctx.handle.state().clone();
    let mut files = Vec::with_capacity(copy.charm_digests.len() + 1);
    for charm in &copy.charm_digests {
        let blob = match state.blob(charm) {
            Ok(Some(blob)) => blob,
            Ok(None) => {
                return ImportStatus::Failed {
                    reason: format!("charm {charm} is missing on this controller"),
                }
            }
            Err(e) => {
                return ImportStatus::Unreachable {
                    error: format!("reading charm {charm}: {e}"),
                }
            }
        };
        files.push(stager::Outgoing {
            file: pb::StagedFile {
                digest: charm.clone(),
                size: blob.size,
            },
            content: stager::Content::Blob(state.clone()),
        });
    }
    files.push(stager::Outgoing {
        file: pb::StagedFile {
            digest: copy.description_digest.clone(),
            size: copy.bytes.len() as u64,
        },
        content: stager::Content::Bytes(copy.bytes.clone()),
    });
    let started = Instant::now();
    let staged = match stager::stage(peer, migration_id, &source, &files, progress).await {
        Ok(staged) => staged,
        Err(status) => return stage_failure(status),
    };
    let request = pb::ImportRequest {
        migration_id: migration_id.to_owned(),
        description_digest: copy.description_digest.clone(),
        source: Some(source),
        staged: staged.files,
        feed_from_index: copy.feed_from_index,
        copy_digest: copy.copy_digest.clone(),
    };
    let status = match peer
        .call(|mut c| {
            let r = request.clone();
            async move { c.import(r).await }
        })
        .await
    {
        Ok(answer) => import_answer(answer),
        Err(status) if retryable(&status) => ImportStatus::Unreachable {
            error: status.message().to_owned(),
        },
        Err(status) => ImportStatus::Failed {
            reason: format!("the target refused the import: {}", status.message()),
        },
    };
    if let ImportStatus::Imported(_) = status {
        let took = started.elapsed();
        info!(
            migration = migration_id,
            bytes = staged.bytes_staged,
            sent = staged.bytes_sent,
            records = copy.records,
            ms = took.as_millis() as u64,
            "staged and imported the copy"
        );
        ctx.progress.update(migration_id, |p| {
            p.import_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            p.import_bytes = staged.bytes_staged;
        });
    }
    status
}

/// What the target says about its import, as the decision code reads it.
pub fn import_answer(answer: pb::ImportStatusResponse) -> ImportStatus {
    use pb::import_status_response::State;
    match State::try_from(answer.state).unwrap_or(State::NotStarted) {
        State::NotStarted => ImportStatus::NotStarted,
        State::Imported | State::Active => ImportStatus::Imported(TargetCopy {
            copy_digest: answer.copy_digest,
            digest: answer.digest,
            position: answer.position.map_or_else(FeedPosition::default, |p| {
                FeedPosition::new(p.index, p.position)
            }),
            sealed_index: answer.sealed_index,
        }),
    }
}

fn stage_failure(status: tonic::Status) -> ImportStatus {
    if retryable(&status) {
        ImportStatus::Unreachable {
            error: format!("staging the model on the target: {}", status.message()),
        }
    } else {
        ImportStatus::Failed {
            reason: format!("the target refused the staged model: {}", status.message()),
        }
    }
}
