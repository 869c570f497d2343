//! The uplink's PUBACKs waiting to go out.
//!
//! The writer queues the packet ids of a written batch here (never waiting); the connection
//! task takes everything queued at once and writes those PUBACKs to the socket in one write.
//! Acks belong to one connection: a CONNACK starts a new epoch, and acks of publishes that
//! came on an earlier connection are dropped (the broker delivers those messages again on
//! the new one, so they are written again: a duplicate, never a loss).

use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;

/// What the ack queue holds for the current connection.
#[derive(Debug, Default)]
struct State {
    /// Bumped at every CONNACK: acks of earlier connections are never sent.
    epoch: u64,
    /// False between a connection error and the next CONNACK.
    connected: bool,
    /// Written to the bus, not yet taken by the connection task, in order.
    pending: Vec<u16>,
}

/// Shared by the writer and the connection task.
#[derive(Clone, Default)]
pub struct AckQueue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl AckQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue inconsistent in a way that
        // loses anything (an ack not sent means a redelivery), so a poisoned lock is used.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A CONNACK: a new epoch; acks still waiting belong to the old connection.
    pub fn connected(&self) -> u64 {
        let mut s = self.lock();
        s.epoch += 1;
        s.connected = true;
        s.pending.clear();
        s.epoch
    }

    /// The connection failed: nothing more is queued until the next CONNACK.
    pub fn disconnected(&self) {
        let mut s = self.lock();
        s.connected = false;
        s.pending.clear();
    }

    /// Queues the acks of a written batch, `(epoch, pkid, qos)` in order, and wakes the
    /// connection task. Returns how many were skipped: they came on an earlier connection,
    /// and the broker delivers them again on this one.
    pub fn push(&self, acks: impl IntoIterator<Item = (u64, u16, QoS)>) -> u64 {
        let mut skipped = 0;
        let mut queued = false;
        {
            let mut s = self.lock();
            for (epoch, pkid, qos) in acks {
                if qos == QoS::AtMostOnce {
                    continue;
                }
                if epoch != s.epoch || !s.connected {
                    skipped += 1;
                    continue;
                }
                s.pending.push(pkid);
                queued = true;
            }
        }
        if queued {
            self.ready.notify_one();
        }
        skipped
    }

    /// Takes every queued ack, in order, into `out` (cleared first).
    pub fn take(&self, out: &mut Vec<u16>) {
        out.clear();
        std::mem::swap(&mut self.lock().pending, out);
    }

    /// Resolves once acks were queued since the last wake-up (a wake-up is never lost: it is
    /// kept until someone waits).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Acks queued and not yet taken.
    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_of_another_connection_are_skipped() {
        let acks = AckQueue::new();
        // Before the first CONNACK nothing can be acked.
        assert_eq!(acks.push([(0, 1, QoS::AtLeastOnce)]), 1);
        let epoch = acks.connected();
        assert_eq!(
            acks.push([
                (epoch - 1, 2, QoS::AtLeastOnce),
                (epoch, 3, QoS::AtLeastOnce),
                (epoch, 4, QoS::AtMostOnce),
            ]),
            1
        );
        assert_eq!(acks.outstanding(), 1, "QoS 0 needs no ack");
        acks.disconnected();
        assert_eq!(acks.outstanding(), 0);
        assert_eq!(acks.push([(epoch, 5, QoS::AtLeastOnce)]), 1);
    }

    #[tokio::test]
    async fn everything_queued_is_taken_at_once_in_order_and_the_wake_up_is_kept() {
        let acks = AckQueue::new();
        let epoch = acks.connected();
        let n = 10_000u32;
        let skipped = acks.push((0..n).map(|i| (epoch, (i % 65_535 + 1) as u16, QoS::AtLeastOnce)));
        assert_eq!(skipped, 0);
        // Pushed before anyone waited: the wake-up is still there.
        tokio::time::timeout(std::time::Duration::from_secs(1), acks.ready())
            .await
            .expect("the wake-up was kept");
        let mut out = vec![9, 9];
        acks.take(&mut out);
        assert_eq!(out.len(), n as usize);
        assert!(out.iter().zip(1u16..).all(|(a, b)| *a == b));
        assert_eq!(acks.outstanding(), 0);
        acks.take(&mut out);
        assert!(out.is_empty());
    }
}
