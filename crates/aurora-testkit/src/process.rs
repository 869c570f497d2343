//! The service binaries as built, run as processes of the test.
//!
//! - [`Svc`]: the five services; [`service_env`]: the variable of a service's flag by the one
//!   rule (`AURORA_<SERVICE>_<FLAG>`, see docs/contract.md), the shared flags keeping
//!   `AURORA_<FLAG>`.
//! - [`Site`]: what one site's services are told (namespace, site id, Redis with a database
//!   index, NATS, the MQTT broker, PostgreSQL, the JWT secret, free ports, an instance id,
//!   short intervals so periodic work shows quickly). Each service is given only the
//!   variables it reads. [`Site::start`] spawns one and waits until `/readyz` is 200.
//! - [`Service`]: one running binary, its output in a log file (whose tail is printed when
//!   the test fails); SIGTERM, SIGKILL, restart with the same environment; killed on drop.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`): build them
//! first (`cargo build --bins -p <service>`), or give a path with [`Site::with_binary`].
//! Before a service is spawned, its `--help` is read once: a flag the harness sets that the
//! binary does not have, or reads from another variable, fails the test with what to do.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aurora_core::names::Channel;
use aurora_core::Names;

use crate::auth::SECRET;
use crate::db::TestDb;
use crate::ops::Ops;
use crate::{free_port, workspace_path, MQTT_HOST, MQTT_PORT, NATS_URL, WAIT};

/// The shared Redis, without a database index.
pub const REDIS_BASE: &str = "redis://127.0.0.1:6379";

// ---------------------------------------------------------------------------------------
// The services and their variables
// ---------------------------------------------------------------------------------------

/// The five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Svc {
    MqttBridge,
    DeviceRegistry,
    WsGateway,
    FederationGateway,
    EveIngest,
}

impl Svc {
    pub const ALL: [Svc; 5] = [
        Svc::MqttBridge,
        Svc::DeviceRegistry,
        Svc::WsGateway,
        Svc::FederationGateway,
        Svc::EveIngest,
    ];

    /// The service's name: its binary, its package, the `<SERVICE>` of its variables.
    pub fn name(self) -> &'static str {
        match self {
            Self::MqttBridge => "mqtt-bridge",
            Self::DeviceRegistry => "device-registry",
            Self::WsGateway => "ws-gateway",
            Self::FederationGateway => "federation-gateway",
            Self::EveIngest => "eve-ingest",
        }
    }

    pub fn binary_name(self) -> &'static str {
        self.name()
    }

    /// Serves an HTTP API or WebSocket channels besides the ops port (`--http-addr`).
    pub fn has_http(self) -> bool {
        matches!(self, Self::DeviceRegistry | Self::WsGateway)
    }

    /// Reads the shared NATS flags (`AURORA_NATS_*`).
    pub fn uses_nats(self) -> bool {
        matches!(self, Self::FederationGateway | Self::EveIngest)
    }

    /// Reads the shared JWT flags (`AURORA_JWT_*`).
    pub fn uses_jwt(self) -> bool {
        matches!(self, Self::DeviceRegistry | Self::WsGateway)
    }

    /// Short intervals, so that a test sees the service's periodic work without waiting:
    /// (flag, value).
    fn tuned(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::DeviceRegistry => &[
                ("trust-on-first-use", "true"),
                ("sweep-interval", "500ms"),
                ("resend-after", "3s"),
                ("claim-idle", "5s"),
            ],
            Self::WsGateway => &[("drain-grace", "200ms")],
            Self::FederationGateway => &[
                ("ack-wait", "5s"),
                ("nak-delay", "1s"),
                ("export-claim-idle", "5s"),
            ],
            Self::EveIngest => &[("block", "200ms")],
            Self::MqttBridge => &[],
        }
    }
}

impl std::fmt::Display for Svc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flags every service shares (aurora-core's `CommonArgs`, `NatsArgs`, `JwtArgs`): their
/// variable is `AURORA_<FLAG>`, without the service's name.
fn is_shared_flag(flag: &str) -> bool {
    const SHARED: &[&str] = &[
        "namespace",
        "site-id",
        "redis-url",
        "redis-wait-replicas",
        "redis-wait-timeout",
        "ops-addr",
        "log-format",
        "stream-maxlen",
        "instance-id",
        "shutdown-timeout",
        "dev-insecure-auth",
    ];
    SHARED.contains(&flag) || flag.starts_with("nats-") || flag.starts_with("jwt-")
}

/// The environment variable of `svc`'s flag `flag` (`"batch"` or `"--batch"`):
/// `AURORA_<SERVICE>_<FLAG>` in upper snake case (`eve-ingest --batch` is
/// `AURORA_EVE_INGEST_BATCH`); a shared flag keeps `AURORA_<FLAG>` (`--redis-url` is
/// `AURORA_REDIS_URL` for every service).
pub fn service_env(svc: Svc, flag: &str) -> String {
    let flag = flag.trim_start_matches("--");
    if is_shared_flag(flag) {
        format!("AURORA_{}", flag.replace('-', "_").to_ascii_uppercase())
    } else {
        aurora_core::config::env_name(svc.name(), flag)
    }
}

/// The flags of a binary as its `--help` lists them: flag -> the variable it reads (None when
/// the help names none). Read once per binary.
type FlagTable = HashMap<String, Option<String>>;

fn help_flags(program: &Path) -> FlagTable {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, FlagTable>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(flags) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(program) {
        return flags.clone();
    }
    let mut cmd = Command::new(program);
    clear_developer_env(&mut cmd);
    let text = cmd
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let flags = parse_help(&text);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(program.to_path_buf(), flags.clone());
    flags
}

/// Parses clap's long help: each option's block starts with a line beginning with `-`; its
/// first `--flag` names it and `[env: VAR=...]` (or `[env: VAR]` for a hidden value) names
/// its variable.
fn parse_help(text: &str) -> HashMap<String, Option<String>> {
    let mut flags = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // `--flag <VALUE>` or `-f, --flag`; not a `- value:` line of possible values.
        let header = first.starts_with("--")
            || (first.len() == 3 && first.starts_with('-') && first.ends_with(','));
        if header {
            let trimmed = line.trim_start();
            current = trimmed
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '<')
                .find_map(|t| t.strip_prefix("--"))
                .filter(|f| !f.is_empty())
                .map(str::to_string);
            if let Some(f) = &current {
                flags.entry(f.clone()).or_insert(None);
            }
        }
        if let (Some(f), Some(at)) = (&current, line.find("[env: ")) {
            let rest = &line[at + "[env: ".len()..];
            let var: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !var.is_empty() {
                flags.insert(f.clone(), Some(var));
            }
        }
    }
    flags
}

/// The flags of `svc`'s binary as built (its `--help`): flag -> the variable it reads.
pub fn binary_flags(svc: Svc) -> HashMap<String, Option<String>> {
    help_flags(&binary(svc.name()))
}

/// Fails the test when `program` (of `svc`) has no flag `flag` or reads it from another
/// variable than [`service_env`] derives (a binary built before the rule, or a renamed flag).
fn check_flag(svc: Svc, program: &Path, flag: &str) {
    let flags = help_flags(program);
    if flags.is_empty() {
        eprintln!(
            "warning: could not read the flags of {} from --help",
            program.display()
        );
        return;
    }
    let flag = flag.trim_start_matches("--");
    let want = service_env(svc, flag);
    match flags.get(flag) {
        None => {
            let mut known: Vec<&String> = flags.keys().collect();
            known.sort();
            panic!(
                "{svc} has no flag --{flag} (its flags: {known:?}); rebuild it \
                 (`cargo build --bins -p {svc}`) or fix the test"
            );
        }
        Some(Some(var)) if *var != want => panic!(
            "{} reads --{flag} from {var}, not {want}: it was built before the \
             AURORA_<SERVICE>_<FLAG> rule; rebuild it (`cargo build --bins -p {svc}`)",
            program.display()
        ),
        Some(_) => {}
    }
}

/// Nothing of the developer's own `AURORA_*` or `OTEL_*` settings leaks into a child.
fn clear_developer_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AURORA_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------

/// `target/<profile>/`, the directory of the binaries as built.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test executable>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary, or a failure that says how to build it. Warns when a
/// source file of its package or of aurora-core is newer than the binary (a stale build).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    let package = match name {
        "aurora" => "crates/aurora-cli".to_string(),
        service => format!("services/{service}"),
    };
    let pkg = Path::new(&package)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name)
        .to_string();
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --bins -p {pkg}` before these tests",
        path.display()
    );
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest = [
        format!("{package}/src"),
        "crates/aurora-core/src".to_string(),
    ]
    .iter()
    .filter_map(|dir| newest_file(&workspace_path(dir)))
    .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            eprintln!(
                "warning: {} is older than its sources: run `cargo build --bins -p {pkg}`",
                path.display()
            );
        }
    }
    path
}

/// The latest modification time of the files under `dir`.
fn newest_file(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                // src/bin holds tools, not the service.
                (e.file_name() != "bin")
                    .then(|| newest_file(&e.path()))
                    .flatten()
            } else {
                meta.modified().ok()
            }
        })
        .max()
}

// ---------------------------------------------------------------------------------------
// Sites
// ---------------------------------------------------------------------------------------

/// What the services of one site are told.
#[derive(Debug, Clone)]
pub struct Site {
    pub names: Names,
    pub site_id: String,
    pub redis_url: String,
    pub nats_url: String,
    pub mqtt_url: String,
    pub database_url: Option<String>,
    /// `AURORA_SHUTDOWN_TIMEOUT`, the drain deadline.
    pub shutdown_timeout: String,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// Further variables every service of the site gets (e.g. `OTEL_*`, which are not
    /// taken from the developer's environment).
    pub extra_env: Vec<(String, String)>,
    binaries: HashMap<Svc, PathBuf>,
}

impl Site {
    /// A site in `names`, on the shared servers, with this Redis database index.
    pub fn new(names: &Names, site_id: &str, redis_db: u8) -> Self {
        Self {
            names: names.clone(),
            site_id: site_id.to_string(),
            redis_url: format!("{REDIS_BASE}/{redis_db}"),
            nats_url: NATS_URL.to_string(),
            mqtt_url: format!("mqtt://{MQTT_HOST}:{MQTT_PORT}"),
            database_url: None,
            shutdown_timeout: "10s".to_string(),
            log_filter: "info".to_string(),
            extra_env: Vec::new(),
            binaries: HashMap::new(),
        }
    }

    pub fn with_database(mut self, db: &TestDb) -> Self {
        self.database_url = Some(db.url.clone());
        self
    }

    /// Runs `svc` from `path` (e.g. `env!("CARGO_BIN_EXE_mqtt-bridge")` in the service's own
    /// tests) instead of `target/<profile>/<service>`.
    pub fn with_binary(mut self, svc: Svc, path: impl Into<PathBuf>) -> Self {
        self.binaries.insert(svc, path.into());
        self
    }

    fn program(&self, svc: Svc) -> PathBuf {
        self.binaries
            .get(&svc)
            .cloned()
            .unwrap_or_else(|| binary(svc.name()))
    }

    /// The environment of `svc` at this site: the shared variables it reads, then its own
    /// flags (`(flag, value)`, the tuned intervals, then `flags`, which win).
    pub fn env(
        &self,
        svc: Svc,
        instance: &str,
        ops: u16,
        http: u16,
        flags: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            (
                "AURORA_NAMESPACE".into(),
                self.names.namespace().to_string(),
            ),
            ("AURORA_SITE_ID".into(), self.site_id.clone()),
            ("AURORA_REDIS_URL".into(), self.redis_url.clone()),
            ("AURORA_OPS_ADDR".into(), format!("127.0.0.1:{ops}")),
            ("AURORA_INSTANCE_ID".into(), instance.to_string()),
            ("AURORA_LOG_FORMAT".into(), "json".into()),
            (
                "AURORA_SHUTDOWN_TIMEOUT".into(),
                self.shutdown_timeout.clone(),
            ),
            ("RUST_LOG".into(), self.log_filter.clone()),
        ];
        env.extend(self.extra_env.iter().cloned());
        if svc.uses_nats() {
            env.push(("AURORA_NATS_URL".into(), self.nats_url.clone()));
        }
        if svc.uses_jwt() {
            env.push(("AURORA_JWT_SECRET".into(), SECRET.into()));
        }
        let mut own: Vec<(String, String)> = Vec::new();
        if svc.has_http() {
            own.push(("http-addr".into(), format!("127.0.0.1:{http}")));
        }
        if svc == Svc::MqttBridge {
            own.push(("mqtt-url".into(), self.mqtt_url.clone()));
        }
        if svc == Svc::DeviceRegistry {
            if let Some(db) = &self.database_url {
                own.push(("database-url".into(), db.clone()));
            }
        }
        own.extend(
            svc.tuned()
                .iter()
                .chain(flags)
                .map(|(f, v)| (f.trim_start_matches("--").to_string(), v.to_string())),
        );
        for (flag, value) in own {
            let var = service_env(svc, &flag);
            env.retain(|(k, _)| *k != var);
            env.push((var, value));
        }
        env
    }

    /// Spawns `svc` of this site with its own `flags` (`[("batch", "20")]`: flag names, the
    /// variables are derived by [`service_env`]) and waits until its `/readyz` answers 200.
    pub async fn start(&self, svc: Svc, flags: &[(&str, &str)]) -> Service {
        // A port found free can be taken by another test before the service binds it: then
        // try again on other ports.
        for _ in 0..3 {
            let mut service = self.spawn(svc, flags);
            match service.try_ready().await {
                Ok(()) => return service,
                Err(NotReady::Exited(log)) if log.contains("in use") => {
                    eprintln!("{}: port taken, starting again", service.instance);
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{svc}: no free ports after 3 attempts");
    }

    /// Spawns `svc` without waiting for it.
    pub fn spawn(&self, svc: Svc, flags: &[(&str, &str)]) -> Service {
        let instance = format!(
            "{}-{}-{}",
            svc.name(),
            self.site_id,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let (ops, http) = (free_port(), free_port());
        let program = self.program(svc);
        let env = self.env(svc, &instance, ops, http, flags);
        for (var, _) in &env {
            if let Some(flag) = flag_of(svc, var) {
                check_flag(svc, &program, &flag);
            }
        }
        Service::spawn(svc, program, &instance, env, ops, http)
    }
}

/// The flag whose variable `var` is, for the variables a [`Site`] derives from flags.
fn flag_of(svc: Svc, var: &str) -> Option<String> {
    let prefix = service_env(svc, "");
    let rest = var.strip_prefix(prefix.as_str())?;
    Some(rest.to_ascii_lowercase().replace('_', "-"))
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

/// Why a service did not become ready; each holds the message with the log's tail.
#[derive(Debug)]
pub enum NotReady {
    Exited(String),
    Timeout(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(m) | Self::Timeout(m) => f.write_str(m),
        }
    }
}

/// One service binary running as a process of the test. Killed (SIGKILL) when dropped; the
/// tail of its log is printed when the test is failing.
pub struct Service {
    pub svc: Svc,
    pub instance: String,
    pub ops_port: u16,
    pub http_port: u16,
    program: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    spawned_at: Instant,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Spawns `program` with exactly `env` (and nothing of the developer's `AURORA_*`), its
    /// output appended to a log file.
    pub fn spawn(
        svc: Svc,
        program: PathBuf,
        instance: &str,
        env: Vec<(String, String)>,
        ops: u16,
        http: u16,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join(format!("{instance}.log"));
        let mut s = Self {
            svc,
            instance: instance.to_string(),
            ops_port: ops,
            http_port: http,
            program,
            env,
            child: None,
            spawned_at: Instant::now(),
            log_path,
            _dir: dir,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.instance);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let mut cmd = Command::new(&self.program);
        clear_developer_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.spawned_at = Instant::now();
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display())),
        );
    }

    /// When the process was (last) spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The variables it was started with.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn ops(&self) -> Ops {
        Ops::port(self.ops_port)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ops_port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn ws_url(&self, channel: Channel, query: &str) -> String {
        format!(
            "ws://127.0.0.1:{}{}?{query}",
            self.http_port,
            channel.path()
        )
    }

    /// The status of `GET /readyz` (None when nothing answers).
    pub async fn readyz(&self) -> Option<u16> {
        self.ops().readyz().await
    }

    /// The status of `GET /healthz` (None when nothing answers).
    pub async fn healthz(&self) -> Option<u16> {
        self.ops().healthz().await
    }

    /// A counter or gauge of `/metrics`, summed over the series whose labels contain every
    /// `label=value` given (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.ops().metric(name, labels).await
    }

    /// Waits until `/readyz` is 200; fails with the log's tail if the process exits or the
    /// deadline passes.
    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready().await {
            panic!("{e}");
        }
    }

    /// Waits until `/readyz` is 200, or says why not (with the log's tail).
    pub async fn try_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.readyz().await == Some(200) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                self.child = None;
                return Err(NotReady::Exited(format!(
                    "{} exited ({status}) before it was ready; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                )));
            }
            if Instant::now() > deadline {
                return Err(NotReady::Timeout(format!(
                    "{} not ready after {WAIT:?}; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status, when the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("service running");
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM {pid} failed");
    }

    /// Waits (polling every 5 ms) up to `timeout` for the process to exit: its status and
    /// when the exit was seen. Fails with the log's tail after `timeout` (and kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Instant) {
        let mut child = self.child.take().expect("service running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the service") {
                return (status, Instant::now());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.instance,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, and wait (up to `WAIT`) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(WAIT).await.0
    }

    /// Starts again with the same environment (same ports and instance id) and waits until
    /// it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_ready().await;
    }

    /// SIGKILL then start again, without waiting for readiness.
    pub fn kill_and_spawn(&mut self) {
        self.kill();
        self.launch();
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `lines` lines of the log (at most 64 KiB are read).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_end(&mut buf);
        }
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n-----",
                self.instance,
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_s_variable_is_named_after_the_service_and_the_flag() {
        let cases = [
            (
                Svc::DeviceRegistry,
                "database-url",
                "AURORA_DEVICE_REGISTRY_DATABASE_URL",
            ),
            (
                Svc::DeviceRegistry,
                "--http-addr",
                "AURORA_DEVICE_REGISTRY_HTTP_ADDR",
            ),
            (Svc::MqttBridge, "mqtt-url", "AURORA_MQTT_BRIDGE_MQTT_URL"),
            (Svc::EveIngest, "batch", "AURORA_EVE_INGEST_BATCH"),
            (
                Svc::FederationGateway,
                "ack-wait",
                "AURORA_FEDERATION_GATEWAY_ACK_WAIT",
            ),
            (
                Svc::WsGateway,
                "drain-grace",
                "AURORA_WS_GATEWAY_DRAIN_GRACE",
            ),
            // The shared flags keep their names.
            (Svc::EveIngest, "redis-url", "AURORA_REDIS_URL"),
            (Svc::EveIngest, "nats-url", "AURORA_NATS_URL"),
            (Svc::WsGateway, "jwt-secret", "AURORA_JWT_SECRET"),
            (
                Svc::MqttBridge,
                "shutdown-timeout",
                "AURORA_SHUTDOWN_TIMEOUT",
            ),
        ];
        for (svc, flag, var) in cases {
            assert_eq!(service_env(svc, flag), var, "{flag}");
        }
    }

    #[test]
    fn a_site_gives_each_service_only_its_own_variables() {
        let names = crate::names();
        let site = Site::new(&names, "site-a", 3);
        let vars = |svc: Svc| -> Vec<String> {
            site.env(svc, "i", 1, 2, &[])
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        for svc in Svc::ALL {
            let own = service_env(svc, "");
            for var in vars(svc) {
                let shared = [
                    "AURORA_NAMESPACE",
                    "AURORA_SITE_ID",
                    "AURORA_REDIS_URL",
                    "AURORA_OPS_ADDR",
                    "AURORA_INSTANCE_ID",
                    "AURORA_LOG_FORMAT",
                    "AURORA_SHUTDOWN_TIMEOUT",
                    "RUST_LOG",
                ];
                let allowed = shared.contains(&var.as_str())
                    || var.starts_with(&own)
                    || (svc.uses_nats() && var == "AURORA_NATS_URL")
                    || (svc.uses_jwt() && var == "AURORA_JWT_SECRET");
                assert!(allowed, "{svc} is given {var}");
            }
        }
        assert!(vars(Svc::MqttBridge).contains(&"AURORA_MQTT_BRIDGE_MQTT_URL".to_string()));
        assert!(!vars(Svc::MqttBridge).contains(&"AURORA_NATS_URL".to_string()));
        assert!(vars(Svc::WsGateway).contains(&"AURORA_WS_GATEWAY_HTTP_ADDR".to_string()));
        assert!(vars(Svc::EveIngest).contains(&"AURORA_EVE_INGEST_BLOCK".to_string()));
        // A flag given by the test wins over the tuned one.
        let env = site.env(Svc::EveIngest, "i", 1, 2, &[("--block", "1s")]);
        let block: Vec<&(String, String)> = env
            .iter()
            .filter(|(k, _)| k == "AURORA_EVE_INGEST_BLOCK")
            .collect();
        assert_eq!(block.len(), 1);
        assert_eq!(block[0].1, "1s");
        assert_eq!(
            flag_of(Svc::EveIngest, "AURORA_EVE_INGEST_BLOCK").as_deref(),
            Some("block")
        );
        assert_eq!(flag_of(Svc::EveIngest, "AURORA_REDIS_URL"), None);
    }

    #[test]
    fn reads_the_flags_and_variables_of_a_help_page() {
        let help = "Options:\n      --namespace <NAMESPACE>\n          The namespace\n          \n          [env: AURORA_NAMESPACE=]\n          [default: aurora]\n\n      --jwt-secret <JWT_SECRET>\n          [env: AURORA_JWT_SECRET]\n\n  -b, --batch <BATCH>\n          Lines per batch [env: AURORA_EVE_INGEST_BATCH=] [default: 500]\n      --log-format <LOG_FORMAT>\n          Log format\n\n          Possible values:\n          - json:   One JSON object per line\n          - pretty: Human-readable lines\n          \n          [env: AURORA_LOG_FORMAT=]\n      --no-stream-setup\n          Do not create\n  -h, --help\n          Print help\n";
        let flags = parse_help(help);
        assert_eq!(flags["namespace"].as_deref(), Some("AURORA_NAMESPACE"));
        assert_eq!(flags["jwt-secret"].as_deref(), Some("AURORA_JWT_SECRET"));
        assert_eq!(flags["batch"].as_deref(), Some("AURORA_EVE_INGEST_BATCH"));
        assert_eq!(flags["no-stream-setup"], None);
        assert_eq!(flags["log-format"].as_deref(), Some("AURORA_LOG_FORMAT"));
        assert!(!flags.contains_key("json:"));
        assert!(flags.contains_key("help"));
    }
}
