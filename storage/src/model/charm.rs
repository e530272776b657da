//! Charm metadata: `metadata.yaml` text parsed into a `CharmMeta`, and the checks a
//! `CharmMeta` carried in a command must pass. Pure: the caller reads the file.
//!
//! Understood keys: `name`, `summary`, `provides`/`requires`/`peers` (endpoint → `{interface: X}`
//! or the short form endpoint → `X`), `command`, `hooks` (hook name → command) and
//! `config: {options: {KEY: {default: V, description: D, type: T}}}`. Other keys are ignored, as
//! Juju ignores keys it does not know.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use starling_proto::model::{CharmMeta, Endpoint, Role};

use super::names;
use super::ModelError;

/// Largest `metadata.yaml` accepted.
pub const METADATA_BYTES_MAX: usize = 64 * 1024;
/// Most endpoints, hooks or config options a charm may declare (each).
pub const CHARM_ITEMS_MAX: usize = 256;
/// Largest command (workload or hook), and largest config default.
pub const CHARM_TEXT_BYTES_MAX: usize = 4096;

#[derive(Deserialize)]
struct RawMeta {
    name: Option<String>,
    summary: Option<String>,
    provides: Option<BTreeMap<String, RawEndpoint>>,
    requires: Option<BTreeMap<String, RawEndpoint>>,
    peers: Option<BTreeMap<String, RawEndpoint>>,
    command: Option<String>,
    hooks: Option<BTreeMap<String, String>>,
    config: Option<RawConfig>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Full { interface: String },
    Short(String),
}

#[derive(Deserialize)]
struct RawConfig {
    options: Option<BTreeMap<String, RawOption>>,
}

#[derive(Deserialize)]
struct RawOption {
    default: Option<Scalar>,
}

/// A config default as YAML wrote it; stored as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

fn invalid(reason: impl Into<String>) -> ModelError {
    ModelError::InvalidCharm {
        reason: reason.into(),
    }
}

/// Parses `metadata.yaml` text into a checked `CharmMeta`.
pub fn parse_metadata(text: &str) -> Result<CharmMeta, ModelError> {
    if text.len() > METADATA_BYTES_MAX {
        return Err(invalid(format!(
            "metadata.yaml is {} bytes, at most {METADATA_BYTES_MAX} allowed",
            text.len()
        )));
    }
    let raw: RawMeta = serde_saphyr::from_str(text)
        .map_err(|e| invalid(format!("metadata.yaml is not valid: {e}")))?;
    let name = raw
        .name
        .ok_or_else(|| invalid("metadata.yaml has no `name`"))?;
    let mut endpoints = Vec::new();
    for (role, map) in [
        (Role::Provides, raw.provides),
        (Role::Requires, raw.requires),
        (Role::Peer, raw.peers),
    ] {
        for (endpoint, spec) in map.unwrap_or_default() {
            let interface = match spec {
                RawEndpoint::Full { interface } | RawEndpoint::Short(interface) => interface,
            };
            endpoints.push(Endpoint {
                name: endpoint,
                interface,
                role: role as i32,
            });
        }
    }
    let config_defaults = raw
        .config
        .and_then(|config| config.options)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, option)| {
            let default = option.default.map(Scalar::into_text).unwrap_or_default();
            (key, default)
        })
        .collect();
    let meta = CharmMeta {
        name,
        endpoints,
        command: raw
            .command
            .ok_or_else(|| invalid("metadata.yaml has no `command` (the workload to run)"))?,
        hooks: raw.hooks.unwrap_or_default().into_iter().collect(),
        config_defaults,
        summary: raw.summary.unwrap_or_default(),
    };
    check_charm_meta(&meta)?;
    Ok(meta)
}

/// Checks a `CharmMeta` (parsed here, or carried in a `Deploy` command): valid charm, endpoint
/// and option names, unique endpoint names, interfaces, a workload command, bounded sizes.
pub fn check_charm_meta(meta: &CharmMeta) -> Result<(), ModelError> {
    let renamed = |e: ModelError| match e {
        ModelError::InvalidName { kind, name, reason } => {
            invalid(format!("{kind} {name:?}: {reason}"))
        }
        other => other,
    };
    names::check_charm_name(&meta.name).map_err(renamed)?;
    if meta.command.trim().is_empty() {
        return Err(invalid("`command` is empty"));
    }
    for (what, count) in [
        ("endpoints", meta.endpoints.len()),
        ("hooks", meta.hooks.len()),
        ("config options", meta.config_defaults.len()),
    ] {
        if count > CHARM_ITEMS_MAX {
            return Err(invalid(format!(
                "{count} {what} declared, at most {CHARM_ITEMS_MAX} allowed"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for endpoint in &meta.endpoints {
        names::check_endpoint_name(&endpoint.name).map_err(renamed)?;
        if !seen.insert(endpoint.name.as_str()) {
            return Err(invalid(format!(
                "endpoint {:?} is declared more than once (across provides, requires and peers)",
                endpoint.name
            )));
        }
        names::check_endpoint_name(&endpoint.interface).map_err(|_| {
            invalid(format!(
                "endpoint {:?} has interface {:?}; interfaces use a-z, 0-9 and '-' and start with a letter",
                endpoint.name, endpoint.interface
            ))
        })?;
        if Role::try_from(endpoint.role).is_err() {
            return Err(invalid(format!(
                "endpoint {:?} has an unknown role {}",
                endpoint.name, endpoint.role
            )));
        }
    }
    let texts = std::iter::once(("command", &meta.command))
        .chain(meta.hooks.values().map(|c| ("hook command", c)))
        .chain(meta.config_defaults.values().map(|d| ("config default", d)));
    for (what, text) in texts {
        if text.len() > CHARM_TEXT_BYTES_MAX {
            return Err(invalid(format!(
                "a {what} is {} bytes, at most {CHARM_TEXT_BYTES_MAX} allowed",
                text.len()
            )));
        }
    }
    for hook in meta.hooks.keys() {
        names::check_endpoint_name(hook)
            .map_err(|_| invalid(format!("hook name {hook:?} must use a-z, 0-9 and '-'")))?;
    }
    for key in meta.config_defaults.keys() {
        let valid = !key.is_empty()
            && key.len() <= names::NAME_CHARS_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && key.starts_with(|c: char| c.is_ascii_lowercase());
        if !valid {
            return Err(invalid(format!(
                "config option {key:?}: option names start with a letter and use a-z, 0-9, '-' and '_'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDPRESS: &str = r#"
name: wordpress
summary: A blog
description: ignored
provides:
  website:
    interface: http
requires:
  db:
    interface: mysql
  cache: memcache
peers:
  cluster:
    interface: wp-peer
command: python3 -m http.server $PORT
hooks:
  install: ./hooks/install
  config-changed: ./hooks/config-changed
config:
  options:
    port:
      default: 8080
      description: where to listen
      type: int
    debug:
      default: false
    title:
      default: My blog
    secret:
      description: no default
"#;

    fn reason(text: &str) -> String {
        match parse_metadata(text) {
            Err(ModelError::InvalidCharm { reason }) => reason,
            other => panic!("expected InvalidCharm, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_charm() {
        let meta = parse_metadata(WORDPRESS).expect("parses");
        assert_eq!(meta.name, "wordpress");
        assert_eq!(meta.summary, "A blog");
        assert_eq!(meta.command, "python3 -m http.server $PORT");
        let endpoints: Vec<(&str, &str, Role)> = meta
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.interface.as_str(), e.role()))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("website", "http", Role::Provides),
                ("cache", "memcache", Role::Requires),
                ("db", "mysql", Role::Requires),
                ("cluster", "wp-peer", Role::Peer),
            ]
        );
        assert_eq!(meta.hooks["install"], "./hooks/install");
        assert_eq!(meta.config_defaults["port"], "8080");
        assert_eq!(meta.config_defaults["debug"], "false");
        assert_eq!(meta.config_defaults["title"], "My blog");
        assert_eq!(meta.config_defaults["secret"], "");
    }

    #[test]
    fn minimal_charm() {
        let meta = parse_metadata("name: tiny\ncommand: sleep 1000\n").expect("parses");
        assert!(meta.endpoints.is_empty() && meta.hooks.is_empty());
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(reason("command: x").contains("no `name`"));
        assert!(reason("name: x").contains("no `command`"));
        assert!(reason("name: x\ncommand: ' '").contains("`command` is empty"));
        assert!(reason("name: Bad\ncommand: x").contains("charm name \"Bad\""));
        assert!(reason(": : :\n  - [").contains("not valid"));
        assert!(reason("name: [1, 2]\ncommand: x").contains("not valid"));
        assert!(reason(
            "name: x\ncommand: y\nprovides:\n  db: {interface: a}\nrequires:\n  db: {interface: a}"
        )
        .contains("\"db\" is declared more than once"));
        assert!(
            reason("name: x\ncommand: y\nprovides:\n  db: {interface: My_Sql}")
                .contains("interface \"My_Sql\"")
        );
        assert!(
            reason("name: x\ncommand: y\nprovides:\n  Db: {interface: a}")
                .contains("endpoint name \"Db\"")
        );
        assert!(reason("name: x\ncommand: y\nhooks:\n  'in stall': z").contains("hook name"));
        assert!(
            reason("name: x\ncommand: y\nconfig:\n  options:\n    'A b': {default: 1}")
                .contains("config option")
        );
        let big = format!(
            "name: x\ncommand: y\n# {}\n",
            "x".repeat(METADATA_BYTES_MAX)
        );
        assert!(reason(&big).contains("at most 65536"));
    }
}
