//! What the workspace's tests share.
//!
//! - [`namespace`]: a fresh namespace per test, so tests run in parallel on the shared servers
//!   and can repeat.
//! - [`RedisServer`], [`NatsServer`], [`MosquittoServer`]: a real server of the test's own on
//!   a free port, for tests that stop, kill or restart it. Killed when dropped.
//! - [`wait_until`]: polls a condition with a deadline instead of sleeping a guessed time.
//!
//! The shared servers (loopback, default ports) are started by `make services`.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use aurora_core::Names;

/// The shared Redis of the test machine.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The shared NATS (JetStream) of the test machine.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// The shared Mosquitto of the test machine.
pub const MQTT_HOST: &str = "127.0.0.1";
pub const MQTT_PORT: u16 = 1883;
/// The shared PostgreSQL of the test machine.
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A namespace no other test uses: `t` and 12 random hex digits.
pub fn namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// The names of a fresh namespace.
pub fn names() -> Names {
    Names::new(&namespace()).unwrap()
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn find_binary(name: &str, extra: &[&str]) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(extra.iter().copied())
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run `make services` to install the servers");
}

/// A server process of the test's own. Killed (SIGKILL) when dropped.
struct Process {
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    name: &'static str,
}

impl Process {
    fn spawn(name: &'static str, program: PathBuf, args: Vec<String>, port: u16) -> Self {
        let mut p = Self {
            child: None,
            program,
            args,
            port,
            name,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(15)),
            "{} did not listen on {}",
            self.name,
            self.port
        );
    }

    /// SIGTERM, and wait for the process to exit (a clean shutdown: the server saves its state).
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The port must be free before a restart binds it again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis of the test's own (nothing kept on disk: a restart starts empty, as the shared
/// one does).
pub struct RedisServer {
    process: Process,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let program = find_binary("redis-server", &["/usr/bin", "/usr/local/bin"]);
        Self {
            process: Process::spawn("redis-server", program, args, port),
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        self.process.terminate();
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process.start();
    }

    pub fn start_again(&mut self) {
        self.process.start();
    }
}

/// A NATS server with JetStream of the test's own, its storage in a temporary directory that
/// survives restarts.
pub struct NatsServer {
    process: Process,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let args = vec![
            "-a".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
            "-js".to_string(),
            "-sd".to_string(),
            dir.path().to_str().unwrap().to_string(),
        ];
        let program = find_binary("nats-server", &["/usr/sbin", "/usr/bin", "/usr/local/bin"]);
        Self {
            process: Process::spawn("nats-server", program, args, port),
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        self.process.terminate();
    }

    pub fn restart(&mut self) {
        self.process.kill();
        self.process.start();
    }

    pub fn start_again(&mut self) {
        self.process.start();
    }
}

/// A Mosquitto of the test's own.
pub struct MosquittoServer {
    process: Process,
    dir: tempfile::TempDir,
}

impl MosquittoServer {
    /// Anonymous access, persistence in a temporary directory, generous queues.
    pub fn start() -> Self {
        Self::start_with_config("allow_anonymous true\nmax_queued_messages 1000000\n")
    }

    /// With extra configuration lines; `listener` and `persistence_location` are added.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Started as root, Mosquitto drops to its own user: it must be able to write here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let full = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n{config}\n",
            dir.path().display()
        );
        std::fs::write(&conf, full).unwrap();
        let program = find_binary("mosquitto", &["/usr/sbin", "/usr/bin", "/usr/local/sbin"]);
        let args = vec!["-c".to_string(), conf.to_str().unwrap().to_string()];
        Self {
            process: Process::spawn("mosquitto", program, args, port),
            dir,
        }
    }

    /// The directory of its configuration (to put password and ACL files in).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM: a clean shutdown.
    pub fn terminate(&mut self) {
        self.process.terminate();
    }

    pub fn restart(&mut self) {
        self.process.kill();
        self.process.start();
    }

    pub fn start_again(&mut self) {
        self.process.start();
    }
}

/// The path of a file of the workspace, from a test of any crate.
pub fn workspace_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}
