//! `ctl register FILE`: adds a controller, its account and its `controller` model to the client
//! store from the registration file `ctld init` writes, and makes it current.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::Deserialize;

use super::Context;
use crate::store::{AccountDetails, ControllerDetails};
use crate::Output;

/// Arguments of `ctl register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The registration file (`-` for stdin).
    pub file: PathBuf,
    /// Register under this name instead of the file's `name`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Overwrite a controller already registered under the same name.
    #[arg(long)]
    pub replace: bool,
}

/// The registration file `ctld init` writes (YAML, kebab-case keys; unknown keys are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RegistrationFile {
    /// The controller's name.
    pub name: String,
    /// The controller's UUID.
    pub uuid: String,
    /// Client endpoints (host:port) of every node.
    pub api_endpoints: Vec<String>,
    /// The controller's CA certificate (PEM).
    pub ca_cert: String,
    /// Cloud.
    #[serde(default)]
    pub cloud: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// The controller's version.
    #[serde(default)]
    pub version: String,
    /// The user the token belongs to.
    #[serde(default = "default_user")]
    pub user: String,
    /// The bearer token.
    pub token: String,
}

fn default_user() -> String {
    "admin".to_string()
}

impl RegistrationFile {
    /// Parses and checks a registration file.
    pub fn parse(text: &str) -> Result<Self> {
        let mut file: Self = serde_saphyr::from_str(text).context("invalid registration file")?;
        if file.user.is_empty() {
            file.user = default_user();
        }
        if file.uuid.is_empty() {
            bail!("invalid registration file: uuid is empty");
        }
        if file.api_endpoints.is_empty() {
            bail!("invalid registration file: api-endpoints is empty");
        }
        if !file.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
            bail!("invalid registration file: ca-cert is not a PEM certificate");
        }
        if file.token.is_empty() {
            bail!("invalid registration file: token is empty");
        }
        if file.user.contains(['/', ':']) {
            bail!("invalid registration file: invalid user \"{}\"", file.user);
        }
        Ok(file)
    }
}

/// Runs `ctl register`.
pub fn run(ctx: &Context, args: RegisterArgs) -> Result<Output> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the registration file from stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let file = RegistrationFile::parse(&text)?;
    let name = args.name.unwrap_or_else(|| file.name.clone());
    let details = ControllerDetails {
        uuid: file.uuid,
        node_count: file.api_endpoints.len(),
        api_endpoints: file.api_endpoints,
        ca_cert: file.ca_cert,
        cloud: file.cloud,
        region: file.region,
        agent_version: file.version,
    };
    let account = AccountDetails {
        user: file.user,
        token: file.token,
        last_known_access: "superuser".to_string(),
    };
    ctx.store
        .update(|state| state.add_controller(&name, details, account, args.replace))?;
    Ok(Output::stdout(format!(
        "Controller \"{name}\" registered.\n"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = "\
name: alpha
uuid: 6f9a3c2e-0000-4000-8000-000000000001
api-endpoints:
  - 127.0.0.1:17071
  - 127.0.0.1:17072
ca-cert: |
  -----BEGIN CERTIFICATE-----
  MIIB
  -----END CERTIFICATE-----
cloud: localhost
region: default
version: 0.1.0
user: admin
token: tok
extra-key: ignored
";

    #[test]
    fn parses_all_keys() {
        let f = RegistrationFile::parse(SAMPLE).unwrap();
        assert_eq!(f.name, "alpha");
        assert_eq!(f.api_endpoints.len(), 2);
        assert!(f.ca_cert.starts_with("-----BEGIN CERTIFICATE-----\nMIIB\n"));
        assert_eq!(
            (f.cloud.as_str(), f.region.as_str()),
            ("localhost", "default")
        );
        assert_eq!(
            (f.version.as_str(), f.user.as_str(), f.token.as_str()),
            ("0.1.0", "admin", "tok")
        );
    }

    #[test]
    fn empty_user_means_admin() {
        let f = RegistrationFile::parse(&SAMPLE.replace("user: admin", "user: ''")).unwrap();
        assert_eq!(f.user, "admin");
        let f = RegistrationFile::parse(&SAMPLE.replace("user: admin\n", "")).unwrap();
        assert_eq!(f.user, "admin");
    }

    #[test]
    fn refuses_incomplete_files() {
        assert!(RegistrationFile::parse("name: a\n").is_err());
        let no_endpoints = SAMPLE
            .replace("  - 127.0.0.1:17071\n  - 127.0.0.1:17072\n", "")
            .replace("api-endpoints:\n", "api-endpoints: []\n");
        let err = RegistrationFile::parse(&no_endpoints)
            .unwrap_err()
            .to_string();
        assert!(err.contains("api-endpoints"), "{err}");
    }
}
