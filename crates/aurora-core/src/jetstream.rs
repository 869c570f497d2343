//! JetStream streams the product owns: created when missing, updated when their config has
//! drifted (and the change is said), refused with a clear error when they cannot be updated.
//! The seed code wrapped `add_stream` in `try/except: pass`, which hid a changed config.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::names::Names;

/// The JetStream stream could not be made to match.
#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("cannot read stream {name}: {source}")]
    Get {
        name: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create stream {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error(
        "stream {name} exists with a config that cannot be changed in place ({changes}): {source}"
    )]
    Conflict {
        name: String,
        changes: String,
        #[source]
        source: jetstream::context::UpdateStreamError,
    },
    #[error("cannot read the info of stream {name}: {source}")]
    Info {
        name: String,
        #[source]
        source: jetstream::stream::InfoError,
    },
}

/// What [`ensure_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    Created,
    Unchanged,
    /// Updated; each string names a field with its old and new value.
    Updated(Vec<String>),
}

/// The federation stream (docs/contract.md#jetstream): `AURORA.*` subjects, limits retention, at most 100,000
/// messages, 7 days, file storage, 2-minute duplicate window.
pub fn federation_stream_config(names: &Names) -> stream::Config {
    stream::Config {
        name: names.nats_stream(),
        subjects: names.nats_subjects(),
        retention: stream::RetentionPolicy::Limits,
        max_messages: 100_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        description: Some("Aurora cross-site federation".into()),
        ..Default::default()
    }
}

/// The Suricata stream (docs/contract.md#jetstream): `suricata.*`, file storage, 2-minute duplicate window.
pub fn suricata_stream_config(names: &Names) -> stream::Config {
    stream::Config {
        name: names.suricata_stream(),
        subjects: vec![names.suricata_subjects()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        description: Some("Suricata EVE events by event type".into()),
        ..Default::default()
    }
}

/// The fields of `desired` that differ in `actual`, as `field: old -> new`.
pub fn config_diff(actual: &stream::Config, desired: &stream::Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut check = |field: &str, old: String, new: String| {
        if old != new {
            changes.push(format!("{field}: {old} -> {new}"));
        }
    };
    let mut old_subjects = actual.subjects.clone();
    let mut new_subjects = desired.subjects.clone();
    old_subjects.sort();
    new_subjects.sort();
    check(
        "subjects",
        format!("{old_subjects:?}"),
        format!("{new_subjects:?}"),
    );
    check(
        "retention",
        format!("{:?}", actual.retention),
        format!("{:?}", desired.retention),
    );
    check(
        "max_messages",
        actual.max_messages.to_string(),
        desired.max_messages.to_string(),
    );
    check(
        "max_age",
        format!("{:?}", actual.max_age),
        format!("{:?}", desired.max_age),
    );
    check(
        "storage",
        format!("{:?}", actual.storage),
        format!("{:?}", desired.storage),
    );
    check(
        "duplicate_window",
        format!("{:?}", actual.duplicate_window),
        format!("{:?}", desired.duplicate_window),
    );
    // 0 in `desired`: the replica count is not managed (kept as it is).
    if desired.num_replicas > 0 {
        check(
            "num_replicas",
            actual.num_replicas.max(1).to_string(),
            desired.num_replicas.to_string(),
        );
    }
    changes
}

/// Creates the stream, or updates it when its config differs from `desired`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    desired: &stream::Config,
) -> Result<StreamChange, StreamSetupError> {
    let name = desired.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|source| StreamSetupError::Info {
                    name: name.clone(),
                    source,
                })?;
            let changes = config_diff(&info.config, desired);
            if changes.is_empty() {
                return Ok(StreamChange::Unchanged);
            }
            // Keep what an operator set that we do not manage (placement, limits, the replica
            // count unless --nats-stream-replicas is set...).
            let mut updated = info.config.clone();
            updated.subjects = desired.subjects.clone();
            updated.retention = desired.retention;
            updated.max_messages = desired.max_messages;
            updated.max_age = desired.max_age;
            updated.storage = desired.storage;
            updated.duplicate_window = desired.duplicate_window;
            if desired.num_replicas > 0 {
                updated.num_replicas = desired.num_replicas;
            }
            js.update_stream(&updated)
                .await
                .map_err(|source| StreamSetupError::Conflict {
                    name: name.clone(),
                    changes: changes.join("; "),
                    source,
                })?;
            tracing::warn!(stream = %name, changes = %changes.join("; "), "stream config had drifted: updated");
            Ok(StreamChange::Updated(changes))
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(desired.clone())
                .await
                .map_err(|source| StreamSetupError::Create {
                    name: name.clone(),
                    source,
                })?;
            tracing::info!(stream = %name, "stream created");
            Ok(StreamChange::Created)
        }
        Err(source) => Err(StreamSetupError::Get { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_config_and_its_drift() {
        let names = Names::default();
        let desired = federation_stream_config(&names);
        assert_eq!(desired.name, "AURORA");
        assert_eq!(desired.max_messages, 100_000);
        assert!(config_diff(&desired, &desired).is_empty());
        let mut drifted = desired.clone();
        drifted.max_messages = 10;
        drifted.subjects.pop();
        let diff = config_diff(&drifted, &desired);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff
            .iter()
            .any(|d| d.starts_with("max_messages: 10 -> 100000")));
    }
}
