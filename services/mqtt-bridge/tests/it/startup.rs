//! Start-up as the ops port shows it: `/healthz` answers at once, and while Redis does not
//! answer `/readyz` names what the bridge waits for; a SIGTERM meanwhile ends it cleanly.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_start_up_waits_for() {
    let names = aurora_testkit::names();
    // Nothing listens on port 1: the bridge keeps trying Redis.
    let mut bridge = spawn_bridge(&names, 1883, "redis://127.0.0.1:1");
    let ops = bridge.ops();
    let health = aurora_testkit::wait_until(LONG, "/healthz answers", || async {
        ops.get("/healthz").await.ok().filter(|a| a.status == 200)
    })
    .await;
    assert!(health.body.ends_with("ok"), "{health:?}");
    let readyz = aurora_testkit::wait_until(LONG, "/readyz names Redis", || async {
        ops.get("/readyz")
            .await
            .ok()
            .filter(|a| a.body.contains("connecting to redis://127.0.0.1:1"))
    })
    .await;
    assert_eq!(readyz.status, 503, "{readyz:?}");
    let body = readyz.json();
    let parts = &body["components"];
    for part in [
        "start-up",
        "redis",
        "commands",
        "mqtt-uplink",
        "mqtt-downlink",
    ] {
        assert_eq!(parts[part]["ready"], false, "{part}: {body}");
    }
    assert!(
        parts["mqtt-uplink"]["detail"]
            .as_str()
            .unwrap()
            .contains("connecting to mqtt://127.0.0.1:1883"),
        "{body}"
    );
    assert!(
        bridge.terminate().await.success(),
        "exits 0 on SIGTERM while starting"
    );
}
