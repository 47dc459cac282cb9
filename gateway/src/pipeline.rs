//! The stream tasks: one per declared stream. Each decodes its micro-batches into
//! Arrow, runs the stream's rules, encodes their results as JSON and appends them to
//! the durable queue of every sink the rule names. A reload hands a running task its
//! new list of rules through a control channel; the rules it keeps keep their windows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate_connectors::sink::encode::json_rows;
use fieldgate_connectors::source::mqtt::JsonDecoder;
use fieldgate_rules::{RuleOutput, RuleSlot, StreamPipeline};
use tokio::sync::mpsc;

use crate::ingest::Input;
use crate::queue::Queue;

/// How often windows are checked against the clock.
const TICK: Duration = Duration::from_millis(250);

/// Per-stream counters.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Rows decoded.
    pub rows: AtomicU64,
    /// Payloads that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Result rows that could not be queued.
    pub queue_errors: AtomicU64,
}

/// Instructions to a running stream task.
pub enum Control {
    /// Run these rules from now on: kept rules keep their state, new ones start empty,
    /// the others stop.
    SetRules(Vec<RuleSlot>),
}

/// Logs at most one message per interval, counting the ones it held back.
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// Returns how many were held back since the last one, when this one may be logged.
    fn allow(&mut self, n: u64) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.held += n;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Runs one stream until its data channel closes, having processed everything sent
/// on it.
pub async fn run_stream(
    mut pipeline: StreamPipeline,
    mut rx: mpsc::Receiver<Input>,
    mut control: mpsc::Receiver<Control>,
    batch_rows: usize,
    queues: Arc<HashMap<String, Queue>>,
    counters: Arc<StreamCounters>,
) {
    let stream = pipeline.stream.name.clone();
    let mut decoder = match JsonDecoder::new(pipeline.stream.schema.clone()) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%stream, error = %e, "cannot build the stream's decoder");
            return;
        }
    };
    let mut bad_payload_log = RateLimited::new(Duration::from_secs(5));
    let mut rule_error_log = RateLimited::new(Duration::from_secs(5));
    let mut clock = tokio::time::interval(TICK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut control_open = true;
    // New rules wait until the batches queued before they came have gone through the
    // rules those batches were sent to: (rules, batches still to process first).
    let mut next_rules: Option<(Vec<RuleSlot>, usize)> = None;
    // Taken from the channel while merging payloads, to go next.
    let mut held: Option<Input> = None;
    loop {
        if held.is_none()
            && next_rules.as_ref().is_some_and(|(_, n)| *n == 0)
            && let Some((rules, _)) = next_rules.take()
        {
            set_rules(&mut pipeline, rules);
        }
        let input = if let Some(p) = held.take() {
            p
        } else {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => {
                        if let Some((_, n)) = next_rules.as_mut() {
                            *n = n.saturating_sub(1);
                        }
                        p
                    }
                    None => break,
                },
                _ = clock.tick() => {
                    // Processing-time windows and idle streams close by the clock.
                    let (outputs, errors) = pipeline.tick(fieldgate_rules::now_millis()).await;
                    log_rule_errors(&stream, errors, &mut rule_error_log);
                    deliver(&stream, outputs, &queues, &counters).await;
                    continue;
                }
                c = control.recv(), if control_open && next_rules.is_none() => {
                    match c {
                        Some(Control::SetRules(rules)) => next_rules = Some((rules, rx.len())),
                        None => control_open = false,
                    }
                    continue;
                }
            }
        };
        let batch = match input {
            Input::Rows(batch) => batch,
            Input::Payloads(mut payloads) => {
                // Batches that waited while the last one ran go through together.
                while payloads.len() < batch_rows && next_rules.as_ref().is_none_or(|(_, n)| *n > 0)
                {
                    let Ok(more) = rx.try_recv() else { break };
                    if let Some((_, n)) = next_rules.as_mut() {
                        *n -= 1;
                    }
                    match more {
                        Input::Payloads(more) if payloads.len() + more.len() <= batch_rows => {
                            payloads.extend(more)
                        }
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                let decoded = decoder.decode(&payloads);
                if !decoded.rejected.is_empty() {
                    let n = decoded.rejected.len() as u64;
                    counters.decode_errors.fetch_add(n, Ordering::Relaxed);
                    if let Some(held) = bad_payload_log.allow(n - 1) {
                        let first = &decoded.rejected[0];
                        let sample = &payloads[first.index];
                        tracing::warn!(
                            %stream,
                            rejected = n,
                            not_logged_before = held,
                            reason = %first.reason,
                            payload = %String::from_utf8_lossy(&sample[..sample.len().min(200)]),
                            "payloads do not fit the stream's schema"
                        );
                    }
                }
                let Some(batch) = decoded.batch else { continue };
                batch
            }
        };
        counters
            .rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        let (outputs, errors) = pipeline.push(&batch).await;
        log_rule_errors(&stream, errors, &mut rule_error_log);
        deliver(&stream, outputs, &queues, &counters).await;
    }
    let open: usize = pipeline.rules.iter().map(|r| r.open_windows()).sum();
    if open > 0 {
        tracing::info!(%stream, open_windows = open, "stream stopped with windows still open; they are not emitted");
    }
}

fn set_rules(pipeline: &mut StreamPipeline, rules: Vec<RuleSlot>) {
    let stream = pipeline.stream.name.clone();
    let applied = fieldgate_rules::apply_rules(pipeline, rules);
    for (rule, open) in applied.retired {
        if open > 0 {
            tracing::info!(%stream, %rule, open_windows = open, "rule stopped with windows still open; they are not emitted");
        }
    }
    for rule in applied.missing {
        tracing::error!(%stream, %rule, "rule to keep was not running in this stream");
    }
    let rules: Vec<&str> = pipeline.rules.iter().map(|r| r.name()).collect();
    tracing::debug!(%stream, ?rules, "stream's rules replaced");
}

fn log_rule_errors(stream: &str, errors: Vec<fieldgate_rules::ExecError>, log: &mut RateLimited) {
    for e in errors {
        if let Some(held) = log.allow(1) {
            tracing::warn!(%stream, error = %e, not_logged_before = held, "rule failed on a batch");
        }
    }
}

/// Encodes results and appends them to their sinks' queues; returns once durable.
async fn deliver(
    stream: &str,
    outputs: Vec<RuleOutput>,
    queues: &HashMap<String, Queue>,
    counters: &StreamCounters,
) {
    // Every rule's results for one sink go in one append: one durable commit per sink
    // and batch, however many rules the stream has.
    let mut by_sink: HashMap<&str, Vec<(Arc<str>, Bytes)>> = HashMap::new();
    for out in &outputs {
        let rows = match json_rows(&out.batches) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(%stream, rule = %out.rule, error = %e, "cannot encode results");
                continue;
            }
        };
        if rows.is_empty() {
            continue;
        }
        for sink in out.sinks.iter() {
            by_sink
                .entry(sink.as_str())
                .or_default()
                .extend(rows.iter().map(|r| (out.rule.clone(), r.clone())));
        }
    }
    // The sinks' queues commit in parallel, each on its own writer thread.
    let appends = by_sink.into_iter().filter_map(|(sink, entries)| {
        let q = queues.get(sink)?;
        Some(async move {
            let n = entries.len() as u64;
            (sink, n, q.append(entries).await)
        })
    });
    for (sink, n, result) in futures::future::join_all(appends).await {
        match result {
            Ok(()) => {}
            // Counted and logged (rate-limited) by the queue itself.
            Err(crate::queue::StoreError::Full { .. }) => {}
            Err(e) => {
                counters.queue_errors.fetch_add(n, Ordering::Relaxed);
                tracing::error!(%stream, %sink, error = %e, "results not queued");
            }
        }
    }
}
