//! An `eve.json` file, followed like `tail -F`.
//!
//! - Only complete lines are taken: a last line without its `\n` waits until it has one.
//! - The position (inode and byte offset after the last line that is out) is saved after each
//!   batch, in Redis or in a state file: a restart neither skips nor repeats lines (a crash
//!   between the publish and the save repeats at most one batch, which JetStream's
//!   deduplication and the alerts' idempotency keys absorb).
//! - Rotation by rename: when the path names another inode, the old file is read to its end
//!   first, then the new one from its start.
//! - Rotation by truncation (copytruncate): when the file is shorter than what was read, it is
//!   read again from its start.
//! - At start, a saved position of another inode (rotated while stopped) or beyond the end
//!   (truncated while stopped) starts the file from its beginning.
//! - On shutdown no more lines are taken and the batch at hand is finished; at the drain
//!   deadline (abort) it is given up, and the saved position stays before it.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use aurora_core::bus::Conn;
use aurora_core::ops::Readiness;
use aurora_core::retry::Backoff;
use aurora_core::Names;

use crate::batch::{Processor, Stop};
use crate::error::IngestError;
use crate::event::{trim_newline, Rejection};
use crate::health::INPUT;
use crate::telemetry::{self, RetryStage, Rotation};
use crate::SERVICE;

/// Where the file is and how it is read.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: PathBuf,
    pub batch: usize,
    /// A longer line is dead-lettered (its first bytes), the rest skipped.
    pub max_line_bytes: usize,
    /// How often to look for new lines and rotation at the end of the file.
    pub poll: Duration,
}

/// How far the file has been handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub inode: u64,
    pub offset: u64,
}

/// Where the position is kept.
#[derive(Clone)]
pub enum PositionStore {
    /// A Redis key ([`PositionStore::redis_key`]).
    Redis { conn: Conn, key: String },
    /// A local file, replaced atomically (write, fsync, rename).
    File(PathBuf),
}

/// Attempts to save the position before the follower stops with an error (about 6 s of
/// retries with the default back-off).
const SAVE_ATTEMPTS: u32 = 7;

impl PositionStore {
    /// The Redis key of the position of one file: under the service's state,
    /// `file:<first 16 hex digits of the SHA-256 of the path>`.
    pub fn redis_key(names: &Names, path: &Path) -> String {
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        names.state_key(SERVICE, &format!("file:{}", &hex::encode(digest)[..16]))
    }

    fn describe(&self) -> String {
        match self {
            Self::Redis { key, .. } => format!("redis key {key}"),
            Self::File(p) => p.display().to_string(),
        }
    }

    fn error(&self, reason: impl ToString) -> IngestError {
        IngestError::Position {
            path: self.describe(),
            reason: reason.to_string(),
        }
    }

    pub async fn load(&self) -> Result<Option<Position>, IngestError> {
        let raw: Option<Vec<u8>> = match self {
            Self::Redis { conn, key } => {
                let mut conn = conn.clone();
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(IngestError::redis("GET", key))?
            }
            Self::File(path) => match tokio::fs::read(path).await {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(self.error(e)),
            },
        };
        match raw {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| self.error(format!("unreadable position: {e}"))),
        }
    }

    pub async fn save(&self, position: Position) -> Result<(), IngestError> {
        let bytes = serde_json::to_vec(&position).map_err(|e| self.error(e))?;
        match self {
            Self::Redis { conn, key } => {
                let mut conn = conn.clone();
                redis::cmd("SET")
                    .arg(key)
                    .arg(bytes)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(IngestError::redis("SET", key))
            }
            Self::File(path) => write_atomically(path, &bytes)
                .await
                .map_err(|e| self.error(e)),
        }
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = tokio::fs::File::create(&tmp).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// Complete lines cut from the front of a buffer.
#[derive(Debug, Default)]
struct Cut {
    lines: Vec<Bytes>,
    too_long: Vec<(Rejection, Bytes)>,
    /// Bytes of the buffer these account for (lines, newlines, blank and skipped bytes).
    consumed: usize,
}

/// Cuts up to `batch` complete lines from `buf`. A line longer than `max` (even one not yet
/// complete) is cut to its first `max` bytes for the dead-letter record and the rest of it
/// is skipped (`skipping` stays set until its newline comes).
fn cut_lines(buf: &[u8], batch: usize, max: usize, skipping: &mut bool) -> Cut {
    let mut cut = Cut::default();
    let mut start = 0;
    while cut.lines.len() + cut.too_long.len() < batch.max(1) {
        let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let end = start + nl + 1;
        if *skipping {
            *skipping = false;
        } else {
            let line = trim_newline(&buf[start..end]);
            if line.len() > max {
                cut.too_long
                    .push((Rejection::TooLong, Bytes::copy_from_slice(&line[..max])));
            } else if line.iter().all(u8::is_ascii_whitespace) {
                telemetry::blank_line();
            } else {
                cut.lines.push(Bytes::copy_from_slice(line));
            }
        }
        start = end;
    }
    let rest = &buf[start..];
    if !rest.contains(&b'\n') {
        if *skipping {
            start = buf.len();
        } else if rest.len() > max {
            cut.too_long
                .push((Rejection::TooLong, Bytes::copy_from_slice(&rest[..max])));
            *skipping = true;
            start = buf.len();
        }
    }
    cut.consumed = start;
    cut
}

struct Follower {
    cfg: FileConfig,
    store: PositionStore,
    processor: Processor,
    source: String,
    file: tokio::fs::File,
    inode: u64,
    /// Offset after the last byte that is out.
    done: u64,
    /// Offset after the last byte read.
    read: u64,
    buf: Vec<u8>,
    skipping: bool,
}

/// Follows the file until shutdown.
pub async fn run(
    cfg: FileConfig,
    store: PositionStore,
    processor: Processor,
    readiness: Readiness,
    stop: Stop,
) -> Result<(), IngestError> {
    let saved = store.load().await?;
    let Some((file, inode, len)) = open_when_there(&cfg.path, cfg.poll, &stop.shutdown).await?
    else {
        return Ok(());
    };
    let done = match saved {
        Some(p) if p.inode == inode && p.offset <= len => p.offset,
        Some(p) if p.inode == inode => {
            tracing::warn!(saved = p.offset, len, "file is shorter than the saved position (truncated while stopped): reading it from its start");
            0
        }
        Some(_) => {
            tracing::warn!("file was replaced while stopped: reading the new one from its start");
            0
        }
        None => 0,
    };
    let mut follower = Follower {
        source: cfg.path.display().to_string(),
        cfg,
        store,
        processor,
        file,
        inode,
        done,
        read: done,
        buf: Vec::new(),
        skipping: false,
    };
    follower.seek(done).await?;
    readiness.set_ready(INPUT);
    tracing::info!(path = %follower.source, offset = done, "following the eve file");
    follower.follow(&stop).await
}

async fn open_when_there(
    path: &Path,
    poll: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<(tokio::fs::File, u64, u64)>, IngestError> {
    let mut warned = false;
    loop {
        match tokio::fs::File::open(path).await {
            Ok(file) => {
                let meta = file.metadata().await.map_err(|e| file_error(path, e))?;
                return Ok(Some((file, meta.ino(), meta.len())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !warned {
                    tracing::warn!(path = %path.display(), "eve file does not exist yet: waiting for it");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => return Err(file_error(path, e)),
        }
    }
}

fn file_error(path: &Path, source: std::io::Error) -> IngestError {
    IngestError::File {
        path: path.display().to_string(),
        source,
    }
}

impl Follower {
    async fn seek(&mut self, offset: u64) -> Result<(), IngestError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| file_error(&self.cfg.path, e))?;
        self.done = offset;
        self.read = offset;
        self.buf.clear();
        self.skipping = false;
        Ok(())
    }

    async fn follow(&mut self, stop: &Stop) -> Result<(), IngestError> {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut new_file_seen = false;
        loop {
            if stop.shutdown.is_cancelled() {
                return Ok(());
            }
            let n = self
                .file
                .read(&mut chunk)
                .await
                .map_err(|e| file_error(&self.cfg.path, e))?;
            if n > 0 {
                self.read += n as u64;
                self.buf.extend_from_slice(&chunk[..n]);
                if !self.handle_complete_lines(stop).await? {
                    return Ok(());
                }
                continue;
            }
            match tokio::fs::metadata(&self.cfg.path).await {
                Ok(meta) if meta.ino() != self.inode => {
                    // Renamed away: the writer may still have been appending to the old file
                    // when we last read it, so read it to its end once more before leaving it.
                    if !new_file_seen {
                        new_file_seen = true;
                        continue;
                    }
                    new_file_seen = false;
                    if !self.switch_to_new_file(stop).await? {
                        return Ok(());
                    }
                }
                Ok(meta) if meta.len() < self.read => {
                    tracing::warn!(path = %self.source, len = meta.len(), read = self.read, "eve file truncated: reading it from its start");
                    telemetry::file_rotation(Rotation::Truncate);
                    self.seek(0).await?;
                    if !self.save(&stop.abort).await? {
                        return Ok(());
                    }
                }
                _ => {
                    tokio::select! {
                        _ = stop.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(self.cfg.poll) => {}
                    }
                }
            }
        }
    }

    /// Handles every complete line of the buffer, a batch at a time, saving the position
    /// after each. False when stopped: by shutdown between batches, or by the drain deadline
    /// during one.
    async fn handle_complete_lines(&mut self, stop: &Stop) -> Result<bool, IngestError> {
        loop {
            if stop.shutdown.is_cancelled() {
                return Ok(false);
            }
            let cut = cut_lines(
                &self.buf,
                self.cfg.batch,
                self.cfg.max_line_bytes,
                &mut self.skipping,
            );
            if cut.consumed == 0 {
                return Ok(true);
            }
            telemetry::lines((cut.lines.len() + cut.too_long.len()) as u64);
            if self
                .processor
                .handle_with(&self.source, cut.lines, cut.too_long, &stop.abort)
                .await
                .is_err()
            {
                return Ok(false);
            }
            self.buf.drain(..cut.consumed);
            self.done += cut.consumed as u64;
            if !self.save(&stop.abort).await? {
                return Ok(false);
            }
        }
    }

    async fn switch_to_new_file(&mut self, stop: &Stop) -> Result<bool, IngestError> {
        if !self.buf.is_empty() && !self.skipping {
            // The old file ended without a newline: what is there is all it will ever hold.
            let last = Bytes::copy_from_slice(trim_newline(&self.buf));
            if self
                .processor
                .handle(&self.source, vec![last], &stop.abort)
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
        let Some((file, inode, _)) =
            open_when_there(&self.cfg.path, self.cfg.poll, &stop.shutdown).await?
        else {
            return Ok(false);
        };
        tracing::info!(path = %self.source, old_inode = self.inode, new_inode = inode, "eve file rotated: following the new file");
        telemetry::file_rotation(Rotation::Rename);
        self.file = file;
        self.inode = inode;
        self.seek(0).await?;
        self.save(&stop.abort).await
    }

    /// Saves the position, retrying a few times; `false` when the drain deadline came first
    /// (the lines after the saved position are handled again at the next start).
    async fn save(&self, abort: &CancellationToken) -> Result<bool, IngestError> {
        let position = Position {
            inode: self.inode,
            offset: self.done,
        };
        let mut backoff = Backoff::default();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store.save(position).await {
                Ok(()) => return Ok(true),
                Err(e) if attempts < SAVE_ATTEMPTS => {
                    tracing::warn!(error = %e, "cannot save the file position: retrying");
                    telemetry::retry(RetryStage::Position);
                    if !backoff.wait(abort).await {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_cut() {
        let mut skipping = false;
        let cut = cut_lines(b"{\"a\":1}\n{\"b\":2}\n{\"c\":", 10, 100, &mut skipping);
        assert_eq!(cut.lines.len(), 2);
        assert_eq!(cut.consumed, 16);
        let cut = cut_lines(b"a\nb\nc\n", 2, 100, &mut skipping);
        assert_eq!(cut.lines.len(), 2);
        assert_eq!(cut.consumed, 4);
        let cut = cut_lines(b"\n  \r\nx\r\n", 10, 100, &mut skipping);
        assert_eq!(cut.lines, vec![Bytes::from_static(b"x")]);
        assert_eq!(cut.consumed, 8);
    }

    #[test]
    fn too_long_lines_are_cut_short_and_skipped() {
        let mut skipping = false;
        let cut = cut_lines(b"0123456789", 10, 4, &mut skipping);
        assert_eq!(cut.too_long.len(), 1);
        assert_eq!(cut.too_long[0].1, Bytes::from_static(b"0123"));
        assert!(skipping);
        assert_eq!(cut.consumed, 10);
        let cut = cut_lines(b"abc\nok\n", 10, 4, &mut skipping);
        assert!(!skipping);
        assert_eq!(cut.lines, vec![Bytes::from_static(b"ok")]);
        assert!(cut.too_long.is_empty());
        let cut = cut_lines(b"0123456789\nok\n", 10, 4, &mut skipping);
        assert_eq!(cut.too_long.len(), 1);
        assert_eq!(cut.lines.len(), 1);
        assert!(!skipping);
    }
}
