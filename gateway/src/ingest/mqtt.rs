//! MQTT ingest: reads what the broker accepted from the ingest journal, in order, routes
//! every message to the streams whose topic filter matches and hands them over in
//! micro-batches, so the broker is never held up by decoding or rule work. A micro-batch
//! goes as soon as the journal has nothing more ready (or after `batch_delay`, when one
//! is set), and at `batch_rows` messages; a stream task that is busy merges the batches
//! waiting for it. Each batch carries a [`Hold`] on its journal entries, dropped once the
//! stream has processed it. The routes come from a watch channel: a rules reload replaces
//! them without touching the journal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fieldgate_connectors::mqtt::topic_matches;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Input, Route};
use crate::journal::{Hold, Holds, Record};
use crate::sleep_until;

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
    /// Messages read from the journal.
    pub messages: AtomicU64,
    /// Messages that matched no stream.
    pub unrouted: AtomicU64,
}

/// A batch being gathered for one stream.
#[derive(Default)]
struct Pending {
    payloads: Vec<Bytes>,
    hold: Option<Hold>,
}

/// Feeds the routes from the journal until `stop` turns true; then takes what the
/// journal still gives (until it is quiet), hands over what it holds and returns,
/// closing the routes' channels. When `routes` changes, what is pending goes to the old
/// routes before the new ones take over.
pub async fn run(
    mut journal: mpsc::UnboundedReceiver<Record>,
    holds: Arc<Holds>,
    mut routes_rx: watch::Receiver<Vec<Route>>,
    batch_rows: usize,
    batch_delay: Duration,
    counters: Arc<IngestCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut routes = mqtt_routes(&routes_rx.borrow_and_update());
    let mut pending: Vec<Pending> = routes.iter().map(|_| Pending::default()).collect();
    let mut deadline: Option<Instant> = None;
    let mut routes_open = true;
    // After `stop`: the broker has acknowledged messages its devices published up to
    // the moment it stopped; take them all before returning.
    let mut drain: Option<(Instant, Instant)> = None;
    loop {
        if let Some((quiet_until, hard_stop)) = drain
            && Instant::now() >= quiet_until.min(hard_stop)
        {
            break;
        }
        tokio::select! {
            // In this order: stopping and new routes are seen under any load, and the
            // pending batch goes only once the journal has nothing more ready.
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
                hand_over_all(&routes, &mut pending).await;
                deadline = None;
                routes = mqtt_routes(&routes_rx.borrow_and_update());
                pending = routes.iter().map(|_| Pending::default()).collect();
                tracing::debug!(routes = routes.len(), "ingest routes replaced");
            }
            r = journal.recv() => {
                let Some(r) = r else { break };
                counters.messages.fetch_add(1, Ordering::Relaxed);
                if let Some((quiet_until, _)) = drain.as_mut() {
                    *quiet_until = Instant::now() + DRAIN_QUIET;
                }
                let mut routed = false;
                // Whether ingest has recorded taking this entry (with a hold) yet.
                let mut recorded = false;
                for (i, route) in routes.iter().enumerate() {
                    if topic_matches(&route.filter, &r.topic) {
                        routed = true;
                        let p = &mut pending[i];
                        if p.hold.is_none() {
                            p.hold = holds.taken(r.seq, true);
                            recorded = true;
                        }
                        p.payloads.push(r.payload.clone());
                        if p.payloads.len() >= batch_rows {
                            hand_over(route, p).await;
                        }
                    }
                }
                if !recorded {
                    holds.taken(r.seq, false);
                }
                if !routed {
                    counters.unrouted.fetch_add(1, Ordering::Relaxed);
                }
                if deadline.is_none() && pending.iter().any(|p| !p.payloads.is_empty()) {
                    deadline = Some(Instant::now() + batch_delay);
                }
            }
            _ = batch_due(deadline, batch_delay), if deadline.is_some() => {
                hand_over_all(&routes, &mut pending).await;
                deadline = None;
            }
            _ = sleep_until(drain.map(|(q, h)| q.min(h))), if drain.is_some() => {}
        }
    }
    hand_over_all(&routes, &mut pending).await;
}

/// On shutdown, ingest stops once the broker has forwarded nothing for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// ...or after this long in all.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Ready when the pending batches are due: without `batch_delay`, at once (the select
/// asks the broker first, so that means once it has nothing more ready); else at their
/// deadline.
async fn batch_due(deadline: Option<Instant>, batch_delay: Duration) {
    if !batch_delay.is_zero() {
        sleep_until(deadline).await;
    }
}

/// Hands a stream its pending batch, if any, waiting while its channel is full.
async fn hand_over(route: &MqttRoute, pending: &mut Pending) {
    if pending.payloads.is_empty() {
        return;
    }
    let batch = Input::Payloads(
        std::mem::take(&mut pending.payloads),
        pending.hold.take().into_iter().collect(),
    );
    if route.route.tx.send(batch).await.is_err() {
        tracing::error!(stream = %route.route.stream, "stream task is gone; messages dropped");
    }
}

/// Hands every stream its pending batch.
async fn hand_over_all(routes: &[MqttRoute], pending: &mut [Pending]) {
    for (r, p) in routes.iter().zip(pending.iter_mut()) {
        hand_over(r, p).await;
    }
}
