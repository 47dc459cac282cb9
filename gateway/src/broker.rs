//! The embedded MQTT broker (rumqttd) and the gateway's in-process link to it.
//!
//! The router and listeners are started here rather than through `rumqttd::Broker` so
//! that each listener's protocol codec can be wrapped: rumqttd refuses a CONNECT with
//! keepalive 0, which MQTT allows ("no keepalive") and some devices send. The wrapper
//! turns keepalive 0 into the largest keepalive MQTT can express (65535 s), which the
//! broker enforces as an idle limit of about 27 hours. It also counts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use anyhow::Context;
use bytes::BytesMut;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{self, Packet, Protocol, v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;

/// Client id of the gateway's own in-process subscriber.
pub const INGEST_CLIENT_ID: &str = "fieldgate-ingest";

/// Opens an in-process link to the router under a client id.
type LinkFactory = Box<dyn Fn(&str) -> anyhow::Result<(LinkTx, LinkRx)> + Send + Sync>;

/// The running broker: its router, the listener tasks once started, and a way to open
/// in-process links.
pub struct Broker {
    pub counters: Arc<BrokerCounters>,
    listeners: Vec<JoinHandle<()>>,
    links: LinkFactory,
    /// Starts the listeners; taken by [`Broker::listen`].
    start_listeners: Option<Box<dyn FnOnce() -> Vec<JoinHandle<()>> + Send>>,
}

impl Broker {
    /// An in-process link, e.g. the ingest's subscription.
    pub fn link(&self, client_id: &str) -> anyhow::Result<(LinkTx, LinkRx)> {
        (self.links)(client_id)
    }

    /// A link that only publishes: what the broker sends back to it is taken and
    /// dropped by a task of its own, so the router never waits on it.
    pub fn publisher(&self, client_id: &str) -> anyhow::Result<LinkTx> {
        let (tx, mut rx) = self.link(client_id)?;
        tokio::spawn(async move {
            loop {
                match rx.next().await {
                    Ok(Some(rumqttd::Notification::Unschedule)) => {
                        if rx.wake().await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(tx)
    }

    /// Starts the configured listeners: devices can connect from now on. Once.
    pub fn listen(&mut self) {
        if let Some(start) = self.start_listeners.take() {
            self.listeners = start();
        }
    }

    /// Stops accepting connections and drops the existing ones.
    pub fn stop_listeners(&mut self) {
        for l in self.listeners.drain(..) {
            l.abort();
        }
    }
}

/// Publishes through an in-process link at QoS 0 without waiting. When the router's
/// queue is full the message stays in the link and goes with its next wake-up, so only a
/// router that is gone is an error.
pub fn publish(link: &mut LinkTx, topic: String, payload: bytes::Bytes) -> Result<(), String> {
    match link.try_publish(topic, payload) {
        Ok(_) | Err(LinkError::TrySend(flume::TrySendError::Full(_))) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Device connections, counted by the listeners' codecs.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Connections open now (past their CONNECT).
    pub connections: AtomicI64,
    /// Connections accepted (CONNECT received) since start.
    pub accepted: AtomicU64,
}

/// A listener's protocol codec, one copy per connection: accepts CONNECT packets with
/// keepalive 0, and counts the connection from its CONNECT until the copy is dropped
/// with the connection.
struct Codec<P> {
    inner: P,
    counters: Arc<BrokerCounters>,
    counted: bool,
}

impl<P> Codec<P> {
    fn new(inner: P, counters: &Arc<BrokerCounters>) -> Self {
        Codec {
            inner,
            counters: counters.clone(),
            counted: false,
        }
    }
}

impl<P: Clone> Clone for Codec<P> {
    /// A fresh copy for a new connection: not counted yet.
    fn clone(&self) -> Self {
        Codec {
            inner: self.inner.clone(),
            counters: self.counters.clone(),
            counted: false,
        }
    }
}

impl<P> Drop for Codec<P> {
    fn drop(&mut self) {
        if self.counted {
            self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<P: Protocol + Clone> Protocol for Codec<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        let mut packet = self.inner.read_mut(stream, max_size)?;
        if let Packet::Connect(connect, ..) = &mut packet {
            if connect.keep_alive == 0 {
                connect.keep_alive = u16::MAX;
            }
            if !self.counted {
                self.counted = true;
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        self.inner.write(packet, write)
    }
}

/// Starts the router (no listeners yet; see [`Broker::listen`]). Fails early and clearly when a
/// listener's port is taken. Must run inside a Tokio runtime.
pub fn start(cfg: &BrokerConfig) -> anyhow::Result<Broker> {
    // rumqttd would only log a port that is taken.
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
    let for_links = router_tx.clone();
    let links: LinkFactory = Box::new(move |client_id: &str| {
        let (tx, rx, _ack) = LinkBuilder::new(client_id, for_links.clone())
            .clean_session(true)
            .build()
            .with_context(|| {
                format!("cannot open the in-process link `{client_id}` to the broker")
            })?;
        Ok((tx, rx))
    });
    let cfg = cfg.clone();
    let counters = Arc::new(BrokerCounters::default());
    let for_codecs = counters.clone();
    let start_listeners = Box::new(move || {
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
                Codec::new(V4, &for_codecs),
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
                Codec::new(V5, &for_codecs),
            );
            listeners.push(tokio::spawn(async move {
                if let Err(e) = server.start(LinkType::Remote).await {
                    tracing::error!(%addr, error = %e, "MQTT 5 listener stopped");
                }
            }));
            tracing::info!(%addr, "MQTT 5 listener started");
        }
        listeners
    });
    Ok(Broker {
        counters,
        listeners: Vec::new(),
        links,
        start_listeners: Some(start_listeners),
    })
}
