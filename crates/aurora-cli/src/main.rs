//! `aurora`: mint tokens, publish documents, follow streams and see the state of the bus.

mod publish;
mod simulate;
mod status;
mod tail;
mod token;

use anyhow::Result;
use clap::{Parser, Subcommand};

use aurora_core::config::NatsArgs;
use aurora_core::Names;

#[derive(Parser)]
#[command(
    name = "aurora",
    version,
    about = "The Aurora event-transport command line"
)]
struct Cli {
    /// Prefix of every stream, topic and subject name.
    #[arg(long, global = true, env = "AURORA_NAMESPACE", default_value = aurora_core::names::DEFAULT_NAMESPACE)]
    namespace: String,

    /// The site's Redis.
    #[arg(
        long,
        global = true,
        env = "AURORA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,

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
    /// Validate a document and append it to its stream.
    Publish(publish::PublishArgs),
    /// Follow a stream.
    Tail(tail::TailArgs),
    /// Streams, consumer groups, pending entries; JetStream streams and consumers.
    Status(status::StatusArgs),
    /// Simulated traffic: a device fleet, the SOC's agents, Suricata events.
    Simulate(simulate::SimulateArgs),
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
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
        Command::Publish(args) => publish::run(&ctx, args).await,
        Command::Tail(args) => tail::run(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Simulate(args) => simulate::run(&ctx, args).await,
    }
}
