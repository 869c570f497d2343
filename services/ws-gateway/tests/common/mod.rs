//! What the gateway's tests share: a gateway of the test's own namespace, tokens, and a real
//! WebSocket client.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use aurora_core::auth::{Minter, Permission};
use aurora_core::bus::{self, Producer};
use aurora_core::names::Channel;
use aurora_core::Names;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use ws_gateway::{Args, Gateway};

pub const SECRET: &str = "test-secret-of-ws-gateway";
pub const WAIT: Duration = Duration::from_secs(20);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestGateway {
    pub names: Names,
    pub gateway: Option<Gateway>,
    pub shutdown: CancellationToken,
    pub http: std::net::SocketAddr,
    pub ops: std::net::SocketAddr,
}

impl TestGateway {
    /// A gateway on the shared Redis, in a fresh namespace.
    pub async fn start(tweak: impl FnOnce(&mut Args)) -> Self {
        let names = aurora_testkit::names();
        Self::start_in(&names, aurora_testkit::REDIS_URL, tweak).await
    }

    /// A gateway in a given namespace (a second replica) and Redis.
    pub async fn start_in(names: &Names, redis_url: &str, tweak: impl FnOnce(&mut Args)) -> Self {
        let mut args = Args::for_test(names.namespace(), redis_url, SECRET);
        tweak(&mut args);
        let shutdown = CancellationToken::new();
        let gateway = ws_gateway::start(args, shutdown.clone()).await.unwrap();
        let http = gateway.http_addr;
        let ops = gateway.ops_addr;
        let readiness = gateway.readiness.clone();
        aurora_testkit::wait_until(WAIT, "gateway ready", || {
            let ready = readiness.is_ready();
            async move { ready.then_some(()) }
        })
        .await;
        Self {
            names: names.clone(),
            gateway: Some(gateway),
            shutdown,
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

    pub async fn stop(&mut self) -> bool {
        self.shutdown.cancel();
        match self.gateway.take() {
            Some(g) => g.wait().await,
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
