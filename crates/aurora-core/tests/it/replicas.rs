//! The replica registry against a real Redis: a replica whose lease lapses is gone, one live
//! replica at a time adopts it, and a clean leave leaves nothing behind.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aurora_core::bus;
use aurora_core::replicas::Lease;
use aurora_testkit::{names, REDIS_URL};

#[tokio::test]
async fn a_lapsed_lease_is_gone_and_adopted_once() {
    let names = names();
    let conn = bus::connect(REDIS_URL).await.unwrap();
    let ttl = Duration::from_millis(300);
    let a = Lease::new(conn.clone(), &names, "svc", "a", ttl);
    let b = Lease::new(conn.clone(), &names, "svc", "b", ttl);
    let c = Lease::new(conn.clone(), &names, "svc", "c", ttl);
    for lease in [&a, &b, &c] {
        lease.renew().await.unwrap();
    }
    assert!(a.gone().await.unwrap().is_empty(), "all alive");

    // b stops renewing (killed); a and c go on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.renew().await.unwrap();
    c.renew().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.gone().await.unwrap(), vec!["b".to_string()]);
    let mut alive = a.alive().await.unwrap();
    alive.sort();
    assert_eq!(alive, vec!["a".to_string(), "c".to_string()]);

    assert!(a.try_adopt("b", Duration::from_secs(5)).await.unwrap());
    assert!(
        !c.try_adopt("b", Duration::from_secs(5)).await.unwrap(),
        "one adopter"
    );
    assert!(
        b.being_adopted("b").await.unwrap(),
        "b coming back sees the adoption"
    );
    a.forget("b").await.unwrap();
    assert!(a.gone().await.unwrap().is_empty());
    assert!(!b.being_adopted("b").await.unwrap());

    // A clean leave: nothing of c is left to adopt.
    c.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.gone().await.unwrap().is_empty());
    a.release().await.unwrap();
}
