//! Replicas that come and go: a service binary started under an instance id the test
//! chooses (a pod's name), the members of a service's replica registry in Redis, and whether
//! the broker still holds an MQTT session for a client id.

use std::path::Path;
use std::time::Duration;

use aurora_core::bus::Conn;
use aurora_core::Names;

use crate::free_port;
use crate::process::{NotReady, Service, Site, Svc};

/// Spawns `svc` from `program` as the replica `instance` of `site` (its flags as
/// [`Site::env`] gives them), then waits until its `/readyz` is 200 (trying other ports when
/// one found free was taken meanwhile).
pub async fn start_as(
    site: &Site,
    svc: Svc,
    program: &Path,
    instance: &str,
    flags: &[(&str, &str)],
) -> Service {
    for _ in 0..3 {
        let (ops, http) = (free_port(), free_port());
        let env = site.env(svc, instance, ops, http, flags);
        let mut service = Service::spawn(svc, program.to_path_buf(), instance, env, ops, http);
        match service.try_ready().await {
            Ok(()) => return service,
            Err(NotReady::Exited(log)) if log.contains("in use") => {
                eprintln!("{instance}: port taken, starting again");
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{instance}: no free ports after 3 attempts");
}

/// The members of `service`'s replica registry (`aurora_core::replicas`), sorted.
pub async fn registry_members(conn: &Conn, names: &Names, service: &str) -> Vec<String> {
    let mut conn = conn.clone();
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(names.state_key(service, "replicas"))
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("SMEMBERS of {service}'s replicas: {e}"));
    members.sort();
    members
}

/// Whether the broker at `host:port` holds a session for `client_id`: an MQTT 5 connection
/// with that client id and clean start off, and the CONNACK's session-present flag. The
/// connection asks for session expiry 0, so whatever session it finds or makes ends when it
/// disconnects (the check cleans up after itself).
pub async fn mqtt_session_present(host: &str, port: u16, client_id: &str) -> bool {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::Outgoing;
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(0))
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let mut present = None;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    present = Some(ack.session_present);
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) if present.is_some() => {
                    // Closed after the DISCONNECT went out.
                    let _ = e;
                    return;
                }
                Err(e) => panic!("MQTT connection as {client_id} to {host}:{port}: {e}"),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "no CONNACK for {client_id} from {host}:{port} within 10 s"
    );
    present.unwrap_or_else(|| panic!("no CONNACK for {client_id}"))
}
