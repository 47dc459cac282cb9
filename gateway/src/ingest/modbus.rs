//! Modbus ingest: runs the pollers of the `[modbus]` devices, hands each poll row to the
//! streams declared on its group (`TYPE = 'modbus', DATASOURCE = 'device/group'`, or
//! `'+/group'` for that group of every device, told apart by the `device` column), cast
//! to each stream's columns, and, when `republish` is on, publishes it as JSON to the
//! embedded broker (`modbus/<device>/<group>` by default) for local subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fieldgate_connectors::codec::json_rows;
use fieldgate_connectors::groups::device_matches;
use fieldgate_connectors::modbus::{DevicePoller, PollRow, conform};
use fieldgate_rules::Source;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Input, Route};
use crate::broker::Publisher;

/// Poll rows waiting for the router before pollers wait.
const ROWS_CHANNEL: usize = 1024;

/// Modbus ingest counters.
#[derive(Debug, Default)]
pub struct ModbusIngestCounters {
    /// Poll rows received from the pollers.
    pub rows: AtomicU64,
    /// Rows that no stream reads.
    pub unrouted: AtomicU64,
    /// Rows that could not be cast to a stream's columns.
    pub cast_errors: AtomicU64,
    /// Rows published to the embedded broker.
    pub republished: AtomicU64,
}

/// Publishing poll rows to the embedded broker.
pub struct Republish {
    /// Topic template with `{device}` and `{group}`.
    pub topic: String,
    /// A publishing link ([`crate::broker::Broker::publisher`]).
    pub link: Publisher,
}

/// Starts every poller and the router between them and the streams; returns once the
/// pollers stopped (on `stop`) and every row they produced was handed on.
pub async fn run(
    pollers: Vec<Arc<DevicePoller>>,
    mut routes_rx: watch::Receiver<Vec<Route>>,
    republish: Option<Republish>,
    counters: Arc<ModbusIngestCounters>,
    stop: watch::Receiver<bool>,
) {
    let (rows_tx, mut rows_rx) = mpsc::channel::<PollRow>(ROWS_CHANNEL);
    let mut tasks = JoinSet::new();
    for p in pollers {
        tasks.spawn(p.run(rows_tx.clone(), stop.clone()));
    }
    drop(rows_tx);
    let (topic, link) = match republish {
        Some(Republish { topic, link }) => (topic, Some(link)),
        None => (String::new(), None),
    };
    let mut routes = routes_rx.borrow_and_update().clone();
    // Ends when every poller has stopped and dropped its sender.
    while let Some(row) = rows_rx.recv().await {
        counters.rows.fetch_add(1, Ordering::Relaxed);
        if routes_rx.has_changed().unwrap_or(false) {
            routes = routes_rx.borrow_and_update().clone();
        }
        let mut routed = false;
        for r in &routes {
            let Source::Modbus { device, group } = &r.source else {
                continue;
            };
            if !device_matches(device, &row.device) || **group != *row.group {
                continue;
            }
            routed = true;
            match conform(&row.batch, &r.schema) {
                Ok(batch) => {
                    if r.tx.send(Input::Rows(batch)).await.is_err() {
                        tracing::error!(stream = %r.stream, "stream task is gone; Modbus row dropped");
                    }
                }
                Err(e) => {
                    counters.cast_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = %r.stream, error = %e, "Modbus row does not fit the stream");
                }
            }
        }
        if !routed {
            counters.unrouted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = link.as_ref() {
            publish(tx, &topic, &row, &counters).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn publish(tx: &Publisher, template: &str, row: &PollRow, counters: &ModbusIngestCounters) {
    let topic = template
        .replace("{device}", &row.device)
        .replace("{group}", &row.group);
    let payloads: Vec<Bytes> = match json_rows(std::slice::from_ref(&row.batch), true) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(device = %row.device, group = %row.group, error = %e, "cannot encode a Modbus row");
            return;
        }
    };
    let n = payloads.len() as u64;
    let messages = payloads.into_iter().map(|p| (topic.clone(), p)).collect();
    match tx.publish(messages).await {
        Ok(()) => {
            counters.republished.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(%topic, error = %e, "Modbus row not republished"),
    }
}
