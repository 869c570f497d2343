//! Bad input where it enters ws-gateway (tokens, WebSocket frames, the decision API, entries
//! of the streams it fans out), sent to the binary as built: each is refused with a clear
//! close code or HTTP status, and the gateway keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use aurora_testkit::prelude::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_gateway_refuses_bad_tokens_and_oversized_frames_and_keeps_serving() {
    let names = aurora_testkit::names();
    let site = Site::new(&names, "site-a", 9);
    let _cleanup = Cleanup::new(&names, NATS_URL, &[&site.redis_url]);
    let gateway = site.start(Svc::WsGateway, &[]).await;

    // Every bad token: 1008.
    let bad = [
        ("forged", forged_token()),
        ("expired", expired_token()),
        ("alg none", alg_none_token()),
        ("garbage", "not.a.jwt".to_string()),
        ("missing", String::new()),
        (
            "missing permission",
            token(&[Permission::DevicesRead, Permission::ApprovalsManage]),
        ),
    ];
    for (what, t) in &bad {
        let mut c = Console::connect(&gateway.ws_url(Channel::Alerts, &format!("token={t}"))).await;
        assert_eq!(
            close_code(&mut c.ws, WAIT).await,
            Some(1008),
            "{what} token not refused with 1008"
        );
    }
    // A malformed resume position: HTTP 400 before any upgrade.
    let r = http()
        .get(gateway.http_url(&format!(
            "{}?token={}&since=yesterday",
            Channel::Alerts.path(),
            token(&[Permission::WsAlerts])
        )))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A client sending a frame far over the limit is cut off...
    let good = format!("token={}", token(&[Permission::WsAlerts]));
    let mut hostile = Console::connect(&gateway.ws_url(Channel::Alerts, &good)).await;
    let _ = hostile.send(Message::text("x".repeat(2 << 20))).await;
    let code = close_code(&mut hostile.ws, WAIT).await;
    eprintln!("ws: an oversized client frame ended the connection with {code:?}");
    assert!(
        matches!(code, None | Some(1009) | Some(1002)),
        "an oversized frame ends the connection (1009 or dropped), got {code:?}"
    );

    // ...and everyone else is still served.
    let mut console = Console::connect(&gateway.ws_url(Channel::Alerts, &good)).await;
    let mut conn = redis(&site.redis_url).await;
    xadd(&mut conn, &names.alerts(), b"not json at all").await;
    let id = uuid::Uuid::new_v4().to_string();
    let alert = json!({"id": id, "title": "after the bad input", "severity": "high", "status": "new",
        "source": "e2e", "timestamp": chrono::Utc::now()});
    xadd(&mut conn, &names.alerts(), alert.to_string().as_bytes()).await;
    let got = console
        .wait_for(WAIT, "the good alert", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["title"], "after the bad input");
    assert_eq!(
        console.seen.len(),
        1,
        "the non-JSON entry is not sent: {:?}",
        console.seen
    );
    assert_eq!(gateway.readyz().await, Some(200));
    assert_eq!(
        gateway
            .metric("aurora_ws_gateway_invalid_entries_total", &[])
            .await,
        1.0
    );

    // The decision API: bad tokens 401, bad bodies 400 with a message, unknown id 404.
    let url = gateway.http_url(&format!(
        "/api/v1/approvals/{}/decision",
        uuid::Uuid::new_v4()
    ));
    for (what, t) in &bad[..3] {
        let r = http()
            .post(&url)
            .bearer_auth(t)
            .json(&json!({"decision": "approve"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{what} token on the decision API");
    }
    let manage = token(&[Permission::ApprovalsManage]);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"decision\": ".to_vec()),
        ("unknown decision", br#"{"decision": "maybe"}"#.to_vec()),
        ("invalid UTF-8", vec![b'{', 0xff, b'}']),
        (
            "comment too long",
            json!({"decision": "reject", "comment": "c".repeat(5000)})
                .to_string()
                .into_bytes(),
        ),
    ];
    assert_bodies_refused_with_400(|| http().post(&url).bearer_auth(&manage), bodies).await;
    let huge = json!({"decision": "approve", "comment": "c".repeat(4 << 20)});
    // Refused with 400/413, or the server answers 413 and closes before the client has
    // written the whole body (the client then sees a broken pipe): both are a refusal.
    assert_body_refused(
        http().post(&url).bearer_auth(&manage).json(&huge),
        "a 4 MiB body",
    )
    .await;
    let r = http()
        .post(&url)
        .bearer_auth(&manage)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(gateway.readyz().await, Some(200));
}
