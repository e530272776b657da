//! Atomic file writes: a reader sees the old file or the new one, never a torn one, and the new
//! one is on the device before the call returns (temp file, fsync, rename, fsync of the dir).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync of the dir) with the
/// given mode.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent dir", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(contents)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync dir {}", dir.display()))?;
    Ok(())
}

/// Serializes `value` as YAML into `path` atomically.
pub fn write_yaml<T: Serialize>(path: &Path, value: &T, mode: u32) -> anyhow::Result<()> {
    let text = serde_saphyr::to_string(value).context("cannot encode yaml")?;
    write_file_atomic(path, text.as_bytes(), mode)
}
