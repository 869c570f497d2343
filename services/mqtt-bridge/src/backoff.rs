//! Exponential backoff with a cap and jitter, for reconnects and retried writes.

use std::time::Duration;

pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay to wait now; doubles up to the cap. Jitter of up to a quarter keeps replicas
    /// from retrying in step.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let nanos = u64::try_from(base.as_nanos() / 4).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { rand_below(nanos) };
        base + Duration::from_nanos(jitter)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// A cheap pseudo-random number below `n` (jitter needs no quality).
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..=125).contains(&d[0]), "{d:?}");
        assert!((200..=250).contains(&d[1]), "{d:?}");
        assert!((400..=500).contains(&d[2]), "{d:?}");
        assert!((400..=500).contains(&d[4]), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
