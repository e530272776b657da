//! A node's data dir: its identity (which controller, which node, its addresses and peers), its
//! credentials, and the file layout both `ctld init` and `ctld run` agree on.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
pub use starling_daemon::files::{write_file_atomic, write_yaml};

/// `identity.yaml`: who this node is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct NodeIdentity {
    /// The controller's name.
    pub controller_name: String,
    /// The controller's uuid; every data dir and peer request is checked against it.
    pub controller_uuid: String,
    /// This node's Raft id.
    pub node_id: u64,
    /// The version this controller advertises.
    pub version: String,
    /// The cloud the controller runs in.
    pub cloud: String,
    /// The region the controller runs in.
    pub region: String,
    /// The gRPC address (peers and clients) this node listens on.
    pub address: String,
    /// The HTTPS side port (metrics, health) this node listens on.
    pub http_address: String,
    /// True for the members `ctld init` created: they form the group on first start.
    pub bootstrap: bool,
    /// The initial members (id and gRPC address); empty for nodes added later.
    #[serde(default)]
    pub initial_members: Vec<Member>,
}

/// One initial member of the group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub address: String,
}

/// `auth.yaml`: the users that may call the client API, with their tokens hashed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct AuthFile {
    /// Known users.
    pub users: Vec<UserEntry>,
}

/// One user of the client API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct UserEntry {
    /// User name.
    pub name: String,
    /// Hex sha256 of the user's bearer token.
    pub token_sha256: String,
    /// "superuser" for the admin.
    pub access: String,
}

/// The paths inside a node's data dir.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `identity.yaml`.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.yaml")
    }
    /// `auth.yaml`.
    pub fn auth(&self) -> PathBuf {
        self.root.join("auth.yaml")
    }
    /// The controller's CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The controller's CA key (signs certificates of nodes added later).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    /// This node's certificate.
    pub fn node_cert(&self) -> PathBuf {
        self.root.join("node.pem")
    }
    /// This node's key.
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node-key.pem")
    }
    /// Where Raft and the state machine keep their data.
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Reads and parses `identity.yaml`.
    pub fn read_identity(&self) -> anyhow::Result<NodeIdentity> {
        let path = self.identity();
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a node data dir made by `ctld init`?)",
                path.display(),
                self.root.display()
            )
        })?;
        let identity: NodeIdentity = serde_saphyr::from_str(&text)
            .with_context(|| format!("malformed {}", path.display()))?;
        if identity.controller_uuid.is_empty() || identity.node_id == 0 {
            bail!("{} names no controller uuid or node id 0", path.display());
        }
        Ok(identity)
    }

    /// Reads and parses `auth.yaml`.
    pub fn read_auth(&self) -> anyhow::Result<AuthFile> {
        let path = self.auth();
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("malformed {}", path.display()))
    }

    /// Reads a PEM file of this dir.
    pub fn read_pem(&self, path: &Path) -> anyhow::Result<String> {
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_round_trips_through_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(dir.path());
        let identity = NodeIdentity {
            controller_name: "alpha".into(),
            controller_uuid: "u-1".into(),
            node_id: 2,
            version: "0.1.0".into(),
            cloud: "local".into(),
            region: "default".into(),
            address: "127.0.0.1:1".into(),
            http_address: "127.0.0.1:2".into(),
            bootstrap: true,
            initial_members: vec![Member {
                id: 2,
                address: "127.0.0.1:1".into(),
            }],
        };
        write_yaml(&data_dir.identity(), &identity, 0o600).unwrap();
        assert_eq!(data_dir.read_identity().unwrap(), identity);
        let mode = fs::metadata(data_dir.identity())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_identity_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = DataDir::new(dir.path()).read_identity().unwrap_err();
        assert!(format!("{err:#}").contains("ctld init"), "{err:#}");
    }
}
