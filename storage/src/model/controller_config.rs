//! Rules for controller-config keys: the known keys with their defaults and validation, and
//! operator-defined `custom.` keys.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ModelError;

/// Operator-defined keys start with this prefix.
pub const CUSTOM_PREFIX: &str = "custom.";
/// Longest allowed custom key, prefix included.
pub const CUSTOM_KEY_CHARS_MAX: usize = 128;
/// Longest allowed custom value.
pub const CUSTOM_VALUE_BYTES_MAX: usize = 4096;

/// How a known key's value is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A duration such as `10s`, `500ms`, `1m30s`, within `[min, max]`.
    Duration {
        /// Smallest allowed.
        min: Duration,
        /// Largest allowed.
        max: Duration,
    },
    /// An integer within `[min, max]`.
    Integer {
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

/// A known controller-config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// The key.
    pub key: &'static str,
    /// Its value when no operator set it.
    pub default: &'static str,
    /// How values are checked.
    pub kind: ValueKind,
}

/// Every known key, in key order.
pub const KNOWN_KEYS: &[KeySpec] = &[
    KeySpec {
        key: "agent-heartbeat-interval",
        default: "10s",
        kind: ValueKind::Duration {
            min: Duration::from_millis(100),
            max: Duration::from_secs(3600),
        },
    },
    KeySpec {
        key: "backups-to-keep",
        default: "5",
        kind: ValueKind::Integer {
            min: 1,
            max: u64::MAX,
        },
    },
    KeySpec {
        key: "migration-abort-drop-timeout",
        default: "10m",
        kind: ValueKind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(24 * 3600),
        },
    },
    KeySpec {
        key: "migration-fence-hold",
        default: "2s",
        kind: ValueKind::Duration {
            min: Duration::from_millis(0),
            max: Duration::from_secs(60),
        },
    },
    KeySpec {
        key: "migration-fence-lag",
        default: "1000",
        kind: ValueKind::Integer {
            min: 0,
            max: 1_000_000,
        },
    },
    KeySpec {
        key: "migration-import-timeout",
        default: "30m",
        kind: ValueKind::Duration {
            min: Duration::from_secs(5),
            max: Duration::from_secs(24 * 3600),
        },
    },
    KeySpec {
        key: "migration-leftover-idle",
        default: "5m",
        kind: ValueKind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(24 * 3600),
        },
    },
    KeySpec {
        key: "migration-log-transfer-timeout",
        default: "10m",
        kind: ValueKind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(24 * 3600),
        },
    },
    KeySpec {
        key: "migration-quiesce-timeout",
        default: "60s",
        kind: ValueKind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(24 * 3600),
        },
    },
    KeySpec {
        key: "model-log-max-records",
        default: "10000",
        kind: ValueKind::Integer {
            min: 100,
            max: u64::MAX,
        },
    },
    KeySpec {
        key: "status-history-size",
        default: "20",
        kind: ValueKind::Integer { min: 1, max: 1000 },
    },
];

/// The key of the agents' heartbeat period.
pub const AGENT_HEARTBEAT_INTERVAL: &str = "agent-heartbeat-interval";

/// The duration `key` has in `config` (stored values over defaults, as `effective_config`
/// makes), else the key's default; `None` for a key that is not a known duration.
pub fn duration(config: &BTreeMap<String, String>, key: &str) -> Option<Duration> {
    config
        .get(key)
        .and_then(|v| parse_duration(v))
        .or_else(|| known_key(key).and_then(|spec| parse_duration(spec.default)))
}

/// The agents' heartbeat period in `config`.
pub fn agent_heartbeat_interval(config: &BTreeMap<String, String>) -> Duration {
    duration(config, AGENT_HEARTBEAT_INTERVAL).expect("the heartbeat default is a valid duration")
}

/// The spec of a known key.
pub fn known_key(key: &str) -> Option<&'static KeySpec> {
    KNOWN_KEYS.iter().find(|spec| spec.key == key)
}

/// One stored change a valid update makes: set the value, or remove the stored key (a custom
/// key deleted, or a known key reset to its default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWrite {
    /// The key.
    pub key: String,
    /// The new stored value; `None` removes it.
    pub value: Option<String>,
}

/// Checks one key and value. An empty value removes a custom key and resets a known key to its
/// default.
pub fn check(key: &str, value: &str) -> Result<ConfigWrite, ModelError> {
    let invalid = |reason: String| ModelError::InvalidConfig {
        key: key.to_owned(),
        reason,
    };
    let write = |value: Option<&str>| ConfigWrite {
        key: key.to_owned(),
        value: value.map(str::to_owned),
    };
    if let Some(spec) = known_key(key) {
        if value.is_empty() {
            return Ok(write(None));
        }
        check_known(spec, value).map_err(invalid)?;
        return Ok(write(Some(value)));
    }
    if let Some(name) = key.strip_prefix(CUSTOM_PREFIX) {
        check_custom_key(key, name).map_err(invalid)?;
        if value.len() > CUSTOM_VALUE_BYTES_MAX {
            return Err(invalid(format!(
                "controller-config key {key:?}: value is {} bytes, at most {CUSTOM_VALUE_BYTES_MAX} allowed",
                value.len()
            )));
        }
        return Ok(write((!value.is_empty()).then_some(value)));
    }
    let known: Vec<&str> = KNOWN_KEYS.iter().map(|spec| spec.key).collect();
    Err(invalid(format!(
        "unknown controller-config key {key:?} (known: {}; custom keys start with {CUSTOM_PREFIX:?})",
        known.join(", ")
    )))
}

/// Checks every key of an update; the first broken rule (in key order) refuses the whole update.
pub fn check_update(values: &BTreeMap<String, String>) -> Result<Vec<ConfigWrite>, ModelError> {
    values
        .iter()
        .map(|(key, value)| check(key, value))
        .collect()
}

/// The effective config: every known key (stored value or default) plus the stored custom keys.
pub fn effective_config(stored: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut effective: BTreeMap<String, String> = KNOWN_KEYS
        .iter()
        .map(|spec| (spec.key.to_owned(), spec.default.to_owned()))
        .collect();
    effective.extend(stored.iter().map(|(k, v)| (k.clone(), v.clone())));
    effective
}

fn check_known(spec: &KeySpec, value: &str) -> Result<(), String> {
    let key = spec.key;
    match spec.kind {
        ValueKind::Duration { min, max } => {
            let parsed = parse_duration(value).ok_or_else(|| {
                format!(
                    "controller-config key {key:?} wants a duration such as \"10s\", \"500ms\" or \"1m30s\", got {value:?}"
                )
            })?;
            if parsed < min || parsed > max {
                return Err(format!(
                    "controller-config key {key:?} must be between {min:?} and {max:?}, got {value:?}"
                ));
            }
        }
        ValueKind::Integer { min, max } => {
            let parsed: u64 = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!("controller-config key {key:?} wants an integer, got {value:?}")
                })?;
            if parsed < min || parsed > max {
                let range = if max == u64::MAX {
                    format!(">= {min}")
                } else {
                    format!("between {min} and {max}")
                };
                return Err(format!(
                    "controller-config key {key:?} must be an integer {range}, got {value:?}"
                ));
            }
        }
    }
    Ok(())
}

fn check_custom_key(key: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "controller-config key {key:?}: a custom key needs a name after {CUSTOM_PREFIX:?}"
        ));
    }
    if key.chars().count() > CUSTOM_KEY_CHARS_MAX {
        return Err(format!(
            "controller-config key {key:?} is longer than {CUSTOM_KEY_CHARS_MAX} characters"
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "controller-config key {key:?} contains {bad:?}; custom keys use only a-z, 0-9, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Parses a duration as `humantime` spells it (`500ms`, `10s`, `1m30s`, `1h 30m`). `None` if
/// malformed, zero or overflowing. Every node parses a stored value with this one function, so
/// they all read the same duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str, value: &str) -> String {
        match check(key, value) {
            Err(ModelError::InvalidConfig { key: k, reason }) => {
                assert_eq!(k, key);
                reason
            }
            Ok(write) => panic!("{key}={value} accepted as {write:?}"),
            Err(other) => panic!("{key}={value}: unexpected {other:?}"),
        }
    }

    fn accepted(key: &str, value: &str) -> ConfigWrite {
        check(key, value).unwrap_or_else(|e| panic!("{key}={value} refused: {e}"))
    }

    #[test]
    fn defaults_are_valid_and_sorted() {
        for spec in KNOWN_KEYS {
            accepted(spec.key, spec.default);
        }
        let keys: Vec<_> = KNOWN_KEYS.iter().map(|s| s.key).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        // humantime's grammar: spaces between parts and fractions are fine.
        assert_eq!(parse_duration("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "10", "s", "0s", "-1s", "10x", "1s2", "ten"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn agent_heartbeat_interval_reads_the_config_or_its_default() {
        assert_eq!(
            super::agent_heartbeat_interval(&BTreeMap::from([(
                AGENT_HEARTBEAT_INTERVAL.to_owned(),
                "200ms".to_owned()
            )])),
            Duration::from_millis(200)
        );
        assert_eq!(
            super::agent_heartbeat_interval(&BTreeMap::new()),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn agent_heartbeat_interval() {
        accepted("agent-heartbeat-interval", "250ms");
        accepted("agent-heartbeat-interval", "1h");
        assert!(reason("agent-heartbeat-interval", "ten").contains("wants a duration"));
        assert!(reason("agent-heartbeat-interval", "50ms").contains("between"));
        assert!(reason("agent-heartbeat-interval", "2h").contains("between"));
    }

    #[test]
    fn migration_quiesce_timeout() {
        accepted("migration-quiesce-timeout", "5m");
        assert!(reason("migration-quiesce-timeout", "999ms").contains("between"));
        assert!(reason("migration-quiesce-timeout", "60").contains("wants a duration"));
    }

    #[test]
    fn backups_to_keep() {
        accepted("backups-to-keep", "1");
        assert_eq!(
            reason("backups-to-keep", "0"),
            "controller-config key \"backups-to-keep\" must be an integer >= 1, got \"0\""
        );
        assert!(reason("backups-to-keep", "+3").contains("wants an integer"));
        assert!(reason("backups-to-keep", "x").contains("wants an integer"));
    }

    #[test]
    fn model_log_max_records() {
        accepted("model-log-max-records", "100");
        assert!(reason("model-log-max-records", "99").contains(">= 100"));
    }

    #[test]
    fn status_history_size() {
        accepted("status-history-size", "1");
        accepted("status-history-size", "1000");
        assert!(reason("status-history-size", "0").contains("between 1 and 1000"));
        assert!(reason("status-history-size", "1001").contains("between 1 and 1000"));
    }

    #[test]
    fn empty_value_resets_known_key() {
        assert_eq!(
            accepted("backups-to-keep", ""),
            ConfigWrite {
                key: "backups-to-keep".into(),
                value: None
            }
        );
    }

    #[test]
    fn custom_keys() {
        assert_eq!(
            accepted("custom.team-a_1.x", "v").value.as_deref(),
            Some("v")
        );
        assert_eq!(accepted("custom.gone", "").value, None);
        assert!(reason("custom.", "v").contains("needs a name"));
        assert!(reason("custom.Upper", "v").contains("'U'"));
        assert!(reason("custom.a b", "v").contains("' '"));
        let long_key = format!("custom.{}", "a".repeat(CUSTOM_KEY_CHARS_MAX));
        assert!(reason(&long_key, "v").contains("longer than 128"));
        let ok_key = format!(
            "custom.{}",
            "a".repeat(CUSTOM_KEY_CHARS_MAX - CUSTOM_PREFIX.len())
        );
        accepted(&ok_key, "v");
        accepted("custom.big", &"x".repeat(CUSTOM_VALUE_BYTES_MAX));
        assert!(
            reason("custom.big", &"x".repeat(CUSTOM_VALUE_BYTES_MAX + 1)).contains("4097 bytes")
        );
    }

    #[test]
    fn unknown_key_lists_known_ones() {
        assert_eq!(
            reason("foo", "1"),
            "unknown controller-config key \"foo\" (known: agent-heartbeat-interval, backups-to-keep, \
             migration-abort-drop-timeout, migration-fence-hold, migration-fence-lag, \
             migration-import-timeout, migration-leftover-idle, migration-log-transfer-timeout, \
             migration-quiesce-timeout, model-log-max-records, status-history-size; custom keys \
             start with \"custom.\")"
        );
    }

    #[test]
    fn update_is_all_or_nothing() {
        let good = BTreeMap::from([
            ("backups-to-keep".to_owned(), "3".to_owned()),
            ("custom.a".to_owned(), "b".to_owned()),
        ]);
        assert_eq!(check_update(&good).expect("valid").len(), 2);
        let mut bad = good.clone();
        bad.insert("status-history-size".into(), "0".into());
        assert!(check_update(&bad).is_err());
    }

    #[test]
    fn effective_config_merges_defaults() {
        let stored = BTreeMap::from([
            ("backups-to-keep".to_owned(), "9".to_owned()),
            ("custom.x".to_owned(), "y".to_owned()),
        ]);
        let effective = effective_config(&stored);
        assert_eq!(effective["backups-to-keep"], "9");
        assert_eq!(effective["status-history-size"], "20");
        assert_eq!(effective["custom.x"], "y");
        assert_eq!(effective.len(), KNOWN_KEYS.len() + 1);
    }
}
