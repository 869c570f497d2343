//! The uplink's PUBACKs waiting to go out, kept compact.
//!
//! rumqttc sends one queued request per turn of its event loop while a read brings up to nine
//! messages, and Mosquitto 2.0.11 was measured sending over 200,000 messages ahead of the acks
//! (it does not hold to our MQTT 5 receive maximum). Queued in rumqttc's request channel, each
//! ack is a whole `Request` (about 250 bytes with the channel's doubling): 200,000 of them were
//! most of the bridge's 92 MiB peak. Here the acks wait as packet ids (4 bytes each) and only
//! [`FEED_LIMIT`] at a time sit in rumqttc's channel; whoever sees room (the writer after a
//! batch, the connection task after each PUBACK written) feeds more. Both sides only
//! `try_ack`, so neither ever waits on the other: the flood deadlock cannot come back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;

/// Acks handed to rumqttc's request channel and not yet written to the socket.
pub const FEED_LIMIT: usize = 256;
/// rumqttc's request channel: the fed acks plus subscribes and the DISCONNECT.
pub const REQUEST_CAPACITY: usize = 4 * FEED_LIMIT;

/// What the ack queue holds for the current connection.
#[derive(Debug, Default)]
struct State {
    /// Bumped at every CONNACK: acks of earlier connections are never sent.
    epoch: u64,
    /// False between a connection error and the next CONNACK.
    connected: bool,
    /// Written, not yet fed to rumqttc, in order.
    pending: VecDeque<(u16, QoS)>,
    /// Fed to rumqttc, not yet seen going out.
    fed: usize,
}

/// Shared by the writer and the connection task.
#[derive(Clone)]
pub struct AckQueue {
    state: Arc<Mutex<State>>,
    client: AsyncClient,
}

impl AckQueue {
    pub fn new(client: AsyncClient) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            client,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue inconsistent in a way that
        // loses anything (an ack not sent means a redelivery), so a poisoned lock is used.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current connection's epoch (stamped on each received publish).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// A CONNACK: a new epoch; acks still waiting belong to the old connection (rumqttc drops
    /// those already in its channel when the connection fails).
    pub fn connected(&self) -> u64 {
        let mut s = self.lock();
        s.epoch += 1;
        s.connected = true;
        s.pending.clear();
        s.fed = 0;
        s.epoch
    }

    /// The connection failed: nothing more is fed until the next CONNACK.
    pub fn disconnected(&self) {
        let mut s = self.lock();
        s.connected = false;
        s.pending.clear();
        s.fed = 0;
    }

    /// Queues the acks of a written batch, `(epoch, pkid, qos)` in order, and feeds what
    /// fits. Returns how many were skipped: they came on an earlier connection, and the
    /// broker delivers them again on this one.
    pub fn push(&self, acks: impl IntoIterator<Item = (u64, u16, QoS)>) -> u64 {
        let mut s = self.lock();
        let mut skipped = 0;
        for (epoch, pkid, qos) in acks {
            if qos == QoS::AtMostOnce {
                continue;
            }
            if epoch != s.epoch || !s.connected {
                skipped += 1;
                continue;
            }
            s.pending.push_back((pkid, qos));
        }
        self.feed_locked(&mut s);
        skipped
    }

    /// One fed ack went out; feeds more.
    pub fn sent(&self) {
        let mut s = self.lock();
        s.fed = s.fed.saturating_sub(1);
        self.feed_locked(&mut s);
    }

    /// Feeds what is waiting, up to [`FEED_LIMIT`] in rumqttc's channel.
    pub fn feed(&self) {
        let mut s = self.lock();
        self.feed_locked(&mut s);
    }

    fn feed_locked(&self, s: &mut State) {
        if !s.connected {
            return;
        }
        let mut template = Publish::default();
        while s.fed < FEED_LIMIT {
            let Some(&(pkid, qos)) = s.pending.front() else {
                break;
            };
            template.pkid = pkid;
            template.qos = qos;
            match self.client.try_ack(&template) {
                Ok(()) => {
                    s.pending.pop_front();
                    s.fed += 1;
                }
                // Full (a subscribe or DISCONNECT took the room): fed after the next PUBACK.
                // Or the event loop is gone: then the connection task is ending, and what
                // is not acked is redelivered.
                Err(_) => break,
            }
        }
    }

    /// Acks not yet written to the socket (waiting here or in rumqttc's channel).
    pub fn outstanding(&self) -> usize {
        let s = self.lock();
        s.pending.len() + s.fed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (AckQueue, rumqttc::v5::EventLoop) {
        let opts = rumqttc::v5::MqttOptions::new("acks-test", "127.0.0.1", 1);
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
        (AckQueue::new(client), eventloop)
    }

    #[test]
    fn acks_of_another_connection_are_skipped() {
        let (acks, _eventloop) = queue();
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

    #[test]
    fn only_a_few_wait_in_rumqttc_and_the_rest_are_fed_as_they_go_out() {
        let (acks, _eventloop) = queue();
        let epoch = acks.connected();
        let n = 10 * FEED_LIMIT;
        let skipped = acks.push((0..n).map(|i| (epoch, (i % 65_535 + 1) as u16, QoS::AtLeastOnce)));
        assert_eq!(skipped, 0);
        assert_eq!(acks.outstanding(), n);
        // As FEED_LIMIT of them go out (the event loop is never polled here, so they stay in
        // rumqttc's channel), as many more are fed.
        for _ in 0..FEED_LIMIT {
            acks.sent();
        }
        assert_eq!(acks.outstanding(), n - FEED_LIMIT);
        assert_eq!(room(&acks.client), REQUEST_CAPACITY - 2 * FEED_LIMIT);
    }

    /// Free places in rumqttc's request channel (fills it).
    fn room(client: &AsyncClient) -> usize {
        let ack = Publish {
            qos: QoS::AtLeastOnce,
            ..Publish::default()
        };
        let mut n = 0;
        while client.try_ack(&ack).is_ok() {
            n += 1;
        }
        n
    }
}
