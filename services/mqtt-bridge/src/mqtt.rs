//! How the bridge connects to the broker: URL, credentials, TLS, and the options both of its
//! connections (uplink, downlink) share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;
use crate::link::LinkOptions;

/// How long the broker keeps the uplink's session (and queues for it) while the bridge is
/// away: 14 days, as `persistent_client_expiration` in deploy/mosquitto.
pub const SESSION_EXPIRY_SECS: u32 = 14 * 24 * 3600;

/// The shortest keep-alive rumqttc's MQTT 5 client takes (it panics below).
const MIN_CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Where the broker is and how to log in to it.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA certificate (PEM) to verify the broker; without it `mqtts://` uses the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: Duration,
}

impl MqttSettings {
    /// Plain MQTT to `host:port` without credentials (tests, local runs).
    pub fn plain(host: &str, port: u16) -> Self {
        Self {
            url: format!("mqtt://{host}:{port}"),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: Duration::from_secs(30),
        }
    }

    /// MQTT 5 options for the downlink (rumqttc's client); `max_packet` bounds what it
    /// accepts from the broker. rumqttc's MQTT 5 client refuses a keep-alive under 5 s, so a
    /// shorter `--mqtt-keep-alive` gives this connection 5 s.
    pub fn options(
        &self,
        client_id: &str,
        clean_start: bool,
        max_packet: usize,
    ) -> Result<MqttOptions, ConfigError> {
        let endpoint = Endpoint::parse(&self.url)?;
        let mut opts = MqttOptions::new(client_id, endpoint.host, endpoint.port);
        opts.set_clean_start(clean_start)
            .set_keep_alive(self.keep_alive.max(MIN_CLIENT_KEEP_ALIVE))
            .set_max_packet_size(Some(u32::try_from(max_packet).unwrap_or(u32::MAX)));
        if let Some((user, pass)) = self.credentials()? {
            opts.set_credentials(user, pass);
        }
        if let Some(transport) = self.transport(endpoint.tls)? {
            opts.set_transport(transport);
        }
        Ok(opts)
    }

    /// How the uplink connects (MQTT 5, driven by [`crate::link`]): a persistent session
    /// (clean start off, session expiry `SESSION_EXPIRY_SECS`) and a receive maximum, so the
    /// broker never has more than `receive_max` messages unacknowledged towards the bridge.
    pub fn link_options(
        &self,
        client_id: &str,
        max_packet: u32,
        receive_max: u16,
    ) -> Result<LinkOptions, ConfigError> {
        let endpoint = Endpoint::parse(&self.url)?;
        let tls = if endpoint.tls {
            Some(Arc::new(self.tls_config()?))
        } else {
            // Refuses TLS files with a plain URL.
            self.transport(false)?;
            None
        };
        Ok(LinkOptions {
            host: endpoint.host,
            port: endpoint.port,
            tls,
            client_id: client_id.to_string(),
            credentials: self.credentials()?,
            keep_alive: self.keep_alive,
            session_expiry: SESSION_EXPIRY_SECS,
            receive_max: receive_max.max(1),
            max_packet,
            connect_timeout: Duration::from_secs(10),
            broker_limit: crate::link::BrokerLimit::default(),
        })
    }

    /// `host:port` of the broker (the URL as given when it does not parse): its name in the
    /// loss ledger.
    pub fn broker_name(&self) -> String {
        Endpoint::parse(&self.url)
            .map(|e| format!("{}:{}", e.host, e.port))
            .unwrap_or_else(|_| self.url.clone())
    }

    /// User name and password, when configured; a password without a user is an error.
    fn credentials(&self) -> Result<Option<(String, String)>, ConfigError> {
        match (&self.username, &self.password) {
            (Some(user), pass) => Ok(Some((user.clone(), pass.clone().unwrap_or_default()))),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "an MQTT password needs a user name (--mqtt-username)".into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// The TLS transport for an `mqtts://` URL; TLS files with a plain URL are an error.
    fn transport(&self, tls: bool) -> Result<Option<Transport>, ConfigError> {
        if tls {
            Ok(Some(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(self.tls_config()?),
            ))))
        } else if self.ca_file.is_some() || self.client_cert.is_some() {
            Err(ConfigError::Invalid(
                "TLS files given but the MQTT URL is not mqtts://".into(),
            ))
        } else {
            Ok(None)
        }
    }

    /// A rustls configuration with the ring provider chosen here, so nothing depends on a
    /// process-wide default provider being installed.
    fn tls_config(&self) -> Result<rustls::ClientConfig, ConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path, "CA certificate")? {
                    roots.add(cert)?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigError::TlsFile {
                    what: "client key",
                    path: key.display().to_string(),
                    reason: e.to_string(),
                })?;
                Ok(builder.with_client_auth_cert(chain, key)?)
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(ConfigError::Invalid(
                "mutual TLS needs both --mqtt-client-cert and --mqtt-client-key".into(),
            )),
        }
    }
}

fn read_certs(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file_error = |reason: String| ConfigError::TlsFile {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::TlsEmpty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The parts of an MQTT URL the bridge uses.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

impl Endpoint {
    fn parse(raw: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Url {
            url: aurora_core::bus::redacted_url(raw),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            _ => return Err(invalid("the scheme must be mqtt:// or mqtts://")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "put credentials in --mqtt-username / --mqtt-password, not in the URL",
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Endpoint::parse("mqtt://127.0.0.1:1883").ok(),
            Some(Endpoint {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            })
        );
        assert_eq!(
            Endpoint::parse("mqtts://broker.example").ok(),
            Some(Endpoint {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            })
        );
        for bad in ["http://x", "mqtt://", "mqtt://u:p@host", "nonsense"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_short_keep_alive_gives_the_downlink_the_clients_minimum() {
        let mut s = MqttSettings::plain("127.0.0.1", 1883);
        s.keep_alive = Duration::from_secs(1);
        let opts = s.options("c", true, 1024).expect("options");
        assert_eq!(opts.keep_alive(), MIN_CLIENT_KEEP_ALIVE);
        s.keep_alive = Duration::ZERO;
        assert!(s.options("c", true, 1024).is_ok());
    }

    #[test]
    fn tls_is_wired_for_mqtts() {
        let mut s = MqttSettings::plain("127.0.0.1", 8883);
        s.url = "mqtts://127.0.0.1:8883".into();
        let opts = s.options("c", false, 1024).expect("tls options");
        assert!(matches!(opts.transport(), Transport::Tls(_)));
        s.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            s.options("c", false, 1024),
            Err(ConfigError::TlsFile { .. })
        ));
        let link = s.link_options("c", 1024, 10);
        assert!(matches!(link, Err(ConfigError::TlsFile { .. })));
        s.ca_file = None;
        let link = s.link_options("c", 1024, 10).expect("tls link options");
        assert!(link.tls.is_some());
        assert_eq!((link.host.as_str(), link.port), ("127.0.0.1", 8883));
        let mut plain = MqttSettings::plain("127.0.0.1", 1883);
        assert!(plain
            .link_options("c", 1024, 10)
            .expect("plain")
            .tls
            .is_none());
        plain.password = Some("pw".into());
        assert!(plain.options("c", false, 1024).is_err());
        assert!(plain.link_options("c", 1024, 10).is_err());
        plain.password = None;
        plain.ca_file = Some("/tmp/ca.pem".into());
        assert!(
            plain.link_options("c", 1024, 10).is_err(),
            "TLS files with mqtt://"
        );
    }
}
