//! What the revision, signature and time-to-loss tests share: gateways in-process, site keys
//! in files, documents and signed publishes made by hand.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use aurora_core::bus::Conn;
use aurora_core::names::Names;
use aurora_core::ops::Readiness;
use aurora_core::service::{launch, Flags, LaunchOptions, Launched, Stopped};
use aurora_testkit::prelude::*;
use federation_gateway::revision;
use federation_gateway::signing::{
    leaf, SiteKey, KEY_ID_HEADER, PROOF_HEADER, SIGNATURE_HEADER, SIGNED_AT_HEADER,
};
use federation_gateway::{Args, ORIGIN_SITE_HEADER, SERVICE};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const LONG: Duration = Duration::from_secs(30);

pub fn args(names: &Names, site: &str, redis: &str, nats: &str, extra: &[&str]) -> Args {
    let instance = format!("{site}-1");
    let mut argv = vec![
        "federation-gateway",
        "--namespace",
        names.namespace(),
        "--site-id",
        site,
        "--redis-url",
        redis,
        "--nats-url",
        nats,
        "--ops-addr",
        "127.0.0.1:0",
        "--instance-id",
        &instance,
        "--log-format",
        "pretty",
        "--lag-interval",
        "200ms",
        "--shutdown-timeout",
        "5s",
    ];
    argv.extend_from_slice(extra);
    aurora_core::config::parse_from::<Args, _, _>(SERVICE, Args::RENAMED_ENV, argv).unwrap()
}

/// A gateway running in-process.
pub struct Gateway {
    pub readiness: Readiness,
    pub launched: Launched,
}

impl Gateway {
    pub async fn start(args: Args) -> Self {
        let mut options = LaunchOptions::local(&args.common.instance());
        options.drain_deadline = args.common.shutdown_timeout;
        let service = args.into_service().expect("valid flags");
        let launched = launch(service, options, CancellationToken::new())
            .await
            .expect("gateway starts");
        Self {
            readiness: launched.readiness.clone(),
            launched,
        }
    }

    pub fn ops(&self) -> Ops {
        Ops::port(self.launched.ops_addr.port())
    }

    pub async fn stop(self) {
        self.launched.shutdown();
        assert_eq!(self.launched.stopped().await, Stopped::Drained);
    }
}

/// Site keys in files: `<dir>/<site>.key` (seed) and `<dir>/peers/<site>.pub`.
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new(sites: &[(&str, u8)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("peers")).unwrap();
        let keys = Self { dir };
        for (site, seed) in sites {
            let key = Self::key(*seed);
            std::fs::write(keys.seed_file(site), base64_seed(*seed)).unwrap();
            std::fs::write(
                keys.peers().join(format!("{site}.pub")),
                format!("{}\n", key.public_base64()),
            )
            .unwrap();
        }
        keys
    }

    pub fn key(seed: u8) -> SiteKey {
        SiteKey::from_seed([seed; 32])
    }

    pub fn seed_file(&self, site: &str) -> PathBuf {
        self.dir.path().join(format!("{site}.key"))
    }

    pub fn peers(&self) -> PathBuf {
        self.dir.path().join("peers")
    }

    /// `--signing-key <site's> --peer-keys <dir>`.
    pub fn flags(&self, site: &str) -> Vec<String> {
        vec![
            "--signing-key".into(),
            path(&self.seed_file(site)),
            "--peer-keys".into(),
            path(&self.peers()),
        ]
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn base64_seed(seed: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([seed; 32])
}

/// The alert id of a test label: alerts carry UUIDs.
pub fn uid(label: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, label.as_bytes()).to_string()
}

pub fn alert(label: &str) -> Value {
    json!({"id": uid(label), "title": "Suspicious DNS Query to Known C2 Domain", "severity": "high",
           "status": "new", "source": "suricata", "timestamp": "2024-01-15T10:30:00Z"})
}

/// The last entry of `stream` whose `id` is `id`.
pub async fn last_of(conn: &Conn, stream: &str, id: &str) -> Option<Value> {
    stream_values(conn, stream)
        .await
        .into_iter()
        .rev()
        .find(|d| d["id"] == id)
}

pub async fn jetstream_ctx(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// A message as a site would publish it: signed by `key` (named `key_id`) at
/// `signed_at_ms`, or unsigned when `key` is `None`.
pub struct Outgoing<'a> {
    pub subject: String,
    pub origin: Option<&'a str>,
    pub doc: &'a Value,
    pub key: Option<(&'a SiteKey, &'a str)>,
    pub signed_at_ms: i64,
    /// Overrides the message id the exporter would give it.
    pub msg_id: Option<String>,
}

impl<'a> Outgoing<'a> {
    pub fn signed(subject: String, origin: &'a str, doc: &'a Value, key: &'a SiteKey) -> Self {
        Self {
            subject,
            origin: Some(origin),
            doc,
            key: Some((key, key.id())),
            signed_at_ms: chrono::Utc::now().timestamp_millis(),
            msg_id: None,
        }
    }

    /// Publishes; returns the message id.
    pub async fn publish(&self, js: &jetstream::Context) -> String {
        let payload = serde_json::to_vec(self.doc).unwrap();
        let origin = self.origin.unwrap_or("");
        let msg_id = self.msg_id.clone().unwrap_or_else(|| {
            let probe: revision::RevisionProbe = serde_json::from_value(self.doc.clone()).unwrap();
            revision::message_id(
                origin,
                self.doc["id"].as_str().unwrap_or_default(),
                probe.revision(),
                &revision::content_hash(&payload),
            )
        });
        let mut msg = jetstream::message::PublishMessage::build().message_id(msg_id.as_str());
        if let Some(origin) = self.origin {
            msg = msg.header(ORIGIN_SITE_HEADER, origin);
        }
        if let Some((key, key_id)) = self.key {
            // A batch of one, sealed by `key`; the header names `key_id`.
            let leaf = leaf(&self.subject, &msg_id, origin, &payload);
            let seal = key.seal(origin, self.signed_at_ms, &[leaf]).remove(0);
            msg = msg
                .header(KEY_ID_HEADER, key_id)
                .header(SIGNED_AT_HEADER, self.signed_at_ms.to_string().as_str())
                .header(SIGNATURE_HEADER, seal.signature.as_str());
            if !seal.proof.is_empty() {
                msg = msg.header(PROOF_HEADER, seal.proof.as_str());
            }
        }
        js.send_publish(self.subject.clone(), msg.payload(payload.into()))
            .await
            .unwrap()
            .await
            .unwrap();
        msg_id
    }
}
