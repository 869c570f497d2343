//! One bad record never takes its batch down: a device whose JSON holds text PostgreSQL
//! cannot store (NUL) is dead-lettered alone, with PostgreSQL's reason, on its first
//! delivery; the other devices of the same batch are registered. Real PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use chrono::{Duration as ChronoDuration, Utc};
use common::*;

#[tokio::test]
async fn a_nul_in_one_device_is_dead_lettered_alone_and_the_batch_goes_on() {
    let names = aurora_testkit::names();
    let db = TestDb::create().await;
    let conn = redis(REDIS_URL).await;
    let stream = names.cps_registrations();
    let t0 = Utc::now() - ChronoDuration::seconds(60);

    // Everything is in the stream before the registry starts: one batch holds it all.
    let good: Vec<SimDevice> = (0..7).map(|i| SimDevice::new(&format!("iso{i}"))).collect();
    let bad = SimDevice::new("iso-nul");
    let mut bad_seen = bad.seen(t0);
    bad_seen["metadata"]["note"] = serde_json::json!("a\u{0}b");
    let mut bad_id = String::new();
    for (i, d) in good.iter().enumerate() {
        xadd_json(&conn, &stream, &d.seen(t0)).await;
        if i == 3 {
            bad_id = xadd_json(&conn, &stream, &bad_seen).await;
        }
    }

    let svc = Running::start(config(&names, &db)).await;
    let pool = db.pool_with(2).await;
    for d in &good {
        wait_status(&pool, &d.id, "pending_attestation").await;
    }
    assert_eq!(device_status(&pool, &bad.id).await, None);

    let dead = wait_matching(
        &conn,
        &names.deadletter(GROUP),
        1,
        "the NUL record dead-lettered",
        |_| true,
    )
    .await;
    assert_eq!(
        dead.len(),
        1,
        "only the bad record is dead-lettered: {dead:?}"
    );
    let record = &dead[0];
    assert_eq!(record["source_id"], bad_id.as_str(), "{record}");
    assert_eq!(
        record["deliveries"], 1,
        "found on its first delivery: {record}"
    );
    let reason = record["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.contains("delivered") && reason.contains("database"),
        "the real reason, not a delivery count: {reason}"
    );
    wait_no_pending(&conn, &stream, GROUP).await;
    assert_eq!(svc.ops.readyz().await, Some(200), "the registry is ready");
    svc.stop().await;
}
