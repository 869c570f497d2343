//! The eve.json file input: partial lines, rotation by rename and by truncation, restarts.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Write;
use std::path::Path;

use common::*;
use eve_ingest::{Hooks, Input};

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// A partial last line waits for its end; a rename (with lines still written to the old file
/// after it) and a truncation are followed; every line goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_followed_through_partial_lines_rename_and_truncation() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eve.json");
    let lines = fixture_lines();
    let (a, rest) = lines.split_at(100);
    let (b, rest) = rest.split_at(100);
    let (c, rest) = rest.split_at(50);
    let (d, e) = rest.split_at(50);
    let distinct = |n: &[&[Vec<u8>]]| -> u64 {
        let all: Vec<Vec<u8>> = n.iter().flat_map(|s| s.iter().cloned()).collect();
        distinct_by_type(&all).values().sum::<usize>() as u64
    };

    // The first part and half of the next line.
    append(&path, &joined(a));
    let half = b[0].len() / 2;
    append(&path, &b[0][..half]);
    let mut settings = env.settings();
    settings.input = Input::File {
        path: path.clone(),
        state_file: None,
    };
    settings.poll_interval = std::time::Duration::from_millis(50);
    let svc = start(settings, "f1", Hooks::default()).await;
    env.wait_stream_len(distinct(&[a])).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        env.stream_len().await,
        distinct(&[a]),
        "the half line waits"
    );

    // Its end and the rest of part b.
    append(&path, &b[0][half..]);
    append(&path, b"\n");
    append(&path, &joined(&b[1..]));
    env.wait_stream_len(distinct(&[a, b])).await;

    // Rotation by rename: the writer still appends part c to the old file, then opens a new
    // one with part d.
    let rotated = dir.path().join("eve.json.1");
    std::fs::rename(&path, &rotated).unwrap();
    append(&rotated, &joined(c));
    append(&path, &joined(d));
    env.wait_stream_len(distinct(&[a, b, c, d])).await;

    // Rotation by truncation (copytruncate), then part e.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    drop(f);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    append(&path, &joined(e));
    env.wait_stream_len(distinct(&[a, b, c, d, e])).await;
    svc.stop().await.unwrap();

    let messages = env.messages().await;
    let total: usize = distinct_by_type(&lines).values().sum();
    assert_eq!(messages.len(), total, "every line once");
    assert_eq!(
        llen(&mut env.conn(), &env.names.eve_deadletter()).await,
        0,
        "no line was cut"
    );
}

/// A restart starts where the last run stopped: it neither skips nor repeats. The stream is
/// deleted between the runs so that a repeated line would show (deduplication would hide it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_skips_nor_repeats_lines() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eve.json");
    let lines = fixture_lines();
    let (first, second) = lines.split_at(150);
    let distinct = |l: &[Vec<u8>]| distinct_by_type(l).values().sum::<usize>() as u64;
    append(&path, &joined(first));

    for state_file in [None, Some(dir.path().join("eve.pos"))] {
        let mut settings = env.settings();
        settings.input = Input::File {
            path: path.clone(),
            state_file: state_file.clone(),
        };
        settings.poll_interval = std::time::Duration::from_millis(50);
        settings.batch = 64;

        let _ = std::fs::remove_file(&path);
        append(&path, &joined(first));
        let svc = start(settings.clone(), "f1", Hooks::default()).await;
        env.wait_stream_len(distinct(first)).await;
        svc.stop().await.unwrap();

        env.js
            .delete_stream(env.names.suricata_stream())
            .await
            .unwrap();
        append(&path, &joined(second));
        let svc = start(settings, "f1", Hooks::default()).await;
        env.wait_stream_len(distinct(second)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        svc.stop().await.unwrap();
        let messages = env.messages().await;
        assert_eq!(
            messages.len() as u64,
            distinct(second),
            "only the new lines ({state_file:?})"
        );
        for (_, _, payload) in &messages {
            assert!(second.contains(payload));
        }
        env.clear().await;
    }
}
