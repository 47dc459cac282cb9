//! The embedded MQTT broker (rumqttd) and the gateway's in-process link to it.
//!
//! The router and listeners are started here rather than through `rumqttd::Broker` so
//! that each listener's protocol codec can be wrapped: rumqttd refuses a CONNECT with
//! keepalive 0, which MQTT allows ("no keepalive") and some devices send. The wrapper
//! turns keepalive 0 into the largest keepalive MQTT can express (65535 s), which the
//! broker enforces as an idle limit of about 27 hours.

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::BytesMut;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{self, Packet, Protocol, v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;

/// Client id of the gateway's own in-process link.
const INGEST_CLIENT_ID: &str = "fieldgate-ingest";

/// Opens an in-process link to the router under a client id.
type LinkFactory = Box<dyn Fn(&str) -> anyhow::Result<(LinkTx, LinkRx)> + Send + Sync>;

/// The running broker's listener tasks, and a way to open more in-process links.
pub struct Broker {
    listeners: Vec<JoinHandle<()>>,
    links: LinkFactory,
}

impl Broker {
    /// A further in-process link, e.g. to publish into the broker.
    pub fn link(&self, client_id: &str) -> anyhow::Result<(LinkTx, LinkRx)> {
        (self.links)(client_id)
    }

    /// Stops accepting connections and drops the existing ones.
    pub fn stop_listeners(&mut self) {
        for l in self.listeners.drain(..) {
            l.abort();
        }
    }
}

/// A protocol codec that accepts CONNECT packets with keepalive 0.
#[derive(Clone)]
struct AcceptZeroKeepAlive<P>(P);

impl<P: Protocol> Protocol for AcceptZeroKeepAlive<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        let mut packet = self.0.read_mut(stream, max_size)?;
        if let Packet::Connect(connect, ..) = &mut packet
            && connect.keep_alive == 0
        {
            connect.keep_alive = u16::MAX;
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        self.0.write(packet, write)
    }
}

/// Starts the router and the configured listeners, and returns the gateway's
/// in-process link. Must run inside a Tokio runtime.
pub fn start(cfg: &BrokerConfig) -> anyhow::Result<(Broker, LinkTx, LinkRx)> {
    // Fail early and clearly when a port is taken; rumqttd would only log it.
    for addr in [cfg.listen, cfg.listen_v5].into_iter().flatten() {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("broker cannot listen on {addr}"))?;
    }
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.segment_size,
            max_segment_count: cfg.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();
    let settings = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: u16::try_from(cfg.connect_timeout.as_millis())
                .unwrap_or(u16::MAX),
            max_payload_size: cfg.max_payload_size,
            max_inflight_count: cfg.max_inflight,
            auth: None::<HashMap<String, String>>,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut listeners = Vec::new();
    if let Some(addr) = cfg.listen {
        let mut server = Server::new(
            settings("mqtt-v4", addr),
            router_tx.clone(),
            AcceptZeroKeepAlive(V4),
        );
        listeners.push(tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(%addr, error = %e, "MQTT 3.1.1 listener stopped");
            }
        }));
        tracing::info!(%addr, "MQTT 3.1.1 listener started");
    }
    if let Some(addr) = cfg.listen_v5 {
        let mut server = Server::new(
            settings("mqtt-v5", addr),
            router_tx.clone(),
            AcceptZeroKeepAlive(V5),
        );
        listeners.push(tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(%addr, error = %e, "MQTT 5 listener stopped");
            }
        }));
        tracing::info!(%addr, "MQTT 5 listener started");
    }
    let links: LinkFactory = Box::new(move |client_id: &str| {
        let (tx, rx, _ack) = LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(true)
            .build()
            .with_context(|| {
                format!("cannot open the in-process link `{client_id}` to the broker")
            })?;
        Ok((tx, rx))
    });
    let (link_tx, link_rx) = links(INGEST_CLIENT_ID)?;
    Ok((Broker { listeners, links }, link_tx, link_rx))
}
