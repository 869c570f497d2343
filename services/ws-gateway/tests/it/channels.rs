//! Admission and close codes, with a real WebSocket client against a gateway of the test's
//! own namespace on the shared Redis.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use common::*;
use futures::StreamExt;

#[tokio::test]
async fn bad_missing_expired_and_forged_tokens_are_closed_with_1008() {
    let gw = TestGateway::start(|_| {}).await;
    let (expired, forged) = (expired_token(), forged_token());
    for (query, why) in [
        (String::new(), "no token given"),
        ("token=garbage".to_string(), "invalid token"),
        (format!("token={expired}"), "token expired"),
        (format!("token={forged}"), "bad signature"),
    ] {
        let mut ws = gw.connect_query(Channel::Alerts, &query).await;
        let (close, texts) = close_frame(&mut ws, WAIT).await;
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, 1008, "{why}");
        assert!(reason.contains(why), "reason {reason:?} should say {why:?}");
        assert_eq!(texts, 0);
    }
}

#[tokio::test]
async fn each_channel_needs_its_own_permission() {
    let gw = TestGateway::start(|_| {}).await;
    let cases = [
        (Channel::Alerts, Permission::WsAlerts),
        (Channel::AgentThoughts, Permission::WsAgentThoughts),
        (Channel::Approvals, Permission::ApprovalsManage),
    ];
    let p = redis(REDIS_URL).await;
    for (channel, needed) in cases {
        // Every permission but the one needed: refused.
        let others: Vec<Permission> = Permission::ALL
            .into_iter()
            .filter(|p| *p != needed)
            .collect();
        let mut ws = gw.connect(channel, &token(&others)).await;
        let (close, _) = close_frame(&mut ws, WAIT).await;
        let (code, reason) = close.unwrap();
        assert_eq!(code, 1008);
        assert!(reason.contains(needed.as_str()), "{reason}");

        // Only the one needed: accepted, and it receives the channel's stream.
        let mut ws = gw.connect(channel, &token(&[needed])).await;
        let stream = gw.names.channel_stream(channel);
        let id = xadd_json(&p, &stream, &serde_json::json!({"probe": channel.as_str()})).await;
        let doc = next_json(&mut ws, WAIT).await;
        assert_eq!(doc["probe"], channel.as_str());
        assert_eq!(doc["stream_id"], id);
        assert_eq!(close_normally(&mut ws, WAIT).await.map(|c| c.0), Some(1000));
    }
}

#[tokio::test]
async fn the_token_is_also_accepted_as_a_bearer_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let gw = TestGateway::start(|_| {}).await;
    let mut request = gw.url(Channel::Alerts, "").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&[Permission::WsAlerts]))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let p = redis(REDIS_URL).await;
    xadd_json(&p, &gw.names.alerts(), &alert(1)).await;
    assert_eq!(next_json(&mut ws, WAIT).await["title"], "alert 1");
}

#[tokio::test]
async fn the_client_over_the_limit_is_closed_with_1013_and_a_freed_slot_is_reused() {
    let gw = TestGateway::start(|a| a.max_connections_per_channel = 5).await;
    let t = token(&[Permission::WsAlerts, Permission::WsAgentThoughts]);
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(gw.connect(Channel::Alerts, &t).await);
    }
    let mut sixth = gw.connect(Channel::Alerts, &t).await;
    let (close, _) = close_frame(&mut sixth, WAIT).await;
    assert_eq!(close.unwrap().0, 1013);

    // The limit is per channel: another channel still has room.
    let mut other = gw.connect(Channel::AgentThoughts, &t).await;
    let p = redis(REDIS_URL).await;
    xadd_json(&p, &gw.names.audit(), &serde_json::json!({"agent": "a"})).await;
    assert_eq!(next_json(&mut other, WAIT).await["agent"], "a");

    // One leaves: a new client gets its slot.
    let mut first = open.remove(0);
    close_normally(&mut first, WAIT).await;
    let mut again = gw.connect(Channel::Alerts, &t).await;
    xadd_json(&p, &gw.names.alerts(), &alert(7)).await;
    assert_eq!(next_json(&mut again, WAIT).await["title"], "alert 7");
}

#[tokio::test]
async fn the_501st_client_at_the_default_limit_is_closed_with_1013() {
    let gw = TestGateway::start(|_| {}).await;
    let t = token(&[Permission::WsAlerts]);
    let mut open = Vec::new();
    for _ in 0..500 {
        open.push(gw.connect(Channel::Alerts, &t).await);
    }
    let mut over = gw.connect(Channel::Alerts, &t).await;
    let (close, _) = close_frame(&mut over, WAIT).await;
    assert_eq!(close.unwrap().0, 1013);
    // The 500 are all served.
    let p = redis(REDIS_URL).await;
    xadd_json(&p, &gw.names.alerts(), &alert(1)).await;
    for ws in open.iter_mut() {
        assert_eq!(next_json(ws, WAIT).await["title"], "alert 1");
    }
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_the_connection_with_1008() {
    let gw = TestGateway::start(|_| {}).await;
    let t = token_valid_for("short", &[Permission::WsAlerts], Duration::from_secs(2));
    let mut ws = gw.connect(Channel::Alerts, &t).await;
    // Served while valid.
    let p = redis(REDIS_URL).await;
    xadd_json(&p, &gw.names.alerts(), &alert(1)).await;
    assert_eq!(next_json(&mut ws, WAIT).await["title"], "alert 1");
    let (close, _) = close_frame(&mut ws, Duration::from_secs(15)).await;
    let (code, reason) = close.unwrap();
    assert_eq!(code, 1008);
    assert_eq!(reason, "token expired");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let gw = TestGateway::start(|a| {
        a.ping_interval = Duration::from_millis(200);
        a.pong_timeout = Duration::from_millis(800);
    })
    .await;
    let mut ws = gw
        .connect(Channel::Alerts, &token(&[Permission::WsAlerts]))
        .await;
    // A client that does not read never answers pings.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What it finds when it reads again: some pings, then the end of the connection.
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(
        ended,
        "the server should drop a dead peer without a close handshake"
    );
}

#[tokio::test]
async fn a_server_error_closes_with_1011() {
    // A Redis of the test's own, killed while the gateway runs: a resuming client cannot be
    // given what it missed.
    let mut redis = aurora_testkit::RedisServer::start();
    let names = aurora_testkit::names();
    let gw = TestGateway::start_in(&names, &redis.url(), |_| {}).await;
    redis.kill();
    let mut ws = gw
        .connect_query(
            Channel::Alerts,
            &format!("token={}&since=0-0", token(&[Permission::WsAlerts])),
        )
        .await;
    let (close, _) = close_frame(&mut ws, Duration::from_secs(30)).await;
    assert_eq!(close.unwrap().0, 1011);
    // And /readyz says the gateway cannot do its work.
    aurora_testkit::wait_until(WAIT, "readyz failing", || async {
        (gw.ops.readyz().await == Some(503)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_malformed_since_is_refused_before_the_upgrade() {
    let gw = TestGateway::start(|_| {}).await;
    let err = tokio_tungstenite::connect_async(gw.url(
        Channel::Alerts,
        &format!("token={}&since=yesterday", token(&[Permission::WsAlerts])),
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}
