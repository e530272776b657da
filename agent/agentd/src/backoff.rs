//! The agent's one backoff: reconnects, migration reports, dials of a migration target,
//! workload restarts and hook retries all wait with it.
//!
//! Kept by hand rather than taken from `backon`: its users hold one `Backoff` across many
//! loop turns and call `reset` when a connection turns healthy, and workload restarts need the
//! same doubling without jitter (`next_plain`), because the delay is shown to the operator in
//! the unit's status. `backon`'s builders yield one iterator per retried operation instead.
//! Bounded: every delay is at most `max`.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let upper = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = upper / 2;
        half + upper.mul_f64(rand::random::<f64>() * 0.5)
    }

    /// The next delay without jitter (restart delays are shown to the operator).
    pub fn next_plain(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to `min`.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{RECONNECT_MAX, RECONNECT_MIN};

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= RECONNECT_MIN / 2 && delay <= RECONNECT_MAX,
                "{delay:?}"
            );
        }
        assert_eq!(backoff.current, RECONNECT_MAX);
        backoff.reset();
        assert_eq!(backoff.next_plain(), RECONNECT_MIN);
        assert_eq!(backoff.next_plain(), RECONNECT_MIN * 2);
    }
}
