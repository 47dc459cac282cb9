//! The REST API under `/api`: rules with their status and counters (stop, start,
//! reload), sinks with their queues, Modbus devices. JSON in and out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::ops::{Ops, SinkExtra};
use crate::live::view::RuleView;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The answer while the gateway starts.
fn starting() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is starting")
}

fn rule_json(r: &RuleView) -> Value {
    let c = &r.counters;
    let latency = c.latency.snapshot();
    json!({
        "name": r.name,
        "stream": r.stream,
        "sinks": r.sinks,
        "file": r.file,
        "status": r.status(),
        "failure": c.failure.get(),
        "records_in": load(&c.records_in),
        "records_out": load(&c.records_out),
        "late": load(&c.late),
        "errors": load(&c.errors),
        "batches": load(&c.batches),
        "batch_seconds_sum": latency.sum_ns as f64 / 1e9,
    })
}

/// `GET /api/rules`
pub async fn rules(State(ops): State<Arc<Ops>>) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let Ok(view) = r.rules.read() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "rules view unavailable");
    };
    let streams: Vec<Value> = view
        .streams
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "source": s.source,
                "rows": load(&s.counters.rows),
                "decode_errors": load(&s.counters.decode_errors),
            })
        })
        .collect();
    let rules: Vec<Value> = view.rules.iter().map(rule_json).collect();
    Json(json!({ "rules": rules, "streams": streams })).into_response()
}

/// `GET /api/rules/{name}`
pub async fn rule(State(ops): State<Arc<Ops>>, Path(name): Path<String>) -> Response {
    with_rule(&ops, &name, |r| Json(rule_json(r)).into_response())
}

/// `POST /api/rules/{name}/stop`: the rule takes no rows and closes no windows until
/// started again; its open windows wait.
pub async fn stop(State(ops): State<Arc<Ops>>, Path(name): Path<String>) -> Response {
    with_rule(&ops, &name, |r| {
        r.paused.store(true, Ordering::Relaxed);
        tracing::info!(rule = %r.name, "rule stopped through the admin API");
        Json(rule_json(r)).into_response()
    })
}

/// `POST /api/rules/{name}/start`
pub async fn start(State(ops): State<Arc<Ops>>, Path(name): Path<String>) -> Response {
    with_rule(&ops, &name, |r| {
        if r.counters.failure.get().is_some() {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "rule `{}` failed; change or reload its file to restart it",
                    r.name
                ),
            );
        }
        r.paused.store(false, Ordering::Relaxed);
        tracing::info!(rule = %r.name, "rule started through the admin API");
        Json(rule_json(r)).into_response()
    })
}

fn with_rule(ops: &Ops, name: &str, f: impl FnOnce(&RuleView) -> Response) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let Ok(view) = r.rules.read() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "rules view unavailable");
    };
    match view.rule(name) {
        Some(rule) => f(rule),
        None => error(StatusCode::NOT_FOUND, format!("no rule `{name}`")),
    }
}

/// `POST /api/rules/reload`: reads the rule files again now; answers with what changed
/// and the errors found (what was valid took effect).
pub async fn reload(State(ops): State<Arc<Ops>>) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let (tx, rx) = oneshot::channel();
    if r.reload.send(tx).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping");
    }
    match rx.await {
        Ok(report) => Json(report).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping"),
    }
}

/// `GET /api/sinks`
pub async fn sinks(State(ops): State<Arc<Ops>>) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let sinks: Vec<Value> = r
        .sinks
        .iter()
        .map(|s| {
            let st = s.queue.stats();
            let oldest = s.queue.oldest_age().ok().flatten();
            let mut dropped = json!({
                "oldest": load(&st.dropped_oldest),
                "rejected": load(&st.rejected),
                "expired": load(&st.expired),
            });
            match &s.extra {
                SinkExtra::None => {}
                SinkExtra::Http(h) => dropped["dead_letter"] = load(&h.dead_lettered).into(),
                SinkExtra::Modbus(m) => {
                    dropped["refused"] = load(&m.refused).into();
                    dropped["device_exception"] = load(&m.failed).into();
                }
                SinkExtra::Opcua(o) => {
                    dropped["refused"] = load(&o.refused).into();
                    dropped["device_exception"] = load(&o.failed).into();
                }
                SinkExtra::Nats(n) => {
                    dropped["too_large"] = load(&n.too_large).into();
                }
            }
            json!({
                "name": s.name,
                "type": s.kind,
                "up": s.uplink.up.load(Ordering::Relaxed),
                "delivered": load(&s.uplink.delivered),
                "retries": load(&s.uplink.retries),
                "duplicates": match &s.extra {
                    SinkExtra::Nats(n) => load(&n.duplicates),
                    _ => 0,
                },
                "queue": {
                    "entries": load(&st.entries),
                    "bytes": load(&st.bytes),
                    "file_bytes": s.queue.file_bytes(),
                    "oldest_age_seconds": oldest.map(|a| a.as_secs_f64()),
                },
                "dropped": dropped,
            })
        })
        .collect();
    Json(json!({ "sinks": sinks })).into_response()
}

/// `GET /api/modbus/devices`
pub async fn devices(State(ops): State<Arc<Ops>>) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let devices: Vec<Value> = r
        .devices
        .iter()
        .map(|p| {
            let c = p.counters();
            let answered = load(&c.latency_count);
            json!({
                "name": p.name(),
                "degraded": p.is_degraded(),
                "polls": load(&c.polls),
                "requests": load(&c.requests),
                "errors": {
                    "timeout": load(&c.errors_timeout),
                    "exception": load(&c.errors_exception),
                    "bad_frame": load(&c.errors_frame),
                    "io": load(&c.errors_io),
                },
                "avg_latency_ms": (answered > 0)
                    .then(|| load(&c.latency_us_sum) as f64 / answered as f64 / 1000.0),
                "writes": load(&c.writes),
                "write_errors": load(&c.write_errors),
                "skipped_polls": load(&c.skipped_polls),
            })
        })
        .collect();
    Json(json!({ "devices": devices })).into_response()
}

/// `GET /api/opcua/servers`
pub async fn opcua_servers(State(ops): State<Arc<Ops>>) -> Response {
    let Some(r) = ops.running.get() else {
        return starting();
    };
    let servers: Vec<Value> = r
        .opcua_servers
        .iter()
        .map(|s| {
            let c = s.counters();
            json!({
                "name": s.name(),
                "endpoint": s.config().endpoint,
                "connected": s.connected(),
                "connects": load(&c.connects),
                "connect_failures": load(&c.connect_failures),
                "connection_lost": load(&c.connection_lost),
                "untrusted": load(&c.untrusted),
                "values": load(&c.values),
                "rows": load(&c.rows),
                "type_errors": load(&c.type_errors),
                "node_errors": load(&c.node_errors),
                "read_failures": load(&c.read_failures),
            })
        })
        .collect();
    Json(json!({ "servers": servers })).into_response()
}
