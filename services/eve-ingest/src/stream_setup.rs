//! The Suricata stream and the JetStream consumers a site declares, set up at start and kept
//! as declared ([`aurora_core::jetstream`]): a drift is logged, counted
//! (`aurora_jetstream_drift_total`), shown in `/readyz` warnings, and the declared value
//! applied; what is not declared (a limit left at `keep`, a consumer not named) is left alone.
//!
//! By default the design's two consumers (docs/contract.md#jetstream): `flow`, a durable pull
//! consumer of `suricata.flow` (deliver all, explicit ack, 30 s ack wait, 20,000 unacknowledged
//! at most, no delivery limit), and `stats`, a durable push consumer of `suricata.stats` to
//! `stats.suricata` (deliver new, no acks). More with `--consumer` specs ([`parse_spec`]).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use aurora_core::jetstream::{
    ensure_consumer, ensure_stream, parse_count_limit, suricata_stream_config, ConsumerChange,
    DeclaredConsumer, DeclaredStream, Delivery, Limit, StreamChange,
};
use aurora_core::ops::Readiness;
use aurora_core::Names;

use crate::error::IngestError;
use crate::Settings;

/// The design's consumers, by the name `--consumers` takes.
pub const DESIGN_CONSUMERS: [&str; 2] = ["flow", "stats"];

/// One of the design's consumers in `names`' namespace (`None`: no such consumer).
pub fn design_consumer(names: &Names, name: &str) -> Option<DeclaredConsumer> {
    match name {
        "flow" => Some(DeclaredConsumer {
            name: "flow".into(),
            filter_subject: names.suricata_subject("flow"),
            delivery: Delivery::Pull,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Some(Duration::from_secs(30)),
            max_ack_pending: Limit::At(20_000),
            max_deliver: Limit::Unlimited,
        }),
        "stats" => Some(DeclaredConsumer {
            name: "stats".into(),
            filter_subject: names.suricata_subject("stats"),
            delivery: Delivery::Push {
                subject: names.suricata_delivery_subject("stats"),
            },
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            ack_wait: None,
            max_ack_pending: Limit::Keep,
            max_deliver: Limit::Keep,
        }),
        _ => None,
    }
}

/// Both design consumers (the default of `--consumers`).
pub fn design_consumers(names: &Names) -> Vec<DeclaredConsumer> {
    DESIGN_CONSUMERS
        .iter()
        .filter_map(|n| design_consumer(names, n))
        .collect()
}

/// The consumers of `--consumers` (`flow`, `stats`, or `none`) and `--consumer` specs; a name
/// declared twice is an error.
pub fn declared_consumers(
    names: &Names,
    design: &[String],
    specs: &[String],
) -> Result<Vec<DeclaredConsumer>, IngestError> {
    let config = |m: String| IngestError::Config(m);
    let mut out = Vec::new();
    if !(design.len() == 1 && design[0] == "none") {
        for name in design {
            out.push(design_consumer(names, name).ok_or_else(|| {
                config(format!(
                    "--consumers: unknown consumer {name:?} (flow, stats, or none alone)"
                ))
            })?);
        }
    }
    for spec in specs.iter().filter(|s| !s.trim().is_empty()) {
        out.push(parse_spec(names, spec).map_err(|e| config(format!("--consumer {spec:?}: {e}")))?);
    }
    for (i, c) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.name == c.name) {
            return Err(config(format!(
                "consumer {} is declared twice (leave it out of --consumers to declare it with --consumer)",
                c.name
            )));
        }
    }
    Ok(out)
}

/// A consumer spec: `name=N[,filter=EVENT_TYPE][,push=SUBJECT][,deliver=all|new|last]
/// [,ack=explicit|none|all][,ack-wait=30s][,max-ack-pending=N][,max-deliver=N]`. Without
/// `filter` it reads every event type, without `push` it is a pull consumer; `deliver` is `all`
/// and `ack` `explicit` unless given; the other settings are declared only when given.
pub fn parse_spec(names: &Names, spec: &str) -> Result<DeclaredConsumer, String> {
    let mut c = DeclaredConsumer {
        name: String::new(),
        filter_subject: String::new(),
        delivery: Delivery::Pull,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: None,
        max_ack_pending: Limit::Keep,
        max_deliver: Limit::Keep,
    };
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        match key {
            "name" => c.name = value.to_string(),
            "filter" => c.filter_subject = names.suricata_subject(value),
            "push" => {
                c.delivery = Delivery::Push {
                    subject: value.to_string(),
                }
            }
            "deliver" => {
                c.deliver_policy = match value {
                    "all" => consumer::DeliverPolicy::All,
                    "new" => consumer::DeliverPolicy::New,
                    "last" => consumer::DeliverPolicy::Last,
                    _ => return Err(format!("deliver={value}: all, new or last")),
                }
            }
            "ack" => {
                c.ack_policy = match value {
                    "explicit" => consumer::AckPolicy::Explicit,
                    "none" => consumer::AckPolicy::None,
                    "all" => consumer::AckPolicy::All,
                    _ => return Err(format!("ack={value}: explicit, none or all")),
                }
            }
            "ack-wait" => c.ack_wait = Some(aurora_core::config::parse_duration(value)?),
            "max-ack-pending" => c.max_ack_pending = parse_count_limit(value)?,
            "max-deliver" => c.max_deliver = parse_count_limit(value)?,
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    let valid_name = !c.name.is_empty()
        && c.name.len() <= 64
        && c.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err("name= is required: 1 to 64 of A-Z a-z 0-9 _ -".into());
    }
    if let Delivery::Push { subject } = &c.delivery {
        let prefix = format!("{}.", names.suricata_subject_prefix());
        if subject.is_empty() || subject.starts_with(&prefix) || subject.contains(['*', '>', ' ']) {
            return Err(format!(
                "push={subject}: a plain subject outside the stream's {prefix}*"
            ));
        }
    }
    Ok(c)
}

/// Creates or keeps the Suricata stream and the declared consumers; `/readyz` warns of a drift
/// found (`jetstream stream <name>`, `jetstream consumer <stream>/<name>`).
pub async fn setup(
    js: &jetstream::Context,
    settings: &Settings,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let declared = DeclaredStream::new(
        settings
            .nats
            .stream(suricata_stream_config(&settings.names)),
        settings.stream_limits,
    );
    let stream = declared.config.name.clone();
    let change = ensure_stream(js, &declared)
        .await
        .map_err(IngestError::from)?;
    if change == StreamChange::Created {
        tracing::info!(stream = %stream, "JetStream stream created");
    }
    readiness.warn(
        &format!("jetstream stream {stream}"),
        change.warning(&stream),
    );
    for c in &settings.consumers {
        let change = ensure_consumer(js, &stream, c).await?;
        if change == ConsumerChange::Created {
            tracing::info!(stream = %stream, consumer = %c.name, "JetStream consumer created");
        }
        readiness.warn(
            &format!("jetstream consumer {stream}/{}", c.name),
            change.warning(&stream, &c.name),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_design_consumers_in_each_namespace() {
        let names = Names::default();
        let [flow, stats] = <[DeclaredConsumer; 2]>::try_from(design_consumers(&names)).unwrap();
        assert_eq!(flow.filter_subject, "suricata.flow");
        assert_eq!(flow.delivery, Delivery::Pull);
        assert_eq!(flow.max_ack_pending, Limit::At(20_000));
        assert_eq!(flow.ack_wait, Some(Duration::from_secs(30)));
        assert_eq!(
            stats.delivery,
            Delivery::Push {
                subject: "stats.suricata".into()
            }
        );
        let t1 = Names::new("t1").unwrap();
        let stats = design_consumer(&t1, "stats").unwrap();
        assert_eq!(stats.filter_subject, "t1.suricata.stats");
        assert_eq!(
            stats.delivery,
            Delivery::Push {
                subject: "t1.stats.suricata".into()
            }
        );
    }

    #[test]
    fn specs_and_the_design_list() {
        let names = Names::default();
        let c = parse_spec(
            &names,
            "name=alerts,filter=alert,ack-wait=1m,max-ack-pending=100,max-deliver=5",
        )
        .unwrap();
        assert_eq!(c.filter_subject, "suricata.alert");
        assert_eq!(c.ack_wait, Some(Duration::from_secs(60)));
        assert_eq!(
            (c.max_ack_pending, c.max_deliver),
            (Limit::At(100), Limit::At(5))
        );
        let c = parse_spec(
            &names,
            "name=dns-feed,filter=dns,push=feeds.dns,deliver=new,ack=none",
        )
        .unwrap();
        assert_eq!(
            c.delivery,
            Delivery::Push {
                subject: "feeds.dns".into()
            }
        );
        assert!(parse_spec(&names, "filter=dns").is_err(), "no name");
        assert!(
            parse_spec(&names, "name=x,push=suricata.dns").is_err(),
            "a loop"
        );
        assert!(parse_spec(&names, "name=x,colour=red").is_err());
        assert!(parse_spec(&names, "name=a.b").is_err());
        let all = |design: &[&str], specs: &[&str]| {
            declared_consumers(
                &names,
                &design.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(all(&["flow", "stats"], &[]).unwrap().len(), 2);
        assert!(all(&["none"], &[]).unwrap().is_empty());
        assert_eq!(all(&["none"], &["name=x"]).unwrap().len(), 1);
        assert!(all(&["flow", "none"], &[]).is_err());
        assert!(all(&["flows"], &[]).is_err());
        assert!(all(&["flow"], &["name=flow,filter=tls"]).is_err(), "twice");
        assert_eq!(all(&["stats"], &["name=flow,filter=tls"]).unwrap().len(), 2);
    }
}
