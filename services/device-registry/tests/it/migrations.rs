//! The migration switches of the built binary against the real PostgreSQL: `--migrate-only`
//! applies the migrations and exits without touching Redis; `--skip-migrations` applies
//! none, refuses a database that lacks them (naming them), and starts on a migrated one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_device-registry");

/// The binary with a database, no reachable Redis (port 1 refuses), a JWT secret and free
/// ports: what it does with the database is all it can do.
fn command(db: &TestDb) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("AURORA_NAMESPACE", aurora_testkit::namespace())
        .env("AURORA_DEVICE_REGISTRY_DATABASE_URL", &db.url)
        .env("AURORA_REDIS_URL", "redis://127.0.0.1:1")
        .env("AURORA_JWT_SECRET", SECRET)
        .env("AURORA_INSTANCE_ID", "migration-test")
        .env("AURORA_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env(
            "AURORA_DEVICE_REGISTRY_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("AURORA_OPS_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end, which must come within `limit`.
async fn run(mut cmd: Command, limit: Duration) -> Output {
    let child = tokio::task::spawn_blocking(move || cmd.output());
    tokio::time::timeout(limit, child)
        .await
        .expect("the binary did not exit in time")
        .expect("join")
        .expect("run the binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The versions recorded as applied, in order (none when the table does not exist).
async fn applied(db: &TestDb) -> Vec<i64> {
    let pool = db.pool().await;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    let versions = match table {
        Some(_) => sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .unwrap(),
        None => Vec::new(),
    };
    pool.close().await;
    versions
}

async fn has_table(db: &TestDb, table: &str) -> bool {
    let pool = db.pool().await;
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    found.is_some()
}

fn known() -> Vec<i64> {
    device_registry::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect()
}

#[tokio::test]
async fn migrate_only_applies_every_migration_and_exits_without_redis() {
    let db = TestDb::create().await;
    assert!(applied(&db).await.is_empty());
    let mut cmd = command(&db);
    cmd.arg("--migrate-only");
    let out = run(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out));
    assert_eq!(applied(&db).await, known());
    assert!(has_table(&db, "devices").await);
    assert!(
        text(&out).contains("--migrate-only"),
        "the log says why it exits: {}",
        text(&out)
    );

    // Again on the migrated database, through the variable and without a JWT key (a
    // migration Job has none): nothing to do, still 0.
    let mut cmd = command(&db);
    cmd.env_remove("AURORA_JWT_SECRET")
        .env("AURORA_DEVICE_REGISTRY_MIGRATE_ONLY", "true");
    let out = run(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out));
    assert_eq!(applied(&db).await, known());
}

#[tokio::test]
async fn skip_migrations_refuses_a_database_without_them_and_applies_none() {
    let db = TestDb::create().await;
    let mut cmd = command(&db);
    cmd.arg("--skip-migrations");
    let out = run(cmd, Duration::from_secs(60)).await;
    assert!(!out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("lacks the migrations"), "{log}");
    // Without --migrate-only the JWT key is still required.
    let mut cmd = command(&db);
    cmd.env_remove("AURORA_JWT_SECRET").arg("--skip-migrations");
    let out = run(cmd, Duration::from_secs(30)).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("JWT"), "{}", text(&out));
    assert!(log.contains("--migrate-only"), "{log}");
    for m in device_registry::db::MIGRATOR.iter() {
        assert!(log.contains(&m.version.to_string()), "{log}");
    }
    assert!(applied(&db).await.is_empty(), "nothing was applied");
    assert!(!has_table(&db, "devices").await);
}

#[tokio::test]
async fn skip_migrations_starts_on_a_migrated_database() {
    let db = TestDb::create().await;
    let mut cmd = command(&db);
    cmd.arg("--migrate-only");
    let out = run(cmd, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));

    // The variable of the switch, as the chart sets it; the harness waits for /readyz 200.
    serves_and_drains(&db, &[("skip-migrations", "true")]).await;
    assert_eq!(applied(&db).await, known());
}

#[tokio::test]
async fn the_two_switches_together_are_refused() {
    let db = TestDb::create().await;
    let mut cmd = command(&db);
    cmd.args(["--skip-migrations", "--migrate-only"]);
    let out = run(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot be used with"), "{}", text(&out));
    assert!(applied(&db).await.is_empty());
}
