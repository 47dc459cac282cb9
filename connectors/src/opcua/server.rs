//! One server: its session (connected, kept alive, reconnected with backoff, its
//! subscriptions transferred or re-created by the client after a server restart), a
//! subscription per subscribed group and a read loop per polled group, the rows they
//! produce, its counters, and writes to its nodes.
//!
//! Each server runs on its own task, so a server that is down or slow never holds up
//! another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session, SessionPollResult};
use opcua::types::{
    DataChangeFilter, DataChangeNotification, DataChangeTrigger, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage,
    ReadValueId, TimestampsToReturn, Variant, WriteValue,
};
use tokio::sync::{mpsc, watch};

use super::config::{Deadband, GroupConfig, ReadMode, ServerConfig};
use super::connect::{ConnectError, Connector, is_untrusted};
use super::pki::Pki;
use super::rows::{GroupRows, TypeMismatch};
use crate::rate_limited::RateLimited;
use crate::retry::backoff;

/// At most one log line per this long for a repeated problem of one server.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One row batch of a group.
#[derive(Debug, Clone)]
pub struct OpcuaRow {
    /// The server's name.
    pub server: Arc<str>,
    /// The group's name.
    pub group: Arc<str>,
    /// The rows, in the group's columns ([`super::rows::schema`]).
    pub batch: RecordBatch,
}

/// Counters of one server, on `/metrics` per server.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Whether a session is up now.
    pub connected: AtomicBool,
    /// Sessions established (the first and every reconnect).
    pub connects: AtomicU64,
    /// Failed attempts to connect or reconnect.
    pub connect_failures: AtomicU64,
    /// Connections lost (keepalive failed, socket closed, server gone).
    pub connection_lost: AtomicU64,
    /// Attempts refused because the server's certificate is not trusted.
    pub untrusted: AtomicU64,
    /// Values received (data changes and polled values).
    pub values: AtomicU64,
    /// Rows produced.
    pub rows: AtomicU64,
    /// Values that were not of their node's configured type.
    pub type_errors: AtomicU64,
    /// Nodes the server refused to monitor or read (unknown id, no access).
    pub node_errors: AtomicU64,
    /// Reads of polled groups that failed as a whole.
    pub read_failures: AtomicU64,
}

/// Writes the server answered, by outcome.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No session now; the write may be tried again.
    #[error("server `{0}` is not connected")]
    NotConnected(String),
    /// The request failed as a whole (timeout, connection lost).
    #[error("write request failed: {0}")]
    Request(String),
    /// The server refused these nodes, with their status codes.
    #[error("server refused: {0}")]
    Refused(String),
}

/// One configured server and its state.
pub struct OpcuaServer {
    cfg: ServerConfig,
    pki: Pki,
    gateway_id: String,
    counters: Arc<ServerCounters>,
    session: Mutex<Option<Arc<Session>>>,
}

impl OpcuaServer {
    /// The server of `cfg`, its certificates under `pki`.
    pub fn new(cfg: ServerConfig, pki: Pki, gateway_id: &str) -> Arc<Self> {
        Arc::new(OpcuaServer {
            cfg,
            pki,
            gateway_id: gateway_id.to_string(),
            counters: Arc::default(),
            session: Mutex::new(None),
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Its counters.
    pub fn counters(&self) -> &Arc<ServerCounters> {
        &self.counters
    }

    /// Whether a session is up.
    pub fn connected(&self) -> bool {
        self.counters.connected.load(Ordering::Relaxed)
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_session(&self, s: Option<Arc<Session>>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Connects and reads until `stop`: rows go to `rows`. Reconnects with backoff.
    pub async fn run(
        self: Arc<Self>,
        rows: mpsc::UnboundedSender<OpcuaRow>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut log = RateLimited::new(LOG_EVERY);
        let mut connector = match Connector::new(&self.cfg, &self.pki, &self.gateway_id) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(server = %self.cfg.name, error = %e, "OPC UA server not started");
                return;
            }
        };
        let mut attempt = 0u32;
        while !*stop.borrow() {
            // Fetching the endpoints can take the client's own retries: stop waits for none.
            let session = tokio::select! {
                s = connector.session() => s,
                _ = stop.wait_for(|s| *s) => return,
            };
            match session {
                Ok((session, event_loop)) => {
                    attempt = 0;
                    self.set_session(Some(session.clone()));
                    self.clone()
                        .serve(session.clone(), event_loop, rows.clone(), &mut stop)
                        .await;
                    self.set_session(None);
                    self.counters.connected.store(false, Ordering::Relaxed);
                    if *stop.borrow() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect())
                            .await;
                        return;
                    }
                }
                Err(e) => {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(held) = log.allow(1) {
                        let hint = match &e {
                            ConnectError::NoMatchingEndpoint { .. } | ConnectError::Identity(_) => {
                                "check the server's [[opcua.servers]] entry"
                            }
                            _ => "retrying with backoff",
                        };
                        tracing::warn!(server = %self.cfg.name, error = %e, held_back = held, "OPC UA server unreachable; {hint}");
                    }
                }
            }
            let wait = backoff(attempt, self.cfg.reconnect_min, self.cfg.reconnect_max);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Runs one session: its event loop, then the groups once it is up, until `stop` or
    /// until the event loop gives up.
    async fn serve(
        self: Arc<Self>,
        session: Arc<Session>,
        event_loop: opcua::client::SessionEventLoop<opcua::client::transport::TcpConnector>,
        rows: mpsc::UnboundedSender<OpcuaRow>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut events = Box::pin(event_loop.enter());
        // The task that creates the subscriptions and runs the read loops, once.
        let mut groups: Option<tokio::task::JoinHandle<()>> = None;
        let mut log = RateLimited::new(LOG_EVERY);
        // Ends the read loops of this session when it ends.
        let (done_tx, done_rx) = watch::channel(false);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                ev = events.next() => match ev {
                    None => break,
                    Some(Err(status)) => {
                        tracing::warn!(server = %self.cfg.name, %status, "OPC UA session ended");
                        break;
                    }
                    Some(Ok(SessionPollResult::Reconnected(mode))) => {
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        self.counters.connected.store(true, Ordering::Relaxed);
                        tracing::info!(server = %self.cfg.name, ?mode, "OPC UA session up");
                        if groups.is_some() {
                            // The client transfers or re-creates the subscriptions while it
                            // reconnects, before it starts the publishing loop of the new
                            // connection, which then waits for a trigger that already came:
                            // without a new one no Publish request is sent and the values
                            // stop. Trigger it once the loop runs.
                            let s = session.clone();
                            tokio::spawn(async move {
                                for wait in [Duration::from_millis(50), Duration::from_millis(500)] {
                                    tokio::time::sleep(wait).await;
                                    s.trigger_publish_now();
                                }
                            });
                        } else {
                            let me = self.clone();
                            let s = session.clone();
                            let r = rows.clone();
                            let done = done_rx.clone();
                            groups = Some(tokio::spawn(async move {
                                let tasks = me.set_up_groups(&s, &r, &done).await;
                                for t in tasks {
                                    let _ = t.await;
                                }
                            }));
                        }
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                        self.counters.connection_lost.fetch_add(1, Ordering::Relaxed);
                        self.counters.connected.store(false, Ordering::Relaxed);
                        tracing::warn!(server = %self.cfg.name, %status, "OPC UA connection lost; reconnecting");
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(status))) => {
                        self.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                        self.counters.connected.store(false, Ordering::Relaxed);
                        if is_untrusted(status) {
                            self.counters.untrusted.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(held) = log.allow(1) {
                            if is_untrusted(status) {
                                tracing::error!(server = %self.cfg.name, %status, "{}", self.pki.untrusted_hint(&self.cfg.name));
                            } else {
                                tracing::warn!(server = %self.cfg.name, %status, held_back = held, "OPC UA reconnect failed; retrying with backoff");
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = done_tx.send(true);
        if let Some(p) = groups {
            p.abort();
        }
    }

    /// Creates each subscribed group's subscription and starts each polled group's read
    /// loop; returns the read loops.
    async fn set_up_groups(
        self: &Arc<Self>,
        session: &Arc<Session>,
        rows: &mpsc::UnboundedSender<OpcuaRow>,
        done: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for g in &self.cfg.groups {
            match g.mode {
                ReadMode::Subscribe => {
                    if let Err(e) = self.subscribe(session, g, rows).await {
                        tracing::error!(server = %self.cfg.name, group = %g.name, error = %e, "OPC UA subscription not created; reading the group by polling instead");
                        tasks.push(tokio::spawn(self.clone().poll(
                            session.clone(),
                            g.clone(),
                            rows.clone(),
                            done.clone(),
                        )));
                    }
                }
                ReadMode::Poll => {
                    tasks.push(tokio::spawn(self.clone().poll(
                        session.clone(),
                        g.clone(),
                        rows.clone(),
                        done.clone(),
                    )));
                }
            }
        }
        tasks
    }

    async fn subscribe(
        self: &Arc<Self>,
        session: &Arc<Session>,
        g: &GroupConfig,
        rows: &mpsc::UnboundedSender<OpcuaRow>,
    ) -> Result<(), opcua::types::Error> {
        let group_rows = Arc::new(Mutex::new(GroupRows::new(&self.cfg.name, g)));
        let handler = GroupHandler {
            server: self.clone(),
            rows: group_rows.clone(),
            out: rows.clone(),
            log: RateLimited::new(LOG_EVERY),
        };
        // Keepalive count and lifetime as the spec suggests: the server drops the
        // subscription after about three missed keepalives.
        let keepalive_count = 10;
        let id = session
            .create_subscription(
                g.publishing_interval,
                keepalive_count * 3,
                keepalive_count,
                super::connect::MAX_NOTIFICATIONS_PER_PUBLISH,
                0,
                true,
                handler,
            )
            .await?;
        let sampling = g.sampling_interval.unwrap_or(g.publishing_interval);
        let items: Vec<MonitoredItemCreateRequest> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let filter = match n.deadband.or(g.deadband) {
                    Some(d) if n.node_type.is_numeric() => {
                        let (kind, value) = match d {
                            Deadband::Absolute(v) => (DeadbandType::Absolute, v),
                            Deadband::Percent(v) => (DeadbandType::Percent, v),
                        };
                        ExtensionObject::from_message(DataChangeFilter {
                            trigger: DataChangeTrigger::StatusValue,
                            deadband_type: kind as u32,
                            deadband_value: value,
                        })
                    }
                    _ => ExtensionObject::null(),
                };
                MonitoredItemCreateRequest::new(
                    ReadValueId::from(n.id()),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: handle(i),
                        sampling_interval: sampling.as_secs_f64() * 1000.0,
                        filter,
                        queue_size: g.queue_size,
                        discard_oldest: true,
                    },
                )
            })
            .collect();
        let results = session
            .create_monitored_items(id, TimestampsToReturn::Both, items)
            .await?;
        for (i, r) in results.iter().enumerate() {
            let status = r.result.status_code;
            if !status.is_good() {
                self.counters.node_errors.fetch_add(1, Ordering::Relaxed);
                let n = &g.nodes[i];
                tracing::error!(server = %self.cfg.name, group = %g.name, node = %n.name, node_id = %n.node_id, %status, "OPC UA server refused to monitor node {} (`{}`): {}", n.node_id, n.name, status);
                // In the rows from the next publish on: the node's status says why it
                // has no value.
                lock(&group_rows).record_status(i, status);
            }
        }
        tracing::info!(server = %self.cfg.name, group = %g.name, nodes = g.nodes.len(), "OPC UA subscription created");
        Ok(())
    }

    /// Reads a group every `interval` while the session is up, until the session ends.
    async fn poll(
        self: Arc<Self>,
        session: Arc<Session>,
        g: GroupConfig,
        rows: mpsc::UnboundedSender<OpcuaRow>,
        mut done: watch::Receiver<bool>,
    ) {
        let mut group = GroupRows::new(&self.cfg.name, &g);
        let ids: Vec<ReadValueId> = g.nodes.iter().map(|n| ReadValueId::from(n.id())).collect();
        let mut tick = tokio::time::interval(g.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log = RateLimited::new(LOG_EVERY);
        let mut reported: Vec<bool> = vec![false; ids.len()];
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = done.wait_for(|d| *d) => return,
            }
            if !self.connected() {
                continue;
            }
            match session.read(&ids, TimestampsToReturn::Both, 0.0).await {
                Ok(values) => {
                    for (i, dv) in values.into_iter().enumerate().take(ids.len()) {
                        if let Some(s) = dv.status
                            && s.is_bad()
                            && !reported[i]
                        {
                            reported[i] = true;
                            self.counters.node_errors.fetch_add(1, Ordering::Relaxed);
                            let n = &g.nodes[i];
                            tracing::error!(server = %self.cfg.name, group = %g.name, node = %n.name, node_id = %n.node_id, status = %s, "OPC UA read of node {} (`{}`) failed: {}", n.node_id, n.name, s);
                        }
                        self.counters.values.fetch_add(1, Ordering::Relaxed);
                        group.record(i, dv);
                    }
                    self.emit(&mut group, &rows, &mut log);
                }
                Err(e) => {
                    self.counters.read_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(held) = log.allow(1) {
                        tracing::warn!(server = %self.cfg.name, group = %g.name, error = %e, held_back = held, "OPC UA read failed");
                    }
                }
            }
        }
    }

    /// Hands the group's change set on as one batch; reports values of the wrong type.
    fn emit(
        &self,
        group: &mut GroupRows,
        out: &mpsc::UnboundedSender<OpcuaRow>,
        log: &mut RateLimited,
    ) {
        if group.is_empty() {
            return;
        }
        match group.finish(crate::now_millis()) {
            Ok((batch, mismatches)) => {
                report_mismatches(&self.cfg.name, &mismatches, &self.counters, log);
                self.counters
                    .rows
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                let row = OpcuaRow {
                    server: self.cfg.name.as_str().into(),
                    group: group_name(&batch),
                    batch,
                };
                let _ = out.send(row);
            }
            Err(e) => {
                tracing::error!(server = %self.cfg.name, error = %e, "cannot build an OPC UA row")
            }
        }
    }

    /// Writes values to nodes of this server (by node id), returning each node's status.
    pub async fn write(&self, values: Vec<(NodeId, Variant)>) -> Result<(), WriteError> {
        let Some(session) = self.current_session().filter(|_| self.connected()) else {
            return Err(WriteError::NotConnected(self.cfg.name.clone()));
        };
        let writes: Vec<WriteValue> = values
            .iter()
            .map(|(id, v)| WriteValue::value_attr(id.clone(), v.clone()))
            .collect();
        let results = session
            .write(&writes)
            .await
            .map_err(|e| WriteError::Request(e.to_string()))?;
        let bad: Vec<String> = results
            .iter()
            .zip(&values)
            .filter(|(s, _)| !s.is_good())
            .map(|(s, (id, _))| format!("{id}: {s}"))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Refused(bad.join(", ")))
        }
    }
}

fn group_name(batch: &RecordBatch) -> Arc<str> {
    use datafusion::arrow::array::{Array, AsArray};
    batch
        .column_by_name("group")
        .and_then(|c| c.as_string_opt::<i32>())
        .filter(|c| !c.is_empty())
        .map(|c| Arc::from(c.value(0)))
        .unwrap_or_else(|| Arc::from(""))
}

fn report_mismatches(
    server: &str,
    m: &[TypeMismatch],
    counters: &ServerCounters,
    log: &mut RateLimited,
) {
    if m.is_empty() {
        return;
    }
    counters
        .type_errors
        .fetch_add(m.len() as u64, Ordering::Relaxed);
    if let Some(held) = log.allow(m.len() as u64) {
        for x in m {
            tracing::warn!(server, node = %x.node, expected = %x.expected, got = %x.got, held_back = held, "OPC UA node `{}` sent a {} value; its configured type is {} (value read as null, status BadTypeMismatch)", x.node, x.got, x.expected);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client handle of a group's node `i`.
fn handle(i: usize) -> u32 {
    u32::try_from(i + 1).unwrap_or(u32::MAX)
}

/// Turns a subscription's notifications into the group's rows: one batch per publish.
struct GroupHandler {
    server: Arc<OpcuaServer>,
    rows: Arc<Mutex<GroupRows>>,
    out: mpsc::UnboundedSender<OpcuaRow>,
    log: RateLimited,
}

impl OnSubscriptionNotificationCore for GroupHandler {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let Some(data) = notification.notification_data else {
            return;
        };
        let mut n = 0u64;
        let mut rows = lock(&self.rows);
        for obj in data {
            let Some(v) = obj.into_inner_as::<DataChangeNotification>() else {
                continue;
            };
            for item in v.monitored_items.into_iter().flatten() {
                let Some(i) = (item.client_handle as usize).checked_sub(1) else {
                    continue;
                };
                n += 1;
                rows.record(i, item.value);
            }
        }
        self.server.counters.values.fetch_add(n, Ordering::Relaxed);
        self.server.emit(&mut rows, &self.out, &mut self.log);
    }
}

/// The servers of a config, in configuration order; creates the gateway's application
/// certificate first when there are servers and it is missing.
pub fn servers(
    cfg: &super::OpcuaConfig,
    data_dir: &std::path::Path,
    gateway_id: &str,
) -> Result<Vec<Arc<OpcuaServer>>, ConnectError> {
    let pki = Pki::under(data_dir);
    if !cfg.servers.is_empty() {
        super::connect::ensure_certificate(&pki, gateway_id)?;
    }
    Ok(cfg
        .servers
        .iter()
        .map(|s| OpcuaServer::new(s.clone(), pki.clone(), gateway_id))
        .collect())
}
