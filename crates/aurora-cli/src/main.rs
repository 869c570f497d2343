//! `aurora`: mint tokens, publish documents, follow streams and see the state of the bus.

mod approval_key;
mod ledger;
mod publish;
mod simulate;
mod status;
mod tail;
mod token;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use aurora_core::config::NatsArgs;
use aurora_core::Names;

/// The flags before the subcommand are the connection flags every subcommand shares; [`command`]
/// makes all of them global, so they are accepted before or after the subcommand.
#[derive(Parser)]
#[command(
    name = "aurora",
    version,
    about = "The Aurora event-transport command line"
)]
struct Cli {
    /// Prefix of every stream, topic and subject name.
    #[arg(long, env = "AURORA_NAMESPACE", default_value = aurora_core::names::DEFAULT_NAMESPACE)]
    namespace: String,

    /// The site's Redis.
    #[arg(
        long,
        env = "AURORA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,

    /// NATS: the same flags and variables as the services' (`AURORA_NATS_*`).
    #[command(flatten)]
    nats: NatsArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a JWT (HS256 with AURORA_JWT_SECRET, the development secret with --dev, or
    /// RS256/ES256 with --private-key).
    Token(token::TokenArgs),
    /// Make the key ws-gateway signs approved device actions with: the private key to a file,
    /// the public key (for mqtt-bridge and device-registry) printed.
    ApprovalKey(approval_key::ApprovalKeyArgs),
    /// Validate a document and append it to its stream.
    Publish(publish::PublishArgs),
    /// Follow a stream.
    Tail(tail::TailArgs),
    /// Streams, consumer groups, each group consumer live or gone with its pending entries
    /// and idle time, the services' replica registries; JetStream streams and consumers.
    Status(status::StatusArgs),
    /// Simulated traffic: a device fleet, the SOC's agents, Suricata events.
    Simulate(simulate::SimulateArgs),
    /// The loss ledger over a window: per stream and consumer group, what was written,
    /// handled, dead-lettered, dropped by a limit and is in flight, with every difference
    /// named (exit status 1 when anything is lost or unexplained).
    Ledger(ledger::LedgerArgs),
}

/// What every subcommand needs to reach the servers.
pub struct Ctx {
    pub names: Names,
    pub redis_url: String,
    pub nats: NatsArgs,
}

impl Ctx {
    pub async fn redis(&self) -> Result<aurora_core::bus::Conn> {
        aurora_core::bus::connect(&self.redis_url)
            .await
            .map_err(|e| anyhow::anyhow!("{e} (is Redis running? `make services` starts it)"))
    }
}

/// The command line with every top-level flag global: the NATS flags come from aurora-core's
/// `NatsArgs`, which the services share and which has no `global` of its own. A switch among them
/// (`--nats-tls`) reads its variable as a boolean (`1`, `yes`, `on`...), as the services do.
fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let arg = arg.global(true);
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            arg
        }
    })
}

fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = run(cli).await;
    if let Err(e) = result {
        eprintln!("aurora: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let names = Names::new(&cli.namespace)?;
    let ctx = Ctx {
        names,
        redis_url: cli.redis_url,
        nats: cli.nats,
    };
    match cli.command {
        Command::Token(args) => token::run(args),
        Command::ApprovalKey(args) => approval_key::run(args),
        Command::Publish(args) => publish::run(&ctx, args).await,
        Command::Tail(args) => tail::run(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Simulate(args) => simulate::run(&ctx, args).await,
        Command::Ledger(args) => ledger::run(&ctx, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of a command and of its subcommands, with the path of subcommands.
    fn all_args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_string(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn connection_flags_are_accepted_before_or_after_the_subcommand() {
        let flags = [
            ("--namespace", "ns1"),
            ("--redis-url", "redis://10.0.0.1:6380"),
            ("--nats-url", "nats://10.0.0.2:4223"),
            ("--nats-user", "u"),
            ("--nats-password", "p"),
            ("--nats-token", "t"),
            ("--nats-nkey", "SUAK"),
            ("--nats-creds", "/etc/aurora/nats.creds"),
            ("--nats-tls-ca", "/etc/aurora/ca.pem"),
            ("--nats-tls-cert", "/etc/aurora/cert.pem"),
            ("--nats-tls-key", "/etc/aurora/key.pem"),
        ];
        let mut flat: Vec<&str> = flags.iter().flat_map(|(f, v)| [*f, *v]).collect();
        flat.push("--nats-tls");
        let before: Vec<&str> = ["aurora"]
            .into_iter()
            .chain(flat.iter().copied())
            .chain(["status", "--no-nats"])
            .collect();
        let after: Vec<&str> = ["aurora", "status"]
            .into_iter()
            .chain(flat.iter().copied())
            .chain(["--no-nats"])
            .collect();
        let deep: Vec<&str> = ["aurora", "simulate", "agents"]
            .into_iter()
            .chain(flat.iter().copied())
            .collect();
        for args in [before, after, deep] {
            let cli = parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.namespace, "ns1", "{args:?}");
            assert_eq!(cli.redis_url, "redis://10.0.0.1:6380", "{args:?}");
            let n = &cli.nats;
            assert_eq!(n.nats_url, "nats://10.0.0.2:4223", "{args:?}");
            assert_eq!(n.nats_user.as_deref(), Some("u"));
            assert_eq!(n.nats_password.as_deref(), Some("p"));
            assert_eq!(n.nats_token.as_deref(), Some("t"));
            assert_eq!(n.nats_nkey.as_deref(), Some("SUAK"));
            assert_eq!(
                n.nats_creds.as_deref(),
                Some(std::path::Path::new("/etc/aurora/nats.creds"))
            );
            assert_eq!(
                n.nats_tls_ca.as_deref(),
                Some(std::path::Path::new("/etc/aurora/ca.pem"))
            );
            assert_eq!(
                n.nats_tls_cert.as_deref(),
                Some(std::path::Path::new("/etc/aurora/cert.pem"))
            );
            assert_eq!(
                n.nats_tls_key.as_deref(),
                Some(std::path::Path::new("/etc/aurora/key.pem"))
            );
            assert!(n.nats_tls, "{args:?}");
        }
    }

    #[test]
    fn every_top_level_flag_is_global_and_reads_its_aurora_variable() {
        let cmd = command();
        let mut seen = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            seen += 1;
            assert!(arg.is_global_set(), "--{long} is not global");
            let expected = format!("AURORA_{}", long.replace('-', "_").to_ascii_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long}"
            );
        }
        assert!(seen >= 12, "only {seen} connection flags");
    }

    #[test]
    fn every_flag_has_help_and_secrets_hide_their_values() {
        let mut args = Vec::new();
        all_args(&command(), "aurora", &mut args);
        let undocumented: Vec<String> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, a)| format!("{path}: {}", a.get_id()))
            .collect();
        assert!(undocumented.is_empty(), "{undocumented:?}");
        let secrets: Vec<&(String, clap::Arg)> = args
            .iter()
            .filter(|(_, a)| {
                let id = a.get_id().as_str();
                ["password", "token", "secret", "nkey"]
                    .iter()
                    .any(|s| id.contains(s))
            })
            .collect();
        assert!(secrets.len() >= 4, "{} secret flags", secrets.len());
        for (path, a) in secrets {
            assert!(
                a.get_env().is_none() || a.is_hide_env_values_set(),
                "{path}: --{} shows its variable's value",
                a.get_id()
            );
        }
    }
}
