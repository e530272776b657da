//! `CharmArchive`: a local charm directory packed as a deterministic tar.gz, its sha256, and the
//! chunks `UploadCharm` streams.
//!
//! The same directory contents always give the same bytes, whatever the file times, owners,
//! umask or directory listing order: entries are sorted by path, directories come as their own
//! entries (`hooks/`), every mtime is 0, uid/gid are 0 with empty owner names, and modes are
//! fixed — 0755 for directories and for files with any exec bit, 0644 for other files. The gzip
//! header carries mtime 0 and no file name. Symlinks and other special files are refused: the
//! server could not know what they point at.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use starling_proto::controller::CharmChunk;
use starling_proto::limits::{BLOB_BYTES_MAX, BLOB_CHUNK_BYTES_MAX};

/// The file every charm has at its root.
pub const METADATA_FILE: &str = "metadata.yaml";

/// The keys of `metadata.yaml` that `ctl` reads itself (the server reads the rest).
#[derive(Debug, Deserialize)]
struct MetadataName {
    name: Option<String>,
}

/// A packed charm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharmArchive {
    /// The charm's `name` from `metadata.yaml`.
    pub name: String,
    /// The tar.gz bytes.
    pub bytes: Vec<u8>,
    /// Hex sha256 of `bytes`.
    pub digest: String,
}

impl CharmArchive {
    /// Packs the charm directory `dir`.
    pub fn pack(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "charm \"{}\" is not a directory (only local charm directories can be deployed)",
                dir.display()
            );
        }
        let metadata_path = dir.join(METADATA_FILE);
        let metadata = std::fs::read_to_string(&metadata_path)
            .with_context(|| format!("cannot read {}", metadata_path.display()))?;
        let name = charm_name(&metadata)
            .with_context(|| format!("invalid {}", metadata_path.display()))?;
        let bytes = pack_dir(dir)?;
        if bytes.len() as u64 > BLOB_BYTES_MAX {
            bail!(
                "charm \"{}\" packs to {} bytes, more than the limit of {BLOB_BYTES_MAX}",
                dir.display(),
                bytes.len()
            );
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        Ok(Self {
            name,
            bytes,
            digest,
        })
    }

    /// The number of `UploadCharm` chunks.
    pub fn chunk_count(&self) -> usize {
        self.bytes.len().div_ceil(BLOB_CHUNK_BYTES_MAX).max(1)
    }

    /// Chunk `idx` of the upload. Every chunk names the digest and total size, so a server may
    /// read them from the first one.
    pub fn chunk(&self, idx: usize) -> CharmChunk {
        let start = (idx * BLOB_CHUNK_BYTES_MAX).min(self.bytes.len());
        let end = (start + BLOB_CHUNK_BYTES_MAX).min(self.bytes.len());
        CharmChunk {
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            offset: start as u64,
            data: self.bytes[start..end].to_vec(),
        }
    }
}

/// The `name` key of a `metadata.yaml`.
pub fn charm_name(metadata: &str) -> Result<String> {
    let parsed: MetadataName = serde_saphyr::from_str(metadata).context("not valid YAML")?;
    match parsed.name {
        Some(name) if !name.trim().is_empty() => Ok(name),
        _ => bail!("the charm has no name"),
    }
}

/// Every path under `root` (relative, `/`-separated), sorted, directories before their contents.
fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root");
            let Some(rel) = rel.to_str() else {
                bail!("charm file name {} is not UTF-8", path.display());
            };
            let file_type = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if file_type.is_dir() {
                pending.push(path.clone());
                out.push((format!("{rel}/"), path));
            } else if file_type.is_file() {
                out.push((rel.to_string(), path));
            } else {
                bail!(
                    "charm file {} is not a regular file or directory (symlinks are not supported)",
                    path.display()
                );
            }
        }
    }
    // Byte order of the paths: "hooks/" sorts before "hooks/install".
    out.sort();
    Ok(out)
}

fn pack_dir(root: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(encoder);
    for (rel, path) in walk(root)? {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("").context("tar header")?;
        header.set_groupname("").context("tar header")?;
        if rel.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &rel, std::io::empty())
                .with_context(|| format!("cannot pack {}", path.display()))?;
        } else {
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mode = std::fs::metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .permissions()
                .mode();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, &rel, data.as_slice())
                .with_context(|| format!("cannot pack {}", path.display()))?;
        }
    }
    let mut encoder = tar
        .into_inner()
        .context("cannot finish the charm archive")?;
    encoder
        .flush()
        .context("cannot compress the charm archive")?;
    encoder
        .finish()
        .context("cannot compress the charm archive")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, rel: &str, text: &str, mode: u32) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn charm(dir: &Path, hook_mode: u32) {
        write(
            dir,
            "metadata.yaml",
            "name: counter\nsummary: counts\n",
            0o644,
        );
        write(dir, "hooks/install", "#!/bin/sh\n", hook_mode);
        write(dir, "hooks/start", "#!/bin/sh\n", hook_mode);
        write(dir, "counter.sh", "#!/bin/sh\n", 0o700);
    }

    fn entries(bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_str().unwrap().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn packing_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        charm(a.path(), 0o755);
        // Same contents, written in another order, with other exec bits and later.
        write(b.path(), "counter.sh", "#!/bin/sh\n", 0o751);
        write(b.path(), "hooks/start", "#!/bin/sh\n", 0o700);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write(b.path(), "hooks/install", "#!/bin/sh\n", 0o711);
        write(
            b.path(),
            "metadata.yaml",
            "name: counter\nsummary: counts\n",
            0o600,
        );
        let first = CharmArchive::pack(a.path()).unwrap();
        assert_eq!(first, CharmArchive::pack(a.path()).unwrap());
        assert_eq!(first, CharmArchive::pack(b.path()).unwrap());
        assert_eq!(first.name, "counter");
        assert_eq!(first.digest.len(), 64);
    }

    #[test]
    fn entries_are_sorted_with_fixed_headers() {
        let dir = tempfile::tempdir().unwrap();
        charm(dir.path(), 0o744);
        let archive = CharmArchive::pack(dir.path()).unwrap();
        assert_eq!(
            entries(&archive.bytes),
            [
                ("counter.sh".to_string(), 0o755, 0, 0),
                ("hooks/".to_string(), 0o755, 0, 0),
                ("hooks/install".to_string(), 0o755, 0, 0),
                ("hooks/start".to_string(), 0o755, 0, 0),
                ("metadata.yaml".to_string(), 0o644, 0, 0),
            ]
        );
        // The gzip header's mtime (bytes 4..8) is zero.
        assert_eq!(&archive.bytes[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn content_changes_change_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        charm(dir.path(), 0o755);
        let before = CharmArchive::pack(dir.path()).unwrap().digest;
        std::fs::set_permissions(
            dir.path().join("hooks/start"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_ne!(CharmArchive::pack(dir.path()).unwrap().digest, before);
    }

    #[test]
    fn chunks_cover_the_archive_in_order() {
        let archive = CharmArchive {
            name: "x".into(),
            bytes: (0..(2 * BLOB_CHUNK_BYTES_MAX + 5))
                .map(|i| i as u8)
                .collect(),
            digest: "d".into(),
        };
        assert_eq!(archive.chunk_count(), 3);
        let mut joined = Vec::new();
        for idx in 0..archive.chunk_count() {
            let chunk = archive.chunk(idx);
            assert_eq!(chunk.offset as usize, joined.len());
            assert_eq!(chunk.size as usize, archive.bytes.len());
            assert!(chunk.data.len() <= BLOB_CHUNK_BYTES_MAX);
            joined.extend_from_slice(&chunk.data);
        }
        assert_eq!(joined, archive.bytes);
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let err = CharmArchive::pack(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = CharmArchive::pack(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("metadata.yaml"), "{err:#}");
        write(dir.path(), "metadata.yaml", "summary: no name\n", 0o644);
        let err = CharmArchive::pack(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("no name"), "{err:#}");
        write(dir.path(), "metadata.yaml", "name: x\n", 0o644);
        std::os::unix::fs::symlink("metadata.yaml", dir.path().join("link")).unwrap();
        let err = CharmArchive::pack(dir.path()).unwrap_err();
        assert!(err.to_string().contains("symlinks"), "{err}");
    }

    #[test]
    fn archive_round_trips_contents() {
        let dir = tempfile::tempdir().unwrap();
        charm(dir.path(), 0o755);
        let archive = CharmArchive::pack(dir.path()).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.bytes.as_slice()));
        let mut found = false;
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("metadata.yaml") {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert_eq!(text, "name: counter\nsummary: counts\n");
                found = true;
            }
        }
        assert!(found);
    }
}
