//! The source's side of the bulk import: streams the model description and the charms the
//! target lacks to a node of the target (which fans them out to its group), each file from
//! where that node's copy stops, so a broken stream resumes without re-sending a byte. Charms
//! the target already holds (content-addressed by sha256) are neither sent nor named.

use std::sync::Arc;

use starling_proto::limits::STAGE_CHUNK_BYTES_MAX;
use starling_proto::migration as pb;
use starling_raft::store::StateView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, warn};

use super::failpoint_value;
use super::peer::{retryable, Peer};

/// Broken streams in a row, without a byte of progress, before staging gives up for this step
/// (the master retries later, paced).
const STALLED_STREAMS_MAX: u32 = 3;

/// Where the bytes of a file to stage come from.
#[derive(Clone)]
pub enum Content {
    /// In memory (the model description).
    Bytes(Arc<Vec<u8>>),
    /// A blob of this controller's state (a charm).
    Blob(StateView),
}

/// A file to stage.
#[derive(Clone)]
pub struct Outgoing {
    /// Its name (sha256) and size.
    pub file: pb::StagedFile,
    /// Its bytes.
    pub content: Content,
}

/// What staging did.
#[derive(Clone, Debug, Default)]
pub struct Staged {
    /// The files the import must name: every file the target does not hold as a blob.
    pub files: Vec<pb::StagedFile>,
    /// Bytes sent by this call (what the target lacked).
    pub bytes_sent: u64,
    /// Bytes of the files the import names (what it covers, sent now or before).
    pub bytes_staged: u64,
}

/// Stages `files` of migration `migration_id` on the target `peer`. `progress` hears the bytes
/// sent so far and the bytes to send.
pub async fn stage(
    peer: &Peer,
    migration_id: &str,
    source: &pb::SourceController,
    files: &[Outgoing],
    progress: impl Fn(u64, u64),
) -> Result<Staged, Status> {
    let request = pb::StageStatusRequest {
        migration_id: migration_id.to_owned(),
        files: files.iter().map(|f| f.file.clone()).collect(),
        controller_uuid: String::new(),
    };
    let states = status(peer, &request).await?;
    let mut staged = Staged::default();
    let mut to_send = 0;
    for (outgoing, state) in files.iter().zip(&states) {
        if state.present {
            info!(migration = migration_id, digest = %outgoing.file.digest, "the target holds this charm already; not sending it");
            continue;
        }
        staged.files.push(outgoing.file.clone());
        staged.bytes_staged += outgoing.file.size;
        to_send += outgoing.file.size - state.staged_bytes.min(outgoing.file.size);
    }
    progress(0, to_send);
    for (outgoing, mut state) in files.iter().zip(states) {
        if state.present {
            continue;
        }
        let size = outgoing.file.size;
        let digest = outgoing.file.digest.as_str();
        let mut stalled = 0;
        while !state.complete {
            let offset = state.staged_bytes.min(size);
            if offset > 0 {
                info!(
                    migration = migration_id,
                    digest, offset, size, "resuming staging where the target stopped"
                );
            }
            let result = send_file(peer, migration_id, source, outgoing, offset).await;
            // Whatever happened, the target says where its copy is now.
            let now = status(
                peer,
                &pb::StageStatusRequest {
                    files: vec![outgoing.file.clone()],
                    ..request.clone()
                },
            )
            .await?
            .remove(0);
            let sent = now.staged_bytes.saturating_sub(offset);
            staged.bytes_sent += sent;
            progress(staged.bytes_sent, to_send);
            match result {
                Ok(()) if now.complete => {}
                Ok(()) => warn!(
                    migration = migration_id,
                    digest,
                    held = now.staged_bytes,
                    size,
                    "the target closed a staging stream early"
                ),
                Err(status) if !retryable(&status) => return Err(status),
                Err(status) => {
                    warn!(migration = migration_id, digest, error = %status.message(), "a staging stream broke")
                }
            }
            stalled = if sent == 0 { stalled + 1 } else { 0 };
            if stalled >= STALLED_STREAMS_MAX && !now.complete {
                return Err(Status::unavailable(format!(
                    "staging {digest} made no progress in {STALLED_STREAMS_MAX} streams"
                )));
            }
            state = now;
        }
    }
    Ok(staged)
}

async fn status(
    peer: &Peer,
    request: &pb::StageStatusRequest,
) -> Result<Vec<pb::StagedFileState>, Status> {
    let answer = peer
        .call(|mut c| {
            let r = request.clone();
            async move { c.stage_status(r).await }
        })
        .await?;
    if answer.files.len() != request.files.len()
        || answer
            .files
            .iter()
            .zip(&request.files)
            .any(|(a, f)| a.digest != f.digest)
    {
        return Err(Status::internal(
            "the target answered about other files than asked",
        ));
    }
    Ok(answer.files)
}

/// One stream of `outgoing` from `offset`, to the target's node that answered last.
async fn send_file(
    peer: &Peer,
    migration_id: &str,
    source: &pb::SourceController,
    outgoing: &Outgoing,
    offset: u64,
) -> Result<(), Status> {
    // Tests make chunks small to break a stream in the middle of a small model.
    let chunk_bytes = failpoint_value("migration.source.stage-chunk-bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(STAGE_CHUNK_BYTES_MAX)
        .min(STAGE_CHUNK_BYTES_MAX);
    let corrupt = failpoint_value("migration.source.stage-corrupt");
    let (tx, rx) = mpsc::channel(2);
    let template = pb::StageFileChunk {
        migration_id: migration_id.to_owned(),
        digest: outgoing.file.digest.clone(),
        size: outgoing.file.size,
        ..Default::default()
    };
    let (content, size, source) = (outgoing.content.clone(), outgoing.file.size, source.clone());
    // Reading runs ahead of the network by the channel's two chunks.
    let reader = tokio::task::spawn_blocking(move || {
        let mut offset = offset;
        let mut first = true;
        loop {
            let data = match &content {
                Content::Bytes(bytes) => {
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    let end = (start + chunk_bytes).min(bytes.len());
                    bytes[start..end].to_vec()
                }
                Content::Blob(state) => {
                    if offset >= size {
                        Vec::new()
                    } else {
                        match state.blob_range(&template.digest, offset, chunk_bytes as u64) {
                            Ok(Some(piece)) if !piece.is_empty() => piece,
                            Ok(_) => {
                                return Err(format!(
                                    "charm {} is shorter than its header says",
                                    template.digest
                                ))
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }
            };
            // The first chunk also opens the stream (it may be empty when resuming at the end).
            if data.is_empty() && !first {
                return Ok(());
            }
            let next = offset + data.len() as u64;
            // Tests corrupt what is sent, to see the target refuse the file.
            let mut data = data;
            if let (Some(_), Some(byte)) = (corrupt.as_ref(), data.first_mut()) {
                *byte ^= 0xff;
            }
            let chunk = pb::StageFileChunk {
                offset,
                data,
                source: first.then(|| source.clone()),
                ..template.clone()
            };
            first = false;
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
            offset = next;
            if offset >= size {
                return Ok(());
            }
        }
    });
    let answer = peer
        .call_preferred(|mut c| async move { c.stage_file(ReceiverStream::new(rx)).await })
        .await;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Status::internal(format!("reading a file to stage: {e}"))),
        Err(e) => return Err(Status::internal(format!("the staging reader failed: {e}"))),
    }
    answer.map(|_| ())
}
