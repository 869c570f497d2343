//! The one back-off of the workspace: exponential, capped, with jitter so that replicas do not
//! retry in step. Reconnects, retried writes and re-read batches all wait through it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubles from `initial` up to `max`; each delay gets up to a quarter more at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s: what every loop of the services uses unless it says otherwise.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait now; the next one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let quarter = u64::try_from(base.as_nanos() / 4).unwrap_or(u64::MAX);
        let jitter = if quarter == 0 {
            0
        } else {
            rand::random::<u64>() % quarter
        };
        base + Duration::from_nanos(jitter)
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Sleeps the next delay; `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..=125).contains(&d[0]), "{d:?}");
        assert!((200..=250).contains(&d[1]), "{d:?}");
        assert!((400..=500).contains(&d[2]), "{d:?}");
        assert!((400..=500).contains(&d[4]), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[tokio::test]
    async fn wait_gives_up_on_shutdown() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!b.wait(&shutdown).await);
    }
}
