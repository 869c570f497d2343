//! Real servers of a test's own: a Redis, a NATS with JetStream and a Mosquitto on a free
//! port, for tests that stop, kill or restart them (the shared ones on the default ports are
//! started by `make services` and never stopped by a test). Each is killed when dropped.
//!
//! A server can also be made [`RedisServer::not_started`] (its port chosen, nothing listening
//! yet) and started later with `start_again`: a service pointed at it waits for it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis of the test machine.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The shared NATS (JetStream) of the test machine.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// The shared Mosquitto of the test machine.
pub const MQTT_HOST: &str = "127.0.0.1";
pub const MQTT_PORT: u16 = 1883;
/// The shared PostgreSQL of the test machine (trust authentication).
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
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

pub(crate) fn find_binary(name: &str, extra: &[&str]) -> PathBuf {
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
pub(crate) struct Process {
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    name: &'static str,
}

impl Process {
    /// Not started yet: nothing listens on `port` until [`Process::start`].
    pub(crate) fn new(name: &'static str, program: PathBuf, args: Vec<String>, port: u16) -> Self {
        Self {
            child: None,
            program,
            args,
            port,
            name,
        }
    }

    pub(crate) fn start(&mut self) {
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

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, and wait for the process to exit (a clean shutdown: the server saves its state).
    pub(crate) fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        self.kill();
    }

    pub(crate) fn kill(&mut self) {
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

/// `redis-server` arguments: `listen` (the port options), bound to 127.0.0.1, nothing kept
/// on disk, its files in `dir`, then `extra`.
pub(crate) fn redis_args(listen: &[&str], dir: &Path, extra: &[&str]) -> Vec<String> {
    listen
        .iter()
        .chain(&[
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            path_str(dir),
        ])
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// The controls of a server of the test's own, over its `process`: its port, its URL
/// (`<scheme>://127.0.0.1:<port>`), SIGKILL, SIGTERM, restart and start (again).
macro_rules! server_controls {
    ($server:ty, $scheme:literal) => {
        impl $server {
            pub fn port(&self) -> u16 {
                self.process.port
            }

            pub fn url(&self) -> String {
                format!(concat!($scheme, "://127.0.0.1:{}"), self.port())
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

            /// Starts it (again) on its port: after a kill or terminate, or the first time
            /// for one made `not_started`.
            pub fn start_again(&mut self) {
                self.process.start();
            }
        }
    };
}

server_controls!(RedisServer, "redis");
server_controls!(NatsServer, "nats");
server_controls!(MosquittoServer, "mqtt");

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
        let mut server = Self::not_started_with(extra);
        server.start_again();
        server
    }

    /// Its port chosen, nothing listening until [`RedisServer::start_again`].
    pub fn not_started() -> Self {
        Self::not_started_with(&[])
    }

    fn not_started_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let args = redis_args(&["--port", &port.to_string()], dir.path(), extra);
        let program = find_binary("redis-server", &["/usr/bin", "/usr/local/bin"]);
        Self {
            process: Process::new("redis-server", program, args, port),
            _dir: dir,
        }
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
        let mut server = Self::not_started();
        server.start_again();
        server
    }

    /// With at most `bytes` of JetStream file storage (a small disk).
    pub fn start_with_file_store(bytes: u64) -> Self {
        let mut server = Self::with_jetstream(&format!("max_file_store: {bytes}"));
        server.start_again();
        server
    }

    /// Its port chosen, nothing listening until [`NatsServer::start_again`].
    pub fn not_started() -> Self {
        Self::with_jetstream("")
    }

    /// `jetstream { store_dir: <a temporary directory> <settings> }`, not started yet.
    fn with_jetstream(settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &conf,
            format!(
                "jetstream {{\n  store_dir: \"{}\"\n  {settings}\n}}\n",
                path_str(&store)
            ),
        )
        .expect("write the NATS config");
        let args = vec![
            "-a".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
            "-c".to_string(),
            path_str(&conf).to_string(),
        ];
        let program = find_binary("nats-server", &["/usr/sbin", "/usr/bin", "/usr/local/bin"]);
        Self {
            process: Process::new("nats-server", program, args, port),
            _dir: dir,
        }
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
        let mut server = Self::not_started_with_config(config);
        server.start_again();
        server
    }

    /// Anonymous access, its port chosen, nothing listening until
    /// [`MosquittoServer::start_again`].
    pub fn not_started() -> Self {
        Self::not_started_with_config("allow_anonymous true\nmax_queued_messages 1000000\n")
    }

    /// With extra configuration lines, not started yet.
    pub fn not_started_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Started as root, Mosquitto drops to its own user: it must be able to write here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod the temporary directory");
        }
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let full = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n{config}\n",
            dir.path().display()
        );
        std::fs::write(&conf, full).expect("write mosquitto.conf");
        let program = find_binary("mosquitto", &["/usr/sbin", "/usr/bin", "/usr/local/sbin"]);
        let args = vec!["-c".to_string(), path_str(&conf).to_string()];
        Self {
            process: Process::new("mosquitto", program, args, port),
            dir,
        }
    }

    /// The directory of its configuration (to put password and ACL files in).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("a temporary path in UTF-8")
}
