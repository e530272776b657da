//! `ctld init`: creates a controller — its uuid, CA and admin credential — and the data dir of
//! every initial node, plus the registration file `ctl register` reads.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::auth;
use crate::identity::{write_file_atomic, AuthFile, DataDir, Member, NodeIdentity, UserEntry};
use crate::pki::{self, CertKeyPem};

/// One initial node as given on the command line: `ID,GRPC_ADDR,HTTP_ADDR`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Raft id (≥ 1).
    pub id: u64,
    /// gRPC address host:port.
    pub address: String,
    /// HTTPS side port host:port.
    pub http_address: String,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').collect();
        let [id, address, http_address] = parts.as_slice() else {
            return Err(format!("expected ID,GRPC_ADDR,HTTP_ADDR, got {s:?}"));
        };
        let id: u64 = id
            .parse()
            .map_err(|_| format!("node id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err("node id 0 is reserved".into());
        }
        for addr in [address, http_address] {
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("{addr:?} is not host:port"));
            }
        }
        Ok(Self {
            id,
            address: address.to_string(),
            http_address: http_address.to_string(),
        })
    }
}

/// What `ctld init` needs.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Controller name.
    pub name: String,
    /// Where to create `node-ID/` dirs and `registration.yaml`.
    pub out: PathBuf,
    /// The initial members.
    pub nodes: Vec<NodeSpec>,
    /// Cloud name.
    pub cloud: String,
    /// Region name.
    pub region: String,
    /// Advertised version.
    pub version: String,
}

/// The registration file `ctl register` reads.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Registration<'a> {
    name: &'a str,
    uuid: &'a str,
    api_endpoints: Vec<&'a str>,
    ca_cert: &'a str,
    cloud: &'a str,
    region: &'a str,
    version: &'a str,
    user: &'a str,
    token: &'a str,
}

/// The files of one node's data dir: relative path → (contents, mode).
pub fn node_files(
    identity: &NodeIdentity,
    auth: &AuthFile,
    ca: &CertKeyPem,
    node: &CertKeyPem,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>> {
    let mut files = BTreeMap::new();
    files.insert(
        "identity.yaml".to_string(),
        (serde_saphyr::to_string(identity)?.into_bytes(), 0o600),
    );
    files.insert(
        "auth.yaml".to_string(),
        (serde_saphyr::to_string(auth)?.into_bytes(), 0o600),
    );
    files.insert("ca.pem".to_string(), (ca.cert.clone().into_bytes(), 0o644));
    files.insert(
        "ca-key.pem".to_string(),
        (ca.key.clone().into_bytes(), 0o600),
    );
    files.insert(
        "node.pem".to_string(),
        (node.cert.clone().into_bytes(), 0o644),
    );
    files.insert(
        "node-key.pem".to_string(),
        (node.key.clone().into_bytes(), 0o600),
    );
    Ok(files)
}

/// Writes `files` into `dir`, which must be absent or empty.
pub fn write_node_dir(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<()> {
    if dir.exists()
        && fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: refusing to overwrite another node's data dir",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for (name, (contents, mode)) in files {
        write_file_atomic(&dir.join(name), contents, *mode)?;
    }
    Ok(())
}

/// Creates the controller. Returns the path of the registration file.
pub fn init(options: &InitOptions) -> Result<PathBuf> {
    if options.nodes.is_empty() {
        bail!("give at least one --node ID,GRPC_ADDR,HTTP_ADDR");
    }
    let mut ids: Vec<u64> = options.nodes.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != options.nodes.len() {
        bail!("node ids must be unique");
    }
    if !valid_name(&options.name) {
        bail!(
            "invalid controller name {:?}: use lowercase letters, digits and '-', starting with a letter",
            options.name
        );
    }
    let controller_uuid = uuid::Uuid::new_v4().to_string();
    let ca = pki::new_ca(&options.name, &controller_uuid)?;
    let token = auth::new_token();
    let auth_file = AuthFile {
        users: vec![UserEntry {
            name: "admin".into(),
            token_sha256: auth::hash_token(&token),
            access: "superuser".into(),
        }],
    };
    let members: Vec<Member> = options
        .nodes
        .iter()
        .map(|n| Member {
            id: n.id,
            address: n.address.clone(),
        })
        .collect();
    fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    for spec in &options.nodes {
        let identity = NodeIdentity {
            controller_name: options.name.clone(),
            controller_uuid: controller_uuid.clone(),
            node_id: spec.id,
            version: options.version.clone(),
            cloud: options.cloud.clone(),
            region: options.region.clone(),
            address: spec.address.clone(),
            http_address: spec.http_address.clone(),
            bootstrap: true,
            initial_members: members.clone(),
        };
        let hosts = [
            pki::host_of(&spec.address),
            pki::host_of(&spec.http_address),
        ];
        let node = pki::new_node_cert(&ca, spec.id, &hosts)?;
        let files = node_files(&identity, &auth_file, &ca, &node)?;
        let dir = DataDir::new(options.out.join(format!("node-{}", spec.id)));
        write_node_dir(dir.root(), &files)?;
    }
    let registration = Registration {
        name: &options.name,
        uuid: &controller_uuid,
        api_endpoints: options.nodes.iter().map(|n| n.address.as_str()).collect(),
        ca_cert: &ca.cert,
        cloud: &options.cloud,
        region: &options.region,
        version: &options.version,
        user: "admin",
        token: &token,
    };
    let path = options.out.join("registration.yaml");
    write_file_atomic(
        &path,
        serde_saphyr::to_string(&registration)?.as_bytes(),
        0o600,
    )?;
    Ok(path)
}

/// Controller and model names: lowercase letters, digits and '-', starting with a letter.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_parse_and_reject_garbage() {
        let spec: NodeSpec = "2,127.0.0.1:7001,127.0.0.1:8001".parse().unwrap();
        assert_eq!(spec.id, 2);
        for bad in ["", "0,a:1,b:2", "x,a:1,b:2", "1,a,b:2", "1,a:1"] {
            assert!(bad.parse::<NodeSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn init_writes_every_node_dir_and_refuses_to_overwrite() {
        let out = tempfile::tempdir().unwrap();
        let options = InitOptions {
            name: "alpha".into(),
            out: out.path().to_path_buf(),
            nodes: vec![
                "1,127.0.0.1:7001,127.0.0.1:8001".parse().unwrap(),
                "2,127.0.0.1:7002,127.0.0.1:8002".parse().unwrap(),
            ],
            cloud: "local".into(),
            region: "default".into(),
            version: "0.1.0".into(),
        };
        let registration = init(&options).unwrap();
        let text = fs::read_to_string(registration).unwrap();
        assert!(text.contains("api-endpoints"), "{text}");
        let a = DataDir::new(out.path().join("node-1"))
            .read_identity()
            .unwrap();
        let b = DataDir::new(out.path().join("node-2"))
            .read_identity()
            .unwrap();
        assert_eq!(a.controller_uuid, b.controller_uuid);
        assert_eq!(a.initial_members.len(), 2);
        let err = init(&options).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    #[test]
    fn names_follow_the_rules() {
        assert!(valid_name("alpha-2"));
        for bad in ["", "Alpha", "2x", "a_b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
