//! Where a service's Redis is, and the one connection type that follows it.
//!
//! A Redis URL is either a server (`redis://`, `rediss://`, as the redis crate reads them) or
//! a Sentinel-managed primary:
//!
//! ```text
//! redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master-name>[/<db>]
//!     [?sentinel_username=...&sentinel_password=...]
//! rediss+sentinel://...   (TLS to the Sentinels and to the Redis servers)
//! ```
//!
//! The credentials before `@` are the Redis servers'; the Sentinels' own credentials, when
//! they have any, are the two query parameters. A Sentinel's port defaults to 26379.
//!
//! [`Conn`] finds the primary through the Sentinels and, when a command fails the way a
//! failover makes it fail (connection lost, `READONLY`, `MASTERDOWN`, a blocking read
//! unblocked by a role change), asks them again and moves every clone of itself to the new
//! primary: no restart, the caller's own retry finds the new primary. Scripts are sent with
//! `EVALSHA` falling back to the script itself, so a new primary that lacks them is no error.
//!
//! [`ReplicaWait`] is the "acknowledged means replicated" setting: a write that gates an
//! acknowledgement outside Redis waits (`WAIT`) for that many replicas
//! (docs/contract.md#redis).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The port a Sentinel listens on unless the URL says otherwise.
pub const SENTINEL_PORT: u16 = 26379;

/// How long one round of asking the Sentinels may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Asking the Sentinels again sooner than this after the last time does nothing.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(200);

/// A Redis deployment: one server, or a primary found through Sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Server(String),
    Sentinel(SentinelTarget),
}

/// A primary found through Sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub tls: bool,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

impl Target {
    /// Reads a Redis URL; a Sentinel URL is checked here, a server URL by the redis crate
    /// when it connects.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Ok(Self::Server(url.to_string()));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (non_empty(decode(user)?), non_empty(decode(pass)?))
            }
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            sentinels.push(host_port(host.trim())?);
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = decode(segments.next().unwrap_or_default())?;
        if master.is_empty() {
            return Err(
                "a Sentinel URL names the master after the hosts: .../<master-name>".into(),
            );
        }
        let db = match segments.next() {
            None => 0,
            Some(db) => db
                .parse()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        };
        if segments.next().is_some() {
            return Err("a Sentinel URL's path is /<master-name>[/<db>]".into());
        }
        let mut target = SentinelTarget {
            sentinels,
            master,
            tls,
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "sentinel_username" => target.sentinel_username = non_empty(value.into_owned()),
                "sentinel_password" => target.sentinel_password = non_empty(value.into_owned()),
                other => return Err(format!("unknown Sentinel URL parameter {other:?}")),
            }
        }
        Ok(Self::Sentinel(target))
    }

    /// The target without credentials, for logs, errors and `/readyz`.
    pub fn shown(&self) -> String {
        match self {
            Self::Server(url) => redacted_url(url),
            Self::Sentinel(s) => {
                let scheme = if s.tls { "rediss" } else { "redis" };
                let hosts: Vec<String> = s
                    .sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect();
                let auth = if s.password.is_some() { "***@" } else { "" };
                format!(
                    "{scheme}+sentinel://{auth}{}/{}/{}",
                    hosts.join(","),
                    s.master,
                    s.db
                )
            }
        }
    }
}

/// A server URL without its password.
pub fn redacted_url(url: &str) -> String {
    if url.contains("+sentinel://") {
        return match Target::parse(url) {
            Ok(t) => t.shown(),
            Err(_) => "<unparsable url>".to_string(),
        };
    }
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable url>".to_string(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a Sentinel URL's credentials and names must be UTF-8".to_string())
}

fn host_port(s: &str) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("a Sentinel URL lists at least one host".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in {s:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| format!("port {p:?} of Sentinel {s:?} is not a number"))?,
    };
    if host.is_empty() {
        return Err(format!("Sentinel {s:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// Writes that gate an acknowledgement outside Redis wait for this many replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

static REPLICA_WAIT: OnceLock<Option<ReplicaWait>> = OnceLock::new();

/// Sets the process's [`ReplicaWait`] (once, at start-up; later calls are ignored). Every
/// connection made afterwards carries it.
pub fn set_replica_wait(wait: Option<ReplicaWait>) {
    let _ = REPLICA_WAIT.set(wait);
}

fn default_replica_wait() -> Option<ReplicaWait> {
    REPLICA_WAIT.get().copied().flatten()
}

/// A connection to the site's Redis that reconnects by itself and, behind Sentinels, follows
/// the primary. Clones share one connection.
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
    replica_wait: Option<ReplicaWait>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("target", &self.shared.target.shown())
            .field("replica_wait", &self.replica_wait)
            .finish()
    }
}

struct Shared {
    target: Target,
    config: ConnectionManagerConfig,
    /// The generation (bumped on every move), the connection and the server's `host:port`.
    current: RwLock<(u64, ConnectionManager, Arc<str>)>,
    /// Behind Sentinels: one lookup at a time, and when the last one was.
    lookup: Option<tokio::sync::Mutex<Option<Instant>>>,
    /// Set by an error a failover causes, cleared when the Sentinels name a primary that says
    /// it is one: meanwhile commands fail at once instead of reaching the old address, where
    /// the old primary may be back, empty, before the Sentinels make it a replica.
    unsettled: std::sync::atomic::AtomicBool,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The URL cannot be used as it is.
    Url(String),
    /// Redis (or every Sentinel) could not be reached, or refused.
    Unreachable(redis::RedisError),
}

impl Conn {
    /// Connects to `url`; commands time out after `response_timeout`.
    pub async fn connect(url: &str, response_timeout: Duration) -> Result<Self, ConnectError> {
        let target = Target::parse(url).map_err(ConnectError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let (client, addr) = match &target {
            Target::Server(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| ConnectError::Url(e.to_string()))?;
                let addr = client.get_connection_info().addr().to_string();
                (client, addr)
            }
            Target::Sentinel(s) => {
                let (host, port) = Box::pin(primary_of(s))
                    .await
                    .map_err(ConnectError::Unreachable)?;
                (
                    node_client(s, &host, port).map_err(ConnectError::Url)?,
                    format!("{host}:{port}"),
                )
            }
        };
        let manager = ConnectionManager::new_with_config(client, config.clone())
            .await
            .map_err(ConnectError::Unreachable)?;
        let sentinel = matches!(target, Target::Sentinel(_));
        if sentinel {
            tracing::info!(primary = %addr, master = %target.shown(), "Redis primary found through Sentinel");
        }
        let shared = Arc::new(Shared {
            target,
            config,
            current: RwLock::new((0, manager, addr.into())),
            lookup: sentinel.then(|| tokio::sync::Mutex::new(None)),
            unsettled: std::sync::atomic::AtomicBool::new(false),
        });
        if sentinel {
            tokio::spawn(watch_primary(Arc::downgrade(&shared)));
        }
        Ok(Self {
            shared,
            replica_wait: default_replica_wait(),
        })
    }

    /// What this connection connects to, without credentials.
    pub fn shown(&self) -> String {
        self.shared.target.shown()
    }

    /// The server this connection talks to now (`host:port`).
    pub fn server(&self) -> String {
        self.shared.current().2.to_string()
    }

    /// The replicas a gating write waits for, if any.
    pub fn replica_wait(&self) -> Option<ReplicaWait> {
        self.replica_wait
    }

    /// This connection with another [`ReplicaWait`] (clones made from it carry it).
    pub fn with_replica_wait(mut self, wait: Option<ReplicaWait>) -> Self {
        self.replica_wait = wait;
        self
    }

    /// Behind Sentinels, after a write its replicas did not acknowledge: the server may no
    /// longer be the primary (a demoted primary back before its clients moved); asks again.
    pub async fn check_primary(&self) {
        let generation = self.shared.current().0;
        self.shared.follow(Some(generation)).await;
    }
}

/// Asks the Sentinels where the primary is every [`WATCH_INTERVAL`] while the connection
/// lives: a failover is followed even by a connection that sends nothing, and a connection
/// that reconnected to a demoted primary does not stay there.
async fn watch_primary(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.follow(None).await;
    }
}

/// How often a connection behind Sentinels checks where the primary is.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

impl Shared {
    fn current(&self) -> (u64, ConnectionManager, Arc<str>) {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// After a failed command on generation `seen`: behind Sentinels, when the error is one a
    /// failover causes, follows the primary.
    async fn after_error(&self, seen: u64, error: &redis::RedisError) {
        if self.lookup.is_some() && primary_may_have_moved(error) {
            self.unsettled.store(true, Ordering::Release);
            self.follow(Some(seen)).await;
        }
    }

    /// The connection to send a command on, or an error while the primary is unsettled and
    /// the Sentinels do not name one yet.
    async fn settled(&self) -> redis::RedisResult<(u64, ConnectionManager)> {
        if self.unsettled.load(Ordering::Acquire) {
            let generation = self.current().0;
            self.follow(Some(generation)).await;
            if self.unsettled.load(Ordering::Acquire) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "waiting for the Sentinels to name the Redis primary",
                )));
            }
        }
        let (generation, conn, _) = self.current();
        Ok((generation, conn))
    }

    /// Asks the Sentinels where the primary is and moves there if it moved. With `seen`, does
    /// nothing when the connection moved since, or when it was asked very recently.
    async fn follow(&self, seen: Option<u64>) {
        let (Some(lookup), Target::Sentinel(target)) = (&self.lookup, &self.target) else {
            return;
        };
        let mut last = lookup.lock().await;
        let (generation, _, addr) = self.current();
        if seen.is_some_and(|s| s != generation)
            || (seen.is_some() && last.is_some_and(|t| t.elapsed() < LOOKUP_INTERVAL))
        {
            return;
        }
        *last = Some(Instant::now());
        let (host, port) = match Box::pin(primary_of(target)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "asking the Sentinels for the Redis primary failed");
                return;
            }
        };
        let found = format!("{host}:{port}");
        if *found == *addr {
            self.unsettled.store(false, Ordering::Release);
            return;
        }
        let client = match node_client(target, &host, port) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(primary = %found, error = %e, "unusable primary address");
                return;
            }
        };
        match ConnectionManager::new_with_config(client, self.config.clone()).await {
            Ok(manager) => {
                tracing::warn!(from = %addr, to = %found, "the Redis primary moved: following it");
                let mut current = match self.current.write() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *current = (generation + 1, manager, found.into());
                self.unsettled.store(false, Ordering::Release);
                crate::bus::count_primary_move();
            }
            Err(e) => {
                tracing::warn!(primary = %found, error = %e, "cannot connect to the new Redis primary yet")
            }
        }
    }
}

/// A client for the Redis server at `host:port` with the target's credentials, TLS and db.
fn node_client(s: &SentinelTarget, host: &str, port: u16) -> Result<redis::Client, String> {
    let scheme = if s.tls { "rediss" } else { "redis" };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let mut url = url::Url::parse(&format!("{scheme}://{host}:{port}/{}", s.db))
        .map_err(|e| format!("primary address {host}:{port}: {e}"))?;
    if let Some(user) = &s.username {
        url.set_username(user)
            .map_err(|_| "the Redis user name cannot go in a URL".to_string())?;
    }
    if let Some(pass) = &s.password {
        url.set_password(Some(pass))
            .map_err(|_| "the Redis password cannot go in a URL".to_string())?;
    }
    redis::Client::open(url.as_str()).map_err(|e| e.to_string())
}

/// A client for one Sentinel.
fn sentinel_client(s: &SentinelTarget, host: &str, port: u16) -> Result<redis::Client, String> {
    node_client(
        &SentinelTarget {
            db: 0,
            username: s.sentinel_username.clone(),
            password: s.sentinel_password.clone(),
            ..s.clone()
        },
        host,
        port,
    )
}

/// What one Sentinel says of the master: its address and the configuration epoch of that
/// answer (a failover bumps it).
async fn ask_sentinel(
    s: &SentinelTarget,
    host: &str,
    port: u16,
) -> redis::RedisResult<(String, u16, i64, bool)> {
    let client = sentinel_client(s, host, port).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "Sentinel", e))
    })?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let fields: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(&s.master)
        .query_async(&mut conn)
        .await?;
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let ip = field("ip");
    let port: u16 = field("port").parse().unwrap_or(0);
    let epoch: i64 = field("config-epoch").parse().unwrap_or(0);
    let flags = field("flags");
    let down = flags.split(',').any(|f| f == "s_down" || f == "o_down");
    Ok((ip, port, epoch, down))
}

/// The primary's address: asks every Sentinel at once and takes the answer of the highest
/// configuration epoch (a Sentinel that has not heard of a failover yet names the old
/// primary, which may be back, empty, before it is made a replica); then checks that the
/// server says it is a primary.
async fn primary_of(s: &SentinelTarget) -> redis::RedisResult<(String, u16)> {
    let asks = s.sentinels.iter().map(|(host, port)| async move {
        tokio::time::timeout(LOOKUP_TIMEOUT, ask_sentinel(s, host, *port)).await
    });
    let answers = futures::future::join_all(asks).await;
    let mut best: Option<(String, u16, i64, bool)> = None;
    let mut last_error = None;
    for answer in answers {
        match answer {
            Ok(Ok(a)) if a.1 != 0 => {
                if best.as_ref().is_none_or(|b| a.2 > b.2) {
                    best = Some(a);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => last_error = Some("no answer in time".into()),
        }
    }
    let Some((host, port, _, down)) = best else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no Sentinel named the primary",
            last_error.unwrap_or_default(),
        )));
    };
    if down {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the Sentinels see the primary down (a failover is under way)",
            format!("{host}:{port}"),
        )));
    }
    let client = node_client(s, &host, port).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "primary", e))
    })?;
    let role = tokio::time::timeout(LOOKUP_TIMEOUT, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("ROLE").query_async::<Value>(&mut conn).await
    })
    .await;
    match role {
        Ok(Ok(Value::Array(parts))) if parts.first().is_some_and(is_master_role) => {
            Ok((host, port))
        }
        Ok(Err(e)) => Err(e),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "the server the Sentinels name is not a primary (yet)",
            format!("{host}:{port}"),
        ))),
    }
}

fn is_master_role(v: &Value) -> bool {
    match v {
        Value::BulkString(b) => b == b"master",
        Value::SimpleString(s) => s == "master",
        _ => false,
    }
}

/// True for the errors a failover causes: the primary gone, a demoted primary refusing writes,
/// a replica that lost its primary, a blocked read released by a role change.
pub fn primary_may_have_moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "UNBLOCKED"))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.shared.settled().await?;
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.shared.after_error(generation, e).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.shared.settled().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.shared.after_error(generation, e).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.current().1.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let t = Target::parse(
            "rediss+sentinel://:p%40ss@s1:26380,s2,[::1]:5/mymaster/2?sentinel_password=sp",
        );
        let Ok(Target::Sentinel(s)) = t else {
            panic!("{t:?}");
        };
        assert!(s.tls);
        assert_eq!(
            s.sentinels,
            vec![
                ("s1".to_string(), 26380),
                ("s2".to_string(), SENTINEL_PORT),
                ("::1".to_string(), 5)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 2);
        assert_eq!(s.username, None);
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!(s.sentinel_password.as_deref(), Some("sp"));
        let shown = Target::Sentinel(s).shown();
        assert!(!shown.contains("p@ss") && !shown.contains("sp&"), "{shown}");
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379"),
            Ok(Target::Server("redis://127.0.0.1:6379".into()))
        );
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:x/m",
            "redis+sentinel:///m",
            "redis+sentinel://s1/m/zero",
            "redis+sentinel://s1/m?password=x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            redacted_url("redis+sentinel://u:secret@s1/m"),
            "redis+sentinel://***@s1:26379/m/0"
        );
    }
}
