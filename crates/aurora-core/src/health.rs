//! The one dependency watcher: each dependency of a service (Redis, NATS, PostgreSQL, the
//! broker) is a named check; the watcher keeps `/readyz` true to their state, and a consumer
//! whose batch failed waits here until they answer again before it re-reads the batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ops::Readiness;
use crate::retry::Backoff;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A dependency: its readiness name and how to check that it answers.
#[derive(Clone)]
pub struct Dependency {
    name: &'static str,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .finish()
    }
}

impl Dependency {
    /// `check` is called for every look; it says why the dependency does not answer.
    pub fn new<F, Fut>(name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            check: Arc::new(move || Box::pin(check())),
        }
    }

    /// Redis answers `PING`.
    pub fn redis(conn: crate::bus::Conn) -> Self {
        Self::new(REDIS, move || {
            let mut conn = conn.clone();
            async move { crate::bus::ping(&mut conn).await.map_err(|e| e.to_string()) }
        })
    }

    /// The NATS client is connected.
    pub fn nats(client: async_nats::Client) -> Self {
        Self::new(NATS, move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("NATS connection {other}")),
                }
            }
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One look, bounded so a hung dependency counts as down.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// The readiness name of Redis in every service.
pub const REDIS: &str = "redis";
/// The readiness name of NATS in every service.
pub const NATS: &str = "nats";

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The dependencies of one service, watched together.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    list: Vec<Dependency>,
}

impl Dependencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, dependency: Dependency) -> Self {
        self.list.push(dependency);
        self
    }

    pub fn push(&mut self, dependency: Dependency) {
        self.list.push(dependency);
    }

    /// Looks at each dependency once and reports it on `readiness`; true when all answer.
    pub async fn check(&self, readiness: &Readiness) -> bool {
        let mut all = true;
        for dep in &self.list {
            match dep.check().await {
                Ok(()) => readiness.set_ready(dep.name),
                Err(why) => {
                    readiness.set_not_ready(dep.name, why);
                    all = false;
                }
            }
        }
        all
    }

    /// Waits (backing off) until every dependency answers; `false` on shutdown.
    pub async fn wait_up(&self, readiness: &Readiness, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            if self.check(readiness).await {
                return true;
            }
            if !backoff.wait(shutdown).await {
                return false;
            }
        }
    }

    /// Keeps `readiness` true to the dependencies' state until `shutdown`, looking every
    /// `interval`. Spawn it; the service's tasks own its handle.
    pub async fn watch(
        self,
        readiness: Readiness,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        for dep in &self.list {
            readiness.register(dep.name);
        }
        loop {
            self.check(&readiness).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Connects to a dependency at start-up, trying again (backing off) until it answers or the
/// service is stopped; meanwhile `/readyz` names the dependency, where it is looked for
/// (`target`, without credentials) and the last error. An error `fatal` says will not go
/// away by waiting (an unusable URL) ends the start at once.
pub async fn connect_at_start<T, E, F, Fut>(
    readiness: &Readiness,
    shutdown: &CancellationToken,
    name: &'static str,
    target: &str,
    fatal: fn(&E) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display + Into<anyhow::Error>,
{
    readiness.register(name);
    readiness.set_not_ready(name, format!("connecting to {target}"));
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(connected) => {
                readiness.set_ready(name);
                return Ok(connected);
            }
            Err(e) if fatal(&e) => {
                let e: anyhow::Error = e.into();
                return Err(e.context(format!("cannot use {name} at {target}")));
            }
            Err(e) => {
                tracing::warn!(dependency = name, %target, error = %e, "not reachable yet: retrying");
                readiness.set_not_ready(name, format!("connecting to {target}: {e}"));
            }
        }
        if !backoff.wait(shutdown).await {
            anyhow::bail!("stopped while connecting to {name}");
        }
    }
}

/// The service's Redis at start-up: connected and answering `PING` ([`connect_at_start`]).
pub async fn redis_at_start(
    readiness: &Readiness,
    shutdown: &CancellationToken,
    url: &str,
) -> anyhow::Result<crate::bus::Conn> {
    let target = crate::bus::redacted_url(url);
    connect_at_start(
        readiness,
        shutdown,
        REDIS,
        &target,
        |e: &crate::bus::BusError| matches!(e, crate::bus::BusError::Url { .. }),
        || async {
            let mut conn = crate::bus::connect(url).await?;
            crate::bus::ping(&mut conn).await?;
            Ok(conn)
        },
    )
    .await
}

/// Server URLs (a comma-separated list) without their credentials, for readiness and logs.
pub fn shown_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| crate::bus::redacted_url(url.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// NATS at start-up: the client once it is connected (it connects in the background and
/// reconnects for ever); `/readyz` names the servers meanwhile. Settings the client cannot
/// use (URL, credentials) end the start.
pub async fn nats_at_start(
    readiness: &Readiness,
    shutdown: &CancellationToken,
    nats: &crate::config::NatsArgs,
    client_name: &str,
) -> anyhow::Result<async_nats::Client> {
    let target = shown_urls(&nats.nats_url);
    readiness.register(NATS);
    readiness.set_not_ready(NATS, format!("connecting to {target}"));
    let client = nats
        .connect(client_name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot use {NATS} at {target}: {e}"))?;
    let connected = Dependency::nats(client.clone());
    // The state is local to the client: looking often costs nothing and ends the wait as
    // soon as the connection is up.
    let mut looks = tokio::time::interval(Duration::from_millis(100));
    // The client's state says only that it is not connected: after a second, one attempt of
    // our own now and then says why (a certificate refused, a password wrong).
    let started = std::time::Instant::now();
    let mut probed: Option<std::time::Instant> = None;
    let mut reason: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped while connecting to {NATS}"),
            _ = looks.tick() => {}
        }
        match connected.check().await {
            Ok(()) => {
                readiness.set_ready(NATS);
                return Ok(client);
            }
            Err(why) => {
                let due = match probed {
                    None => started.elapsed() >= Duration::from_secs(1),
                    Some(at) => at.elapsed() >= Duration::from_secs(5),
                };
                if due {
                    probed = Some(std::time::Instant::now());
                    let probe = tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("stopped while connecting to {NATS}"),
                        probe = nats.probe(client_name) => probe,
                    };
                    reason = probe.err().map(|e| e.to_string());
                    if let Some(reason) = &reason {
                        tracing::warn!(dependency = NATS, %target, error = %reason, "not reachable yet: retrying");
                    }
                }
                let detail = match &reason {
                    Some(reason) => format!("connecting to {target}: {why}: {reason}"),
                    None => format!("connecting to {target}: {why}"),
                };
                readiness.set_not_ready(NATS, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn start_up_waits_for_redis_and_says_where_it_looks() {
        let readiness = Readiness::new();
        let shutdown = CancellationToken::new();
        // Nothing listens on port 1: start-up keeps trying and says so, until stopped.
        let waiting = redis_at_start(&readiness, &shutdown, "redis://:secret@127.0.0.1:1");
        tokio::pin!(waiting);
        let report = tokio::select! {
            _ = &mut waiting => panic!("connected to nothing"),
            _ = tokio::time::sleep(Duration::from_millis(400)) => readiness.report(),
        };
        let detail = report["components"][REDIS]["detail"]
            .as_str()
            .unwrap_or_default();
        assert!(detail.starts_with("connecting to redis://"), "{detail}");
        assert!(!detail.contains("secret"), "credentials shown: {detail}");
        shutdown.cancel();
        assert!(waiting.await.is_err());
        let bad = redis_at_start(&readiness, &CancellationToken::new(), "not a url").await;
        assert!(bad.is_err(), "an unusable URL ends the start");
    }

    #[test]
    fn shown_urls_keep_no_password() {
        assert_eq!(
            shown_urls("nats://a:secret@n1:4222, nats://n2:4222"),
            "nats://a:***@n1:4222,nats://n2:4222"
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_checks_and_names_what_is_down() {
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let deps = Dependencies::new().with(Dependency::new("db", move || {
            let up = flag.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("refused".into())
                }
            }
        }));
        let readiness = Readiness::new();
        assert!(!deps.check(&readiness).await);
        assert_eq!(readiness.report()["components"]["db"]["detail"], "refused");
        up.store(true, Ordering::SeqCst);
        let shutdown = CancellationToken::new();
        assert!(deps.wait_up(&readiness, &shutdown).await);
        assert!(readiness.is_ready());
    }
}
