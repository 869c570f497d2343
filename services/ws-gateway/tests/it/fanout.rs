//! Fan-out: every replica delivers every message, a stalled client holds nobody back, and a
//! client resuming with `since` gets what it missed with no gap and no duplicate.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use aurora_core::auth::Permission;
use aurora_core::names::Channel;
use common::*;

fn seq(doc: &serde_json::Value) -> u64 {
    doc["n"].as_u64().unwrap()
}

#[tokio::test]
async fn two_replicas_both_deliver_every_message_in_order() {
    let names = aurora_testkit::names();
    let a = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, |_| {}).await;
    let b = TestGateway::start_in(&names, aurora_testkit::REDIS_URL, |_| {}).await;
    let t = token(&[Permission::WsAlerts]);
    let mut clients = [
        a.connect(Channel::Alerts, &t).await,
        a.connect(Channel::Alerts, &t).await,
        b.connect(Channel::Alerts, &t).await,
        b.connect(Channel::Alerts, &t).await,
    ];
    let p = redis(REDIS_URL).await;
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(xadd_json(&p, &names.alerts(), &alert(n)).await);
    }
    for ws in clients.iter_mut() {
        for (n, id) in ids.iter().enumerate() {
            let doc = next_json(ws, WAIT).await;
            assert_eq!(seq(&doc), n as u64);
            assert_eq!(&doc["stream_id"], id);
        }
    }
}

#[tokio::test]
async fn a_stalled_client_is_closed_while_the_others_receive_everything() {
    let gw = TestGateway::start(|a| {
        a.client_queue = 32;
        a.send_timeout = Duration::from_secs(2);
    })
    .await;
    let t = token(&[Permission::WsAlerts]);
    // Never read from, with a small receive buffer: the socket fills, then its queue.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(gw.http).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(
        gw.url(Channel::Alerts, &format!("token={t}")),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut readers: Vec<_> = Vec::new();
    for _ in 0..3 {
        readers.push(gw.connect(Channel::Alerts, &t).await);
    }
    let p = redis(REDIS_URL).await;
    let total = 400;
    let pad = "p".repeat(48 * 1024);
    let names = gw.names.clone();
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            let mut doc = alert(n);
            doc["pad"] = serde_json::Value::String(pad.clone());
            xadd_json(&p, &names.alerts(), &doc).await;
            // Paced so that readers keep up; the stalled one cannot.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let handles: Vec<_> = readers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for n in 0..total {
                    assert_eq!(seq(&next_json(&mut ws, WAIT).await), n as u64);
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    publisher.await.unwrap();
    let mut conn = redis(REDIS_URL).await;
    let _: i64 = redis::cmd("DEL")
        .arg(gw.names.alerts())
        .query_async(&mut conn)
        .await
        .unwrap();
    // 400 x 48 KiB = 19 MiB: more than the socket buffers hold. The stalled client was cut
    // off (1013 when it lagged, or dropped when its socket stayed full) before the end.
    let (close, received) = close_frame(&mut stalled, WAIT).await;
    assert!(
        received < total,
        "the stalled client got everything ({received}): it was never cut off"
    );
    if let Some((code, _)) = close {
        assert_eq!(code, 1013);
    }
    let metrics = gw.ops.metrics().await;
    assert!(
        metrics.contains("aurora_ws_gateway_slow_clients_closed_total"),
        "slow client not counted"
    );
}

#[tokio::test]
async fn a_client_resuming_with_since_gets_what_it_missed_then_live_with_no_gap_or_duplicate() {
    let gw = TestGateway::start(|_| {}).await;
    let t = token(&[Permission::WsAlerts]);
    let p = redis(REDIS_URL).await;
    let stream = gw.names.alerts();

    let mut ws = gw.connect(Channel::Alerts, &t).await;
    xadd_json(&p, &stream, &alert(0)).await;
    let first = next_json(&mut ws, WAIT).await;
    assert_eq!(seq(&first), 0);
    let position = first["stream_id"].as_str().unwrap().to_string();
    close_normally(&mut ws, WAIT).await;

    // Published while it is away, and while it reconnects: the seam between replay and live
    // is crossed under load.
    let total = 300u64;
    let names = gw.names.clone();
    let publisher = tokio::spawn(async move {
        let p = redis(REDIS_URL).await;
        for n in 1..total {
            xadd_json(&p, &names.alerts(), &alert(n as usize)).await;
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut ws = gw
        .connect_query(Channel::Alerts, &format!("token={t}&since={position}"))
        .await;
    for n in 1..total {
        assert_eq!(seq(&next_json(&mut ws, WAIT).await), n, "gap or duplicate");
    }
    publisher.await.unwrap();
    // Nothing more: no duplicate at the end.
    xadd_json(&p, &stream, &alert(999)).await;
    assert_eq!(seq(&next_json(&mut ws, WAIT).await), 999);
}

#[tokio::test]
async fn the_replay_is_bounded_and_says_where_it_stopped() {
    let gw = TestGateway::start(|a| a.max_replay = 3).await;
    let t = token(&[Permission::WsAlerts]);
    let p = redis(REDIS_URL).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(xadd_json(&p, &gw.names.alerts(), &alert(n)).await);
    }
    let mut ws = gw
        .connect_query(Channel::Alerts, &format!("token={t}&since={}", ids[0]))
        .await;
    for n in 1..=3 {
        assert_eq!(seq(&next_json(&mut ws, WAIT).await), n);
    }
    let notice = next_json(&mut ws, WAIT).await;
    assert_eq!(notice["control"], "replay_truncated");
    assert_eq!(notice["resume_since"], ids[3].as_str());
    // Resuming from there continues the history.
    let mut ws = gw
        .connect_query(Channel::Alerts, &format!("token={t}&since={}", ids[3]))
        .await;
    for n in 4..=6 {
        assert_eq!(seq(&next_json(&mut ws, WAIT).await), n);
    }
}

#[tokio::test]
async fn entries_that_are_not_json_objects_are_skipped_and_counted() {
    let gw = TestGateway::start(|_| {}).await;
    let mut ws = gw
        .connect(Channel::Alerts, &token(&[Permission::WsAlerts]))
        .await;
    let mut p = redis(REDIS_URL).await;
    xadd(&mut p, &gw.names.alerts(), b"not json").await;
    xadd(&mut p, &gw.names.alerts(), b"[1,2]").await;
    xadd_json(&p, &gw.names.alerts(), &alert(5)).await;
    assert_eq!(seq(&next_json(&mut ws, WAIT).await), 5);
    let metrics = gw.ops.metrics().await;
    assert!(metrics.contains("aurora_ws_gateway_invalid_entries_total"));
}

#[tokio::test]
async fn on_shutdown_readyz_fails_and_every_client_is_closed_with_1001() {
    let mut gw = TestGateway::start(|a| a.drain_grace = Duration::from_secs(1)).await;
    let t = all_token();
    let mut clients = Vec::new();
    for channel in Channel::ALL {
        for _ in 0..3 {
            clients.push(gw.connect(channel, &t).await);
        }
    }
    assert_eq!(gw.ops.readyz().await, Some(200));
    gw.shutdown.cancel();
    // Unready during the grace period, while the clients are still connected.
    aurora_testkit::wait_until(WAIT, "readyz failing", || async {
        (gw.ops.readyz().await == Some(503)).then_some(())
    })
    .await;
    for ws in clients.iter_mut() {
        let (close, _) = close_frame(ws, WAIT).await;
        assert_eq!(close.unwrap().0, 1001);
    }
    assert!(gw.stop().await, "drain did not finish within the deadline");
    // Nothing listens any more.
    let refused = tokio_tungstenite::connect_async(gw.url(Channel::Alerts, "")).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn lingering_between_reads_loses_and_reorders_nothing() {
    // A long linger: entries written one by one, some during the pause after a read, some
    // while the reader blocks, all reach the client once and in order.
    let gw = TestGateway::start(|a| a.fanout_linger = Duration::from_millis(150)).await;
    let t = token(&[Permission::WsAlerts]);
    let mut ws = gw.connect(Channel::Alerts, &t).await;
    let p = redis(REDIS_URL).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(xadd_json(&p, &gw.names.alerts(), &alert(n)).await);
        tokio::time::sleep(Duration::from_millis(if n % 20 == 0 { 300 } else { 7 })).await;
    }
    for (n, id) in ids.iter().enumerate() {
        let doc = next_json(&mut ws, WAIT).await;
        assert_eq!(seq(&doc), n as u64);
        assert_eq!(&doc["stream_id"], id);
    }
}
