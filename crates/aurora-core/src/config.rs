//! The flags every service shares. Each has an `AURORA_*` environment variable, and the
//! defaults point at the servers on loopback, so a binary runs as it is on a developer's
//! machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::auth::{KeyError, Verifier, DEV_SECRET, MIN_HS256_SECRET_BYTES};
use crate::listener::Limits;
use crate::names::{InvalidNamespace, Names};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Parses `30s`, `5m`, `2h`, `1d`, `250ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 5m, 2h"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    Ok(d)
}

/// The variable of a service's own flag: `AURORA_<SERVICE>_<FLAG>`, both upper-cased with
/// `-` as `_` (`eve-ingest --batch-size` reads `AURORA_EVE_INGEST_BATCH_SIZE`). The flags every
/// service shares ([`CommonArgs`], [`NatsArgs`], [`JwtArgs`]) keep their `AURORA_<FLAG>`.
pub fn env_name(service: &str, flag: &str) -> String {
    format!("AURORA_{}_{}", service, flag)
        .replace('-', "_")
        .to_ascii_uppercase()
}

/// A flag whose value may be a secret: a password, secret, token, NKey, credentials, or a URL
/// (which may carry `user:password@`). Its variable's value is never shown by `--help`.
pub fn is_secret_flag(long: &str) -> bool {
    const SECRET: &[&str] = &["password", "secret", "token", "nkey", "credential"];
    let long = long.to_ascii_lowercase();
    SECRET.iter().any(|s| long.contains(s)) || long.ends_with("url") || long.ends_with("urls")
}

/// The command of a service's flags with the one variable rule applied: every flag without a
/// variable of its own gets [`env_name`], every switch reads its variable as a boolean
/// (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`; anything else is an error), and no
/// secret flag ([`is_secret_flag`]) shows its variable's value in `--help`.
pub fn command<P: clap::CommandFactory>(service: &str) -> clap::Command {
    P::command().mut_args(|arg| {
        let arg = match arg.get_long() {
            Some(long) if is_secret_flag(long) => arg.hide_env_values(true),
            _ => arg,
        };
        let arg = if arg.get_env().is_none() && !arg.is_positional() {
            match arg.get_long() {
                Some(long) => {
                    let var = env_name(service, long);
                    arg.env(var)
                }
                None => arg,
            }
        } else {
            arg
        };
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            arg
        }
    })
}

/// Parses the process's flags and variables under the rule of [`command`], after refusing
/// variables that were renamed.
pub fn parse<P: clap::Parser>(service: &str, renamed: &[(&str, &str)]) -> Result<P, clap::Error> {
    parse_from::<P, _, _>(service, renamed, std::env::args_os())
}

/// [`parse`] with the given arguments (tests and tools).
pub fn parse_from<P, I, T>(
    service: &str,
    renamed: &[(&str, &str)],
    args: I,
) -> Result<P, clap::Error>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command::<P>(service);
    if let Some(message) = renamed_variables(renamed) {
        return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, message));
    }
    let matches = cmd.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// The error for renamed variables that are still set, naming their replacements.
fn renamed_variables(renamed: &[(&str, &str)]) -> Option<String> {
    let set: Vec<String> = renamed
        .iter()
        .filter(|(old, _)| std::env::var_os(old).is_some())
        .map(|(old, new)| format!("{old} is no longer read: set {new} instead"))
        .collect();
    (!set.is_empty()).then(|| set.join("; "))
}

/// The flags of a command that have no help text (every flag must say what it does).
pub fn undocumented_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| a.get_help().is_none() && a.get_long_help().is_none() && !a.is_hide_set())
        .map(|a| a.get_id().to_string())
        .collect()
}

/// A service's flags parsed from `argv` (without the program name) under the rule of
/// [`command`], after the renamed-variable check: what a service's tests parse with.
pub fn parse_args<F: crate::service::Flags>(argv: &[&str]) -> Result<F, clap::Error> {
    let service = <F::Service as crate::service::Service>::NAME;
    parse_from::<F, _, _>(
        service,
        F::RENAMED_ENV,
        std::iter::once(service).chain(argv.iter().copied()),
    )
}

/// The variable a flag (by its id, the field name) reads, if any.
pub fn flag_env(cmd: &clap::Command, id: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_id() == id)
        .and_then(|a| a.get_env())
        .and_then(|e| e.to_str())
        .map(str::to_string)
}

/// Every way a service's flags break the one configuration rule: a flag without help, an own
/// flag whose variable is not `AURORA_<SERVICE>_<FLAG>`, a renamed variable that is still
/// read or whose replacement is read by no flag. Empty when the flags keep the rule.
pub fn rule_violations<F: crate::service::Flags>() -> Vec<String> {
    let service = <F::Service as crate::service::Service>::NAME;
    let cmd = command::<F>(service);
    let shared: Vec<String> = [
        CommonArgs::augment_args(clap::Command::new("shared")),
        NatsArgs::augment_args(clap::Command::new("shared")),
        JwtArgs::augment_args(clap::Command::new("shared")),
    ]
    .iter()
    .flat_map(|c| c.get_arguments().map(|a| a.get_id().to_string()))
    .collect();
    let mut violations: Vec<String> = undocumented_flags(&cmd)
        .into_iter()
        .map(|id| format!("--{} has no help text", id.replace('_', "-")))
        .collect();
    let reads: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().and_then(|e| e.to_str()).map(str::to_string))
        .collect();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if shared.iter().any(|id| id == arg.get_id().as_str()) {
            continue;
        }
        let own = env_name(service, long);
        match arg.get_env().and_then(|e| e.to_str()) {
            Some(var) if var == own => {}
            Some(var) => violations.push(format!("--{long} reads {var}, not {own}")),
            None => violations.push(format!("--{long} reads no variable, not {own}")),
        }
    }
    for (old, new) in F::RENAMED_ENV {
        if reads.iter().any(|r| r == old) {
            violations.push(format!("{old} is listed as renamed but still read"));
        }
        if !reads.iter().any(|r| r == new) {
            violations.push(format!("{old} is renamed to {new}, which no flag reads"));
        }
    }
    violations
}

/// Flags of every service.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Prefix of every stream, topic and subject name.
    #[arg(long, env = "AURORA_NAMESPACE", default_value = crate::names::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// This site's id (federation, logs).
    #[arg(long, env = "AURORA_SITE_ID", default_value = "site-local")]
    pub site_id: String,

    /// The site's Redis: `redis://` or `rediss://` for one server, or
    /// `redis+sentinel://[user:pass@]host:port,host:port/<master>[/<db>]` (`rediss+sentinel://`
    /// with TLS) to find the primary through Sentinel and follow its failovers.
    #[arg(
        long,
        env = "AURORA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Redis replicas that must hold a write before the service acknowledges what it carries
    /// (MQTT PUBACK, JetStream ack, a file's committed offset): `WAIT` after each batch.
    /// 0 = do not wait (Redis replication is asynchronous: a failover can lose the last
    /// acknowledged writes). See docs/contract.md#redis.
    #[arg(long, env = "AURORA_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a batch waits for --redis-wait-replicas; fewer replicas in time = the batch
    /// is not acknowledged and is tried again (counted duplicates, never loss).
    #[arg(long, env = "AURORA_REDIS_WAIT_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub redis_wait_timeout: Duration,

    /// Address of /healthz, /readyz and /metrics (default: the service's own port).
    #[arg(long, env = "AURORA_OPS_ADDR")]
    pub ops_addr: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "AURORA_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Approximate length streams are trimmed to on write (`XADD MAXLEN ~`).
    #[arg(long, env = "AURORA_STREAM_MAXLEN", default_value_t = 1_000_000)]
    pub stream_maxlen: usize,

    /// Name of this replica (consumer names, client ids); defaults to the host name.
    #[arg(long, env = "AURORA_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// How long to drain on SIGTERM before exiting anyway.
    #[arg(long, env = "AURORA_SHUTDOWN_TIMEOUT", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_timeout: Duration,
}

impl CommonArgs {
    pub fn names(&self) -> Result<Names, InvalidNamespace> {
        Names::new(&self.namespace)
    }

    /// The replicas a gating write waits for (`--redis-wait-replicas`), if any.
    pub fn replica_wait(&self) -> Option<crate::redis_link::ReplicaWait> {
        (self.redis_wait_replicas > 0).then_some(crate::redis_link::ReplicaWait {
            replicas: self.redis_wait_replicas,
            timeout: self.redis_wait_timeout,
        })
    }

    /// The ops address, or the service's default port on all interfaces.
    pub fn ops_addr_or(&self, default_port: u16) -> SocketAddr {
        self.ops_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)))
    }

    /// This replica's name: `--instance-id`, else `HOSTNAME` (the pod name in Kubernetes),
    /// else the machine's host name.
    pub fn instance(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "aurora".to_string())
    }
}

/// Flags of services that talk to NATS.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server(s), comma separated.
    #[arg(
        long,
        env = "AURORA_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// User name (with --nats-password).
    #[arg(long, env = "AURORA_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password (with --nats-user).
    #[arg(long, env = "AURORA_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, env = "AURORA_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NKey seed authentication.
    #[arg(long, env = "AURORA_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// A .creds file (JWT + NKey).
    #[arg(long, env = "AURORA_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server; implies TLS.
    #[arg(long, env = "AURORA_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long, env = "AURORA_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "AURORA_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Require TLS even without a CA file.
    #[arg(long, env = "AURORA_NATS_TLS", default_value_t = false)]
    pub nats_tls: bool,
    /// Replicas of the JetStream streams this service creates and keeps (1, or 3 on a NATS
    /// cluster); a stream with another count is updated to it, like every stream setting.
    /// Unset: a new stream gets the server's default (1) and an existing one keeps its count.
    #[arg(long, env = "AURORA_NATS_STREAM_REPLICAS",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_stream_replicas: Option<u8>,
}

impl Default for NatsArgs {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_nkey: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_tls: false,
            nats_stream_replicas: None,
        }
    }
}

impl NatsArgs {
    /// `config` with this install's stream replica count (0, "not managed", when unset).
    pub fn stream(
        &self,
        mut config: async_nats::jetstream::stream::Config,
    ) -> async_nats::jetstream::stream::Config {
        config.num_replicas = self.nats_stream_replicas.map(usize::from).unwrap_or(0);
        config
    }

    /// Connects with the configured credentials and TLS. The client reconnects by itself
    /// for ever; the first connection is retried too.
    pub async fn connect(
        &self,
        client_name: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.options(client_name)
            .await?
            .retry_on_initial_connect()
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    other => tracing::info!(event = %other, "NATS event"),
                }
            })
            .connect(self.servers()?)
            .await
    }

    /// One attempt to connect with the same credentials and TLS, not retried, for what a
    /// failure says: the client of [`NatsArgs::connect`] reports only the kind of its errors
    /// ("IO error"), this one the reason (a certificate refused, a password wrong).
    pub async fn probe(&self, client_name: &str) -> Result<(), async_nats::ConnectError> {
        self.options(client_name)
            .await?
            .connect(self.servers()?)
            .await
            .map(drop)
    }

    /// The servers of `--nats-url`, a comma-separated list (one URL per server of a cluster;
    /// the client also learns the others from the server it reaches).
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, async_nats::ConnectError> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<async_nats::ServerAddr>().map_err(|e| {
                    async_nats::ConnectError::with_source(
                        async_nats::ConnectErrorKind::ServerParse,
                        e,
                    )
                })
            })
            .collect()
    }

    async fn options(
        &self,
        client_name: &str,
    ) -> Result<async_nats::ConnectOptions, async_nats::ConnectError> {
        let mut opts = match (&self.nats_creds, &self.nats_nkey, &self.nats_token) {
            (Some(creds), _, _) => async_nats::ConnectOptions::with_credentials_file(creds).await?,
            (None, Some(seed), _) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            (None, None, Some(token)) => async_nats::ConnectOptions::with_token(token.clone()),
            _ => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(pass)) = (&self.nats_user, &self.nats_password) {
            opts = opts.user_and_password(user.clone(), pass.clone());
        }
        if let Some(ca) = &self.nats_tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if self.nats_tls {
            opts = opts.require_tls(true);
        }
        Ok(opts
            .name(client_name)
            .connection_timeout(Duration::from_secs(5)))
    }
}

/// Flags of services with an authenticated API.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HS256 shared secret.
    #[arg(long, env = "AURORA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file of an RS256 or ES256 public key (instead of the secret).
    #[arg(long, env = "AURORA_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<String>,
    /// Required `iss`.
    #[arg(long, env = "AURORA_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud`.
    #[arg(long, env = "AURORA_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept tokens signed with the well-known development secret when no key is set.
    /// Never in production.
    #[arg(long, env = "AURORA_DEV_INSECURE_AUTH", default_value_t = false)]
    pub dev_insecure_auth: bool,
    /// Accept an HS256 secret shorter than 32 bytes (refused at start otherwise). Never in
    /// production.
    #[arg(long, env = "AURORA_JWT_ALLOW_WEAK_SECRET", default_value_t = false)]
    pub jwt_allow_weak_secret: bool,
}

impl JwtArgs {
    /// The verifier, or an error when no key is configured and the dev flag is off.
    pub fn verifier(&self) -> Result<Verifier, KeyError> {
        let verifier = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), _) => {
                let len = secret.len();
                if len < MIN_HS256_SECRET_BYTES && len > 0 {
                    if !self.jwt_allow_weak_secret {
                        return Err(KeyError::WeakSecret { len });
                    }
                    tracing::warn!(len, "accepting an HS256 secret shorter than {MIN_HS256_SECRET_BYTES} bytes (--jwt-allow-weak-secret): never in production");
                }
                Verifier::hs256(secret.as_bytes())?
            }
            (None, Some(path)) => Verifier::from_public_pem_file(path)?,
            (None, None) if self.dev_insecure_auth => {
                tracing::warn!("no JWT key configured: accepting tokens signed with the development secret (--dev-insecure-auth)");
                Verifier::hs256(DEV_SECRET.as_bytes())?
            }
            (None, None) => return Err(KeyError::NotConfigured),
        };
        let verifier = match &self.jwt_issuer {
            Some(iss) => verifier.with_issuer(iss),
            None => verifier,
        };
        Ok(match &self.jwt_audience {
            Some(aud) => verifier.with_audience(aud),
            None => verifier,
        })
    }
}

/// The limits of a service's API listener (see [`crate::listener`]); flatten it into the
/// service's flags (they read `AURORA_<SERVICE>_<FLAG>`).
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Time a client has, from the first byte of a request (a WebSocket upgrade too), to send
    /// its whole head; a slower one is disconnected.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// A connection with no request in flight and no authenticated session (one that sends
    /// nothing, idles between requests, or was refused) is closed after this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,
    /// Open connections on the listener at most; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Open connections from one client address at most; more are closed at once (raise it
    /// behind a proxy that connects from one address; the default lets one host hold the
    /// gateway's three channels of 500).
    #[arg(long, default_value_t = 2048)]
    pub max_connections_per_address: usize,
}

impl Default for ListenerArgs {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
            max_connections_per_address: limits.max_per_address,
        }
    }
}

impl ListenerArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_per_address: self.max_connections_per_address,
        }
    }

    /// Refuses zero limits, naming the flag.
    pub fn check(&self) -> Result<(), String> {
        for (flag, zero) in [
            ("header-timeout", self.header_timeout.is_zero()),
            ("idle-timeout", self.idle_timeout.is_zero()),
            ("max-connections", self.max_connections == 0),
            (
                "max-connections-per-address",
                self.max_connections_per_address == 0,
            ),
        ] {
            if zero {
                return Err(format!("--{flag} must be more than 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        jwt: JwtArgs,
    }

    #[test]
    fn service_variables_follow_the_flag_and_switches_read_booleans() {
        assert_eq!(
            env_name("eve-ingest", "batch-size"),
            "AURORA_EVE_INGEST_BATCH_SIZE"
        );
        let cmd = command::<Cli>("test-svc");
        assert_eq!(
            cmd.get_arguments()
                .find(|a| a.get_id() == "namespace")
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str()),
            Some("AURORA_NAMESPACE"),
            "shared flags keep their variable"
        );
        assert!(
            undocumented_flags(&cmd).is_empty(),
            "{:?}",
            undocumented_flags(&cmd)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_point_at_loopback_and_the_api_refuses_to_start_without_a_key() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        assert_eq!(cli.common.namespace, "aurora");
        assert_eq!(cli.common.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(cli.common.ops_addr_or(9100).port(), 9100);
        assert!(matches!(cli.jwt.verifier(), Err(KeyError::NotConfigured)));
        let cli = Cli::try_parse_from(["x", "--dev-insecure-auth"]).expect("parse");
        assert!(cli.jwt.verifier().is_ok());
    }

    #[test]
    fn a_short_hs256_secret_is_refused_at_start_unless_allowed() {
        let cli = Cli::try_parse_from(["x", "--jwt-secret", "k"]).expect("parse");
        assert!(matches!(
            cli.jwt.verifier(),
            Err(KeyError::WeakSecret { len: 1 })
        ));
        let short = "a".repeat(MIN_HS256_SECRET_BYTES - 1);
        let cli = Cli::try_parse_from(["x", "--jwt-secret", &short]).expect("parse");
        assert!(cli.jwt.verifier().is_err());
        let cli = Cli::try_parse_from(["x", "--jwt-secret", "k", "--jwt-allow-weak-secret"])
            .expect("parse");
        assert!(cli.jwt.verifier().is_ok());
        let long = "a".repeat(MIN_HS256_SECRET_BYTES);
        let cli = Cli::try_parse_from(["x", "--jwt-secret", &long]).expect("parse");
        assert!(cli.jwt.verifier().is_ok());
        // The development secret is long enough.
        assert!(DEV_SECRET.len() >= MIN_HS256_SECRET_BYTES);
    }

    #[test]
    fn secret_flags_never_show_their_values() {
        let cmd = command::<Cli>("test-svc");
        for id in ["redis_url", "jwt_secret"] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("flag");
            assert!(arg.is_hide_env_values_set(), "--{id} shows its value");
        }
        assert!(is_secret_flag("mqtt-url"));
        assert!(is_secret_flag("mqtt-password"));
        assert!(is_secret_flag("nats-nkey"));
        assert!(!is_secret_flag("batch-size"));
    }
}
