//! `aurora approval-key`: a new Ed25519 key for ws-gateway to sign approved device actions.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use aurora_core::approval::SigningKey;

#[derive(Args)]
pub struct ApprovalKeyArgs {
    /// Where to write the private key (base64 seed, mode 0600): ws-gateway's
    /// `--approval-signing-key`. An existing file is not overwritten.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the private key to `--out` and prints the public key (for mqtt-bridge's and
/// device-registry's `--approval-public-keys`) and the key id.
pub fn run(args: ApprovalKeyArgs) -> Result<()> {
    let key = SigningKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(&args.out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists: not overwritten", args.out.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", args.out.display())),
    };
    writeln!(file, "{}", key.to_base64())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("public_key {}", key.public_base64());
    println!("key_id {}", key.id());
    Ok(())
}
