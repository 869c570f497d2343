//! The one lifecycle of every service.
//!
//! A service is a value that [`Service::start`]s with a [`Context`] (its name, this replica's
//! name, readiness, the shutdown and abort tokens) and returns the [`Running`] tasks that do its
//! work. [`launch`] serves the ops endpoints first, so `/healthz` answers from the first moment
//! of start-up, then starts the service. [`run_main`] is the whole of a binary: flags, logs and
//! traces, signals, launch, and the drain: readiness fails first (the load balancer stops
//! sending work), the tasks finish what they hold within the drain deadline, then the abort
//! token tells them to give up. The ops port answers `/healthz` until the process exits.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, CommonArgs};
use crate::ops::{self, Readiness};

/// What every service is: a name, a default ops port, and how it starts.
pub trait Service: Send + Sized + 'static {
    /// The service's name: logs, consumer groups, dead letters, client names, and the
    /// `AURORA_<NAME>_` prefix of its own variables.
    const NAME: &'static str;
    /// The ops port (`/healthz`, `/readyz`, `/metrics`) when `--ops-addr` is not given.
    const OPS_PORT: u16;

    /// Connects to the dependencies, sets up what the work needs and spawns it on a
    /// [`Running`]. The ops endpoints already answer while this runs. Work must stop taking
    /// new input when `ctx.shutdown` is cancelled and give up what it holds on `ctx.abort`.
    fn start(self, ctx: Context) -> impl Future<Output = anyhow::Result<Running>> + Send;
}

/// The flags of a binary: the shared ones, and how they make the service.
pub trait Flags: clap::Parser + Send + 'static {
    type Service: Service;
    /// Variables that were read under another name before; set, they stop the start with an
    /// error naming the variable that replaced them.
    const RENAMED_ENV: &'static [(&'static str, &'static str)] = &[];

    fn common(&self) -> &CommonArgs;
    /// Checks the flags and builds the service value.
    fn into_service(self) -> anyhow::Result<Self::Service>;
}

/// What a starting service is given.
#[derive(Debug, Clone)]
pub struct Context {
    /// [`Service::NAME`].
    pub service: &'static str,
    /// This replica's name (consumer names, client ids).
    pub instance: String,
    /// What `/readyz` answers from.
    pub readiness: Readiness,
    /// Cancelled when the service is asked to stop: take no new work, finish what is held.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain deadline has passed: give up what is held now (it is
    /// delivered again elsewhere).
    pub abort: CancellationToken,
    /// Where the ops endpoints answer.
    pub ops_addr: SocketAddr,
}

type BoxedWork = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The tasks of a started service. The service has stopped when all have returned; a task
/// that fails stops the others (they drain) and makes the process exit with an error.
pub struct Running {
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    after: Vec<BoxedWork>,
    failed: Vec<anyhow::Error>,
}

impl Running {
    pub fn new(ctx: &Context) -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown: ctx.shutdown.clone(),
            after: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// A part of the work that runs until shutdown (or until it is done).
    pub fn spawn<F>(&mut self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(async move {
            work.await;
            Ok(())
        });
    }

    /// A part whose error is fatal for the service.
    pub fn spawn_fallible<F, E>(&mut self, work: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error> + Send + 'static,
    {
        self.tasks
            .spawn(async move { work.await.map_err(Into::into) });
    }

    /// Runs once every task has returned (close a pool, flush a client).
    pub fn after<F>(&mut self, step: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.after.push(Box::pin(async move {
            step.await;
            Ok(())
        }));
    }

    /// Waits for every task. Cancel-safe: a wait cut short by a timeout can be resumed.
    async fn join(&mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            let failure = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => anyhow::anyhow!("a task panicked: {e}"),
                Err(e) => anyhow::anyhow!("a task was cancelled: {e}"),
            };
            tracing::error!(
                error = format!("{failure:#}"),
                "a part of the service failed: stopping"
            );
            self.shutdown.cancel();
            self.failed.push(failure);
        }
    }

    async fn finish(&mut self) {
        for step in self.after.drain(..) {
            let _ = step.await;
        }
    }
}

/// Where and as whom to launch a service.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub instance: String,
    pub ops_addr: SocketAddr,
    /// How long the drain may take after shutdown before the abort token is cancelled.
    pub drain_deadline: Duration,
}

impl LaunchOptions {
    /// A test's or tool's launch: loopback, an ephemeral ops port.
    pub fn local(instance: &str) -> Self {
        Self {
            instance: instance.to_string(),
            ops_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_deadline: Duration::from_secs(20),
        }
    }

    /// From the shared flags, with the service's default ops port.
    pub fn from_common(common: &CommonArgs, default_ops_port: u16) -> Self {
        Self {
            instance: common.instance(),
            ops_addr: common.ops_addr_or(default_ops_port),
            drain_deadline: common.shutdown_timeout,
        }
    }
}

/// Why a launch did not end in a running service.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot serve the ops endpoints on {addr}: {source}")]
    Ops {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{service} could not start: {source:#}")]
    Start {
        service: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("stopped while starting")]
    StoppedWhileStarting,
}

/// A service that was launched: its ops endpoints, its readiness, and its work.
pub struct Launched {
    pub ops_addr: SocketAddr,
    pub readiness: Readiness,
    shutdown: CancellationToken,
    abort: CancellationToken,
    drain_deadline: Duration,
    running: Running,
    ops_stop: CancellationToken,
    ops_task: tokio::task::JoinHandle<()>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every task finished what it held.
    Drained,
    /// The deadline passed: the tasks were told to give up what they held.
    DeadlinePassed,
    /// A part of the service failed.
    Failed,
}

/// Serves the ops endpoints, then starts the service. `shutdown` cancelled during start-up
/// ends the launch with [`LaunchError::StoppedWhileStarting`]; the ops port answered meanwhile.
pub async fn launch<S: Service>(
    service: S,
    options: LaunchOptions,
    shutdown: CancellationToken,
) -> Result<Launched, LaunchError> {
    let readiness = Readiness::new();
    readiness.register(STARTING);
    readiness.set_not_ready(STARTING, "connecting to the dependencies");
    let ops_stop = CancellationToken::new();
    let (ops_addr, ops_task) = ops::serve(options.ops_addr, readiness.clone(), ops_stop.clone())
        .await
        .map_err(|source| LaunchError::Ops {
            addr: options.ops_addr,
            source,
        })?;
    let ctx = Context {
        service: S::NAME,
        instance: options.instance,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        abort: CancellationToken::new(),
        ops_addr,
    };
    let abort = ctx.abort.clone();
    let started = tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            ops_stop.cancel();
            let _ = ops_task.await;
            return Err(LaunchError::StoppedWhileStarting);
        }
        started = service.start(ctx) => started,
    };
    let running = match started {
        Ok(running) => running,
        Err(_) if shutdown.is_cancelled() => {
            ops_stop.cancel();
            let _ = ops_task.await;
            return Err(LaunchError::StoppedWhileStarting);
        }
        Err(source) => {
            ops_stop.cancel();
            let _ = ops_task.await;
            return Err(LaunchError::Start {
                service: S::NAME,
                source,
            });
        }
    };
    readiness.remove(STARTING);
    tracing::info!(service = S::NAME, %ops_addr, "started");
    Ok(Launched {
        ops_addr,
        readiness,
        shutdown,
        abort,
        drain_deadline: options.drain_deadline,
        running,
        ops_stop,
        ops_task,
    })
}

/// The readiness part that stands for start-up until [`Service::start`] returns.
pub const STARTING: &str = "start-up";

impl Launched {
    /// Asks the service to stop; [`Launched::stopped`] then drains it.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Runs until the service is asked to stop (or a part fails), then drains: readiness
    /// first, the work within the deadline, then abort. The ops endpoints keep answering:
    /// a binary returns from here and exits, which closes them last.
    pub async fn drain(&mut self) -> Stopped {
        tokio::select! {
            _ = self.running.join() => {
                if !self.shutdown.is_cancelled() {
                    tracing::warn!("every part of the service ended by itself");
                }
            }
            _ = self.shutdown.cancelled() => {}
        }
        self.readiness.start_draining();
        tracing::info!(deadline = ?self.drain_deadline, "draining");
        let mut outcome = Stopped::Drained;
        if tokio::time::timeout(self.drain_deadline, self.running.join())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline = ?self.drain_deadline,
                "drain deadline passed: giving up what is still held (it is delivered again)"
            );
            self.abort.cancel();
            outcome = Stopped::DeadlinePassed;
            if tokio::time::timeout(ABORT_GRACE, self.running.join())
                .await
                .is_err()
            {
                tracing::warn!("parts still running after the abort: exiting without them");
            }
        }
        self.running.finish().await;
        if !self.running.failed.is_empty() {
            outcome = Stopped::Failed;
        }
        tracing::info!(?outcome, "stopped");
        outcome
    }

    /// [`Launched::drain`], then the ops endpoints stop too (a service launched inside a
    /// test or a tool).
    pub async fn stopped(mut self) -> Stopped {
        let outcome = self.drain().await;
        self.ops_stop.cancel();
        let _ = (&mut self.ops_task).await;
        outcome
    }
}

/// How long the tasks have to return after the abort token is cancelled.
const ABORT_GRACE: Duration = Duration::from_secs(3);

/// The whole of a service binary: flags (with the service's derived variable names), logs and
/// traces, signals, launch, drain. Exits 0 after a drain, 1 when a part failed or the service
/// could not start, 2 on bad flags.
pub fn run_main<F: Flags>() -> ExitCode {
    let flags = match config::parse::<F>(<F::Service as Service>::NAME, F::RENAMED_ENV) {
        Ok(flags) => flags,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(main_async(flags))
}

async fn main_async<F: Flags>(flags: F) -> ExitCode {
    let name = <F::Service as Service>::NAME;
    let _telemetry = ops::init_telemetry(name, flags.common().log_format);
    let options = LaunchOptions::from_common(flags.common(), <F::Service as Service>::OPS_PORT);
    crate::redis_link::set_replica_wait(flags.common().replica_wait());
    let service = match flags.into_service() {
        Ok(service) => service,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "invalid configuration");
            eprintln!("{name}: invalid configuration: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = ops::shutdown_token();
    let launched = match launch(service, options, shutdown).await {
        Ok(launched) => launched,
        Err(LaunchError::StoppedWhileStarting) => {
            tracing::info!("stopped while starting");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut launched = launched;
    // The ops endpoints answer until the process exits: nothing closes them before.
    match launched.drain().await {
        Stopped::Failed => ExitCode::FAILURE,
        Stopped::Drained | Stopped::DeadlinePassed => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Sleeper {
        finished: Arc<AtomicBool>,
        hold: Duration,
    }

    impl Service for Sleeper {
        const NAME: &'static str = "sleeper";
        const OPS_PORT: u16 = 0;

        async fn start(self, ctx: Context) -> anyhow::Result<Running> {
            ctx.readiness.register("work");
            ctx.readiness.set_ready("work");
            let mut running = Running::new(&ctx);
            let (shutdown, abort, finished, hold) = (
                ctx.shutdown.clone(),
                ctx.abort.clone(),
                self.finished,
                self.hold,
            );
            running.spawn(async move {
                shutdown.cancelled().await;
                tokio::select! {
                    _ = tokio::time::sleep(hold) => finished.store(true, Ordering::SeqCst),
                    _ = abort.cancelled() => {}
                }
            });
            Ok(running)
        }
    }

    fn sleeper(hold: Duration) -> (Sleeper, Arc<AtomicBool>) {
        let finished = Arc::new(AtomicBool::new(false));
        let s = Sleeper {
            finished: finished.clone(),
            hold,
        };
        (s, finished)
    }

    #[tokio::test]
    async fn drains_within_the_deadline_and_readiness_fails_first() {
        let (service, finished) = sleeper(Duration::from_millis(200));
        let shutdown = CancellationToken::new();
        let launched = launch(service, LaunchOptions::local("t"), shutdown.clone())
            .await
            .expect("launch");
        assert!(launched.readiness.is_ready());
        let readiness = launched.readiness.clone();
        let stopped = tokio::spawn(launched.stopped());
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!readiness.is_ready(), "not ready while draining");
        assert_eq!(stopped.await.expect("join"), Stopped::Drained);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_deadline_aborts_what_is_held() {
        let (service, finished) = sleeper(Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        let mut options = LaunchOptions::local("t");
        options.drain_deadline = Duration::from_millis(100);
        let launched = launch(service, options, shutdown.clone())
            .await
            .expect("launch");
        shutdown.cancel();
        assert_eq!(launched.stopped().await, Stopped::DeadlinePassed);
        assert!(!finished.load(Ordering::SeqCst));
    }

    struct Failing;

    impl Service for Failing {
        const NAME: &'static str = "failing";
        const OPS_PORT: u16 = 0;

        async fn start(self, ctx: Context) -> anyhow::Result<Running> {
            let mut running = Running::new(&ctx);
            running.spawn_fallible(async { Err(anyhow::anyhow!("broken")) });
            Ok(running)
        }
    }

    #[tokio::test]
    async fn a_failed_part_stops_the_service() {
        let launched = launch(Failing, LaunchOptions::local("t"), CancellationToken::new())
            .await
            .expect("launch");
        assert_eq!(launched.stopped().await, Stopped::Failed);
    }

    /// Flags that keep the rule, and flags that break it in every way the check knows.
    mod flags {
        use super::*;
        use crate::config::{parse_args, rule_violations, CommonArgs};

        #[derive(clap::Parser)]
        struct Good {
            #[command(flatten)]
            common: CommonArgs,
            /// Entries per batch.
            #[arg(long, default_value_t = 10)]
            batch_size: usize,
            /// Do less.
            #[arg(long)]
            quiet: bool,
        }

        impl Flags for Good {
            type Service = Sleeper;
            const RENAMED_ENV: &'static [(&'static str, &'static str)] =
                &[("AURORA_BATCH_SIZE", "AURORA_SLEEPER_BATCH_SIZE")];
            fn common(&self) -> &CommonArgs {
                &self.common
            }
            fn into_service(self) -> anyhow::Result<Sleeper> {
                Ok(sleeper(Duration::ZERO).0)
            }
        }

        #[derive(clap::Parser)]
        struct Bad {
            #[command(flatten)]
            common: CommonArgs,
            #[arg(long, env = "AURORA_BATCH", default_value_t = 10)]
            batch_size: usize,
        }

        impl Flags for Bad {
            type Service = Sleeper;
            const RENAMED_ENV: &'static [(&'static str, &'static str)] =
                &[("AURORA_BATCH", "AURORA_SLEEPER_BATCH")];
            fn common(&self) -> &CommonArgs {
                &self.common
            }
            fn into_service(self) -> anyhow::Result<Sleeper> {
                Ok(sleeper(Duration::ZERO).0)
            }
        }

        #[test]
        fn the_rule_is_checked() {
            assert!(
                rule_violations::<Good>().is_empty(),
                "{:?}",
                rule_violations::<Good>()
            );
            let bad = rule_violations::<Bad>();
            assert!(
                bad.iter().any(|v| v.contains("--batch-size has no help")),
                "{bad:?}"
            );
            assert!(
                bad.iter()
                    .any(|v| v.contains("reads AURORA_BATCH, not AURORA_SLEEPER_BATCH_SIZE")),
                "{bad:?}"
            );
            assert!(
                bad.iter()
                    .any(|v| v.contains("AURORA_BATCH is listed as renamed but still read")),
                "{bad:?}"
            );
            assert!(
                bad.iter().any(|v| v.contains("which no flag reads")),
                "{bad:?}"
            );
            let good = parse_args::<Good>(&["--quiet", "--batch-size", "3"]).expect("parse");
            assert!(good.quiet && good.batch_size == 3);
            assert!(
                parse_args::<Good>(&["--quiet", "false"]).is_err(),
                "a switch takes no value"
            );
        }
    }
}
