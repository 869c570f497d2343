//! The uplink's MQTT 5 connection: connect (TCP or TLS), CONNECT/CONNACK, SUBSCRIBE, and
//! packets in and out through rumqttc's MQTT 5 codec.
//!
//! The bridge drives this connection itself instead of through rumqttc's event loop, which
//! writes one queued request (one PUBACK) per turn while a read brings up to ten messages:
//! under load the acks fall behind, the broker's in-flight window (our receive maximum)
//! fills, and messages wait in the broker. Here every PUBACK the writer queued is written
//! in one go ([`Link::write_acks`]): one syscall per batch, not per message.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rumqttc::v5::mqttbytes::v5::{
    Codec, ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectProperties, DisconnectReasonCode, Filter, Login, Packet, PingReq, PubAck, Subscribe,
    Unsubscribe,
};
use rumqttc::v5::mqttbytes::Error as CodecError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A byte stream to the broker, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the uplink connects.
#[derive(Clone)]
pub struct LinkOptions {
    pub host: String,
    pub port: u16,
    /// `Some` for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    /// Clean start off with this expiry: the broker keeps the session while we are away.
    pub session_expiry: u32,
    /// The broker sends at most this many QoS 1 messages ahead of our acks.
    pub receive_max: u16,
    /// The largest packet we take.
    pub max_packet: u32,
    /// How long the TCP, TLS and MQTT handshakes may take.
    pub connect_timeout: Duration,
    /// Where the broker's maximum packet size (from its CONNACK) is kept for the downlink.
    pub broker_limit: BrokerLimit,
}

/// The largest packet the broker takes, as its last CONNACK said (MQTT 5's Maximum Packet
/// Size); shared by the uplink, which learns it, and the downlink, which must not send more
/// (a broker drops the connection of a client that does). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BrokerLimit(Arc<std::sync::atomic::AtomicU32>);

impl BrokerLimit {
    /// What the broker said; `None` before it said anything (or when it sets no limit).
    pub fn get(&self) -> Option<u32> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn set(&self, limit: Option<u32>) {
        self.0
            .store(limit.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("client_id", &self.client_id)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("keep_alive", &self.keep_alive)
            .field("receive_max", &self.receive_max)
            .finish_non_exhaustive()
    }
}

/// Why the connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the broker at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("no answer from the broker within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("MQTT: {0}")]
    Protocol(#[from] CodecError),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker disconnected us: {0:?}")]
    Disconnected(DisconnectReasonCode),
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
}

/// A connected MQTT 5 session.
pub struct Link {
    io: Framed<Box<dyn Io>, Codec>,
    pub session_present: bool,
    /// What the broker said it takes at most (it may lower ours).
    pub broker_max_packet: Option<u32>,
    /// The session expiry the broker granted when it is shorter than the one asked for: the
    /// broker forgets the session (and the messages queued for it) that much sooner.
    pub granted_session_expiry: Option<u32>,
}

impl Link {
    /// Connects, logs in and waits for the CONNACK.
    pub async fn connect(opts: &LinkOptions) -> Result<Self, LinkError> {
        let handshake = async {
            let io = Self::transport(opts).await?;
            let mut io = Framed::new(
                io,
                Codec {
                    max_incoming_size: Some(opts.max_packet),
                    max_outgoing_size: None,
                },
            );
            let properties = ConnectProperties {
                session_expiry_interval: Some(opts.session_expiry),
                receive_maximum: Some(opts.receive_max.max(1)),
                max_packet_size: Some(opts.max_packet),
                ..ConnectProperties::new()
            };
            let connect = Connect {
                keep_alive: u16::try_from(opts.keep_alive.as_secs()).unwrap_or(u16::MAX),
                client_id: opts.client_id.clone(),
                clean_start: false,
                properties: Some(properties),
            };
            let login = opts
                .credentials
                .as_ref()
                .map(|(user, pass)| Login::new(user.as_str(), pass.as_str()));
            io.send(Packet::Connect(connect, None, login)).await?;
            match io.next().await {
                Some(Ok(Packet::ConnAck(ConnAck {
                    code: ConnectReturnCode::Success,
                    session_present,
                    properties,
                }))) => {
                    let broker_max_packet = properties.as_ref().and_then(|p| p.max_packet_size);
                    opts.broker_limit.set(broker_max_packet);
                    let granted_session_expiry = properties
                        .as_ref()
                        .and_then(|p| p.session_expiry_interval)
                        .filter(|granted| *granted < opts.session_expiry);
                    Ok(Self {
                        io,
                        session_present,
                        broker_max_packet,
                        granted_session_expiry,
                    })
                }
                Some(Ok(Packet::ConnAck(ack))) => Err(LinkError::Refused(ack.code)),
                Some(Ok(_)) => Err(LinkError::Unexpected("packet before CONNACK")),
                Some(Err(e)) => Err(e.into()),
                None => Err(LinkError::Closed),
            }
        };
        tokio::time::timeout(opts.connect_timeout, handshake)
            .await
            .map_err(|_| LinkError::Timeout(opts.connect_timeout, "connecting"))?
    }

    async fn transport(opts: &LinkOptions) -> Result<Box<dyn Io>, LinkError> {
        let addr = format!("{}:{}", opts.host, opts.port);
        let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
            .await
            .map_err(|source| LinkError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Acks are small and batched already: send them at once.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &opts.tls else {
            return Ok(Box::new(tcp));
        };
        let tls_error = |reason: String| LinkError::Tls {
            host: opts.host.clone(),
            reason,
        };
        let name = rustls::pki_types::ServerName::try_from(opts.host.clone())
            .map_err(|e| tls_error(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e.to_string()))?;
        Ok(Box::new(stream))
    }

    /// Sends one SUBSCRIBE with every filter (its SUBACK arrives through [`Link::next`]).
    pub async fn subscribe(&mut self, filters: Vec<Filter>) -> Result<(), LinkError> {
        let subscribe = Subscribe {
            pkid: 1,
            filters,
            properties: None,
        };
        self.io.send(Packet::Subscribe(subscribe)).await?;
        Ok(())
    }

    /// The next packet from the broker. Cancel-safe (what was read stays buffered).
    pub async fn next(&mut self) -> Result<Packet, LinkError> {
        match self.io.next().await {
            Some(Ok(Packet::Disconnect(d))) => Err(LinkError::Disconnected(d.reason_code)),
            Some(Ok(packet)) => Ok(packet),
            Some(Err(e)) => Err(e.into()),
            None => Err(LinkError::Closed),
        }
    }

    /// Writes a PUBACK for every packet id, in order, with one flush.
    pub async fn write_acks(&mut self, pkids: &[u16]) -> Result<(), LinkError> {
        if pkids.is_empty() {
            return Ok(());
        }
        let buffer: &mut BytesMut = self.io.write_buffer_mut();
        buffer.reserve(pkids.len() * 4);
        for &pkid in pkids {
            PubAck::new(pkid, None).write(buffer)?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Sends one UNSUBSCRIBE with every filter (its UNSUBACK arrives through [`Link::next`]):
    /// the broker assigns this session nothing new; what it queued for it still comes.
    pub async fn unsubscribe(&mut self, filters: Vec<String>) -> Result<(), LinkError> {
        let unsubscribe = Unsubscribe {
            pkid: 2,
            filters,
            properties: None,
        };
        self.io.send(Packet::Unsubscribe(unsubscribe)).await?;
        Ok(())
    }

    pub async fn ping(&mut self) -> Result<(), LinkError> {
        self.io.send(Packet::PingReq(PingReq)).await?;
        Ok(())
    }

    /// A clean DISCONNECT: the broker keeps the session (its expiry was set at CONNECT).
    pub async fn disconnect(mut self) -> Result<(), LinkError> {
        self.io
            .send(Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::NormalDisconnection,
            )))
            .await?;
        let _ = self.io.close().await;
        Ok(())
    }

    /// A DISCONNECT that ends the session too (MQTT 5: session expiry 0 at disconnect): the
    /// broker deletes it and everything it still held for it. Only once nothing is left in it.
    pub async fn disconnect_ending_session(mut self) -> Result<(), LinkError> {
        let properties = DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        };
        self.io
            .send(Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                properties: Some(properties),
            }))
            .await?;
        let _ = self.io.close().await;
        Ok(())
    }
}
