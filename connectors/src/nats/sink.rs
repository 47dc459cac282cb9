//! The NATS sink: JetStream publishes, pipelined, each confirmed by its PubAck.
//!
//! A connection task owns the client. It connects (the client itself then moves to
//! another server of the list when it loses one), checks that the stream exists and
//! takes the sink's subjects, and hands the sink a JetStream context for that
//! connection: a generation. The sink publishes in queue order and awaits the PubAcks in
//! the same order; a PubAck confirms its results, one that says `duplicate` confirms them
//! too (the stream already holds them) and is counted. A publish that is not
//! acknowledged in time, or a lost connection, ends the generation: everything
//! unconfirmed is dropped here and sent again by the uplink once the task has checked
//! the stream again, under the same message ids, which the stream's duplicate window
//! recognises.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, Event, ServerAddr};
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;

use super::batch::{Cutter, Outgoing};
use super::stream::{StreamCheck, check_stream};
use super::{NatsAuth, NatsSinkConfig};
use crate::codec::MessageIds;
use crate::retry::backoff;
use crate::sink::{Message, Sink, SinkError, SinkEvent};
use crate::topic_template::TopicTemplate;

/// What the sink counts beyond what the uplink does.
#[derive(Debug, Default)]
pub struct NatsCounters {
    /// Results the server reported as duplicates: resends the stream already held.
    pub duplicates: AtomicU64,
    /// Results refused for good: larger than the servers' `max_payload`.
    pub too_large: AtomicU64,
}

/// What the connection task reports.
enum Conn {
    /// Connected and the stream checked: publish through this context.
    Up(Box<Context>, u64),
    /// Not (or no longer) able to publish; the reason.
    Down(String),
}

/// The outcome of one message: its results' sequences and its PubAck.
type AckOutcome = (
    Vec<u64>,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

/// The wait for one message's PubAck.
type AckFuture = Pin<Box<dyn Future<Output = AckOutcome> + Send>>;

/// Publishes results to a JetStream stream.
pub struct NatsSink {
    subject: TopicTemplate,
    ids: MessageIds,
    per_message: usize,
    max_payload: usize,
    max_in_flight: usize,
    rx: mpsc::UnboundedReceiver<Conn>,
    /// Tells the connection task that a publish of this generation failed.
    trouble: mpsc::UnboundedSender<u64>,
    js: Option<Context>,
    generation: u64,
    /// Results of a run whose commit goes on past what was read (see [`super::batch`]).
    held: Vec<Message>,
    acks: FuturesOrdered<AckFuture>,
    /// Results refused for good, to report before anything else.
    refused: Vec<u64>,
    /// A connection change to report after the confirmations returned before it.
    pending: Option<SinkEvent>,
    counters: Arc<NatsCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the sink cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsStartError {
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The credentials file cannot be read or parsed.
    #[error("credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server address cannot be parsed.
    #[error("server address {0:?}: {1}")]
    Address(String, String),
}

impl NatsSink {
    /// Starts connecting in the background; `name` names the sink in logs and the
    /// default client name. Every message carries its results' ids from `ids`. Fails when
    /// the TLS or credentials files cannot be used.
    pub fn start(
        name: &str,
        gateway: &str,
        cfg: &NatsSinkConfig,
        ids: MessageIds,
    ) -> Result<Self, NatsStartError> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| NatsStartError::Address(s.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let opts = connect_options(name, gateway, cfg, events_tx)?;
        let subject = TopicTemplate::nats(&cfg.subject, gateway);
        let max_in_flight = usize::from(cfg.max_in_flight) * cfg.per_message();
        let (tx, rx) = mpsc::unbounded_channel();
        let (trouble, trouble_rx) = mpsc::unbounded_channel();
        let check = StreamCheck {
            stream: cfg.stream.clone(),
            template: subject.text().to_string(),
            create: cfg.create_stream,
        };
        let task = tokio::spawn(connection(Connection {
            name: name.to_string(),
            servers,
            opts,
            check,
            ack_timeout: cfg.ack_timeout,
            // Every message holds at least one result: the uplink's limit bounds them.
            max_acks: max_in_flight,
            min: cfg.reconnect_min,
            max: cfg.reconnect_max,
            tx,
            events: events_rx,
            trouble: trouble_rx,
        }));
        Ok(Self {
            subject,
            ids,
            per_message: cfg.per_message(),
            max_payload: cfg.max_payload,
            max_in_flight,
            rx,
            trouble,
            js: None,
            generation: 0,
            held: Vec::new(),
            acks: FuturesOrdered::new(),
            refused: Vec::new(),
            pending: None,
            counters: Arc::default(),
            task,
        })
    }

    /// The sink's own counters.
    pub fn counters(&self) -> &Arc<NatsCounters> {
        &self.counters
    }

    /// Forgets everything in flight: the uplink sends it again after the next `Ready`.
    fn reset(&mut self) {
        self.js = None;
        self.held.clear();
        self.acks = FuturesOrdered::new();
    }

    /// Ends the generation after a failed publish.
    fn fail(&mut self) {
        self.reset();
        let _ = self.trouble.send(self.generation);
    }

    /// Publishes one message and queues the wait for its PubAck.
    async fn publish(&mut self, js: &Context, m: Outgoing) -> Result<(), String> {
        let publish = PublishMessage::build().payload(m.payload).message_id(m.id);
        match js.send_publish(m.subject, publish).await {
            Ok(ack) => {
                let seqs = m.seqs;
                self.acks
                    .push_back(Box::pin(async move { (seqs, ack.await) }));
                Ok(())
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                tracing::warn!(results = m.seqs.len(), error = %e, "message larger than the servers take; dropped");
                self.counters
                    .too_large
                    .fetch_add(m.seqs.len() as u64, Ordering::Relaxed);
                self.refused.extend(m.seqs);
                Ok(())
            }
            Err(e) => Err(format!("publish: {e}")),
        }
    }
}

/// The client's options: name, auth, TLS, and its events into `events`.
fn connect_options(
    name: &str,
    gateway: &str,
    cfg: &NatsSinkConfig,
    events: mpsc::UnboundedSender<Event>,
) -> Result<ConnectOptions, NatsStartError> {
    let opts = secured_options(cfg)?;
    let (min, max) = (cfg.reconnect_min, cfg.reconnect_max);
    Ok(opts
        .name(
            cfg.client_name
                .clone()
                .unwrap_or_else(|| format!("fieldgate-{gateway}-{name}")),
        )
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempt| {
            backoff(u32::try_from(attempt).unwrap_or(u32::MAX), min, max)
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        }))
}

/// The client's login and TLS, read from the files the configuration names.
pub(super) fn secured_options(cfg: &NatsSinkConfig) -> Result<ConnectOptions, NatsStartError> {
    let mut opts = match &cfg.auth {
        None => ConnectOptions::new(),
        Some(NatsAuth::Token { token }) => ConnectOptions::with_token(token.expose().to_string()),
        Some(NatsAuth::UserPassword { user, password }) => {
            ConnectOptions::with_user_and_password(user.clone(), password.expose().to_string())
        }
        Some(NatsAuth::Nkey { seed }) => ConnectOptions::with_nkey(seed.expose().to_string()),
        Some(NatsAuth::Credentials { file }) => {
            let err = |source| NatsStartError::Credentials {
                path: file.display().to_string(),
                source,
            };
            let text = std::fs::read_to_string(file).map_err(err)?;
            ConnectOptions::with_credentials(&text).map_err(err)?
        }
    };
    if let Some(tls) = &cfg.tls {
        let config = Arc::unwrap_or_clone(tls.client_config()?);
        opts = opts.require_tls(true).tls_client_config(config);
    }
    Ok(opts)
}

/// What the connection task works with.
struct Connection {
    name: String,
    servers: Vec<ServerAddr>,
    opts: ConnectOptions,
    check: StreamCheck,
    ack_timeout: Duration,
    max_acks: usize,
    min: Duration,
    max: Duration,
    tx: mpsc::UnboundedSender<Conn>,
    events: mpsc::UnboundedReceiver<Event>,
    trouble: mpsc::UnboundedReceiver<u64>,
}

async fn connection(mut c: Connection) {
    let mut attempt = 0u32;
    let client = loop {
        match c.opts.clone().connect(c.servers.clone()).await {
            Ok(client) => break client,
            Err(e) => {
                if c.tx
                    .send(Conn::Down(format!("cannot connect: {e}")))
                    .is_err()
                {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff(attempt, c.min, c.max)).await;
        attempt = attempt.saturating_add(1);
    };
    attempt = 0;
    for generation in 1u64.. {
        // A fresh context per generation: acks of the last one cannot hold its permits.
        let js = jetstream::ContextBuilder::new()
            .timeout(c.ack_timeout)
            .ack_timeout(c.ack_timeout)
            .max_ack_inflight(c.max_acks)
            .backpressure_on_inflight(true)
            .build(client.clone());
        match check_stream(&js, &c.check).await {
            Ok(info) => {
                attempt = 0;
                tracing::info!(sink = %c.name, server = %client.server_info().server_name, stream = %c.check.stream, replicas = info.replicas, duplicate_window = ?info.duplicate_window, "connected to the NATS stream");
                if c.tx.send(Conn::Up(Box::new(js), generation)).is_err() {
                    return;
                }
                // Until a publish of this generation fails or the connection drops.
                loop {
                    tokio::select! {
                        failed = c.trouble.recv() => match failed {
                            Some(g) if g == generation => break,
                            Some(_) => {}
                            None => return,
                        },
                        event = c.events.recv() => match event {
                            Some(Event::Disconnected) => {
                                if c.tx.send(Conn::Down("disconnected".into())).is_err() {
                                    return;
                                }
                                wait_connected(&client, &mut c.events).await;
                                break;
                            }
                            Some(Event::ServerError(e)) => {
                                tracing::warn!(sink = %c.name, error = %e, "NATS server error");
                            }
                            Some(_) => {}
                            None => return,
                        },
                    }
                }
            }
            Err(reason) => {
                if c.tx.send(Conn::Down(reason)).is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff(attempt, c.min, c.max)).await;
        attempt = attempt.saturating_add(1);
        // Failures reported while this generation was ending belong to it.
        while c.trouble.try_recv().is_ok() {}
    }
}

/// Waits until the client is connected again: by its state, as an event may have been
/// taken before.
async fn wait_connected(client: &async_nats::Client, events: &mut mpsc::UnboundedReceiver<Event>) {
    while client.connection_state() != State::Connected {
        tokio::select! {
            e = events.recv() => if e.is_none() { return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl Sink for NatsSink {
    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let js = self.js.clone().ok_or(SinkError::NotConnected)?;
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(msgs);
        let cutter = Cutter {
            subject: &self.subject,
            ids: &self.ids,
            per_message: self.per_message,
            max_payload: self.max_payload,
        };
        let (out, held) = cutter.cut(&all);
        for m in out {
            if let Err(reason) = self.publish(&js, m).await {
                self.fail();
                return Err(SinkError::Nats(reason));
            }
        }
        all.drain(..all.len() - held);
        self.held = all;
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        if let Some(ev) = self.pending.take() {
            return ev;
        }
        if !self.refused.is_empty() {
            return SinkEvent::Refused(std::mem::take(&mut self.refused));
        }
        tokio::select! {
            biased;
            conn = self.rx.recv() => match conn {
                Some(Conn::Up(js, generation)) => {
                    self.reset();
                    self.js = Some(*js);
                    self.generation = generation;
                    SinkEvent::Ready
                }
                Some(Conn::Down(reason)) => {
                    self.reset();
                    SinkEvent::Down(reason)
                }
                None => SinkEvent::Down("connection task ended".into()),
            },
            Some(first) = self.acks.next(), if !self.acks.is_empty() => self.acknowledged(first),
        }
    }
}

impl NatsSink {
    /// What a PubAck, and whichever came in behind it, came to.
    fn acknowledged(&mut self, first: AckOutcome) -> SinkEvent {
        let mut confirmed = Vec::new();
        let mut outcome = Some(first);
        while let Some((seqs, ack)) = outcome.take() {
            match ack {
                Ok(ack) => {
                    if ack.duplicate {
                        self.counters
                            .duplicates
                            .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    }
                    confirmed.extend(seqs);
                }
                Err(e) => {
                    self.fail();
                    let down = SinkEvent::Down(format!("publish not acknowledged: {e}"));
                    if confirmed.is_empty() {
                        return down;
                    }
                    self.pending = Some(down);
                    break;
                }
            }
            if self.acks.is_empty() {
                break;
            }
            outcome = futures::FutureExt::now_or_never(self.acks.next()).flatten();
        }
        SinkEvent::Confirmed(confirmed)
    }
}
