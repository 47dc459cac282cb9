//! Sinks: where queued rule results go.
//!
//! A sink is driven by the gateway's uplink worker: the worker [`Sink::send`]s messages
//! read from the sink's durable queue and waits on [`Sink::next_event`] for what the
//! destination confirmed. Only confirmed messages are deleted from the queue; after
//! [`SinkEvent::Ready`] (a new connection) every unconfirmed message is sent again.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

/// One queued result on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The queue's sequence number: unique and increasing per sink.
    pub seq: u64,
    /// The rule that produced the result.
    pub rule: Arc<str>,
    /// The encoded result (a JSON object).
    pub payload: Bytes,
    /// Whether this is the last entry of the queue commit that wrote it (or the last
    /// entry queued when it was read). A commit lands in the queue whole, so a sink that
    /// puts several results into one message and cuts only at commit ends (and at limits
    /// counted from there) builds the same messages, under the same ids, on every resend.
    pub commit_end: bool,
}

/// What a sink reports to its uplink worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// The destination is reachable; nothing sent before this is in flight any more, so
    /// everything unconfirmed must be sent again.
    Ready,
    /// These messages arrived and may be deleted from the queue.
    Confirmed(Vec<u64>),
    /// The destination refused these messages for good (a write to a node that is not
    /// writable, a value out of range, an exception answer): deleted from the queue and
    /// not counted as delivered; the sink counts them.
    Refused(Vec<u64>),
    /// The destination was lost; sending resumes after the next `Ready`.
    Down(String),
}

/// Errors from handing messages to a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination is not reachable now.
    #[error("not connected")]
    NotConnected,
    /// Opening, writing or rolling a file failed, or compressing a request body.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file, or `gzip` for a request body.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The MQTT client did not take a publish.
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
    /// The sink cannot be built from its configuration; the message says why.
    #[error("{0}")]
    Config(String),
    /// The NATS client did not take a publish; the message says why.
    #[error("NATS: {0}")]
    Nats(String),
    /// The embedded broker did not take the results; the message says why.
    #[error("embedded broker: {0}")]
    Broker(String),
}

/// A destination for queued results.
pub trait Sink: Send {
    /// How many messages may be sent and not yet confirmed.
    fn max_in_flight(&self) -> usize;

    /// Sends messages, in order. They count as delivered only once confirmed.
    fn send(&mut self, msgs: &[Message]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Waits for the next confirmation or connection change.
    fn next_event(&mut self) -> impl Future<Output = SinkEvent> + Send;
}

/// The device (or server) a write result is for: the sink's `configured` one, which a
/// result's `field` may repeat but not contradict, or else the one the result names.
/// `what` names it in errors (`device`, `server`).
pub(crate) fn write_target(
    configured: Option<&str>,
    row: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    what: &str,
) -> Result<String, String> {
    use serde_json::Value as Json;
    match (configured, row.get(field)) {
        (Some(c), None) => Ok(c.to_string()),
        (Some(c), Some(Json::String(named))) if named == c => Ok(c.to_string()),
        (Some(c), Some(named)) => Err(format!(
            "result is for {what} {named}; this sink writes to `{c}`"
        )),
        (None, Some(Json::String(named))) => Ok(named.clone()),
        (None, _) => Err(format!(
            "result has no `{field}` and the sink names no {what}"
        )),
    }
}

/// Queues what a batch of writes came to: the written results confirmed, then the
/// refused ones.
pub(crate) fn push_outcomes(
    events: &mut std::collections::VecDeque<SinkEvent>,
    done: Vec<u64>,
    refused: Vec<u64>,
) {
    if !done.is_empty() {
        events.push_back(SinkEvent::Confirmed(done));
    }
    if !refused.is_empty() {
        events.push_back(SinkEvent::Refused(refused));
    }
}

/// `next_event` of a sink that queues its events: the oldest queued event; else, with a
/// retry set, `Ready` once it is due (the retry is cleared only then, so a caller that
/// stops waiting early, as the uplink's `select!` does, loses nothing); else never.
pub(crate) async fn queued_event(
    events: &mut std::collections::VecDeque<SinkEvent>,
    retry_at: &mut Option<tokio::time::Instant>,
) -> SinkEvent {
    if let Some(e) = events.pop_front() {
        return e;
    }
    match *retry_at {
        Some(at) => {
            tokio::time::sleep_until(at).await;
            *retry_at = None;
            SinkEvent::Ready
        }
        None => std::future::pending().await,
    }
}
