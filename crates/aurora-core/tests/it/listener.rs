//! The listener guard on the real ops server: idle connections are closed after the idle
//! timeout while a normal client is served throughout, a dripped header is cut at the
//! header timeout, and the caps per listener and per client address hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use aurora_core::listener::Limits;
use aurora_core::ops::{self, Readiness};
use aurora_testkit::tcp::closed_within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

async fn ops_server(limits: Limits) -> (SocketAddr, CancellationToken) {
    let readiness = Readiness::new();
    readiness.register("part");
    readiness.set_ready("part");
    let stop = CancellationToken::new();
    let (addr, _task) = ops::serve_with(
        "127.0.0.1:0".parse().unwrap(),
        readiness,
        stop.clone(),
        limits,
    )
    .await
    .expect("bind");
    (addr, stop)
}

/// A connection from a given loopback address (127.0.0.x), so that the caps per address
/// can tell clients apart.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(to).await
}

/// `GET /healthz` from 127.0.0.1 on a fresh connection, within a second.
async fn healthz(addr: SocketAddr) -> bool {
    let get = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<bool, std::io::Error>(out.starts_with("HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), get).await,
        Ok(Ok(true))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_are_closed_after_the_timeout_and_a_client_is_served_throughout(
) {
    let idle = Duration::from_secs(2);
    let (addr, stop) = ops_server(Limits {
        header_timeout: Duration::from_millis(500),
        idle_timeout: idle,
        max_connections: 10_000,
        max_per_address: 10_000,
    })
    .await;
    let started = Instant::now();
    let mut idle_conns = Vec::new();
    for _ in 0..50 {
        let mut batch = JoinSet::new();
        for _ in 0..100 {
            batch.spawn(connect_from(Ipv4Addr::new(127, 0, 0, 2), addr));
        }
        while let Some(c) = batch.join_next().await {
            idle_conns.push(c.expect("a connecting task").expect("an idle connection"));
        }
        assert!(
            healthz(addr).await,
            "a normal client is served while idle ones pile up"
        );
    }
    assert_eq!(idle_conns.len(), 5000);
    let opened_in = started.elapsed();
    assert!(
        opened_in < idle,
        "opening took {opened_in:?}: the test cannot tell"
    );

    // Served throughout, until and after the idle ones are cut.
    let watcher = tokio::spawn(async move {
        let mut served = 0;
        let until = Instant::now() + idle + Duration::from_secs(2);
        while Instant::now() < until {
            assert!(healthz(addr).await, "a normal client was not served");
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    });

    // None is closed before the timeout...
    let mut early = 0;
    for c in idle_conns.iter_mut().take(50) {
        if closed_within(c, Duration::from_millis(1)).await {
            early += 1;
        }
    }
    assert_eq!(early, 0, "idle connections closed before the idle timeout");
    // ...and every one is closed soon after it.
    let wait = idle + Duration::from_secs(3) - started.elapsed().min(idle);
    let mut waits = JoinSet::new();
    for mut c in idle_conns {
        waits.spawn(async move { closed_within(&mut c, wait).await });
    }
    let mut open = 0;
    while let Some(closed) = waits.join_next().await {
        if !closed.expect("a waiting task") {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "{open} idle connections still open after the timeout"
    );
    assert!(started.elapsed() >= idle, "closed before the idle timeout");
    let served = watcher.await.expect("the watcher");
    assert!(served > 10, "only {served} requests served");

    let metrics = ops::metrics_handle().render();
    let timeouts: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("aurora_listener_timeouts_total")
                && l.contains("listener=\"ops\"")
                && l.contains("reason=\"idle\"")
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(
        timeouts >= 5000.0,
        "idle timeouts counted: {timeouts}\n{metrics}"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_dripped_header_is_cut_at_the_header_timeout_and_keep_alive_idles_end() {
    let (addr, stop) = ops_server(Limits {
        header_timeout: Duration::from_millis(600),
        idle_timeout: Duration::from_secs(3),
        max_connections: 100,
        max_per_address: 100,
    })
    .await;
    // One byte every 100 ms: never idle for long, never a whole head.
    let mut drip = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in request.iter() {
        if drip.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut drip, Duration::from_millis(100)).await {
            cut = true;
            break;
        }
    }
    let after = started.elapsed();
    assert!(cut, "a dripped header was never cut");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(2500),
        "cut after {after:?}, expected about the 600 ms header timeout"
    );

    // A keep-alive connection that stops sending requests is closed after the idle timeout.
    let mut keep = TcpStream::connect(addr).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = keep.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    assert!(!closed_within(&mut keep, Duration::from_secs(2)).await);
    assert!(closed_within(&mut keep, Duration::from_secs(3)).await);
    assert!(idle_from.elapsed() >= Duration::from_secs(3));
    stop.cancel();
}

#[tokio::test]
async fn connections_over_a_cap_are_closed_at_once() {
    let (addr, stop) = ops_server(Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 6,
        max_per_address: 3,
    })
    .await;
    let from = |n| Ipv4Addr::new(127, 0, 0, n);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(from(3), addr).await.unwrap());
    }
    let mut fourth = connect_from(from(3), addr).await.unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(1)).await,
        "a fourth connection from one address was kept"
    );
    for c in held.iter_mut() {
        assert!(!closed_within(c, Duration::from_millis(20)).await);
    }
    // Another address is served meanwhile, up to the listener's cap.
    assert!(healthz(addr).await);
    held.push(connect_from(from(4), addr).await.unwrap());
    held.push(connect_from(from(4), addr).await.unwrap());
    held.push(connect_from(from(5), addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seventh = connect_from(from(6), addr).await.unwrap();
    assert!(
        closed_within(&mut seventh, Duration::from_secs(1)).await,
        "a connection over the listener's cap was kept"
    );
    assert!(!healthz(addr).await, "the listener is full");
    // A slot given back is free again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthz(addr).await);
    let metrics = ops::metrics_handle().render();
    assert!(
        metrics.contains("reason=\"address_full\"") && metrics.contains("reason=\"listener_full\""),
        "{metrics}"
    );
    stop.cancel();
}
