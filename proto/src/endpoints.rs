//! Which of a controller's API endpoints an agent dials first. Agents that all began with the
//! first endpoint of the list would all land on one node of the controller (and after a
//! migration every agent of the model would switch to the target's first node at once, leaving
//! it too busy to keep up with its own Raft group); starting at a stable hash of the agent's
//! identity spreads a model's agents evenly over the nodes and brings a restarted agent back to
//! the node it used before.

/// The index in a list of `count` endpoints at which the agent of machine `machine_id` in model
/// `model_uuid` starts dialing (it moves on to the next index when that one fails). 0 when the
/// list is empty.
pub fn first_endpoint(model_uuid: &str, machine_id: &str, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    // FNV-1a over the two ids: stable across builds and platforms, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in model_uuid.bytes().chain([0]).chain(machine_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_agents_spread_evenly_over_three_nodes() {
        let mut per_node = [0usize; 3];
        for machine in 0..3000 {
            per_node[first_endpoint("7f3c0c1e-model", &machine.to_string(), 3)] += 1;
        }
        for count in per_node {
            assert!((900..=1100).contains(&count), "uneven spread: {per_node:?}");
        }
    }

    #[test]
    fn an_agent_always_starts_at_the_same_endpoint() {
        let first = first_endpoint("m", "42", 5);
        assert!(first < 5);
        assert_eq!(first, first_endpoint("m", "42", 5));
        assert_eq!(first_endpoint("m", "42", 1), 0);
        assert_eq!(first_endpoint("m", "42", 0), 0);
    }
}
