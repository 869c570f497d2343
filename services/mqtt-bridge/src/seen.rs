//! Which devices to announce with a `device.seen` record: on first sight, then at most once
//! per interval. The memory this takes is bounded by an LRU of device ids, whatever the size
//! of the fleet; a device pushed out of it is simply announced again when it next speaks.
//!
//! An entry is the device id's 64-bit hash under a per-process random key (SipHash) and the
//! time of its announcement: about 60 bytes with the LRU's links and table, where a `String`
//! key took about twice that (12 MiB for 100,000 devices). Two ids of one process colliding
//! (about 1 in 10^9 with 100,000 devices, and not something a device can aim at without the
//! key) would delay one device's announcement by at most `--seen-interval`.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

pub struct SeenTracker {
    last_announced: LruCache<u64, Instant>,
    keys: RandomState,
    interval: Duration,
}

impl SeenTracker {
    pub fn new(capacity: usize, interval: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            last_announced: LruCache::new(capacity),
            keys: RandomState::new(),
            interval,
        }
    }

    /// True when `device_id` should be announced now; remembers that it was.
    pub fn announce(&mut self, device_id: &str, now: Instant) -> bool {
        let key = self.keys.hash_one(device_id);
        match self.last_announced.get_mut(&key) {
            Some(at) if now.saturating_duration_since(*at) < self.interval => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                self.last_announced.push(key, now);
                true
            }
        }
    }

    pub fn len(&self) -> usize {
        self.last_announced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_announced.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sight_then_once_per_interval() {
        let mut t = SeenTracker::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(t.announce("a", t0));
        assert!(!t.announce("a", t0 + Duration::from_secs(59)));
        assert!(t.announce("a", t0 + Duration::from_secs(60)));
        assert!(t.announce("b", t0));
    }

    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let mut t = SeenTracker::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(t.announce(&format!("d{i}"), t0));
        }
        assert_eq!(t.len(), 3);
        assert!(t.announce("d0", t0), "evicted devices are announced again");
    }
}
