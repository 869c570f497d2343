//! The built binary: refuses to start without a JWT key or with a renamed variable, serves
//! /readyz, drains on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_device-registry");

fn base_command(db: &TestDb, ns: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("AURORA_NAMESPACE", ns)
        .env("AURORA_DEVICE_REGISTRY_DATABASE_URL", &db.url)
        .env("AURORA_REDIS_URL", aurora_testkit::REDIS_URL)
        .env("AURORA_INSTANCE_ID", "bin-test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn refuses_to_start_without_a_jwt_key() {
    let db = TestDb::create().await;
    let out = base_command(&db, &aurora_testkit::namespace())
        .env(
            "AURORA_DEVICE_REGISTRY_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("AURORA_OPS_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JWT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_renamed_variable_stops_the_start_and_names_its_replacement() {
    let db = TestDb::create().await;
    let out = base_command(&db, &aurora_testkit::namespace())
        .env("AURORA_JWT_SECRET", SECRET)
        .env("AURORA_BATCH_SIZE", "10")
        .env("AURORA_OPS_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AURORA_DEVICE_REGISTRY_BATCH_SIZE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn becomes_ready_and_drains_on_sigterm() {
    let db = TestDb::create().await;
    serves_and_drains(&db, &[]).await;
}
