//! What the MQTT broker drops by its queue limits, in the loss ledger
//! (`aurora_core::ledger::record_broker_dropped`). Mosquitto counts the messages it drops
//! because a client's queue is full (`max_queued_messages`, `max_queued_bytes`): a bridge
//! replica that is slow, or gone while its persistent session keeps queuing, loses device
//! messages there, before any of them reaches the bridge. The count is published on
//! [`TOPIC`] (each `sys_interval` when it changed, and to every new subscriber); the downlink
//! connection subscribes to it and [`record`] takes each count to the ledger, once across
//! replicas. A broker that does not publish it (another broker, or an ACL that does not let
//! the bridge read `$SYS/broker/#`) leaves this part of the ledger empty, and the bridge logs
//! so once.

use aurora_core::bus::Conn;
use aurora_core::ledger;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Mosquitto's count of dropped messages.
pub const TOPIC: &str = "$SYS/broker/publish/messages/dropped";

/// The count in a publish of [`TOPIC`] (a decimal number, spaces allowed around it).
pub fn parse(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

/// Takes each count the broker published (`counts`, the latest only) to the ledger under
/// `base` (`Names::ledger_mqtt`) for `broker`, until `shutdown`. A count that cannot be
/// recorded (Redis away) is covered by the next one: the ledger keeps the highest count it
/// recorded, not a sum of reports.
pub async fn record(
    mut counts: watch::Receiver<Option<u64>>,
    conn: Conn,
    base: String,
    broker: String,
    shutdown: CancellationToken,
) {
    // The series exists from the start, at 0: the first drops show as an increase, and the
    // dashboard and the alert find it before any.
    crate::telemetry::broker_dropped(0);
    let mut seen_before = None;
    loop {
        tokio::select! {
            changed = counts.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let Some(total) = *counts.borrow_and_update() else {
            continue;
        };
        match ledger::record_broker_dropped(&conn, &base, &broker, total, seen_before).await {
            Ok(new) => {
                seen_before = Some(total);
                if new > 0 {
                    crate::telemetry::broker_dropped(new);
                    tracing::warn!(broker = %broker, dropped = new, total, "the MQTT broker dropped messages by its queue limits (counted in the loss ledger)");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, broker = %broker, total, "cannot record the broker's drop count in the ledger; the next count covers it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_decimal_numbers() {
        assert_eq!(parse(b"15"), Some(15));
        assert_eq!(parse(b" 7\n"), Some(7));
        assert_eq!(parse(b"-1"), None);
        assert_eq!(parse(b"many"), None);
        assert_eq!(parse(&[0xff, 0xfe]), None);
    }
}
