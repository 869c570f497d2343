//! What the gateway's tests share: a gateway of the test's own namespace, tokens, and a real
//! WebSocket client.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use aurora_core::auth::{Minter, Permission};
use aurora_core::bus::{self, Producer};
use aurora_core::names::Channel;
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, Flags, LaunchOptions, Stopped};
use aurora_core::Names;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use ws_gateway::{Args, SERVICE};

pub const SECRET: &str = "test-secret-of-ws-gateway";
pub const WAIT: Duration = Duration::from_secs(20);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestGateway {
    pub names: Names,
    /// The launched gateway's drain, until [`TestGateway::stop`] waits for it.
    pub stopped: Option<JoinHandle<Stopped>>,
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    pub http: std::net::SocketAddr,
    pub ops: std::net::SocketAddr,
}

/// The flags of a test's gateway: its namespace and Redis, the test secret, ephemeral ports,
/// no drain grace, a 10 s drain deadline.
pub fn test_args(namespace: &str, redis_url: &str) -> Args {
    let instance = format!("test-{}", uuid::Uuid::new_v4().simple());
    aurora_core::config::parse_from::<Args, _, _>(
        SERVICE,
        <Args as Flags>::RENAMED_ENV,
        [
            "ws-gateway",
            "--namespace",
            namespace,
            "--redis-url",
            redis_url,
            "--jwt-secret",
            SECRET,
            "--http-addr",
            "127.0.0.1:0",
            "--ops-addr",
            "127.0.0.1:0",
            "--instance-id",
            &instance,
            "--shutdown-timeout",
            "10s",
            "--drain-grace",
            "0s",
        ],
    )
    .unwrap()
}

impl TestGateway {
    /// A gateway on the shared Redis, in a fresh namespace.
    pub async fn start(tweak: impl FnOnce(&mut Args)) -> Self {
        let names = aurora_testkit::names();
        Self::start_in(&names, aurora_testkit::REDIS_URL, tweak).await
    }

    /// A gateway in a given namespace (a second replica) and Redis.
    pub async fn start_in(names: &Names, redis_url: &str, tweak: impl FnOnce(&mut Args)) -> Self {
        let mut args = test_args(names.namespace(), redis_url);
        tweak(&mut args);
        let mut options = LaunchOptions::local(&args.common.instance());
        options.drain_deadline = args.common.shutdown_timeout;
        let mut gateway = args.into_service().unwrap();
        let http = gateway.bind_http().unwrap();
        let shutdown = CancellationToken::new();
        let launched = launch(gateway, options, shutdown.clone()).await.unwrap();
        let ops = launched.ops_addr;
        let readiness = launched.readiness.clone();
        let stopped = tokio::spawn(launched.stopped());
        aurora_testkit::wait_until(WAIT, "gateway ready", || {
            let ready = readiness.is_ready();
            async move { ready.then_some(()) }
        })
        .await;
        Self {
            names: names.clone(),
            stopped: Some(stopped),
            shutdown,
            readiness,
            http,
            ops,
        }
    }

    pub fn url(&self, channel: Channel, query: &str) -> String {
        format!("ws://{}{}?{}", self.http, channel.path(), query)
    }

    pub async fn connect(&self, channel: Channel, token: &str) -> Client {
        self.connect_query(channel, &format!("token={token}")).await
    }

    pub async fn connect_query(&self, channel: Channel, query: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(channel, query))
            .await
            .unwrap();
        ws
    }

    /// Stops the gateway and waits for its drain; `true` when every client was closed
    /// within the deadline.
    pub async fn stop(&mut self) -> bool {
        self.shutdown.cancel();
        match self.stopped.take() {
            Some(stopped) => stopped.await.unwrap() == Stopped::Drained,
            None => true,
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn token(perms: &[Permission]) -> String {
    Minter::hs256(SECRET.as_bytes()).token("analyst-1", perms, Duration::from_secs(600))
}

pub fn token_for(sub: &str, perms: &[Permission], ttl: Duration) -> String {
    Minter::hs256(SECRET.as_bytes()).token(sub, perms, ttl)
}

pub fn all_token() -> String {
    token(&[
        Permission::WsAlerts,
        Permission::WsAgentThoughts,
        Permission::ApprovalsManage,
    ])
}

pub async fn producer(redis_url: &str) -> Producer {
    Producer::new(bus::connect(redis_url).await.unwrap(), 100_000)
}

/// The next text frame as JSON, skipping pings; panics on close or timeout.
pub async fn next_doc(ws: &mut Client) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("connection ended")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("closed while waiting for a message: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the server closes; returns the close code and reason (None when the
/// connection ended without a close frame). Text frames before it are returned too.
pub async fn until_close(ws: &mut Client, timeout: Duration) -> (Option<(u16, String)>, usize) {
    let mut texts = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {timeout:?}"),
            Ok(None) | Ok(Some(Err(_))) => return (None, texts),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    texts,
                )
            }
            Ok(Some(Ok(Message::Text(_)))) => texts += 1,
            Ok(Some(Ok(_))) => {}
        }
    }
}

pub async fn close_normally(ws: &mut Client) -> Option<(u16, String)> {
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    until_close(ws, WAIT).await.0
}

/// A JSON alert document.
pub fn alert(n: usize) -> serde_json::Value {
    serde_json::json!({
        "id": uuid::Uuid::new_v4(),
        "title": format!("alert {n}"),
        "severity": "high",
        "status": "new",
        "source": "test",
        "n": n,
        "timestamp": chrono::Utc::now(),
    })
}

pub async fn publish(p: &Producer, stream: &str, doc: &serde_json::Value) -> String {
    p.publish(stream, doc.to_string().as_bytes()).await.unwrap()
}

/// A plain HTTP GET, returning the status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}
