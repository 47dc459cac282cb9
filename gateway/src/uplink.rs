//! Uplink workers: one per sink, moving entries from the sink's durable queue to the
//! sink and deleting them once the sink confirmed them.
//!
//! After every (re)connection the worker starts over from the oldest entry still in the
//! queue, so whatever was unconfirmed when the link dropped or the gateway stopped is
//! sent again: delivery is at least once, in queue order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fieldgate_connectors::sink::{Sink, SinkError, SinkEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::logging::RateLimited;
use crate::queue::Queue;
use crate::sleep_until;

/// Entries read from the queue per read.
const READ_BATCH: usize = 512;
/// Delay before retrying a sink whose send failed while it claimed to be ready, and
/// before reading a queue again that could not be read.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Least time between two log lines about a queue that cannot be read.
const READ_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What an uplink counts, for the operations surface.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    /// Results the sink confirmed (and the queue deleted).
    pub delivered: AtomicU64,
    /// Bytes of the results confirmed (their encoded payloads).
    pub delivered_bytes: AtomicU64,
    /// Failed sends and lost connections, each followed by a retry.
    pub retries: AtomicU64,
    /// Whether the sink is reachable and sending.
    pub up: AtomicBool,
}

/// Runs until `stop` turns true and then until the queue is delivered or `drain` passed.
pub async fn run<S: Sink>(
    name: String,
    mut sink: S,
    queue: Queue,
    counters: Arc<UplinkCounters>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut committed = queue.committed();
    let mut ready = false;
    let mut cursor = 0u64;
    // Sequence numbers sent and not yet confirmed, with their payloads' sizes.
    let mut in_flight = BTreeMap::new();
    let mut retry_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut last_down: Option<String> = None;
    let mut read_error_log = RateLimited::new(READ_ERROR_LOG_EVERY);
    loop {
        if ready {
            while in_flight.len() < sink.max_in_flight() {
                let room = sink.max_in_flight() - in_flight.len();
                let batch = match queue.read_from(cursor, room.min(READ_BATCH)) {
                    Ok(b) => b,
                    Err(e) => {
                        // A failing disk: read again a little later, whether or not
                        // anything else happens meanwhile.
                        if let Some(held) = read_error_log.allow(1) {
                            tracing::error!(sink = %name, error = %e, not_logged_before = held, "cannot read the queue; trying again");
                        }
                        retry_at.get_or_insert(Instant::now() + RETRY_DELAY);
                        break;
                    }
                };
                let Some(last) = batch.last().map(|m| m.seq) else {
                    break;
                };
                match sink.send(&batch).await {
                    Ok(()) => {
                        cursor = last + 1;
                        in_flight.extend(batch.iter().map(|m| (m.seq, m.payload.len() as u64)));
                    }
                    Err(e) => {
                        ready = false;
                        in_flight.clear();
                        counters.up.store(false, Ordering::Relaxed);
                        if !matches!(e, SinkError::NotConnected) {
                            counters.retries.fetch_add(1, Ordering::Relaxed);
                            // The same failure again (a full disk under a file sink,
                            // say) is not logged again.
                            let reason = e.to_string();
                            if last_down.as_deref() != Some(reason.as_str()) {
                                tracing::warn!(sink = %name, error = %reason, "send failed; retrying");
                            }
                            last_down = Some(reason);
                            retry_at = Some(Instant::now() + RETRY_DELAY);
                        }
                        break;
                    }
                }
            }
        }
        if drain_until.is_some() && in_flight.is_empty() && queue.depth().map_or(true, |d| d == 0) {
            break;
        }
        tokio::select! {
            ev = sink.next_event() => match ev {
                SinkEvent::Ready => {
                    tracing::debug!(sink = %name, "sink ready; sending from the oldest queued entry");
                    ready = true;
                    counters.up.store(true, Ordering::Relaxed);
                    cursor = 0;
                    in_flight.clear();
                }
                SinkEvent::Confirmed(seqs) => {
                    let bytes: u64 = seqs.iter().filter_map(|s| in_flight.remove(s)).sum();
                    counters.delivered_bytes.fetch_add(bytes, Ordering::Relaxed);
                    counters
                        .delivered
                        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    if !seqs.is_empty() && last_down.take().is_some() {
                        tracing::info!(sink = %name, "sink delivering again");
                    }
                    if let Err(e) = queue.remove(seqs).await {
                        tracing::error!(sink = %name, error = %e, "cannot delete delivered entries");
                    }
                }
                SinkEvent::Refused(seqs) => {
                    for s in &seqs {
                        in_flight.remove(s);
                    }
                    // Counted by the sink (`dropped_total{reason="refused"}`), not as
                    // delivered.
                    if let Err(e) = queue.remove(seqs).await {
                        tracing::error!(sink = %name, error = %e, "cannot delete refused entries");
                    }
                }
                SinkEvent::Down(reason) => {
                    if last_down.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(sink = %name, %reason, "sink unreachable; results stay queued");
                    }
                    last_down = Some(reason);
                    ready = false;
                    counters.up.store(false, Ordering::Relaxed);
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    in_flight.clear();
                }
            },
            r = committed.changed() => {
                if r.is_err() {
                    break;
                }
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                retry_at = None;
                ready = true;
                cursor = 0;
                in_flight.clear();
            }
            _ = crate::stopped(&mut stop), if drain_until.is_none() => {
                drain_until = Some(Instant::now() + drain);
            }
            _ = sleep_until(drain_until), if drain_until.is_some() => {
                let left = queue.depth().unwrap_or(0);
                if left > 0 {
                    tracing::info!(sink = %name, queued = left, "shutting down with results queued; they are sent after restart");
                }
                break;
            }
        }
    }
}
