//! The one guard of every TCP listener (the WebSocket gateway, the REST API, the ops port):
//! a connection is never held for free.
//!
//! - **Idle timeout**: a connection with no request in flight that is not an established
//!   session (an authenticated WebSocket) is closed after [`Limits::idle_timeout`]: one that
//!   sends nothing after connecting, one that stays open between requests, one refused at
//!   the WebSocket handshake that does not go away.
//! - **Header read timeout**: once the first byte of a request arrives, its head must be
//!   complete within [`Limits::header_timeout`] (a header dripped one byte at a time is cut).
//!   For a WebSocket this bounds the handshake: the upgrade request is answered, and the
//!   session established or refused, as soon as its head is read.
//! - **Caps**: at most [`Limits::max_connections`] open connections on the listener and
//!   [`Limits::max_per_address`] from one client address; a connection over a cap is closed
//!   at once, before a byte is read.
//!
//! Use: bind a [`GuardedListener`], serve with [`app`] (which tells the guard when a request
//! is in flight), and call [`Conn::establish`] from a handler whose connection becomes a
//! long-lived authenticated session:
//!
//! ```ignore
//! let listener = GuardedListener::bind(addr, "api", limits).await?;
//! axum::serve(listener, aurora_core::listener::app(router)).await?;
//! ```
//!
//! Metrics (label `listener`): `aurora_listener_connections` (open),
//! `aurora_listener_accepted_total`, `aurora_listener_refused_total` (`reason`:
//! `listener_full`, `address_full`), `aurora_listener_timeouts_total` (`reason`: `idle`,
//! `header`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{Connected, IntoMakeServiceWithConnectInfo};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Open connections, by listener.
pub const CONNECTIONS: &str = "aurora_listener_connections";
/// Connections accepted, by listener.
pub const ACCEPTED_TOTAL: &str = "aurora_listener_accepted_total";
/// Connections closed at once for a cap, by listener and reason.
pub const REFUSED_TOTAL: &str = "aurora_listener_refused_total";
/// Connections closed by a timeout, by listener and reason.
pub const TIMEOUTS_TOTAL: &str = "aurora_listener_timeouts_total";

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request to the end of its head.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in flight and no established
    /// session (from the accept, or from the end of the previous request's handler: writing
    /// the response counts against it, so a client that does not read is cut too).
    pub idle_timeout: Duration,
    /// Open connections on the listener at most.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_per_address: usize,
}

impl Limits {
    /// The ops port's: probes and scrapes are short and few.
    pub const OPS: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: 256,
        max_per_address: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_per_address: 2048,
        }
    }
}

/// How many connections are open, in all and per address.
#[derive(Debug, Default)]
struct Counts {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A TCP listener that enforces [`Limits`]; serve it with `axum::serve(listener, app(router))`.
pub struct GuardedListener {
    inner: TcpListener,
    name: &'static str,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl GuardedListener {
    /// Binds `addr`; `name` labels the metrics and logs (`ws`, `api`, `ops`).
    pub async fn bind(addr: SocketAddr, name: &'static str, limits: Limits) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?, name, limits))
    }

    /// Guards a listener already bound.
    pub fn new(inner: TcpListener, name: &'static str, limits: Limits) -> Self {
        Self {
            inner,
            name,
            limits,
            counts: Arc::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for a connection from `ip`, or the cap it is over.
    fn admit(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut counts = lock(&self.counts);
        if counts.open >= self.limits.max_connections {
            return Err("listener_full");
        }
        let from = counts.per_address.entry(ip).or_insert(0);
        if *from >= self.limits.max_per_address {
            return Err("address_full");
        }
        *from += 1;
        counts.open += 1;
        metrics::gauge!(CONNECTIONS, "listener" => self.name).increment(1.0);
        Ok(Slot {
            counts: self.counts.clone(),
            ip,
            name: self.name,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic while holding the lock leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the connections open now are
                    // served meanwhile; a short pause keeps this from spinning.
                    tracing::warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(addr.ip()) {
                Ok(slot) => {
                    metrics::counter!(ACCEPTED_TOTAL, "listener" => self.name).increment(1);
                    let _ = stream.set_nodelay(true);
                    return (Guarded::new(stream, slot, self.limits), addr);
                }
                Err(reason) => {
                    metrics::counter!(REFUSED_TOTAL, "listener" => self.name, "reason" => reason)
                        .increment(1);
                    tracing::debug!(listener = self.name, client = %addr, reason, "connection refused");
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection's place under the caps, given back when it closes.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
    name: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.open = counts.open.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
        metrics::gauge!(CONNECTIONS, "listener" => self.name).decrement(1.0);
    }
}

/// What the guard knows of a connection's use.
#[derive(Debug)]
struct Use {
    /// Requests being handled.
    in_flight: usize,
    /// An authenticated long-lived session (no timeout of the guard applies any more).
    established: bool,
    /// Since when nothing is in flight.
    idle_since: Instant,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
}

/// A handle on one guarded connection, for its handlers: [`app`] puts it in every request
/// as `ConnectInfo<Conn>`.
#[derive(Debug, Clone)]
pub struct Conn {
    usage: Arc<Mutex<Use>>,
    remote: Option<SocketAddr>,
}

impl Conn {
    /// The connection is an authenticated session from now on: neither the idle nor the
    /// header timeout applies any more (the session has its own liveness checks).
    pub fn establish(&self) {
        lock(&self.usage).established = true;
    }

    /// The client's address.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// A request is being handled until the returned guard is dropped.
    fn busy(&self) -> Busy {
        let mut usage = lock(&self.usage);
        usage.in_flight += 1;
        usage.head_started = None;
        Busy {
            usage: self.usage.clone(),
        }
    }
}

struct Busy {
    usage: Arc<Mutex<Use>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut usage = lock(&self.usage);
        usage.in_flight = usage.in_flight.saturating_sub(1);
        if usage.in_flight == 0 {
            usage.idle_since = Instant::now();
            usage.head_started = None;
        }
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Conn {
            usage: stream.io().usage.clone(),
            remote: Some(*stream.remote_addr()),
        }
    }
}

/// The router as a service for `axum::serve` over a [`GuardedListener`]: every request
/// carries its connection's [`Conn`] and counts as in flight while it is handled.
pub fn app(router: Router) -> IntoMakeServiceWithConnectInfo<Router, Conn> {
    router
        .layer(axum::middleware::from_fn(track))
        .into_make_service_with_connect_info::<Conn>()
}

async fn track(request: Request, next: Next) -> Response {
    let busy = request
        .extensions()
        .get::<ConnectInfo<Conn>>()
        .map(|ConnectInfo(conn)| conn.busy());
    let response = next.run(request).await;
    drop(busy);
    response
}

/// A guarded connection: reads and writes fail with `TimedOut` once its deadline passes.
pub struct Guarded {
    io: TcpStream,
    usage: Arc<Mutex<Use>>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    timed_out: bool,
    slot: Slot,
}

impl Guarded {
    fn new(io: TcpStream, slot: Slot, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            io,
            usage: Arc::new(Mutex::new(Use {
                in_flight: 0,
                established: false,
                idle_since: now,
                head_started: None,
            })),
            limits,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            armed: None,
            timed_out: false,
            slot,
        }
    }

    /// The current deadline and what it is for, if any applies.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let usage = lock(&self.usage);
        if usage.established || usage.in_flight > 0 {
            return None;
        }
        let idle = (usage.idle_since + self.limits.idle_timeout, "idle");
        match usage.head_started {
            Some(started) if started + self.limits.header_timeout < idle.0 => {
                Some((started + self.limits.header_timeout, "header"))
            }
            _ => Some(idle),
        }
    }

    /// `Ready(Err)` once the deadline passed; otherwise arms the timer so the task is woken
    /// at the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.timed_out {
            return Poll::Ready(timed_out());
        }
        let Some((deadline, reason)) = self.deadline() else {
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timed_out = true;
                metrics::counter!(TIMEOUTS_TOTAL, "listener" => self.slot.name, "reason" => reason)
                    .increment(1);
                tracing::debug!(listener = self.slot.name, reason, "connection timed out");
                Poll::Ready(timed_out())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Bytes arrived: the first of a request head starts the header timeout.
    fn received(&self) {
        let mut usage = lock(&self.usage);
        if !usage.established && usage.in_flight == 0 && usage.head_started.is_none() {
            usage.head_started = Some(Instant::now());
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection timed out")
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.received();
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
