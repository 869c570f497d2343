//! The flags of the binary ([`Args`]) and what the service is built from ([`Config`]).
//!
//! The service's own flags read `AURORA_DEVICE_REGISTRY_<FLAG>` (the rule of
//! `aurora_core::config::env_name`); the shared ones keep their `AURORA_<FLAG>`. The variables
//! this service read before under other names are refused at start with the new name
//! ([`RENAMED_ENV`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use aurora_core::auth::Verifier;
use aurora_core::config::{parse_duration, CommonArgs, JwtArgs, ListenerArgs};
use aurora_core::listener::Limits;
use aurora_core::service::Flags;
use aurora_core::Names;
use clap::Parser;

use crate::DeviceRegistry;

/// Registers, attests and exposes the CPS devices of an Aurora site.
#[derive(Debug, Parser)]
#[command(name = "device-registry", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// Largest command (its JSON as it goes to the device, in bytes) the API accepts; a larger
    /// one is refused with 413. The MQTT broker's maximum packet (262144 in deploy/mosquitto)
    /// less room for the topic and the packet header.
    #[arg(long, default_value_t = DEFAULT_MAX_COMMAND_BYTES)]
    pub max_command_bytes: usize,
    /// PostgreSQL.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Address of the REST API.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,
    /// Take a new device's Ed25519 public key from its first message (`public_key`).
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// How long a device has to answer an attestation challenge.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub attestation_timeout: Duration,
    /// Re-attest every device this often (0 turns it off).
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub reattest_interval: Duration,
    /// How often to look for expired challenges, due re-attestations and unsent records.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub sweep_interval: Duration,
    /// A record committed in PostgreSQL but not on the bus after this long is sent again.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub resend_after: Duration,
    /// Stream entries per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Registration consumers in this replica.
    #[arg(long, default_value_t = 2)]
    pub registration_workers: usize,
    /// Attestation consumers in this replica.
    #[arg(long, default_value_t = 1)]
    pub attestation_workers: usize,
    /// PostgreSQL connections at most.
    #[arg(long, default_value_t = 10)]
    pub db_max_connections: u32,
    /// A stream entry pending this long with another (dead) consumer is taken over.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub claim_idle: Duration,
    /// Do not apply the database migrations at start: a separate step (`--migrate-only`,
    /// e.g. the chart's migration Job) applies them. The service then refuses to start while
    /// a migration it knows is missing from the database.
    #[arg(long, conflicts_with = "migrate_only")]
    pub skip_migrations: bool,
    /// Device actions that need an analyst's approval before they run (comma-separated; an
    /// empty value: none). A request for one becomes an approval on the console; the action
    /// runs once another analyst approves it.
    #[arg(long, value_delimiter = ',', default_values_t = aurora_core::approval::DEFAULT_PRIVILEGED_ACTIONS.iter().map(|a| a.to_string()))]
    pub privileged_actions: Vec<String>,
    /// The approving service's Ed25519 public keys (base64, comma-separated; two during a key
    /// rotation): an approved action runs only if its proof is signed by one of them.
    #[arg(long, value_delimiter = ',')]
    pub approval_public_keys: Vec<String>,
    /// How long a request for a privileged action waits for its approval.
    #[arg(long, value_parser = parse_duration, default_value = "15m")]
    pub approval_timeout: Duration,
    /// How long a command without `ttl_seconds` may wait for its device (its `expires_at`).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub command_ttl: Duration,
    /// A command with no receipt from its device this long after its `expires_at` is
    /// `unconfirmed`.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub receipt_grace: Duration,
    /// Attestation policy per device model, comma-separated `model=required|optional|off`
    /// (`required`: a device that does not answer is an alert; `optional`: it is challenged, a
    /// failed answer is an alert, no answer is not; `off`: never challenged, status
    /// `not_attested`). Models not listed follow `--default-attestation-policy`.
    #[arg(long, value_delimiter = ',', value_parser = parse_model_policy)]
    pub attestation_policy: Vec<(String, AttestationPolicy)>,
    /// The attestation policy of models not in `--attestation-policy`.
    #[arg(long, value_enum, default_value_t = AttestationPolicy::Required)]
    pub default_attestation_policy: AttestationPolicy,
    /// A device not heard from for this many times its usual interval between messages is
    /// `silent` (an alert, once); 0 turns the check off.
    #[arg(long, default_value_t = 3)]
    pub silent_after: u32,
    /// A device is never judged silent before this long without a message, whatever its usual
    /// interval.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub silent_floor: Duration,
    /// More devices than this entering one condition (no attestation answer, silent) in one
    /// sweep round raise one fleet alert naming them instead of one alert each.
    #[arg(long, default_value_t = 10)]
    pub alert_storm_threshold: usize,
    /// Apply the database migrations and exit (0 when they are applied); nothing else starts
    /// (no Redis, no API), and no JWT key is needed.
    #[arg(long)]
    pub migrate_only: bool,
}

/// What happens to a device model's attestation (`--attestation-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttestationPolicy {
    /// Challenged; no answer or a failed one is an alert.
    Required,
    /// Challenged; a failed answer is an alert, no answer is not.
    Optional,
    /// Never challenged (status `not_attested`).
    Off,
}

fn parse_model_policy(s: &str) -> Result<(String, AttestationPolicy), String> {
    let (model, policy) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected model=required|optional|off"))?;
    let model = model.trim();
    if model.is_empty() {
        return Err(format!("{s:?}: the model is empty"));
    }
    let policy = <AttestationPolicy as clap::ValueEnum>::from_str(policy.trim(), true)
        .map_err(|_| format!("{s:?}: the policy is required, optional or off"))?;
    Ok((model.to_string(), policy))
}

/// `--max-command-bytes` by default: the broker's 256 KiB packet less 1 KiB for the topic and
/// the MQTT header.
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 256 * 1024 - 1024;

/// The variables read before under another name (old, new).
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("AURORA_DATABASE_URL", "AURORA_DEVICE_REGISTRY_DATABASE_URL"),
    ("AURORA_HTTP_ADDR", "AURORA_DEVICE_REGISTRY_HTTP_ADDR"),
    (
        "AURORA_TRUST_ON_FIRST_USE",
        "AURORA_DEVICE_REGISTRY_TRUST_ON_FIRST_USE",
    ),
    (
        "AURORA_ATTESTATION_TIMEOUT",
        "AURORA_DEVICE_REGISTRY_ATTESTATION_TIMEOUT",
    ),
    (
        "AURORA_REATTEST_INTERVAL",
        "AURORA_DEVICE_REGISTRY_REATTEST_INTERVAL",
    ),
    (
        "AURORA_SWEEP_INTERVAL",
        "AURORA_DEVICE_REGISTRY_SWEEP_INTERVAL",
    ),
    ("AURORA_RESEND_AFTER", "AURORA_DEVICE_REGISTRY_RESEND_AFTER"),
    ("AURORA_BATCH_SIZE", "AURORA_DEVICE_REGISTRY_BATCH_SIZE"),
    (
        "AURORA_REGISTRATION_WORKERS",
        "AURORA_DEVICE_REGISTRY_REGISTRATION_WORKERS",
    ),
    (
        "AURORA_ATTESTATION_WORKERS",
        "AURORA_DEVICE_REGISTRY_ATTESTATION_WORKERS",
    ),
    (
        "AURORA_DB_MAX_CONNECTIONS",
        "AURORA_DEVICE_REGISTRY_DB_MAX_CONNECTIONS",
    ),
    ("AURORA_CLAIM_IDLE", "AURORA_DEVICE_REGISTRY_CLAIM_IDLE"),
];

impl Flags for Args {
    type Service = DeviceRegistry;
    const RENAMED_ENV: &'static [(&'static str, &'static str)] = RENAMED_ENV;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn into_service(self) -> anyhow::Result<DeviceRegistry> {
        Ok(DeviceRegistry::new(self.into_config()?))
    }
}

impl Args {
    /// Checks the flags: a valid namespace and a JWT key (or the development flag).
    pub fn into_config(self) -> anyhow::Result<Config> {
        let names = self.common.names().context("--namespace")?;
        let no_key = self.jwt.jwt_secret.is_none() && self.jwt.jwt_public_key.is_none();
        let verifier = if self.migrate_only && no_key {
            // Only the migrations run and the API never starts: no token is ever verified,
            // so a migration Job needs no JWT key. A random one stands in.
            Verifier::hs256(uuid::Uuid::new_v4().as_bytes())?
        } else {
            self.jwt.verifier()?
        };
        self.listener.check().map_err(anyhow::Error::msg)?;
        if self.max_command_bytes == 0 {
            anyhow::bail!("--max-command-bytes must be more than 0");
        }
        let approver_keys = aurora_core::approval::ApproverKeys::parse(&self.approval_public_keys)
            .context("--approval-public-keys")?;
        let privileged_actions: Vec<String> = self
            .privileged_actions
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if self.default_attestation_policy == AttestationPolicy::Off {
            anyhow::bail!(
                "--default-attestation-policy off is not supported: name the models that are \
                 never challenged in --attestation-policy model=off"
            );
        }
        if !privileged_actions.is_empty() && approver_keys.is_empty() && !self.migrate_only {
            tracing::warn!(
                actions = %privileged_actions.join(","),
                "no approver public key (--approval-public-keys): requests for privileged device actions are refused"
            );
        }
        if self.command_ttl.is_zero() || self.approval_timeout.is_zero() {
            anyhow::bail!("--command-ttl and --approval-timeout must be more than 0");
        }
        Ok(Config {
            attestation_policy: self.attestation_policy.into_iter().collect(),
            default_attestation_policy: self.default_attestation_policy,
            silent_after: self.silent_after,
            silent_floor: self.silent_floor,
            alert_storm_threshold: self.alert_storm_threshold,
            privileged_actions,
            approver_keys,
            approval_timeout: self.approval_timeout,
            command_ttl: self.command_ttl,
            receipt_grace: self.receipt_grace,
            names,
            redis_url: self.common.redis_url,
            database_url: self.database_url,
            http_addr: self.http_addr,
            listener: self.listener.limits(),
            max_command_bytes: self.max_command_bytes,
            verifier,
            trust_on_first_use: self.trust_on_first_use,
            attestation_timeout: self.attestation_timeout,
            reattest_interval: Some(self.reattest_interval).filter(|d| !d.is_zero()),
            sweep_interval: self.sweep_interval,
            resend_after: self.resend_after,
            batch_size: self.batch_size,
            registration_workers: self.registration_workers,
            attestation_workers: self.attestation_workers,
            stream_maxlen: self.common.stream_maxlen,
            db_max_connections: self.db_max_connections,
            claim_idle: self.claim_idle,
            migrations: if self.migrate_only {
                Migrations::Only
            } else if self.skip_migrations {
                Migrations::Skip
            } else {
                Migrations::Apply
            },
        })
    }
}

/// Everything the service needs, already parsed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Attestation policy by model; others follow `default_attestation_policy`.
    pub attestation_policy: std::collections::HashMap<String, AttestationPolicy>,
    pub default_attestation_policy: AttestationPolicy,
    /// Silent after this many usual intervals (0: never).
    pub silent_after: u32,
    pub silent_floor: Duration,
    pub alert_storm_threshold: usize,
    /// Device actions that need an approval.
    pub privileged_actions: Vec<String>,
    /// Who may approve them (the approving service's public keys).
    pub approver_keys: aurora_core::approval::ApproverKeys,
    pub approval_timeout: Duration,
    /// The lifetime of a command without `ttl_seconds`.
    pub command_ttl: Duration,
    pub receipt_grace: Duration,
    pub names: Names,
    pub redis_url: String,
    pub database_url: String,
    /// Where the REST API listens (port 0: any free port, see `DeviceRegistry::api_addr`).
    pub http_addr: SocketAddr,
    /// The API listener's timeouts and caps.
    pub listener: Limits,
    /// Largest command JSON the API accepts (bytes).
    pub max_command_bytes: usize,
    pub verifier: Verifier,
    /// Take a device's public key from its first message (`public_key`, base64).
    pub trust_on_first_use: bool,
    /// How long a challenge stays answerable.
    pub attestation_timeout: Duration,
    /// Re-attest every device this often; `None` turns scheduled re-attestation off.
    pub reattest_interval: Option<Duration>,
    /// How often the sweeper looks for expired challenges, due re-attestations and unsent records.
    pub sweep_interval: Duration,
    /// A committed record not on the bus after this long is sent again by the sweeper.
    pub resend_after: Duration,
    /// Stream entries read per batch.
    pub batch_size: usize,
    /// Registration consumers in this replica (each its own consumer in the group).
    pub registration_workers: usize,
    /// Attestation consumers in this replica (default 1). More overlap batches like more
    /// replicas do, but then two answers of one device may be settled out of stream order.
    pub attestation_workers: usize,
    pub stream_maxlen: usize,
    pub db_max_connections: u32,
    /// An entry pending this long with another consumer is taken over.
    pub claim_idle: Duration,
    /// What the start does with the database migrations.
    pub migrations: Migrations,
}

/// What the start does with the database migrations (`--skip-migrations`, `--migrate-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrations {
    /// Apply them, then run (the default).
    #[default]
    Apply,
    /// Apply none; refuse to start while one is missing from the database.
    Skip,
    /// Apply them and exit.
    Only,
}

impl Config {
    /// The attestation policy of a device of `model`.
    pub fn attestation_policy_of(&self, model: Option<&str>) -> AttestationPolicy {
        self.attestation_policy
            .get(model.unwrap_or_default())
            .copied()
            .unwrap_or(self.default_attestation_policy)
    }

    /// The models whose devices are never challenged.
    pub fn not_challenged_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .attestation_policy
            .iter()
            .filter(|(_, p)| **p == AttestationPolicy::Off)
            .map(|(m, _)| m.clone())
            .collect();
        models.sort();
        models
    }

    /// Defaults for a test or a tool: everything on loopback, an ephemeral API port.
    pub fn local(names: Names, redis_url: &str, database_url: &str, verifier: Verifier) -> Self {
        Self {
            attestation_policy: Default::default(),
            default_attestation_policy: AttestationPolicy::Required,
            silent_after: 3,
            silent_floor: Duration::from_secs(300),
            alert_storm_threshold: 10,
            privileged_actions: aurora_core::approval::DEFAULT_PRIVILEGED_ACTIONS
                .iter()
                .map(|a| a.to_string())
                .collect(),
            approver_keys: Default::default(),
            approval_timeout: Duration::from_secs(900),
            command_ttl: Duration::from_secs(600),
            receipt_grace: Duration::from_secs(30),
            names,
            redis_url: redis_url.to_string(),
            database_url: database_url.to_string(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: Limits::default(),
            max_command_bytes: DEFAULT_MAX_COMMAND_BYTES,
            verifier,
            trust_on_first_use: false,
            attestation_timeout: Duration::from_secs(300),
            reattest_interval: None,
            sweep_interval: Duration::from_secs(5),
            resend_after: Duration::from_secs(30),
            batch_size: 1000,
            registration_workers: 2,
            attestation_workers: 1,
            stream_maxlen: 1_000_000,
            db_max_connections: 10,
            claim_idle: Duration::from_secs(30),
            migrations: Migrations::Apply,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use aurora_core::config::{parse_args, rule_violations};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        parse_args::<Args>(args)
    }

    #[test]
    fn the_flags_keep_the_configuration_rule() {
        let violations = rule_violations::<Args>();
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(RENAMED_ENV.len(), 12);
    }

    #[test]
    fn defaults_and_switches() {
        let args = parse(&["--dev-insecure-auth"]).unwrap();
        assert!(!args.trust_on_first_use);
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.http_addr.port(), 8081);
        assert_eq!(cfg.reattest_interval, Some(Duration::from_secs(86_400)));
        assert_eq!(cfg.batch_size, 1000);
        let args = parse(&[
            "--dev-insecure-auth",
            "--trust-on-first-use",
            "--reattest-interval",
            "0",
        ])
        .unwrap();
        assert!(args.trust_on_first_use);
        assert_eq!(args.into_config().unwrap().reattest_interval, None);
        assert!(parse(&["--trust-on-first-use", "false"]).is_err());
    }

    #[test]
    fn no_jwt_key_is_a_configuration_error() {
        let err = parse(&[]).unwrap().into_config().unwrap_err();
        assert!(format!("{err:#}").contains("JWT"), "{err:#}");
    }
}
