//! The registration file `ctld init` writes (`registration.yaml`): what a client needs to reach
//! and authenticate to a controller as its admin user.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// A controller's registration: identity, endpoints, CA and the admin credential.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Registration {
    /// Controller name.
    pub name: String,
    /// Controller UUID.
    pub uuid: String,
    /// Client endpoints (host:port) of every node.
    pub api_endpoints: Vec<String>,
    /// The controller CA certificate, PEM.
    pub ca_cert: String,
    /// Cloud the controller runs in.
    #[serde(default)]
    pub cloud: String,
    /// Region the controller runs in.
    #[serde(default)]
    pub region: String,
    /// Version the controller advertises.
    #[serde(default)]
    pub version: String,
    /// The admin user name.
    #[serde(default)]
    pub user: String,
    /// The admin bearer token.
    pub token: String,
}

impl Registration {
    /// Reads and parses a registration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}
