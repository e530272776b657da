//! Formatting shared by every command's output: times as RFC3339, natural ordering of names
//! (`web/2` before `web/10`), enum names as `ctl` prints them, model names relative to the
//! user, byte sizes and durations.

use std::cmp::Ordering;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use starling_proto::model::{Access, Life, LogLevel};

/// `unix_ms` as RFC3339 UTC with millisecond precision; `None` for 0 (never set).
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    if unix_ms == 0 {
        return None;
    }
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time.format(&format).ok()
}

/// Compares like people count: `web/2` before `web/10`, `9` before `10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for idx in 1..=bytes.len() {
            if idx == bytes.len() || bytes[idx].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..idx]));
                start = idx;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

/// A map serialized in natural key order (`web/2` before `web/10`).
#[derive(Debug)]
pub struct NaturalMap<V>(pub(crate) Vec<(String, V)>);

impl<V> NaturalMap<V> {
    /// The map of `entries`, sorted naturally by key.
    pub fn new(mut entries: Vec<(String, V)>) -> Self {
        entries.sort_by(|a, b| natural_cmp(&a.0, &b.0));
        Self(entries)
    }
}

impl<V: Serialize> Serialize for NaturalMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `alive`, `dying` or `dead`.
pub fn life_name(life: i32) -> String {
    Life::try_from(life)
        .map(|l| l.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("life-{life}"))
}

/// `read`, `write`, `admin`, or `""` for none.
pub fn access_name(access: i32) -> String {
    match Access::try_from(access) {
        Ok(Access::Unspecified) => String::new(),
        Ok(a) => a.as_str_name().to_lowercase(),
        Err(_) => format!("access-{access}"),
    }
}

/// `TRACE`, `DEBUG`, `INFO`, `WARNING` or `ERROR`.
pub fn level_name(level: i32) -> String {
    LogLevel::try_from(level)
        .map(|l| l.as_str_name().to_string())
        .unwrap_or_else(|_| format!("LEVEL-{level}"))
}

/// The model's name without `user/` when `user` owns it (as Juju shows names).
pub fn short_for_user(qualified: &str, user: &str) -> String {
    qualified
        .strip_prefix(&format!("{user}/"))
        .unwrap_or(qualified)
        .to_string()
}

/// `n` bytes for people, in powers of 1000: `512 B`, `1.2 kB`, `3.4 MB`, `1.0 GB`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().si().to_string()
}

/// A decayed rate to the three decimals it can claim.
pub fn round_rate(rate: f64) -> f64 {
    (rate * 1000.0).round() / 1000.0
}

/// A rate per second for a table: one decimal below 10, none above.
pub fn rate_cell(rate: f64) -> String {
    if rate == 0.0 {
        "0".to_string()
    } else if rate < 9.95 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// `d` as `--timeout` spells it: `90s` reads `1m 30s`, then `10m`, `1h`, `1h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Parses a duration as `humantime` spells it (`90s`, `5m`, `1h 30m`); a bare number is
/// seconds (`90`).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration \"{text}\""))?;
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("invalid duration \"{text}\" ({e}): use e.g. 30s, 5m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_views::fixtures::T0;

    #[test]
    fn rates_for_people() {
        assert_eq!(rate_cell(0.0), "0");
        assert_eq!(rate_cell(0.04), "0.0");
        assert_eq!(rate_cell(9.94), "9.9");
        assert_eq!(rate_cell(9.96), "10");
        assert_eq!(rate_cell(123.4), "123");
        assert_eq!(round_rate(12.34567), 12.346);
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["web/10", "web/2", "db/0", "web/1", "10", "9", "web/02x"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            ["9", "10", "db/0", "web/1", "web/2", "web/02x", "web/10"]
        );
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("", "a"), Ordering::Less);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(T0).as_deref(), Some("2023-11-14T22:13:20.000Z"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1_234), "1.2 kB");
        assert_eq!(human_bytes(3_400_000), "3.4 MB");
        assert_eq!(human_bytes(2_000_000_000), "2.0 GB");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
