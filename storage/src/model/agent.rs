//! Pure rules for machine agents: which entities an agent may report about, which of its
//! numbered reports are still to apply, and how its presence reads as an agent status.
//! (What each machine should run is `desired`.)

use std::collections::BTreeMap;

use starling_proto::model::Status;

use super::names::Entity;

/// How an entity named in an agent's report relates to the reporting machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The machine itself, or a unit placed on it: the agent may report about it.
    Own,
    /// A unit that no longer exists (removed while the agent was reporting): the report is
    /// dropped, so a buffered update about it never blocks the agent.
    Gone,
    /// Anything else (another machine, another machine's unit, an application, the model).
    Foreign,
}

/// Whether the agent of machine `machine` may report about `entity`. `unit_machine` is the
/// machine the unit is placed on when `entity` is a unit that exists.
pub fn entity_ownership(entity: &Entity, machine: u64, unit_machine: Option<&str>) -> Ownership {
    match entity {
        Entity::Machine(number) if *number == machine => Ownership::Own,
        Entity::Unit { .. } => match unit_machine {
            None => Ownership::Gone,
            Some(placed) if placed == machine.to_string() => Ownership::Own,
            Some(_) => Ownership::Foreign,
        },
        _ => Ownership::Foreign,
    }
}

/// The positions of `seqs` still to apply after `last_applied`, in ascending `seq` order; a
/// sequence number repeated within the batch is applied once (its first occurrence).
pub fn reports_to_apply(last_applied: u64, seqs: &[u64]) -> Vec<usize> {
    let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
    for (position, seq) in seqs.iter().enumerate() {
        if *seq > last_applied {
            by_seq.entry(*seq).or_insert(position);
        }
    }
    by_seq.into_values().collect()
}

/// An agent is `started` while its last heartbeat is within this many intervals.
pub const PRESENCE_STARTED_INTERVALS: u64 = 3;
/// An agent is `lost` once its last heartbeat is older than this many intervals.
pub const PRESENCE_LOST_INTERVALS: u64 = 10;

/// The agent status a machine shows, from the newest heartbeat any node recorded for it.
pub fn presence_status(
    last_seen_unix_ms: Option<i64>,
    now_unix_ms: i64,
    interval_ms: u64,
) -> &'static str {
    let Some(last_seen) = last_seen_unix_ms else {
        return "pending";
    };
    let age = u64::try_from(now_unix_ms.saturating_sub(last_seen)).unwrap_or(0);
    let interval = interval_ms.max(1);
    if age <= interval.saturating_mul(PRESENCE_STARTED_INTERVALS) {
        "started"
    } else if age <= interval.saturating_mul(PRESENCE_LOST_INTERVALS) {
        "down"
    } else {
        "lost"
    }
}

/// A machine's agent status as `status` shows it: the presence-derived value, with the message
/// the agent last stored (if any). `since` is the last heartbeat when there was one.
pub fn machine_agent_status(
    stored: Option<&Status>,
    last_seen_unix_ms: Option<i64>,
    now_unix_ms: i64,
    interval: std::time::Duration,
) -> Status {
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    Status {
        current: presence_status(last_seen_unix_ms, now_unix_ms, interval_ms).to_owned(),
        message: stored.map(|s| s.message.clone()).unwrap_or_default(),
        since_unix_ms: last_seen_unix_ms
            .or_else(|| stored.map(|s| s.since_unix_ms))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(application: &str, number: u64) -> Entity {
        Entity::Unit {
            application: application.into(),
            number,
        }
    }

    #[test]
    fn an_agent_owns_its_machine_and_its_units_only() {
        assert_eq!(
            entity_ownership(&Entity::Machine(3), 3, None),
            Ownership::Own
        );
        assert_eq!(
            entity_ownership(&Entity::Machine(4), 3, None),
            Ownership::Foreign
        );
        assert_eq!(
            entity_ownership(&unit("web", 0), 3, Some("3")),
            Ownership::Own
        );
        assert_eq!(
            entity_ownership(&unit("web", 1), 3, Some("4")),
            Ownership::Foreign
        );
        assert_eq!(entity_ownership(&unit("web", 2), 3, None), Ownership::Gone);
        assert_eq!(
            entity_ownership(&Entity::Model, 3, None),
            Ownership::Foreign
        );
        assert_eq!(
            entity_ownership(&Entity::Application("web".into()), 3, None),
            Ownership::Foreign
        );
        // "3" is not "30".
        assert_eq!(
            entity_ownership(&unit("web", 3), 3, Some("30")),
            Ownership::Foreign
        );
    }

    #[test]
    fn reports_apply_once_in_seq_order() {
        assert_eq!(reports_to_apply(0, &[3, 1, 2]), vec![1, 2, 0]);
        assert_eq!(reports_to_apply(2, &[3, 1, 2, 4]), vec![0, 3]);
        assert_eq!(reports_to_apply(5, &[3, 4, 5]), Vec::<usize>::new());
        assert_eq!(reports_to_apply(0, &[7, 7]), vec![0]);
        assert!(reports_to_apply(0, &[]).is_empty());
    }

    #[test]
    fn presence_reads_as_started_down_lost_or_pending() {
        let interval = 1000;
        let now = 1_000_000;
        assert_eq!(presence_status(None, now, interval), "pending");
        assert_eq!(presence_status(Some(now), now, interval), "started");
        assert_eq!(presence_status(Some(now - 3000), now, interval), "started");
        assert_eq!(presence_status(Some(now - 3001), now, interval), "down");
        assert_eq!(presence_status(Some(now - 10_000), now, interval), "down");
        assert_eq!(presence_status(Some(now - 10_001), now, interval), "lost");
        // A clock behind the recorder's reads as just seen.
        assert_eq!(presence_status(Some(now + 5000), now, interval), "started");
    }

    #[test]
    fn machine_status_keeps_the_stored_message() {
        let stored = starling_proto::model::Status {
            current: "pending".into(),
            message: "installing".into(),
            since_unix_ms: 5,
        };
        let interval = std::time::Duration::from_millis(200);
        let status = machine_agent_status(Some(&stored), Some(1000), 1100, interval);
        assert_eq!(
            (
                status.current.as_str(),
                status.message.as_str(),
                status.since_unix_ms
            ),
            ("started", "installing", 1000)
        );
        assert_eq!(
            machine_agent_status(Some(&stored), Some(1000), 1000 + 601, interval).current,
            "down"
        );
        assert_eq!(
            machine_agent_status(Some(&stored), Some(1000), 1000 + 2001, interval).current,
            "lost"
        );
        let never = machine_agent_status(Some(&stored), None, 1000, interval);
        assert_eq!(
            (never.current.as_str(), never.since_unix_ms),
            ("pending", 5)
        );
    }
}
