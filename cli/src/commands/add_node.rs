//! `ctl add-node`: asks the controller for a new node (AddNode) and writes the data dir it
//! returns; the node joins as a learner when started and is promoted once it has caught up.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::Serialize;
use starling_proto::controller::AddNodeRequest;

use super::{Context, ControllerArg};
use crate::format::parse_duration;
use crate::render::{structured, Format};
use crate::Output;

/// Arguments of `ctl add-node`.
#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    controller: ControllerArg,
    /// The gRPC address (host:port) the new node will serve (peers and clients).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
    /// The HTTP side port address (host:port) for metrics and health.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_address: String,
    /// The new node's data dir; must be empty or absent.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How long to wait for the controller to answer (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// `ctl add-node --format yaml|json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddNodeView {
    /// The new node's id.
    pub node_id: u64,
    /// Where its data dir was written.
    pub data_dir: String,
    /// The files written, relative to the data dir.
    pub files: Vec<String>,
}

/// Refuses a data dir that exists and is not an empty directory.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("data dir {} is not empty", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot use data dir {}", dir.display())),
    }
}

/// Writes `files` (relative paths) under `dir`, creating parent dirs (0700). Every file is
/// written 0600: they include the node's key and credentials, and only `ctld` reads them.
pub fn write_data_dir<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (name, bytes) in files {
        let rel = Path::new(name);
        if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!("the controller sent a file with an unsafe path \"{name}\"");
        }
        let path = dir.join(rel);
        let parent = path.parent().unwrap_or(dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(name.clone());
    }
    Ok(written)
}

/// Runs `ctl add-node`.
pub async fn run(ctx: &Context, args: AddNodeArgs) -> Result<Output> {
    // Check before asking, so a node id is not spent on a dir we cannot use.
    check_data_dir(&args.data_dir)?;
    let client = ctx.connect(args.controller.controller.as_deref(), None, args.timeout)?;
    let request = AddNodeRequest {
        address: args.address.clone(),
        http_address: args.http_address.clone(),
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_node(request).await }
        })
        .await?;
    check_data_dir(&args.data_dir)?;
    let mut files: Vec<_> = response.files.iter().collect();
    files.sort();
    let written = write_data_dir(&args.data_dir, files)?;
    let data_dir = args.data_dir.display().to_string();
    let view = AddNodeView {
        node_id: response.node_id,
        data_dir: data_dir.clone(),
        files: written,
    };
    if let Some(text) = structured(ctx.format_or(Format::Tabular), &view)? {
        return Ok(Output::stdout(text));
    }
    Ok(Output::stdout(format!(
        "Node {} added to controller \"{}\".\nstart it with: ctld run --data-dir {data_dir}\n",
        view.node_id,
        client.controller()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_files_0600_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node4");
        check_data_dir(&target).unwrap();
        let files = BTreeMap::from([
            ("node.yaml".to_string(), b"id: 4\n".to_vec()),
            ("tls/node.key".to_string(), b"KEY".to_vec()),
        ]);
        let mut written = write_data_dir(&target, files.iter()).unwrap();
        written.sort();
        assert_eq!(written, ["node.yaml", "tls/node.key"]);
        assert_eq!(fs::read(target.join("tls/node.key")).unwrap(), b"KEY");
        assert_eq!(
            fs::metadata(target.join("tls/node.key")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(target.join("tls")).unwrap().mode() & 0o777,
            0o700
        );
        let err = check_data_dir(&target).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }

    #[test]
    fn refuses_unsafe_paths() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a/../../x", ""] {
            let files = BTreeMap::from([(bad.to_string(), b"x".to_vec())]);
            assert!(write_data_dir(dir.path(), files.iter()).is_err(), "{bad}");
        }
    }
}
