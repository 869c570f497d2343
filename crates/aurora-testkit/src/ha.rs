//! Highly available backends of a test's own, on free ports, to fail over under load:
//!
//! - [`SentinelSet`]: a Redis primary, one replica and three Sentinels watching them (master
//!   name [`MASTER`]); [`SentinelSet::kill_primary`] SIGKILLs whichever node is primary now.
//! - [`NatsCluster`]: three NATS servers with JetStream in one cluster, each with a monitoring
//!   port, so a test can find the node a client is connected to and kill it.
//!
//! Nothing is kept on disk by the Redis nodes (as the shared Redis): a killed primary that
//! starts again comes back empty and is made a replica of the new primary by the Sentinels.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::servers::{find_binary, free_port, path_str, redis_args, Process};

/// The master name the Sentinels of a [`SentinelSet`] know.
pub const MASTER: &str = "aurora";

/// A Redis node of a [`SentinelSet`].
struct Node {
    process: Process,
    port: u16,
}

/// A Redis primary, its replica and three Sentinels (quorum 2, a node is down after 1 s).
pub struct SentinelSet {
    nodes: Vec<Node>,
    sentinels: Vec<Process>,
    sentinel_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the primary, the replica (synchronised before this returns) and the Sentinels
    /// (agreeing on the primary before this returns).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let program = find_binary("redis-server", &["/usr/bin", "/usr/local/bin"]);
        let primary_port = free_port();
        let mut nodes = Vec::new();
        for (i, replica_of) in [None, Some(primary_port)].into_iter().enumerate() {
            let port = if i == 0 { primary_port } else { free_port() };
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node directory");
            let of = replica_of.map(|p| p.to_string());
            let mut extra = vec![
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ];
            if let Some(of) = &of {
                extra.extend(["--replicaof", "127.0.0.1", of.as_str()]);
            }
            let args = redis_args(&["--port", &port.to_string()], &node_dir, &extra);
            let mut process = Process::new("redis-server", program.clone(), args, port);
            process.start();
            nodes.push(Node { process, port });
        }
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    path_str(dir.path())
                ),
            )
            .expect("write sentinel.conf");
            let args = vec![path_str(&conf).to_string(), "--sentinel".to_string()];
            let mut process = Process::new("redis-sentinel", program.clone(), args, port);
            process.start();
            sentinels.push(process);
            sentinel_ports.push(port);
        }
        let set = Self {
            nodes,
            sentinels,
            sentinel_ports,
            _dir: dir,
        };
        set.wait_replicas(primary_port, 1, Duration::from_secs(20))
            .await;
        set.wait_primary(|p| p == primary_port, Duration::from_secs(20))
            .await;
        set
    }

    /// `redis+sentinel://` with the three Sentinels and [`MASTER`].
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The port of the primary as the Sentinels name it now.
    pub async fn primary_port(&self) -> Option<u16> {
        for port in &self.sentinel_ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let reply: redis::RedisResult<Option<(String, String)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut conn)
                .await;
            if let Ok(Some((_, port))) = reply {
                return port.parse().ok();
            }
        }
        None
    }

    /// `redis://` of the node on `port` (to read what it holds).
    pub fn node_url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// Waits until the Sentinels name a primary for which `accept` holds; returns its port.
    pub async fn wait_primary(&self, accept: impl Fn(u16) -> bool, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(port) = self.primary_port().await {
                if accept(port) && role(port).await.as_deref() == Some("master") {
                    return port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels named no acceptable primary within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the node on `port` has `n` replicas online.
    pub async fn wait_replicas(&self, port: u16, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if connected_replicas(port).await >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{port} did not get {n} replica(s) within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the primary; returns its port.
    pub async fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port().await.expect("a primary");
        self.node(port).process.kill();
        port
    }

    /// Starts the node on `port` again, empty, as a replica of the primary the Sentinels name
    /// (as a pod of a Sentinel-managed Redis does when it comes back: it asks the Sentinels
    /// first). Left to the Sentinels alone, a node that comes back as a primary is turned into
    /// a replica only after their periodic checks, tens of seconds on a busy machine.
    pub async fn start_node(&mut self, port: u16) {
        self.node(port).process.start();
        let primary = self.primary_port().await;
        let Some(primary) = primary.filter(|p| *p != port) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let replicaof = async {
                let client = redis::Client::open(Self::node_url(port)).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("REPLICAOF")
                    .arg("127.0.0.1")
                    .arg(primary)
                    .query_async::<()>(&mut conn)
                    .await
                    .ok()
            };
            if replicaof.await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{port} did not accept REPLICAOF within 10s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the set")
    }

    /// The number of Sentinels.
    pub fn sentinels(&self) -> usize {
        self.sentinels.len()
    }
}

async fn info_replication(port: u16) -> Option<String> {
    let client = redis::Client::open(SentinelSet::node_url(port)).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
        .ok()
}

async fn role(port: u16) -> Option<String> {
    let info = info_replication(port).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(|r| r.trim().to_string())
}

async fn connected_replicas(port: u16) -> usize {
    let Some(info) = info_replication(port).await else {
        return 0;
    };
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count()
}

/// A NATS server of a [`NatsCluster`].
struct NatsNode {
    process: Process,
    port: u16,
    monitor: u16,
}

/// Three NATS servers with JetStream in one cluster.
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three servers; returns once JetStream answers on each (a meta leader is
    /// elected).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let program = find_binary("nats-server", &["/usr/sbin", "/usr/bin", "/usr/local/bin"]);
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster, monitor)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&store).expect("store directory");
            let args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor.to_string(),
                "-n".into(),
                format!("n{i}"),
                "-js".into(),
                "-sd".into(),
                path_str(&store).to_string(),
                "--cluster_name".into(),
                "aurora-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster}"),
                "--routes".into(),
                routes.join(","),
            ];
            let mut process = Process::new("nats-server", program.clone(), args, *port);
            process.start();
            nodes.push(NatsNode {
                process,
                port: *port,
                monitor: *monitor,
            });
        }
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_jetstream(Duration::from_secs(30)).await;
        cluster
    }

    /// Every server, comma separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running server knows the JetStream meta leader (its `/jsz`).
    pub async fn wait_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let http = crate::http::http();
        for node in self.nodes.iter().filter(|n| n.process.is_running()) {
            let url = format!("http://127.0.0.1:{}/jsz", node.monitor);
            loop {
                let leader = match http.get(&url).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_string)),
                    Err(_) => None,
                };
                if leader.is_some_and(|l| !l.is_empty()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no JetStream meta leader seen by {} within {timeout:?}",
                    node.port
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The index of the node a client named `name` (exactly) is connected to, from the
    /// servers' `/connz`.
    pub async fn node_of_client(&self, name: &str) -> Option<usize> {
        let http = crate::http::http();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.process.is_running() {
                continue;
            }
            let url = format!("http://127.0.0.1:{}/connz?limit=1024", node.monitor);
            let Ok(response) = http.get(&url).send().await else {
                continue;
            };
            let Ok(body) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let found = body["connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"].as_str() == Some(name)));
            if found {
                return Some(i);
            }
        }
        None
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    /// Starts node `i` again (its JetStream store kept).
    pub fn start_again(&mut self, i: usize) {
        self.nodes[i].process.start();
    }

    /// The store directory root (for the record).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}
