//! One client connection, from admission to close.
//!
//! The session is generic over the socket (any `Sink` + `Stream` of WebSocket messages), so
//! its logic does not depend on axum. It owns its place in the channel's broadcast (a bounded
//! queue of shared frames): it never makes the fan-out or another client wait. It ends with:
//! - 1001 when the replica shuts down (the client reconnects to another one),
//! - 1008 when the token expires,
//! - 1013 when the client falls more than the queue behind the live stream,
//! - 1011 on a server error,
//! - no close at all when the socket accepts nothing for `send_timeout` or answers no ping
//!   for `pong_timeout` (a dead peer cannot read a close frame).
//!
//! After a close frame the session waits (at most `close_timeout`) for the client's reply
//! before the connection is dropped: the closing handshake completes, and a browser reports
//! `wasClean: true` with the code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aurora_core::bus::{self, Conn};
use aurora_core::names::Channel;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::fanout::Hub;
use crate::frame::Frame;
use crate::telemetry;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_SERVER_ERROR: u16 = 1011;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Frames written before one flush, when more are waiting.
const MAX_BATCH: usize = 64;

/// How a session behaves (from the flags).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_replay: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub send_timeout: Duration,
    /// How long a close frame waits for the client's reply.
    pub close_timeout: Duration,
}

/// The connections each subject holds on one channel of this replica, under a limit
/// (`--max-connections-per-subject`; 0: none).
#[derive(Debug, Clone, Default)]
pub struct SubjectSlots {
    max: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

impl SubjectSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Counters only: usable after a panic elsewhere.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `subject`, or `None` when it holds the limit already.
    pub fn try_take(&self, subject: &str) -> Option<SubjectSlot> {
        if self.max == 0 {
            return Some(SubjectSlot { slots: None });
        }
        let mut held = self.lock();
        let n = held.entry(subject.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SubjectSlot {
            slots: Some((self.clone(), subject.to_string())),
        })
    }

    /// Connections `subject` holds now.
    pub fn held(&self, subject: &str) -> usize {
        self.lock().get(subject).copied().unwrap_or(0)
    }
}

/// A subject's connection, given back when dropped.
#[derive(Debug)]
pub struct SubjectSlot {
    slots: Option<(SubjectSlots, String)>,
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        if let Some((slots, subject)) = self.slots.take() {
            let mut held = slots.lock();
            if let Some(n) = held.get_mut(&subject) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&subject);
                }
            }
        }
    }
}

/// What the handshake decided.
pub enum Admission {
    /// Accepted: the client's identity, how long its token is valid, its slot in the channel.
    Accepted {
        subject: String,
        token_valid_for: Duration,
        since: Option<String>,
        permit: OwnedSemaphorePermit,
        subject_slot: SubjectSlot,
    },
    /// Refused: closed at once with this code and reason (after the upgrade, so a browser
    /// sees the code).
    Refused { code: u16, reason: String },
}

/// Everything a session shares with the rest of the gateway.
#[derive(Clone)]
pub struct SessionContext {
    pub hub: Hub,
    pub conn: Conn,
    pub config: SessionConfig,
    /// The connections of each subject on this channel.
    pub subjects: SubjectSlots,
    /// Cancelled when the replica drains: every session closes with 1001.
    pub shutdown: CancellationToken,
}

/// Why a session ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed(u16),
    ClientClosed,
    SocketError(String),
    SendTimeout,
    NoPong,
}

type WsError = axum::Error;

/// Runs one session to its end.
pub async fn run<S>(mut socket: S, admission: Admission, ctx: SessionContext) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let channel = ctx.hub.channel;
    match admission {
        Admission::Refused { code, reason } => {
            close(&mut socket, channel, code, &reason, &ctx.config).await
        }
        Admission::Accepted {
            subject,
            token_valid_for,
            since,
            permit,
            subject_slot,
        } => {
            let open = telemetry::connection_opened(channel);
            tracing::info!(channel = channel.as_str(), subject = %subject, since = ?since, "client connected");
            let end = serve(&mut socket, &ctx, token_valid_for, since).await;
            tracing::info!(channel = channel.as_str(), subject = %subject, end = ?end, "client gone");
            drop(open);
            drop(permit);
            drop(subject_slot);
            end
        }
    }
}

async fn serve<S>(
    socket: &mut S,
    ctx: &SessionContext,
    token_valid_for: Duration,
    since: Option<String>,
) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let channel = ctx.hub.channel;
    let cfg = &ctx.config;
    // Subscribe before reading what was missed: an entry is then either in the replay or in
    // the queue (or both, and skipped the second time), never in neither.
    let mut live = ctx.hub.subscribe();
    let mut replayed_up_to = None;
    if let Some(since) = since {
        match replay(socket, ctx, &since).await {
            Ok(last) => replayed_up_to = last,
            Err(end) => return end,
        }
    }

    let expiry = tokio::time::sleep(token_valid_for);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval(cfg.ping_interval.max(Duration::from_millis(10)));
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut batch: Vec<Frame> = Vec::with_capacity(MAX_BATCH);

    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                return close(socket, channel, CLOSE_GOING_AWAY, "server shutting down: reconnect", cfg).await;
            }
            _ = &mut expiry => {
                return close(socket, channel, CLOSE_POLICY, "token expired", cfg).await;
            }
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_))) => {
                    // The reply to the client's close is queued by the socket: send it.
                    let _ = tokio::time::timeout(cfg.send_timeout, socket.flush()).await;
                    telemetry::closed(channel, CLOSE_NORMAL);
                    return End::ClientClosed;
                }
                None => return End::ClientClosed,
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(e)) => return End::SocketError(e.to_string()),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > cfg.pong_timeout {
                    telemetry::closed(channel, 1006);
                    return End::NoPong;
                }
                if let Err(end) = send_all(socket, std::iter::once(Message::Ping(Default::default())), cfg.send_timeout, &ctx.hub).await {
                    return end;
                }
            }
            received = live.recv() => {
                match received {
                    Ok(frame) => batch.push(frame),
                    Err(RecvError::Lagged(missed)) => return slow_client(socket, channel, missed, cfg).await,
                    Err(RecvError::Closed) => {
                        return close(socket, channel, CLOSE_SERVER_ERROR, "channel closed", cfg).await;
                    }
                }
                while batch.len() < MAX_BATCH {
                    match live.try_recv() {
                        Ok(frame) => batch.push(frame),
                        Err(TryRecvError::Lagged(missed)) => return slow_client(socket, channel, missed, cfg).await,
                        Err(_) => break,
                    }
                }
                let fresh = batch
                    .drain(..)
                    .filter(|f| replayed_up_to.is_none_or(|r| f.position > r))
                    .map(|f| Message::Text(f.text));
                if let Err(end) = send_all(socket, fresh, cfg.send_timeout, &ctx.hub).await {
                    return end;
                }
            }
        }
    }
}

/// Sends the entries after `since` (at most `max_replay`); returns the position of the last
/// one sent. When more were missed, a control frame says where the replay stopped, so the
/// client can reconnect from there.
async fn replay<S>(
    socket: &mut S,
    ctx: &SessionContext,
    since: &str,
) -> Result<Option<(u64, u64)>, End>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let channel = ctx.hub.channel;
    let cfg = &ctx.config;
    let mut conn = ctx.conn.clone();
    let entries = match bus::range(
        &mut conn,
        &ctx.hub.stream,
        since,
        cfg.max_replay.saturating_add(1),
    )
    .await
    {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(channel = channel.as_str(), error = %e, "cannot read what a resuming client missed");
            return Err(close(
                socket,
                channel,
                CLOSE_SERVER_ERROR,
                "cannot read the stream",
                cfg,
            )
            .await);
        }
    };
    let truncated = entries.len() > cfg.max_replay;
    let frames: Vec<Frame> = entries
        .iter()
        .take(cfg.max_replay)
        .filter_map(|e| Frame::from_entry(e).ok())
        .collect();
    let last = entries[..entries.len().min(cfg.max_replay)]
        .last()
        .and_then(|e| bus::parse_id(&e.id));
    telemetry::replayed(channel, frames.len() as u64);
    let mut messages: Vec<Message> = frames.into_iter().map(|f| Message::Text(f.text)).collect();
    if truncated {
        let last_id = last
            .map(|(ms, seq)| format!("{ms}-{seq}"))
            .unwrap_or_default();
        let notice = serde_json::json!({
            "control": "replay_truncated",
            "max_replay": cfg.max_replay,
            "resume_since": last_id,
        });
        messages.push(Message::Text(Utf8Bytes::from(notice.to_string())));
    }
    send_all(socket, messages, cfg.send_timeout, &ctx.hub).await?;
    Ok(last)
}

/// Writes messages and flushes once; a socket that takes longer than `timeout` is given up.
async fn send_all<S, I>(
    socket: &mut S,
    messages: I,
    timeout: Duration,
    hub: &Hub,
) -> Result<(), End>
where
    S: Sink<Message, Error = WsError> + Unpin,
    I: IntoIterator<Item = Message>,
{
    let channel = hub.channel;
    let write = async {
        let mut count = 0u64;
        for message in messages {
            if matches!(message, Message::Text(_)) {
                count += 1;
            }
            socket.feed(message).await?;
        }
        socket.flush().await?;
        Ok::<u64, WsError>(count)
    };
    // Almost always the socket takes the frames at once: the timer (an entry in the runtime's
    // timer wheel per write) is only armed when it does not.
    let mut write = std::pin::pin!(write);
    let written = match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(timeout, write).await,
    };
    match written {
        Ok(Ok(count)) => {
            hub.deliveries.increment(count);
            Ok(())
        }
        Ok(Err(e)) => Err(End::SocketError(e.to_string())),
        Err(_) => {
            telemetry::slow_client_closed(channel);
            telemetry::closed(channel, 1006);
            Err(End::SendTimeout)
        }
    }
}

async fn slow_client<S>(socket: &mut S, channel: Channel, missed: u64, cfg: &SessionConfig) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    telemetry::slow_client_closed(channel);
    tracing::warn!(
        channel = channel.as_str(),
        missed,
        "client fell too far behind: closing it"
    );
    close(
        socket,
        channel,
        CLOSE_TRY_AGAIN_LATER,
        "too slow: fell behind the live stream; reconnect with since",
        cfg,
    )
    .await
}

/// Sends a close frame (best effort, within `send_timeout`), counts it, and waits (at most
/// `close_timeout`) for the client's reply, so the closing handshake completes before the
/// connection is dropped.
pub async fn close<S>(
    socket: &mut S,
    channel: Channel,
    code: u16,
    reason: &str,
    cfg: &SessionConfig,
) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    telemetry::closed(channel, code);
    // A close reason is at most 123 bytes.
    let reason: String = reason.chars().take(120).collect();
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let sent = tokio::time::timeout(cfg.send_timeout, async {
        socket.send(frame).await?;
        socket.flush().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // Frames still in flight to us are skipped; the reply (or the end) stops the wait.
        let _ = tokio::time::timeout(cfg.close_timeout, async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    End::Closed(code)
}
