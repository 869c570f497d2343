//! A device on an MQTT broker: publishes QoS 1 and knows which publishes the broker
//! acknowledged; subscribes and receives (a device's commands); logs in with credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{wait_until, MQTT_HOST, MQTT_PORT, WAIT};

/// An MQTT client publishing QoS 1, its event loop polled in a task that reconnects for
/// ever (rumqttc sends unacknowledged publishes again after a reconnect).
pub struct MqttDevice {
    pub client: rumqttc::AsyncClient,
    acked: Arc<AtomicU64>,
    subacked: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
    events: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
    received: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What the event loop of an [`MqttDevice`] saw, for [`MqttDevice::publish_acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    Sent(u16),
    Acked(u16),
    Down,
}

impl MqttDevice {
    /// Anonymous; returns at once (the connection comes up in the background:
    /// [`MqttDevice::wait_connected`]).
    pub fn connect(host: &str, port: u16, client_id: &str) -> Self {
        Self::connect_with(host, port, client_id, None)
    }

    /// Logged in as `(username, password)` when given; returns at once.
    pub fn connect_with(
        host: &str,
        port: u16,
        client_id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Self {
        let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_inflight(100);
        if let Some((user, password)) = credentials {
            opts.set_credentials(user, password);
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
        let acked = Arc::new(AtomicU64::new(0));
        let subacked = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicU64::new(0));
        let (a, s, c) = (acked.clone(), subacked.clone(), connected.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (pub_tx, pub_rx) = tokio::sync::mpsc::unbounded_channel();
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
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = pub_tx.send(p);
                    }
                    // Asked by [`MqttDevice::disconnect`]: the device is done.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
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
            subacked,
            connected,
            events: tokio::sync::Mutex::new(rx),
            received: tokio::sync::Mutex::new(pub_rx),
            task: Some(task),
        }
    }

    /// Connected (CONNACK received, up to [`WAIT`]), logged in as `credentials` when given.
    pub async fn online(
        host: &str,
        port: u16,
        client_id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Self {
        let device = Self::connect_with(host, port, client_id, credentials);
        device.wait_connected().await;
        device
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

    /// Waits (up to [`WAIT`]) until the broker acknowledged `n` publishes in all.
    pub async fn wait_acked(&self, n: u64) {
        wait_count(&self.acked, n, "the broker's PUBACKs").await;
    }

    /// Subscribes QoS 1 to `filter` (the broker's answer: [`MqttDevice::wait_subacked`]).
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("the MQTT client's request queue is open");
    }

    /// Waits (up to [`WAIT`]) until the broker answered `n` SUBSCRIBEs in all.
    pub async fn wait_subacked(&self, n: u64) {
        wait_count(&self.subacked, n, "the broker's SUBACKs").await;
    }

    /// The next message delivered on a subscription, or None when none comes within
    /// `timeout`.
    pub async fn next_message(&self, timeout: Duration) -> Option<rumqttc::Publish> {
        let mut received = self.received.lock().await;
        tokio::time::timeout(timeout, received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends DISCONNECT (a clean goodbye, no will) and waits (up to 5 s) for the event loop
    /// to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    pub async fn wait_connected(&self) {
        wait_count(&self.connected, 1, "MQTT CONNACK").await;
    }
}

async fn wait_count(counter: &AtomicU64, n: u64, what: &str) {
    wait_until(WAIT, &format!("{n} {what}"), || {
        let seen = counter.load(Ordering::SeqCst);
        async move { (seen >= n).then_some(()) }
    })
    .await;
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Forgets the persistent session of `client_id` on a broker (a clean-session connect and
/// a DISCONNECT), so that a test leaves nothing queued behind; errors are ignored.
pub async fn forget_session(host: &str, port: u16, client_id: &str) {
    use rumqttc::{Event, Outgoing, Packet};
    let mut opts = rumqttc::MqttOptions::new(client_id, host, port);
    opts.set_clean_session(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Writes a Mosquitto password file `passwd` in `dir` with `users` (name, password), by
/// `mosquitto_passwd` (Debian package mosquitto), and returns its path. Started as root,
/// Mosquitto reads the file as the `mosquitto` user, so `dir` and the file are made readable.
pub fn password_file(dir: &std::path::Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("passwd");
    for (i, (user, pw)) in users.iter().enumerate() {
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&path)
            .arg(user)
            .arg(pw)
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(status.success(), "mosquitto_passwd failed");
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .expect("password file's folder readable");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("password file readable");
    path
}

/// deploy/mosquitto/mosquitto.conf as shipped, with the lines a test must change: no listener
/// or persistence location (the harness sets them), the password file `passwd`, the shipped
/// ACL (deploy/mosquitto/acl, which names topics of the default namespace `aurora`).
pub fn shipped_broker_config(passwd: &std::path::Path) -> String {
    let conf = std::fs::read_to_string(crate::workspace_path("deploy/mosquitto/mosquitto.conf"))
        .expect("deploy/mosquitto/mosquitto.conf");
    let acl = crate::workspace_path("deploy/mosquitto/acl")
        .canonicalize()
        .expect("deploy/mosquitto/acl");
    conf.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let key = l.split_whitespace().next().unwrap_or_default();
            match key {
                "listener" | "persistence" | "persistence_location" => None,
                "password_file" => Some(format!("password_file {}", passwd.display())),
                "acl_file" => Some(format!("acl_file {}", acl.display())),
                _ => Some(l.to_string()),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
