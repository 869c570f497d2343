use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use aurora_core::auth::{parse_permissions, Claims, Minter, DEV_SECRET};
use aurora_core::config::parse_duration;

#[derive(Args)]
pub struct TokenArgs {
    /// The subject (user or service name).
    #[arg(long)]
    sub: String,
    /// Comma-separated permissions: ws:alerts, ws:agent_thoughts, approvals:manage,
    /// devices:read, devices:write, firmware:manage.
    #[arg(long, default_value = "")]
    permissions: String,
    /// Lifetime: 30s, 15m, 1h, 7d.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    ttl: Duration,
    /// `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    audience: Option<String>,
    /// HS256 secret.
    #[arg(long, env = "AURORA_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PEM private key (RSA for RS256, EC P-256 for ES256).
    #[arg(long, conflicts_with = "secret")]
    private_key: Option<String>,
    /// Sign with the development secret that services accept with --dev-insecure-auth.
    #[arg(long, conflicts_with_all = ["secret", "private_key"])]
    dev: bool,
}

pub fn run(args: TokenArgs) -> Result<()> {
    println!("{}", mint(&args)?);
    Ok(())
}

fn mint(args: &TokenArgs) -> Result<String> {
    let permissions = parse_permissions(&args.permissions).map_err(anyhow::Error::msg)?;
    let minter = match (&args.secret, &args.private_key, args.dev) {
        (_, _, true) => Minter::hs256(DEV_SECRET.as_bytes()),
        (Some(secret), _, _) if !secret.is_empty() => Minter::hs256(secret.as_bytes()),
        (_, Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
            Minter::from_private_pem(&pem)?
        }
        _ => bail!("no signing key: set AURORA_JWT_SECRET, pass --secret or --private-key, or --dev for the development secret"),
    };
    let mut claims = Claims::new(&args.sub, &permissions, args.ttl);
    claims.iss = args.issuer.clone();
    claims.aud = args.audience.clone().map(aurora_core::auth::Audience::One);
    Ok(minter.mint(&claims))
}
