//! The stream tasks: one per declared stream. Each decodes its micro-batches into
//! Arrow, runs the stream's rules, encodes their results as JSON and appends them to
//! the durable queue of every sink the rule names. A reload hands a running task its
//! new list of rules through a control channel; the rules it keeps keep their windows.
//!
//! A task takes its next batch only once the results of the last one are durable. When
//! a queue cannot make them durable (its disk is full or failing), the task retries
//! until it can: ingest then waits for the task, and the broker holds the devices back,
//! as under overload, instead of anything being dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldgate_connectors::codec::json_rows;
use fieldgate_connectors::codec::{InputLimits, JsonDecoder, RejectReason};
use fieldgate_rules::{NullFields, RuleOutput, RuleSlot, StreamPipeline};
use tokio::sync::{mpsc, watch};

use crate::ingest::Input;
use crate::logging::RateLimited;
use crate::queue::{Entry, Queue};

/// How often windows are checked against the clock.
const TICK: Duration = Duration::from_millis(250);
/// First and longest wait between two attempts to queue results a queue could not take.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// After shutdown began, how long a stream keeps trying to queue results before it
/// gives them up (counted and logged).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Per-stream counters.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Rows decoded.
    pub rows: AtomicU64,
    /// Bytes of the payloads decoded (MQTT streams; Modbus rows come decoded).
    pub bytes_in: AtomicU64,
    /// Payloads that could not be decoded, whatever the reason.
    pub decode_errors: AtomicU64,
    /// Payloads refused, by [`RejectReason::index`].
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Result rows that could not be queued.
    pub queue_errors: AtomicU64,
    /// Times results waited for a queue that could not take them yet.
    pub queue_waits: AtomicU64,
}

/// What every stream task shares: how it takes its input and where results go.
#[derive(Clone)]
pub struct StreamContext {
    /// Most rows a stream task decodes and runs at once.
    pub batch_rows: usize,
    /// What a payload may be.
    pub limits: InputLimits,
    /// The sinks' queues, by sink name.
    pub queues: Arc<HashMap<String, Queue>>,
    /// Turns true when the gateway stops.
    pub stop: watch::Receiver<bool>,
    /// When streams still waiting for a queue give up, once the gateway is stopping:
    /// one deadline for all of them.
    pub give_up_at: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

/// Instructions to a running stream task.
pub enum Control {
    /// Run these rules from now on: kept rules keep their state, new ones start empty,
    /// the others stop.
    SetRules(Vec<RuleSlot>),
}

/// Runs one stream until its data channel closes, having processed everything sent
/// on it.
pub async fn run_stream(
    mut pipeline: StreamPipeline,
    mut rx: mpsc::Receiver<Input>,
    mut control: mpsc::Receiver<Control>,
    ctx: StreamContext,
    counters: Arc<StreamCounters>,
) {
    let batch_rows = ctx.batch_rows;
    let stream = pipeline.stream.name.clone();
    let mut decoder = match JsonDecoder::with_limits(pipeline.stream.schema.clone(), ctx.limits) {
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
                    deliver(&stream, outputs, &ctx, &counters).await;
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
        // The journal keeps these payloads until their results are durable in the queues.
        let mut holds = Vec::new();
        let batch = match input {
            Input::Rows(batch) => batch,
            Input::Payloads(mut payloads, first_holds) => {
                holds = first_holds;
                // Batches that waited while the last one ran go through together.
                while payloads.len() < batch_rows && next_rules.as_ref().is_none_or(|(_, n)| *n > 0)
                {
                    let Ok(more) = rx.try_recv() else { break };
                    if let Some((_, n)) = next_rules.as_mut() {
                        *n -= 1;
                    }
                    match more {
                        Input::Payloads(more, more_holds)
                            if payloads.len() + more.len() <= batch_rows =>
                        {
                            payloads.extend(more);
                            holds.extend(more_holds);
                        }
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                }
                let bytes: usize = payloads.iter().map(|p| p.len()).sum();
                counters.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
                let decoded = decoder.decode(&payloads);
                if !decoded.rejected.is_empty() {
                    let n = decoded.rejected.len() as u64;
                    counters.decode_errors.fetch_add(n, Ordering::Relaxed);
                    for r in &decoded.rejected {
                        counters.rejected[r.kind.index()].fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(held) = bad_payload_log.allow(n) {
                        let first = &decoded.rejected[0];
                        let sample = &payloads[first.index];
                        tracing::warn!(
                            %stream,
                            rejected = n,
                            not_logged_before = held,
                            kind = first.kind.as_str(),
                            reason = %first.reason,
                            payload = %String::from_utf8_lossy(&sample[..sample.len().min(200)]),
                            "payloads refused"
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
        deliver(&stream, outputs, &ctx, &counters).await;
        drop(holds);
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
    ctx: &StreamContext,
    counters: &StreamCounters,
) {
    // Every rule's results for one sink go in one append: one durable commit per sink
    // and batch, however many rules the stream has.
    let mut by_sink: HashMap<&str, Vec<Entry>> = HashMap::new();
    for out in &outputs {
        let rows = match json_rows(&out.batches, out.null_fields == NullFields::Written) {
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
        let q = ctx.queues.get(sink)?;
        Some(async move {
            let n = entries.len() as u64;
            (
                sink,
                n,
                append_durably(stream, sink, q, entries.into(), ctx, counters).await,
            )
        })
    });
    for (sink, n, result) in futures::future::join_all(appends).await {
        match result {
            Ok(()) => {}
            // Counted and logged (rate-limited) by the queue itself.
            Err(crate::queue::StoreError::Full { .. }) => {}
            Err(e) => {
                counters.queue_errors.fetch_add(n, Ordering::Relaxed);
                tracing::error!(%stream, %sink, results = n, error = %e, "results not queued: lost");
            }
        }
    }
}

/// Appends to one queue, retrying while the queue cannot take the results yet (a full
/// or failing disk), so that the stream, and through it ingest and the devices, wait
/// rather than lose them. Gives up only once the gateway has been stopping for
/// [`SHUTDOWN_GRACE`].
async fn append_durably(
    stream: &str,
    sink: &str,
    queue: &Queue,
    entries: Arc<[Entry]>,
    ctx: &StreamContext,
    counters: &StreamCounters,
) -> Result<(), crate::queue::StoreError> {
    let mut stop = ctx.stop.clone();
    let mut delay = RETRY_MIN;
    let mut waiting_since: Option<Instant> = None;
    loop {
        let e = match queue.append_shared(entries.clone()).await {
            Ok(()) => {
                if let Some(t) = waiting_since {
                    tracing::info!(%stream, %sink, waited_s = t.elapsed().as_secs_f64(), "results queued after waiting for the queue");
                }
                return Ok(());
            }
            Err(e) if e.is_storage_failure() => e,
            Err(e) => return Err(e),
        };
        counters.queue_waits.fetch_add(1, Ordering::Relaxed);
        if waiting_since.is_none() {
            waiting_since = Some(Instant::now());
            tracing::warn!(%stream, %sink, results = entries.len(), error = %e, "results cannot be made durable yet; the stream waits and holds ingest back");
        }
        if *stop.borrow() {
            let at = *ctx
                .give_up_at
                .get_or_init(|| tokio::time::Instant::now() + SHUTDOWN_GRACE);
            if tokio::time::Instant::now() >= at {
                return Err(e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed(), if !*stop.borrow() => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}
