//! `CharmStore`: charms downloaded through `Agent.DownloadCharm`, verified against their sha256
//! and unpacked once into `<data>/charms/<digest>/` — into a temporary directory first, renamed
//! into place, so a charm directory either is complete or does not exist.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use starling_proto::agent::AgentDownloadRequest;
use starling_proto::limits::BLOB_BYTES_MAX;
use tokio_stream::StreamExt;

use crate::session::ControllerCaller;

/// The deadline of one whole download.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The unpacked charms of one machine.
#[derive(Clone, Debug)]
pub struct CharmStore {
    root: PathBuf,
}

impl CharmStore {
    /// Charms under `<data_dir>/charms`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("charms"),
        }
    }

    /// The directory the charm with `digest` unpacks to.
    pub fn dir(&self, digest: &str) -> PathBuf {
        self.root.join(digest)
    }

    /// Whether the charm is already unpacked.
    pub fn has(&self, digest: &str) -> bool {
        valid_digest(digest) && self.dir(digest).is_dir()
    }

    /// Verifies `bytes` against `digest` and unpacks them into [`CharmStore::dir`]; a charm
    /// already there is kept.
    pub fn install(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf> {
        ensure!(valid_digest(digest), "invalid charm digest \"{digest}\"");
        let actual = hex::encode(Sha256::digest(bytes));
        ensure!(
            actual == digest,
            "charm digest mismatch: expected {digest}, downloaded {actual}"
        );
        let dest = self.dir(digest);
        if dest.is_dir() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let tmp = self
            .root
            .join(format!(".tmp-{digest}-{}", rand::random::<u64>()));
        let result = unpack(bytes, &tmp).and_then(|()| {
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot rename into {}", dest.display()))?;
            std::fs::File::open(&self.root)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", self.root.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| dest)
    }
}

/// A hex sha256: the only thing allowed as a directory name here.
fn valid_digest(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Unpacks a charm tar.gz into `dest` (created), refusing anything but plain files and
/// directories with relative paths that stay inside `dest`.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive.entries().context("malformed charm archive")?;
    for entry in entries {
        let mut entry = entry.context("malformed charm archive")?;
        let raw = entry.path().context("malformed charm path")?.into_owned();
        let rel = safe_relative(&raw)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut contents = Vec::new();
            entry
                .read_to_end(&mut contents)
                .context("malformed charm archive")?;
            std::fs::write(&target, &contents)
                .with_context(|| format!("cannot write {}", target.display()))?;
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        } else {
            bail!(
                "charm entry \"{}\" is not a regular file or directory",
                raw.display()
            );
        }
    }
    Ok(())
}

/// `path` as a relative path of plain components.
fn safe_relative(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                bail!(
                    "charm entry \"{}\" escapes the charm directory",
                    path.display()
                )
            }
        }
    }
    ensure!(
        !out.as_os_str().is_empty(),
        "charm entry \"{}\" is empty",
        path.display()
    );
    Ok(out)
}

/// Downloads the charm `digest` from the controller (whole, verified by the caller).
pub async fn download(caller: &ControllerCaller, digest: &str) -> Result<Vec<u8>> {
    let fetch = async {
        let mut client = caller.client();
        let mut stream = client
            .download_charm(caller.request(AgentDownloadRequest {
                digest: digest.to_string(),
            }))
            .await
            .map_err(|s| anyhow::anyhow!("DownloadCharm: {}", s.message()))?
            .into_inner();
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| anyhow::anyhow!("DownloadCharm: {}", s.message()))?;
            ensure!(
                chunk.size <= BLOB_BYTES_MAX,
                "charm is {} bytes, more than {BLOB_BYTES_MAX}",
                chunk.size
            );
            ensure!(
                chunk.offset == bytes.len() as u64,
                "charm chunk at offset {} where {} was expected",
                chunk.offset,
                bytes.len()
            );
            bytes.extend_from_slice(&chunk.data);
            ensure!(
                bytes.len() as u64 <= BLOB_BYTES_MAX,
                "charm is more than {BLOB_BYTES_MAX} bytes"
            );
        }
        Ok(bytes)
    };
    tokio::time::timeout(DOWNLOAD_TIMEOUT, fetch)
        .await
        .context("charm download timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(encoder);
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the name bytes directly: `set_path` refuses `..`, which is the point here.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn installs_a_verified_charm() {
        let dir = tempfile::tempdir().unwrap();
        let store = CharmStore::new(dir.path());
        let bytes = tar_gz(&[
            ("metadata.yaml", b"name: x\n"),
            ("hooks/install", b"true\n"),
        ]);
        let digest = digest(&bytes);
        let path = store.install(&digest, &bytes).unwrap();
        assert_eq!(
            std::fs::read_to_string(path.join("metadata.yaml")).unwrap(),
            "name: x\n"
        );
        assert!(path.join("hooks/install").is_file());
        assert!(store.has(&digest));
        // Installing again keeps the existing directory.
        store.install(&digest, &bytes).unwrap();
    }

    #[test]
    fn refuses_a_digest_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = CharmStore::new(dir.path());
        let bytes = tar_gz(&[("metadata.yaml", b"name: x\n")]);
        let wrong = digest(b"something else");
        let err = store.install(&wrong, &bytes).unwrap_err();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        assert!(!store.has(&wrong));
    }

    #[test]
    fn refuses_parent_dir_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = CharmStore::new(dir.path().join("data").as_path());
        let bytes = tar_gz(&[("metadata.yaml", b"x"), ("../escaped", b"x")]);
        let err = store.install(&digest(&bytes), &bytes).unwrap_err();
        assert!(format!("{err:#}").contains("escapes"), "{err:#}");
        assert!(!dir.path().join("data/charms/escaped").exists());
        assert!(!dir.path().join("data/escaped").exists());
        // The temporary directory is gone too.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("data/charms"))
            .unwrap()
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn refuses_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = CharmStore::new(dir.path());
        let bytes = tar_gz(&[("/tmp/starling-absolute", b"x")]);
        let err = store.install(&digest(&bytes), &bytes).unwrap_err();
        assert!(format!("{err:#}").contains("escapes"), "{err:#}");
    }

    #[test]
    fn refuses_invalid_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = CharmStore::new(dir.path());
        assert!(store.install("../../etc", b"").is_err());
    }
}
