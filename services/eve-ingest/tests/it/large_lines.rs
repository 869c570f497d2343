//! Oversized lines on the list, against the built binary with the real Redis and NATS: a
//! 50 MB line is dead-lettered as a bounded prefix with its size and SHA-256 (not 70 MB of
//! base64 in Redis), and eight 20 MB lines at once keep the process's peak memory (VmHWM)
//! far below what holding them all, several copies each, would take.
#![allow(clippy::unwrap_used)]

use crate::common;

use aurora_core::model::{DeadLetter, DEAD_LETTER_RAW_MAX};
use common::*;

/// A valid EVE event of about `size` bytes (too large for NATS: dead-lettered).
fn big_line(size: usize, tag: usize) -> Vec<u8> {
    let head = format!("{{\"event_type\":\"flow\",\"tag\":{tag},\"pad\":\"");
    let mut line = head.into_bytes();
    line.resize(size - 2, b'x');
    line.extend_from_slice(b"\"}");
    line
}

/// The peak resident memory of process `pid` in bytes (VmHWM from /proc).
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn dead_letters(env: &Env) -> Vec<DeadLetter> {
    list_docs(&mut env.conn(), &env.names.eve_deadletter())
        .await
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lines_are_dead_lettered_bounded_and_memory_stays_bounded() {
    let env = Env::new().await;
    let mut svc = Site::new(&env.names, "site-a", 0)
        .with_binary(Svc::EveIngest, env!("CARGO_BIN_EXE_eve-ingest"))
        .start(Svc::EveIngest, &[])
        .await;
    let pid = svc.pid().unwrap();
    let baseline = vm_hwm(pid);

    // Eight 20 MB lines at once, and a normal event behind them.
    let mut lines: Vec<Vec<u8>> = (0..8).map(|i| big_line(20_000_000, i)).collect();
    let normal = fixture_lines().into_iter().next().unwrap();
    lines.push(normal);
    env.push(&lines).await;
    drop(lines);
    env.wait_stream_len(1).await;
    aurora_testkit::wait_until(LONG, "eight dead letters", || async {
        (dead_letters(&env).await.len() >= 8).then_some(())
    })
    .await;
    let peak = vm_hwm(pid);
    eprintln!(
        "VmHWM: {} MB at start, {} MB after eight 20 MB lines",
        baseline >> 20,
        peak >> 20
    );
    // 160 MB of lines arrive at once. A 16 MiB batch budget makes each 20 MB line a batch of
    // its own; two batches in flight, one handed over and one being taken hold four lines
    // (80 MB), the one being read for a moment twice (the Redis reply and its bytes): about
    // 100 MB, 170 MiB with the allocator's slack. Taking the eight in one batch (one 160 MB
    // reply, then its lines) peaked above 200 MB over the start even with dead letters
    // bounded, and at 912 MB with whole lines dead-lettered.
    assert!(
        peak < baseline + 170 * 1024 * 1024,
        "peak {} MB (start {} MB)",
        peak >> 20,
        baseline >> 20
    );

    // One 50 MB line: a bounded prefix, its size and its hash.
    let line = big_line(50_000_000, 99);
    env.push(std::slice::from_ref(&line)).await;
    let record = aurora_testkit::wait_until(LONG, "the 50 MB line dead-lettered", || async {
        dead_letters(&env)
            .await
            .into_iter()
            .find(|d| d.raw_size == Some(50_000_000))
    })
    .await;
    assert!(record.raw_truncated);
    assert_eq!(
        record.raw_sha256.as_deref(),
        Some(sha256_hex(&line).as_str())
    );
    let kept = record.raw().unwrap();
    assert_eq!(kept.len(), DEAD_LETTER_RAW_MAX);
    assert_eq!(&kept[..], &line[..DEAD_LETTER_RAW_MAX]);
    let stored: Vec<Vec<u8>> = env.list(&env.names.eve_deadletter()).await;
    let largest = stored.iter().map(Vec::len).max().unwrap();
    assert!(
        largest < 2 * DEAD_LETTER_RAW_MAX,
        "a record of {largest} bytes in Redis"
    );
    for d in dead_letters(&env).await {
        assert!(d.raw_truncated && d.raw_sha256.is_some(), "{:?}", d.reason);
    }

    let exit = svc.terminate().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(env.held(&svc.instance).await, 0);
}
