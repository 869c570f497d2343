use std::io::Read;

use anyhow::{Context, Result};
use chrono::{Duration as ChronoDuration, Utc};
use clap::{Args, ValueEnum};
use serde_json::json;

use aurora_core::bus::Producer;
use aurora_core::model::{
    self, AgentResult, AgentThought, Alert, Approval, AuditEvent, Ioc, Message,
};

use crate::Ctx;

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// An Alert, to `aurora:alerts`.
    Alert,
    /// An agent thought, to `aurora:audit`.
    Thought,
    /// An approval request, to `aurora:approvals`.
    Approval,
    /// An IOC, to `aurora:iocs`.
    Ioc,
    /// An agent result, to `aurora:agent_results`.
    Result,
    /// An audit event, to `aurora:audit`.
    Audit,
}

#[derive(Args)]
pub struct PublishArgs {
    /// What to publish.
    kind: Kind,
    /// A JSON document (`-` for standard input). Without it, an example document is made
    /// from the flags below, with a fresh id and the current time.
    #[arg(long)]
    file: Option<String>,
    /// Title of an example alert, action of an example approval, thought or audit event.
    #[arg(long)]
    title: Option<String>,
    /// Severity of an example alert, risk level of an example approval.
    #[arg(long, default_value = "high")]
    severity: String,
}

pub async fn run(ctx: &Ctx, args: PublishArgs) -> Result<()> {
    let raw = match &args.file {
        Some(path) if path == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read standard input")?;
            buf
        }
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
        None => serde_json::to_vec(&example(&args))?,
    };
    let names = &ctx.names;
    let (stream, doc) = match args.kind {
        Kind::Alert => (names.alerts(), validated::<Alert>(&raw)?),
        Kind::Thought => (names.audit(), validated::<AgentThought>(&raw)?),
        Kind::Approval => (names.approvals(), validated::<Approval>(&raw)?),
        Kind::Ioc => (names.iocs(), validated::<Ioc>(&raw)?),
        Kind::Result => (names.agent_results(), validated::<AgentResult>(&raw)?),
        Kind::Audit => (names.audit(), validated::<AuditEvent>(&raw)?),
    };
    let producer = Producer::new(ctx.redis().await?, 1_000_000);
    let id = producer
        .publish(&stream, &doc)
        .await
        .with_context(|| format!("cannot append to {stream}"))?;
    println!("{stream} {id}");
    Ok(())
}

/// Parses as the type (the error names the field), and gives the bytes to write.
fn validated<T: Message>(raw: &[u8]) -> Result<Vec<u8>> {
    let doc: T = model::parse(raw)?;
    Ok(model::to_bytes(&doc))
}

fn example(args: &PublishArgs) -> serde_json::Value {
    let now = Utc::now();
    let id = uuid::Uuid::new_v4();
    match args.kind {
        Kind::Alert => json!({
            "id": id,
            "title": args.title.as_deref().unwrap_or("Suspicious DNS Query to Known C2 Domain"),
            "severity": args.severity,
            "status": "new",
            "source": "aurora-cli",
            "iocs": [{"type": "domain", "value": "t1.evil.com"}],
            "mitre_techniques": ["T1071.004"],
            "timestamp": now,
        }),
        Kind::Thought => json!({
            "id": id.to_string(),
            "agent": "threat_hunter",
            "action": args.title.as_deref().unwrap_or("Running YARA scan on endpoint"),
            "case_id": uuid::Uuid::new_v4(),
            "details": {"tool": "yara_scan", "target": "workstation-042", "rules_matched": 2},
            "duration_ms": 1250,
            "timestamp": now,
        }),
        Kind::Approval => json!({
            "id": id,
            "action": args.title.as_deref().unwrap_or("Isolate workstation-042 from network"),
            "case_id": uuid::Uuid::new_v4(),
            "risk_level": args.severity,
            "status": "pending",
            "requested_by": "incident_responder",
            "context": {"reason": "Active C2 beacon detected, lateral movement in progress", "affected_users": 3, "confidence": 0.87},
            "requested_at": now,
            "expires_at": now + ChronoDuration::hours(4),
        }),
        Kind::Ioc => json!({
            "id": id.to_string(),
            "type": "domain",
            "value": args.title.as_deref().unwrap_or("t1.evil.com"),
            "confidence": 0.9,
            "tlp": "TLP:AMBER",
            "valid_from": now,
            "valid_until": now + ChronoDuration::days(30),
        }),
        Kind::Result => json!({
            "id": id.to_string(),
            "agent": "threat_hunter",
            "case_id": uuid::Uuid::new_v4(),
            "summary": args.title.as_deref().unwrap_or("C2 beacon confirmed on workstation-042"),
            "verdict": "malicious",
            "confidence": 0.87,
            "timestamp": now,
        }),
        Kind::Audit => json!({
            "id": id.to_string(),
            "actor": "aurora-cli",
            "action": args.title.as_deref().unwrap_or("manual test event"),
            "timestamp": now,
        }),
    }
}
