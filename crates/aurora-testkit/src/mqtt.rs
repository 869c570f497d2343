//! A device on an MQTT broker: publishes QoS 1 and knows which publishes the broker
//! acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{wait_until, MQTT_HOST, MQTT_PORT, WAIT};

/// An MQTT client publishing QoS 1, its event loop polled in a task that reconnects for
/// ever (rumqttc sends unacknowledged publishes again after a reconnect).
pub struct MqttDevice {
    pub client: rumqttc::AsyncClient,
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    events: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the event loop of an [`MqttDevice`] saw, for [`MqttDevice::publish_acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    Sent(u16),
    Acked(u16),
    Down,
}

impl MqttDevice {
    pub fn connect(host: &str, port: u16, client_id: &str) -> Self {
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_inflight(100);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let acked = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let (a, c) = (acked.clone(), connected.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            use rumqttc::{Event, Outgoing, Packet};
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(LinkEvent::Acked(ack.pkid));
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let _ = tx.send(LinkEvent::Sent(pkid));
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(LinkEvent::Down);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Self {
            client,
            acked,
            connected,
            events: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// On the shared broker.
    pub fn shared(client_id: &str) -> Self {
        Self::connect(MQTT_HOST, MQTT_PORT, client_id)
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("the MQTT client's request queue is open");
    }

    /// Publishes QoS 1 and returns once the broker acknowledged this very message (by packet
    /// id), publishing it again after a disconnect or 10 s without an ack; returns how many
    /// attempts it took. The client's session is clean, so nothing is resent behind our back;
    /// a retry may still make a duplicate (at least once), never a loss.
    pub async fn publish_acked(&self, topic: &str, payload: &[u8], deadline: Duration) -> u32 {
        let mut events = self.events.lock().await;
        let end = tokio::time::Instant::now() + deadline;
        let mut attempts = 0;
        loop {
            while events.try_recv().is_ok() {}
            attempts += 1;
            self.publish(topic, payload.to_vec()).await;
            let attempt_end = end.min(tokio::time::Instant::now() + Duration::from_secs(10));
            let mut mine = None;
            loop {
                match tokio::time::timeout_at(attempt_end, events.recv()).await {
                    Err(_) | Ok(Some(LinkEvent::Down)) => break,
                    Ok(None) => panic!("the MQTT event loop ended"),
                    Ok(Some(LinkEvent::Sent(p))) if mine.is_none() => mine = Some(p),
                    Ok(Some(LinkEvent::Acked(p))) if Some(p) == mine => return attempts,
                    Ok(Some(_)) => {}
                }
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{topic}: not acknowledged by the broker within {deadline:?} ({attempts} attempts)"
            );
        }
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub async fn wait_connected(&self) {
        let c = self.connected.clone();
        wait_until(WAIT, "MQTT CONNACK", || {
            let n = c.load(Ordering::SeqCst);
            async move { (n > 0).then_some(()) }
        })
        .await;
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}
