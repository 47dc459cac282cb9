//! The MQTT sink's connection and its PUBACK bookkeeping.
//!
//! A connection task owns the MQTT event loop. Each connection gets a fresh client and
//! event loop with a clean session, so nothing from a lost connection is replayed behind
//! the uplink worker's back: after [`SinkEvent::Ready`] the worker resends whatever is
//! unconfirmed. PUBACKs are matched to queue sequence numbers through the order in which
//! the event loop reports outgoing publishes and the packet id it gave each.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use super::{MqttFormat, MqttSinkConfig};
use crate::codec::{MessageIds, json_array};
use crate::retry::backoff;
use crate::sink::{Message, Sink, SinkError, SinkEvent};
use crate::tls::TlsError;
use crate::topic_template::TopicTemplate;

/// What the connection task reports.
enum Conn {
    Up(AsyncClient, u64),
    Published(u64, u16),
    Acked(u64, u16),
    Down(u64, String),
}

/// Publishes results to a cloud MQTT broker with QoS 1.
pub struct MqttSink {
    topic: TopicTemplate,
    ids: MessageIds,
    gateway: String,
    max_in_flight: usize,
    /// Results per publish: 1, or `batch_max` in `json_array` format.
    per_publish: usize,
    /// Largest packet the client sends.
    max_packet: usize,
    rx: mpsc::UnboundedReceiver<Conn>,
    client: Option<AsyncClient>,
    generation: u64,
    /// The sequences of each publish sent, waiting for the event loop to report its
    /// packet id.
    unassigned: VecDeque<Vec<u64>>,
    /// Packet id → the sequences of the publishes with that id, oldest first, waiting
    /// for their PUBACKs. Acks for one packet id come in the order of its publishes, so
    /// an id reused while an earlier publish still waits (a collision rumqttc resolves
    /// by holding the new one back) cannot confirm the wrong sequences, whichever of
    /// the ack and the reuse the event loop reports first.
    by_pkid: HashMap<u16, VecDeque<Vec<u64>>>,
    /// A connection change to report after the confirmations returned before it.
    pending: Option<SinkEvent>,
    /// Publishes handed to the client, written by it, and acknowledged, over all
    /// connections (for the log when the sink closes).
    handed: u64,
    written: u64,
    acknowledged: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.task.abort();
        tracing::debug!(
            handed = self.handed,
            written = self.written,
            acknowledged = self.acknowledged,
            "MQTT sink closed"
        );
    }
}

impl MqttSink {
    /// Starts connecting in the background; `name` names the sink in logs and the default
    /// client id.
    /// Every message carries its id from `ids` as the payload's first field. Fails when
    /// the TLS files cannot be used.
    pub fn start(
        name: &str,
        gateway: &str,
        cfg: &MqttSinkConfig,
        ids: MessageIds,
    ) -> Result<Self, TlsError> {
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fieldgate-{gateway}-{name}"));
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.keepalive)
            .set_max_packet_size(cfg.max_packet_size.max(10 * 1024), cfg.max_packet_size)
            .set_clean_session(true)
            .set_inflight(cfg.max_in_flight)
            .set_request_channel_capacity(usize::from(cfg.max_in_flight) * 2 + 16);
        if let Some(tls) = &cfg.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(
                tls.client_config()?,
            )));
        }
        if let Some(user) = &cfg.username {
            opts.set_credentials(
                user.clone(),
                cfg.password.as_ref().map_or("", |p| p.expose()),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(connection(
            name.to_string(),
            opts,
            cfg.reconnect_min,
            cfg.reconnect_max,
            tx,
        ));
        Ok(Self {
            topic: TopicTemplate::new(&cfg.topic, gateway),
            ids,
            gateway: gateway.to_string(),
            max_in_flight: usize::from(cfg.max_in_flight),
            per_publish: match cfg.format {
                MqttFormat::Message => 1,
                MqttFormat::JsonArray => cfg.batch_max,
            },
            max_packet: cfg.max_packet_size,
            rx,
            client: None,
            generation: 0,
            unassigned: VecDeque::new(),
            by_pkid: HashMap::new(),
            pending: None,
            handed: 0,
            written: 0,
            acknowledged: 0,
            task,
        })
    }

    fn topic_for(&self, rule: &str, payload: &[u8]) -> String {
        self.topic.render(rule, payload)
    }

    /// The gateway id this sink publishes for.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }
}

async fn connection(
    name: String,
    opts: MqttOptions,
    min: std::time::Duration,
    max: std::time::Duration,
    tx: mpsc::UnboundedSender<Conn>,
) {
    let mut attempt = 0u32;
    for generation in 1u64.. {
        let (client, mut eventloop) =
            AsyncClient::new(opts.clone(), opts.request_channel_capacity());
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let mut client = Some(client);
        loop {
            let report = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    attempt = 0;
                    tracing::info!(sink = %name, "connected to cloud broker");
                    match client.take() {
                        Some(c) => Conn::Up(c, generation),
                        None => continue,
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Conn::Published(generation, pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => Conn::Acked(generation, ack.pkid),
                Ok(_) => continue,
                Err(e) => {
                    if tx.send(Conn::Down(generation, e.to_string())).is_err() {
                        return;
                    }
                    break;
                }
            };
            if tx.send(report).is_err() {
                return;
            }
        }
        let delay = backoff(attempt, min, max);
        attempt = attempt.saturating_add(1);
        tracing::debug!(sink = %name, ?delay, "reconnecting after delay");
        tokio::time::sleep(delay).await;
    }
}

impl Sink for MqttSink {
    fn max_in_flight(&self) -> usize {
        self.max_in_flight * self.per_publish
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let mut rest = msgs;
        while let Some(first) = rest.first() {
            let topic = self.topic_for(&first.rule, &first.payload);
            // Consecutive results for the same topic share a publish, in order, as
            // long as the packet stays within the size limit (room left for the
            // topic, the header and each result's id).
            let budget = self.max_packet.saturating_sub(topic.len() + 16);
            let mut size = first.payload.len() + 64;
            let mut n = 1;
            while n < rest.len().min(self.per_publish)
                && size + rest[n].payload.len() + 64 <= budget
                && self.topic_for(&rest[n].rule, &rest[n].payload) == topic
            {
                size += rest[n].payload.len() + 64;
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let payload = match self.per_publish {
                1 => self.ids.stamp(&first.payload, first.seq),
                _ => {
                    let rows: Vec<Bytes> = batch
                        .iter()
                        .map(|m| self.ids.stamp(&m.payload, m.seq))
                        .collect();
                    Bytes::from(json_array(&rows))
                }
            };
            let client = self.client.as_ref().ok_or(SinkError::NotConnected)?;
            client.try_publish(topic, QoS::AtLeastOnce, false, payload)?;
            self.unassigned
                .push_back(batch.iter().map(|m| m.seq).collect());
            self.handed += 1;
        }
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        if let Some(ev) = self.pending.take() {
            return ev;
        }
        let mut confirmed = Vec::new();
        loop {
            // Return confirmations gathered so far once nothing more is waiting.
            let msg = if confirmed.is_empty() {
                self.rx.recv().await
            } else {
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) => return SinkEvent::Confirmed(confirmed),
                }
            };
            let Some(msg) = msg else {
                return SinkEvent::Down("connection task ended".into());
            };
            let event = match msg {
                Conn::Up(client, generation) => {
                    self.reset(Some(client), generation);
                    SinkEvent::Ready
                }
                Conn::Published(g, pkid) if g == self.generation => {
                    self.written += 1;
                    if let Some(seqs) = self.unassigned.pop_front() {
                        self.by_pkid.entry(pkid).or_default().push_back(seqs);
                    }
                    continue;
                }
                Conn::Acked(g, pkid) if g == self.generation => {
                    self.acknowledged += 1;
                    if let Some(waiting) = self.by_pkid.get_mut(&pkid)
                        && let Some(seqs) = waiting.pop_front()
                    {
                        confirmed.extend(seqs);
                        if waiting.is_empty() {
                            self.by_pkid.remove(&pkid);
                        }
                    }
                    continue;
                }
                Conn::Down(g, e) if g >= self.generation => {
                    self.reset(None, g);
                    SinkEvent::Down(e)
                }
                // Reports from an earlier connection.
                _ => continue,
            };
            if confirmed.is_empty() {
                return event;
            }
            // Hand out the confirmations first; the connection change comes next call.
            self.pending = Some(event);
            return SinkEvent::Confirmed(confirmed);
        }
    }
}

impl MqttSink {
    /// Forgets everything in flight on a connection change.
    fn reset(&mut self, client: Option<AsyncClient>, generation: u64) {
        self.client = client;
        self.generation = generation;
        self.unassigned.clear();
        self.by_pkid.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose connection reports come from the test.
    async fn sink() -> (MqttSink, mpsc::UnboundedSender<Conn>) {
        let cfg: MqttSinkConfig = serde_json::from_value(serde_json::json!({
            "host": "127.0.0.1", "port": 9, "reconnect_min": "1h", "reconnect_max": "1h"
        }))
        .unwrap();
        let mut s = MqttSink::start("t", "gw", &cfg, MessageIds::new("gw", "t", 1)).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        s.rx = rx;
        s.generation = 1;
        (s, tx)
    }

    #[tokio::test]
    async fn a_reused_packet_id_confirms_its_publishes_in_order() {
        for ack_first in [true, false] {
            let (mut s, tx) = sink().await;
            s.unassigned.extend([vec![10], vec![11]]);
            tx.send(Conn::Published(1, 7)).unwrap();
            // Packet id 7 again, for sequence 11, reported before or after the PUBACK
            // that frees it.
            if ack_first {
                tx.send(Conn::Acked(1, 7)).unwrap();
                tx.send(Conn::Published(1, 7)).unwrap();
            } else {
                tx.send(Conn::Published(1, 7)).unwrap();
                tx.send(Conn::Acked(1, 7)).unwrap();
            }
            assert_eq!(
                s.next_event().await,
                SinkEvent::Confirmed(vec![10]),
                "ack first: {ack_first}"
            );
            tx.send(Conn::Acked(1, 7)).unwrap();
            assert_eq!(s.next_event().await, SinkEvent::Confirmed(vec![11]));
            assert!(s.by_pkid.is_empty());
        }
    }
}
