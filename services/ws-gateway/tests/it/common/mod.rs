//! What the gateway's tests share: a gateway of the test's own namespace and the documents
//! it serves. Tokens, WebSocket clients, Redis and the ops port: aurora-testkit's.
#![allow(clippy::unwrap_used, dead_code)]

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, Flags, LaunchOptions, Stopped};
use aurora_core::Names;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ws_gateway::{Args, SERVICE};

pub use aurora_testkit::prelude::*;

pub struct TestGateway {
    pub names: Names,
    /// The launched gateway's drain, until [`TestGateway::stop`] waits for it.
    pub stopped: Option<JoinHandle<Stopped>>,
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    pub http: std::net::SocketAddr,
    pub ops: Ops,
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
        let ops = Ops::new(launched.ops_addr);
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

    pub async fn connect(&self, channel: Channel, token: &str) -> Socket {
        self.connect_query(channel, &format!("token={token}")).await
    }

    pub async fn connect_query(&self, channel: Channel, query: &str) -> Socket {
        Console::connect(&self.url(channel, query)).await.ws
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

pub fn all_token() -> String {
    token(&[
        Permission::WsAlerts,
        Permission::WsAgentThoughts,
        Permission::ApprovalsManage,
    ])
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

/// A pending approval document, as the agents write it, expiring in `expires_in`.
pub fn approval(id: uuid::Uuid, expires_in: chrono::Duration) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "action": "Isolate workstation-042 from network",
        "case_id": "case-1",
        "risk_level": "high",
        "status": "pending",
        "requested_by": "incident_responder",
        "context": {"reason": "Active C2 beacon", "affected_users": 3, "confidence": 0.87},
        "requested_at": chrono::Utc::now(),
        "expires_at": chrono::Utc::now() + expires_in,
        "x_custom": "kept",
    })
}

/// The approval's status as the gateway keeps it.
pub async fn state(names: &Names, id: uuid::Uuid) -> Option<String> {
    let mut conn = redis(REDIS_URL).await;
    redis::cmd("HGET")
        .arg(names.state_key("ws-gateway", &format!("approval:{id}")))
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Waits until the gateway keeps the approval at `want`.
pub async fn wait_state(names: &Names, id: uuid::Uuid, want: &str) {
    aurora_testkit::wait_until(WAIT, &format!("approval {id} {want}"), || async {
        (state(names, id).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}
