//! The embedded MQTT broker (rumqttd) and the gateway's in-process links to it.
//!
//! The router and listeners are started here rather than through `rumqttd::Broker` so
//! that each listener's protocol codec can be wrapped ([`codec`]): it accepts keepalive 0,
//! counts connections, and applies [`backpressure`], which holds devices back while the
//! rules are behind instead of letting the router's log drop what it acknowledged.
//!
//! The listeners run on a thread of their own (a current-thread Tokio runtime, as
//! rumqttd runs them itself): backpressure pauses that thread, and with it every device
//! socket, without holding up the gateway's runtime where ingest catches up.

mod backpressure;
mod codec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Protocol, v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::oneshot;

pub use backpressure::Backpressure;
use codec::Codec;
pub use codec::Violation;

use crate::config::BrokerConfig;
use crate::logging::RateLimited;

/// Client id of the gateway's own in-process subscriber.
pub const INGEST_CLIENT_ID: &str = "fieldgate-ingest";

/// Opens an in-process link to the router under a client id.
type LinkFactory = Box<dyn Fn(&str) -> anyhow::Result<(LinkTx, LinkRx)> + Send + Sync>;

/// The running broker: its router, the listeners' thread once started, and a way to
/// open in-process links.
pub struct Broker {
    pub counters: Arc<BrokerCounters>,
    /// Whether the router and the listeners still run.
    pub health: Arc<BrokerHealth>,
    /// The lag between the router's log and ingest; ingest reports what it takes.
    pub backpressure: Arc<Backpressure>,
    listeners: Option<Listeners>,
    links: LinkFactory,
    /// Starts the listeners; taken by [`Broker::listen`].
    start_listeners: Option<Box<dyn FnOnce() -> anyhow::Result<Listeners> + Send>>,
}

/// The listeners' thread and how to stop it.
struct Listeners {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Broker {
    /// An in-process link, e.g. the ingest's subscription.
    pub fn link(&self, client_id: &str) -> anyhow::Result<(LinkTx, LinkRx)> {
        (self.links)(client_id)
    }

    /// A link that only publishes: what the broker sends back to it is taken and
    /// dropped by a task of its own, so the router never waits on it.
    pub fn publisher(&self, client_id: &str) -> anyhow::Result<Publisher> {
        let (link, mut rx) = self.link(client_id)?;
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
        Ok(Publisher {
            link,
            backpressure: self.backpressure.clone(),
        })
    }

    /// Starts the configured listeners: devices can connect from now on. Once.
    pub fn listen(&mut self) -> anyhow::Result<()> {
        if let Some(start) = self.start_listeners.take() {
            self.listeners = Some(start()?);
        }
        Ok(())
    }

    /// Stops accepting connections and drops the existing ones.
    pub fn stop_listeners(&mut self) {
        self.backpressure.stop();
        if let Some(l) = self.listeners.take() {
            let _ = l.stop.send(());
            if l.thread.join().is_err() {
                tracing::error!("the broker listeners' thread panicked");
            }
        }
    }
}

/// Publishes into the broker from inside the gateway (republish sinks, Modbus rows).
pub struct Publisher {
    link: LinkTx,
    backpressure: Arc<Backpressure>,
}

impl Publisher {
    /// Publishes at QoS 0 without waiting. When the router's queue is full the message
    /// stays in the link and goes with its next wake-up, so only a router that is gone
    /// is an error.
    pub fn publish(&mut self, topic: String, payload: bytes::Bytes) -> Result<(), String> {
        let size = Backpressure::size(topic.len(), payload.len());
        match self.link.try_publish(topic, payload) {
            Ok(_) | Err(LinkError::TrySend(flume::TrySendError::Full(_))) => {
                self.backpressure.accepted(size);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether the broker's parts still run: the router thread and every listener.
pub struct BrokerHealth {
    router_alive: Box<dyn Fn() -> bool + Send + Sync>,
    /// Listeners that stopped, with why.
    failed: Mutex<Vec<String>>,
    /// Set when the listeners' thread ended (stopped, or panicked).
    listeners_ended: AtomicBool,
}

impl std::fmt::Debug for BrokerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHealth")
            .field("problem", &self.problem())
            .finish()
    }
}

impl BrokerHealth {
    /// Why the broker cannot take messages from devices, if it cannot (asked while it
    /// runs: before its listeners start and after they stop, readiness is off anyway).
    pub fn problem(&self) -> Option<String> {
        if !(self.router_alive)() {
            return Some("the embedded broker's router stopped".into());
        }
        if let Ok(failed) = self.failed.lock()
            && let Some(f) = failed.first()
        {
            return Some(f.clone());
        }
        if self.listeners_ended.load(Ordering::Relaxed) {
            return Some("the embedded broker's listeners stopped".into());
        }
        None
    }

    fn listener_failed(&self, why: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.push(why);
        }
    }
}

/// Sets a flag when dropped: at the end of a thread, however it ends.
struct SetOnDrop(Arc<BrokerHealth>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.listeners_ended.store(true, Ordering::Relaxed);
    }
}

/// Device connections, counted by the listeners' codecs.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Connections open now (past their CONNECT).
    pub connections: AtomicI64,
    /// Connections accepted (CONNECT received) since start.
    pub accepted: AtomicU64,
    /// Connections closed for a protocol violation, by [`Violation::index`].
    pub violations: [AtomicU64; Violation::ALL.len()],
    /// Violations, logged at a bounded rate.
    violation_log: Mutex<Option<RateLimited>>,
}

/// Least time between two log lines about protocol violations.
const VIOLATION_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl BrokerCounters {
    /// Counts a violation; logs it unless one was logged within the last few seconds.
    fn violation(&self, v: Violation, what: &str) {
        self.violations[v.index()].fetch_add(1, Ordering::Relaxed);
        let Ok(mut log) = self.violation_log.lock() else {
            return;
        };
        let log = log.get_or_insert_with(|| RateLimited::new(VIOLATION_LOG_EVERY));
        if let Some(held) = log.allow(1) {
            tracing::warn!(
                reason = v.as_str(),
                detail = %what,
                not_logged_before = held,
                "broker closed a connection for a protocol violation"
            );
        }
    }
}

/// Starts the router (no listeners yet; see [`Broker::listen`]). Fails early and clearly when a
/// listener's port is taken. Must run inside a Tokio runtime.
pub fn start(cfg: &BrokerConfig) -> anyhow::Result<Broker> {
    // rumqttd would only log a port that is taken.
    for (key, addr) in [("listen", cfg.listen), ("listen_v5", cfg.listen_v5)] {
        if let Some(addr) = addr {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("key `broker.{key}`: cannot listen on {addr}"))?;
        }
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
    let for_health = router_tx.clone();
    let health = Arc::new(BrokerHealth {
        router_alive: Box::new(move || !for_health.is_disconnected()),
        failed: Mutex::default(),
        listeners_ended: AtomicBool::new(false),
    });
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
    let backpressure = Arc::new(Backpressure::new(cfg.segment_size, cfg.segment_count));
    let for_codecs = (counters.clone(), backpressure.clone());
    let for_listeners = health.clone();
    let start_listeners = Box::new(move || {
        let (c, bp) = &for_codecs;
        let health = for_listeners;
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
        let v4 = cfg.listen.map(|addr| {
            let s = settings("mqtt-v4", addr);
            (
                addr,
                Server::new(s, router_tx.clone(), Codec::new(V4, c, bp)),
            )
        });
        let v5 = cfg.listen_v5.map(|addr| {
            let s = settings("mqtt-v5", addr);
            (
                addr,
                Server::new(s, router_tx.clone(), Codec::new(V5, c, bp)),
            )
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the broker listeners' runtime")?;
        let thread = std::thread::Builder::new()
            .name("broker-listeners".into())
            .spawn(move || {
                let _ended = SetOnDrop(health.clone());
                runtime.block_on(async move {
                    if let Some((addr, server)) = v4 {
                        serve(addr, server, "MQTT 3.1.1", health.clone());
                    }
                    if let Some((addr, server)) = v5 {
                        serve(addr, server, "MQTT 5", health.clone());
                    }
                    let _ = stopped.await;
                });
                // Dropping the runtime drops every connection.
            })
            .context("cannot start the broker listeners' thread")?;
        Ok(Listeners { stop, thread })
    });
    Ok(Broker {
        counters,
        health,
        backpressure,
        listeners: None,
        links,
        start_listeners: Some(start_listeners),
    })
}

/// Runs a listener on the current runtime.
fn serve<P: Protocol + Clone + Send + Sync + 'static>(
    addr: SocketAddr,
    mut server: Server<P>,
    what: &'static str,
    health: Arc<BrokerHealth>,
) {
    tokio::spawn(async move {
        if let Err(e) = server.start(LinkType::Remote).await {
            tracing::error!(%addr, error = %e, "{what} listener stopped");
            health.listener_failed(format!("the {what} listener on {addr} stopped: {e}"));
        }
    });
    tracing::info!(%addr, "{what} listener started");
}
