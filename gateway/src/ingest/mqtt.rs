//! MQTT ingest: the in-process subscriber of the embedded broker. It routes every message
//! to the streams whose topic filter matches and hands them over in micro-batches, so
//! the broker link is never held up by decoding or rule work. A micro-batch goes as soon
//! as the broker has nothing more ready (or after `batch_delay`, when one is set), and
//! at `batch_rows` messages; a stream task that is busy merges the batches waiting for
//! it. What ingest takes is reported to the broker's [`Backpressure`]. The routes come
//! from a watch channel: a rules reload replaces them without touching the broker link.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fieldgate_connectors::source::mqtt::topic_matches;
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Input, Route};
use crate::broker::Backpressure;

/// A route of an MQTT stream, with its topic filter.
struct MqttRoute {
    filter: String,
    route: Route,
}

fn mqtt_routes(routes: &[Route]) -> Vec<MqttRoute> {
    routes
        .iter()
        .filter_map(|r| {
            r.source.mqtt_filter().map(|f| MqttRoute {
                filter: f.to_string(),
                route: r.clone(),
            })
        })
        .collect()
}

/// Ingest counters.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Messages received from the broker.
    pub messages: AtomicU64,
    /// Messages that matched no stream.
    pub unrouted: AtomicU64,
    /// Messages the broker acknowledged to their publishers but skipped before ingest
    /// read them: its log for ingest's subscription wrapped while ingest fell behind.
    pub skipped: AtomicU64,
}

/// Counts what the broker's log skipped: positions in the log of ingest's one
/// subscription follow each other, so a jump forward is the number of messages lost.
#[derive(Default)]
struct Gaps {
    last: Option<u64>,
    log: Option<Instant>,
    unlogged: u64,
}

impl Gaps {
    fn observe(&mut self, cursor: Option<(u64, u64)>, counters: &IngestCounters) {
        let Some((_, offset)) = cursor else { return };
        if let Some(last) = self.last
            && offset > last + 1
        {
            let n = offset - last - 1;
            counters.skipped.fetch_add(n, Ordering::Relaxed);
            self.unlogged += n;
            let now = Instant::now();
            if self
                .log
                .is_none_or(|t| now.duration_since(t) >= GAP_LOG_EVERY)
            {
                self.log = Some(now);
                tracing::error!(
                    skipped = std::mem::take(&mut self.unlogged),
                    "the broker skipped messages ingest had not read: the rules fell \
                     behind the devices for longer than the broker's log (segment_size × \
                     segment_count) holds"
                );
            }
        }
        self.last = Some(offset);
    }
}

/// At most one log line about skipped messages per this long.
const GAP_LOG_EVERY: Duration = Duration::from_secs(5);

/// Feeds the routes from `link_rx`, subscribed to `#` (one subscription to everything:
/// each message arrives once, whatever number of streams it matches) until `stop` turns true; then takes
/// what the broker still forwards (until it is quiet), hands over what it holds and
/// returns, closing the routes' channels. When `routes` changes, what is pending goes
/// to the old routes before the new ones take over.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    _link_tx: LinkTx,
    mut link_rx: LinkRx,
    mut routes_rx: watch::Receiver<Vec<Route>>,
    batch_rows: usize,
    batch_delay: Duration,
    counters: Arc<IngestCounters>,
    backpressure: Arc<Backpressure>,
    mut stop: watch::Receiver<bool>,
) {
    let mut routes = mqtt_routes(&routes_rx.borrow_and_update());
    let mut pending: Vec<Vec<Bytes>> = routes.iter().map(|_| Vec::new()).collect();
    let mut deadline: Option<Instant> = None;
    let mut gaps = Gaps::default();
    let mut routes_open = true;
    // After `stop`: the broker has acknowledged messages its devices published up to
    // the moment its listeners closed; take them all before returning.
    let mut drain: Option<(Instant, Instant)> = None;
    loop {
        if let Some((quiet_until, hard_stop)) = drain
            && Instant::now() >= quiet_until.min(hard_stop)
        {
            break;
        }
        tokio::select! {
            // In this order: stopping and new routes are seen under any load, and the
            // pending batch goes only once the broker has nothing more ready.
            biased;
            _ = crate::stopped(&mut stop), if drain.is_none() => {
                let now = Instant::now();
                drain = Some((now + DRAIN_QUIET, now + DRAIN_MAX));
            }
            changed = routes_rx.changed(), if routes_open => {
                if changed.is_err() {
                    routes_open = false;
                    continue;
                }
                hand_over_all(&routes, &mut pending, &backpressure).await;
                deadline = None;
                routes = mqtt_routes(&routes_rx.borrow_and_update());
                pending = routes.iter().map(|_| Vec::new()).collect();
                tracing::debug!(routes = routes.len(), "ingest routes replaced");
            }
            n = link_rx.next() => match n {
                Ok(Some(Notification::Forward(f))) => {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    backpressure.taken(Backpressure::size(f.publish.topic.len(), f.publish.payload.len()));
                    gaps.observe(f.cursor, &counters);
                    if let Some((quiet_until, _)) = drain.as_mut() {
                        *quiet_until = Instant::now() + DRAIN_QUIET;
                    }
                    let Ok(topic) = std::str::from_utf8(&f.publish.topic) else { continue };
                    let mut routed = false;
                    for (i, r) in routes.iter().enumerate() {
                        if topic_matches(&r.filter, topic) {
                            routed = true;
                            pending[i].push(f.publish.payload.clone());
                            if pending[i].len() >= batch_rows {
                                hand_over(&routes[i], &mut pending[i], &backpressure).await;
                            }
                        }
                    }
                    if !routed {
                        counters.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    if deadline.is_none() && pending.iter().any(|p| !p.is_empty()) {
                        deadline = Some(Instant::now() + batch_delay);
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = link_rx.wake().await {
                        tracing::error!(error = %e, "broker link lost");
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "broker link lost");
                    break;
                }
            },
            _ = batch_due(deadline, batch_delay), if deadline.is_some() => {
                hand_over_all(&routes, &mut pending, &backpressure).await;
                deadline = None;
            }
            _ = sleep_until(drain.map(|(q, h)| q.min(h))), if drain.is_some() => {}
        }
    }
    hand_over_all(&routes, &mut pending, &backpressure).await;
}

/// On shutdown, ingest stops once the broker has forwarded nothing for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// ...or after this long in all.
const DRAIN_MAX: Duration = Duration::from_secs(5);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ready when the pending batches are due: without `batch_delay`, at once (the select
/// asks the broker first, so that means once it has nothing more ready); else at their
/// deadline.
async fn batch_due(deadline: Option<Instant>, batch_delay: Duration) {
    if !batch_delay.is_zero() {
        sleep_until(deadline).await;
    }
}

/// Hands a stream its pending batch, if any. While the stream's channel is full, ingest
/// waits and tells [`Backpressure`] so, so that the wait does not count as idle.
async fn hand_over(route: &MqttRoute, pending: &mut Vec<Bytes>, backpressure: &Backpressure) {
    if pending.is_empty() {
        return;
    }
    let batch = Input::Payloads(std::mem::take(pending));
    backpressure.ingest_busy(true);
    if route.route.tx.send(batch).await.is_err() {
        tracing::error!(stream = %route.route.stream, "stream task is gone; messages dropped");
    }
    backpressure.ingest_busy(false);
}

/// Hands every stream its pending batch.
async fn hand_over_all(
    routes: &[MqttRoute],
    pending: &mut [Vec<Bytes>],
    backpressure: &Backpressure,
) {
    for (r, p) in routes.iter().zip(pending.iter_mut()) {
        hand_over(r, p, backpressure).await;
    }
}
