//! Auto-registration from the stream, against the real PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;

use aurora_testkit::wait_until;
use chrono::{Duration as ChronoDuration, Utc};
use common::*;
use serde_json::json;

#[tokio::test]
async fn new_devices_are_registered_challenged_and_announced() {
    let (_db, names, svc, pool, conn) = Registry::start(|_| {}).await.parts();
    let stream = names.cps_registrations();

    let a = SimDevice::new("reg-a");
    let b = SimDevice::new("reg-b");
    let t0 = Utc::now() - ChronoDuration::seconds(60);
    xadd_json(&conn, &stream, &a.seen(t0)).await;
    xadd_json(&conn, &stream, &a.seen(t0 + ChronoDuration::seconds(30))).await;
    xadd_json(&conn, &stream, &b.seen(t0)).await;
    xadd_json(&conn, &stream, &json!({"event": "device.seen", "device_id": "bad/id", "message_type": "telemetry", "seen_at": t0})).await;

    wait_until(LONG, "two devices", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    let (uuid, status, model, fw, metadata, last_seen, has_key): (
        uuid::Uuid,
        String,
        Option<String>,
        Option<String>,
        serde_json::Value,
        chrono::DateTime<Utc>,
        bool,
    ) = sqlx::query_as(
        "SELECT id, status, model, firmware_version, metadata, last_seen, public_key IS NOT NULL FROM devices WHERE device_id = $1",
    )
    .bind(&a.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "pending_attestation");
    assert_eq!(model.as_deref(), Some(MODEL));
    assert_eq!(fw.as_deref(), Some(VERSION));
    assert_eq!(
        metadata["temperature"], 21.5,
        "the first message is kept as metadata"
    );
    assert_eq!(
        last_seen.timestamp(),
        (t0 + ChronoDuration::seconds(30)).timestamp()
    );
    assert!(has_key, "trust on first use took the key");

    let registered = wait_matching(
        &conn,
        &names.cps_devices(),
        2,
        "device.registered records",
        |d| d["event"] == "device.registered",
    )
    .await;
    let rec_a = registered
        .iter()
        .find(|d| d["device_id"] == a.id.as_str())
        .unwrap();
    assert_eq!(rec_a["id"], uuid.to_string());
    assert_eq!(rec_a["status"], "pending_attestation");
    for d in [&a, &b] {
        let nonce = wait_challenge(&conn, &names, &d.id, 1).await;
        assert_eq!(nonce.len(), 64);
        assert!(nonce.bytes().all(|c| c.is_ascii_hexdigit()));
    }
    // The bad entry is dead-lettered with the reason, and nothing stays pending.
    assert_dead_letter_names(&conn, &names, "device_id").await;
    wait_no_pending(&conn, &stream, GROUP).await;
    // Exactly one record and one challenge each, even after the sweeper ran a few rounds.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(stream_values(&conn, &names.cps_devices()).await.len(), 2);
    assert_eq!(challenges_for(&conn, &names, &a.id).await.len(), 1);
    svc.stop().await;
}

#[tokio::test]
async fn two_replicas_starting_together_upsert_without_duplicates_or_lost_last_seen() {
    let (db, names, c1) = fresh(|cfg| cfg.batch_size = 50).await;
    let c2 = c1.clone();
    // Both apply the migrations at once: the advisory lock makes that safe.
    let (r1, r2) = tokio::join!(
        Running::start_as(c1, "replica-1"),
        Running::start_as(c2, "replica-2")
    );
    let pool = db.pool_with(3).await;
    let conn = redis(REDIS_URL).await;
    let stream = names.cps_registrations();

    let devices: Vec<SimDevice> = (0..100).map(|_| SimDevice::new("fleet")).collect();
    let base = Utc::now() - ChronoDuration::hours(1);
    let mut expected = HashMap::new();
    let producer = aurora_core::bus::Producer::new(conn.clone(), 100_000);
    let mut batch = Vec::new();
    // Ten sightings per device, out of order, interleaved across devices.
    for round in 0..10i64 {
        let offset = (round * 7) % 10;
        for (i, d) in devices.iter().enumerate() {
            let at = base + ChronoDuration::seconds(offset * 60 + i as i64);
            let e = expected.entry(d.id.clone()).or_insert(at);
            if at > *e {
                *e = at;
            }
            batch.push((stream.clone(), serde_json::to_vec(&d.seen(at)).unwrap()));
        }
    }
    producer.publish_batch(&batch).await.unwrap();

    wait_until(LONG, "every sighting handled", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
            .fetch_one(&pool)
            .await
            .unwrap();
        let pend = pending(&conn, &stream, GROUP).await;
        let lag: Option<i64> = None;
        let _ = lag;
        (n == 100 && pend == 0).then_some(())
    })
    .await;
    // Wait for the stream to be fully read (pending 0 could precede the last reads).
    wait_until(LONG, "group caught up", || async {
        let mut c = conn.clone();
        let info: redis::Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut c)
            .await
            .unwrap();
        let text = format!("{info:?}");
        let last = aurora_core::bus::last_id(&mut c, &stream).await.unwrap();
        (text.contains(&last) && pending(&conn, &stream, GROUP).await == 0).then_some(())
    })
    .await;
    let rows: Vec<(String, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT device_id, last_seen FROM devices")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 100);
    for (id, last_seen) in rows {
        assert_eq!(
            last_seen.timestamp(),
            expected[&id].timestamp(),
            "last_seen of {id} went backwards"
        );
    }
    let registered = stream_values(&conn, &names.cps_devices()).await;
    assert_eq!(registered.len(), 100, "one device.registered per device");
    let commands = stream_values(&conn, &names.cps_commands()).await;
    assert_eq!(commands.len(), 100, "one challenge per device");
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Each embedded migration applied once, although two replicas started together.
    assert_eq!(
        migrations,
        device_registry::db::MIGRATOR.migrations.len() as i64
    );
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test]
async fn sightings_wait_out_a_database_outage_and_are_not_lost() {
    let (db, names, svc, pool, conn) = Registry::start(|_| {}).await.parts();
    let stream = names.cps_registrations();

    // Cut the service off its database: refuse new connections and end the open ones.
    let mut admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(aurora_testkit::DATABASE_URL)
            .await
            .unwrap()
    };
    pool.close().await;
    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&db.name)
        .execute(&mut admin)
        .await
        .unwrap();

    let d = SimDevice::new("outage");
    xadd_json(&conn, &stream, &d.seen(Utc::now())).await;
    wait_until(LONG, "the batch to fail and stay pending", || async {
        (pending(&conn, &stream, GROUP).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        pending(&conn, &stream, GROUP).await,
        1,
        "not acknowledged while the database is down"
    );

    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let pool = db.pool_with(3).await;
    wait_status(&pool, &d.id, "pending_attestation").await;
    wait_challenge(&conn, &names, &d.id, 1).await;
    wait_no_pending(&conn, &stream, GROUP).await;
    svc.stop().await;
}

/// A batch committed in PostgreSQL whose records never reached the bus (the process died in
/// between): its outbox row stays, and the sweeper sends its `device.registered` records and
/// `attest` commands, then clears the row.
#[tokio::test]
async fn a_committed_batch_not_on_the_bus_is_sent_by_the_sweeper() {
    use device_registry::shared::Shared;
    use device_registry::{db, sweeper};
    let (_db, names, cfg) = fresh(|cfg| cfg.resend_after = std::time::Duration::ZERO).await;
    let pool = db::connect(&cfg.database_url, 2).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let conn = redis(REDIS_URL).await;
    let shared = Shared {
        cfg: cfg.clone(),
        pool: pool.clone(),
        producer: aurora_core::bus::Producer::new(conn.clone(), 100_000),
    };

    let now = Utc::now();
    let sightings: Vec<db::Sighting> = ["ob-a", "ob-b"]
        .iter()
        .map(|id| db::Sighting {
            device_id: (*id).to_string(),
            first_seen: now,
            last_seen: now,
            metadata: json!({"model": "m"}),
            model: Some("m".into()),
            firmware_version: None,
            public_key: None,
        })
        .collect();
    // The commit happens; the XADD and the outbox delete never do.
    let register = || {
        db::register_batch(
            &pool,
            &sightings,
            cfg.attestation_timeout,
            uuid::Uuid::new_v4(),
            &[],
        )
    };
    let new = register().await.unwrap();
    assert_eq!(new.len(), 2);
    // Seen again: known devices, no new challenge, no new outbox row.
    let again = register().await.unwrap();
    assert!(again.is_empty());
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM registration_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 1);
    assert!(stream_values(&conn, &names.cps_devices()).await.is_empty());

    let swept = sweeper::sweep(&shared).await.unwrap();
    assert_eq!(swept.registrations_resent, 2, "{swept:?}");
    let registered = stream_values(&conn, &names.cps_devices()).await;
    let mut ids: Vec<&str> = registered
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["ob-a", "ob-b"]);
    let commands = stream_values(&conn, &names.cps_commands()).await;
    let mut nonces: Vec<&str> = commands
        .iter()
        .filter_map(|c| c["params"]["nonce"].as_str())
        .collect();
    nonces.sort_unstable();
    let mut stored: Vec<&str> = new.iter().map(|r| r.nonce.as_str()).collect();
    stored.sort_unstable();
    assert_eq!(nonces, stored, "the stored challenges are the ones sent");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM registration_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    // Nothing left to send.
    assert_eq!(
        sweeper::sweep(&shared).await.unwrap().registrations_resent,
        0
    );
    pool.close().await;
}
