//! The embedded MQTT broker (rmqtt) and what the gateway decides in it.
//!
//! rmqtt runs the listeners and sessions; the gateway plugs into its hooks ([`gate`]):
//! who may connect ([`passwords`], mutual TLS), what they may publish and subscribe
//! ([`acl`]), and what happens to an allowed PUBLISH: it is appended to the ingest
//! [`Journal`](crate::journal::Journal) and, for QoS 1 and 2, acknowledged only once the
//! journal has made it durable (`broker.ack = "durable"`). Ingest reads the journal, not
//! the broker, so no message a device was told was accepted can be skipped.
//!
//! Retained messages ([`retained`]) and persistent sessions with their subscriptions
//! ([`sessions`]) are kept on disk, since rmqtt keeps them in memory only.
//!
//! rmqtt is pinned to one exact version and used only from this module. What it does
//! and does not keep across a restart is in `docs/security.md`.

pub mod acl;
mod gate;
pub mod passwords;
mod protocol_errors;
mod retained;
mod sessions;
mod shared_subscriptions;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::journal::{Journal, Message};
pub use gate::Refusal;
use gate::{Access, Gate};
pub use protocol_errors::{ProtocolError, ProtocolErrorLayer, count as protocol_errors_count};

/// Listener ids inside rmqtt.
const PLAIN_LISTENER: u16 = 1;
const TLS_LISTENER: u16 = 2;

/// Reads the password and ACL files the config names, so that `validate` and the start
/// report a broken one with its line.
pub fn check_files(cfg: &BrokerConfig) -> anyhow::Result<()> {
    Access::load(cfg).map(|_| ())
}

/// The running broker.
pub struct Broker {
    /// What the broker's hooks count.
    pub counters: Arc<BrokerCounters>,
    /// Whether the broker still runs.
    pub health: Arc<BrokerHealth>,
    scx: ServerContext,
    gate: Gate,
    journal: Journal,
    server: Option<MqttServer>,
    running: Option<JoinHandle<()>>,
    reloader: Option<JoinHandle<()>>,
}

impl Broker {
    /// A publisher for the gateway's own messages (republish sinks, Modbus rows).
    pub fn publisher(&self, client_id: &str) -> Publisher {
        Publisher {
            journal: self.journal.clone(),
            scx: self.scx.clone(),
            id: rmqtt::types::Id::new(self.scx.node.id(), 0, None, None, client_id.into(), None),
        }
    }

    /// Starts accepting connections. Once.
    pub fn listen(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let health = self.health.clone();
        self.running = Some(tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "the embedded broker stopped");
                health.failed(format!("the embedded broker stopped: {e}"));
            }
            health.ended.store(true, Ordering::Relaxed);
        }));
        self.reloader = Some(tokio::spawn(self.gate.clone().reload_on_change()));
    }

    /// Stops acknowledging and accepting: PUBLISHes arriving from now on are never
    /// acknowledged (their devices send them again), the listeners close.
    pub fn stop(&mut self) {
        self.gate.stop();
        if let Some(r) = self.running.take() {
            r.abort();
        }
        if let Some(r) = self.reloader.take() {
            r.abort();
        }
        self.health.ended.store(true, Ordering::Relaxed);
    }
}

/// Publishes into the broker from inside the gateway: journaled like a device's
/// message (so streams reading the topic get it once), then forwarded to subscribers.
pub struct Publisher {
    journal: Journal,
    scx: ServerContext,
    id: rmqtt::types::Id,
}

impl Publisher {
    /// Returns once the messages are durable in the journal and handed to subscribers.
    pub async fn publish(&self, messages: Vec<(String, Bytes)>) -> Result<(), String> {
        let journaled = messages
            .iter()
            .map(|(topic, payload)| Message {
                topic: topic.clone(),
                payload: payload.clone(),
            })
            .collect();
        self.journal
            .append(journaled, true)
            .await
            .map_err(|e| e.to_string())?;
        for (topic, payload) in messages {
            let publish = rmqtt::types::Publish::new(
                Box::new(rmqtt::types::CodecPublish {
                    dup: false,
                    retain: false,
                    qos: rmqtt::types::QoS::AtMostOnce,
                    topic: topic.into(),
                    packet_id: None,
                    payload,
                    properties: None,
                }),
                None,
                None,
                Some(rmqtt::utils::timestamp_millis()),
            );
            let from = rmqtt::types::From::from_system(self.id.clone());
            if let Err(e) =
                rmqtt::session::SessionState::forwards(&self.scx, from, publish, false, None).await
            {
                return Err(format!("cannot forward to subscribers: {e}"));
            }
        }
        Ok(())
    }
}

/// Whether the broker still runs.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    failed: Mutex<Option<String>>,
    ended: AtomicBool,
}

impl BrokerHealth {
    /// Why the broker cannot take messages from devices, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if let Ok(f) = self.failed.lock()
            && let Some(f) = f.as_ref()
        {
            return Some(f.clone());
        }
        self.ended
            .load(Ordering::Relaxed)
            .then(|| "the embedded broker's listeners stopped".to_string())
    }

    fn failed(&self, why: String) {
        if let Ok(mut f) = self.failed.lock() {
            *f = Some(why);
        }
    }
}

/// What the broker's hooks count.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Connections open now, and accepted since start.
    pub connections: AtomicI64,
    /// Connections accepted (CONNACK success) since start.
    pub accepted: AtomicU64,
    /// Connections, subscriptions and publishes refused, by [`Refusal::index`].
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Reloads of the password and ACL files, and reloads that failed.
    pub access_reloads: AtomicU64,
    /// Reloads of the password and ACL files that failed (the previous ones stay in force).
    pub access_reload_errors: AtomicU64,
}

impl BrokerCounters {
    /// Refusals of one reason so far, those rmqtt's handshake decided included.
    pub fn refusals(&self, r: Refusal) -> u64 {
        gate::refusals(self, r)
    }

    /// Counts a refusal; logs it unless one was logged within the last few seconds.
    fn refused(&self, r: Refusal, client: &str, detail: &str) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
        gate::log_refusal(r, client, detail);
    }
}

/// Starts the broker's context and binds its listeners (so a taken port fails here);
/// devices are served once [`Broker::listen`] is called.
pub async fn start(
    cfg: &BrokerConfig,
    journal: Journal,
    data_dir: &Path,
) -> anyhow::Result<Broker> {
    let access = Access::load(cfg)?;
    if cfg.allow_anonymous == Some(true) && cfg.addresses().any(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "broker.allow_anonymous = true on a listener reachable from other hosts: anyone on \
             the network can publish readings and subscribe to everything"
        );
    }
    let scx = ServerContext::new()
        .busy_check_enable(false)
        // Sessions, open and offline persistent ones: a client with a session may always
        // reconnect.
        .mqtt_max_sessions(isize::try_from(cfg.max_connections).unwrap_or(isize::MAX))
        .build()
        .await;
    let retained = retained::RetainedStore::open(&data_dir.join("retained.redb"))
        .await
        .map_err(|e| anyhow::anyhow!("retained messages: {e:#}"))?;
    *scx.extends.retain_mut().await = Box::new(retained);
    *scx.extends.shared_subscription_mut().await =
        Box::new(shared_subscriptions::RoundRobin::default());
    let counters = Arc::new(BrokerCounters::default());
    let mut mutual_tls = Vec::new();
    if cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        mutual_tls.push(TLS_LISTENER);
    }
    let gate = Gate::new(
        access,
        cfg.clone(),
        journal.clone(),
        counters.clone(),
        mutual_tls,
    );
    let register = scx.extends.hook_mgr().register();
    for t in [
        Type::ClientAuthenticate,
        Type::ClientConnack,
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
        Type::MessageExpiryCheck,
    ] {
        register.add(t, Box::new(gate.clone())).await;
    }
    let sessions = sessions::SessionStore::open(&data_dir.join("sessions.redb"))
        .map_err(|e| anyhow::anyhow!("persistent sessions: {e:#}"))?;
    for t in [
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::SessionSubscribed,
        Type::SessionUnsubscribed,
        Type::SessionTerminated,
    ] {
        register.add(t, Box::new(sessions.clone())).await;
    }
    register.start().await;

    let mut server = MqttServer::new(scx.clone());
    if let Some(addr) = cfg.listen {
        let l = listener(cfg, "mqtt", addr)
            .bind()
            .and_then(|l| l.tcp())
            .map_err(|e| anyhow::anyhow!("key `broker.listen`: cannot listen on {addr}: {e}"))?;
        server = server.listener_by_id(l, PLAIN_LISTENER);
        tracing::info!(%addr, "MQTT listener (3.1.1 and 5) bound");
    }
    if let Some(t) = &cfg.tls {
        let path = |p: &PathBuf| p.display().to_string();
        let l = listener(cfg, "mqtt-tls", t.listen)
            .tls_cert(Some(path(&t.cert)))
            .tls_key(Some(path(&t.key)))
            .tls_cross_certificate(t.client_ca.is_some())
            .tls_client_ca_certs(t.client_ca.as_ref().map(path))
            .cert_cn_as_username(t.client_ca.is_some())
            .bind()
            .and_then(|l| l.tls())
            .map_err(|e| anyhow::anyhow!("key `broker.tls`: cannot listen on {}: {e}", t.listen))?;
        server = server.listener_by_id(l, TLS_LISTENER);
        tracing::info!(addr = %t.listen, mutual = t.client_ca.is_some(), "MQTT TLS listener bound");
    }
    // The listeners are registered with the context: sessions can be rebuilt on them.
    sessions
        .restore(&scx)
        .await
        .map_err(|e| anyhow::anyhow!("persistent sessions: {e:#}"))?;
    Ok(Broker {
        counters,
        health: Arc::default(),
        scx,
        gate,
        journal,
        server: Some(server.build()),
        running: None,
        reloader: None,
    })
}

/// A listener's settings from the config.
fn listener(cfg: &BrokerConfig, name: &str, addr: SocketAddr) -> Builder {
    let inflight = NonZeroU16::new(u16::try_from(cfg.max_inflight).unwrap_or(u16::MAX))
        .unwrap_or(NonZeroU16::MIN);
    Builder::new()
        .name(name)
        .laddr(addr)
        .nodelay(true)
        .reuseaddr(Some(true))
        .max_connections(cfg.max_connections)
        .max_handshaking_limit(cfg.max_connections.min(1000))
        .max_packet_size(u32::try_from(cfg.max_payload_size).unwrap_or(u32::MAX))
        .allow_anonymous(cfg.anonymous_allowed())
        .max_inflight(inflight)
        .handshake_timeout(cfg.connect_timeout)
        .max_clientid_len(cfg.max_client_id_length)
        .max_topic_levels(cfg.max_topic_levels)
        // Counted by the gate, which does not count a subscription replaced as a new one.
        .max_subscriptions(0)
        .max_keepalive(cfg.max_keepalive)
        .session_expiry_interval(cfg.session_expiry)
        .max_session_expiry_interval(cfg.session_expiry)
        .max_topic_aliases(64)
        .max_mqueue_len(10_000)
}
