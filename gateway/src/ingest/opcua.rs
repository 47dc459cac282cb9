//! OPC UA ingest: runs a task per `[[opcua.servers]]` entry and hands each change set of
//! a node group to the streams declared on it (`TYPE = 'opcua', DATASOURCE =
//! 'server/group'`), cast to each stream's columns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fieldgate_connectors::groups::conform;
use fieldgate_connectors::opcua::{OpcuaRow, OpcuaServer};
use fieldgate_rules::Source;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Input, Route};

/// OPC UA ingest counters.
#[derive(Debug, Default)]
pub struct OpcuaIngestCounters {
    /// Rows received from all servers.
    pub rows: AtomicU64,
    /// Rows that no stream reads.
    pub unrouted: AtomicU64,
    /// Rows that could not be cast to a stream's columns.
    pub cast_errors: AtomicU64,
}

/// Starts every server and the router between them and the streams; returns once the
/// servers stopped (on `stop`) and every row they had produced was handed on. (The
/// client library may keep a subscription's sender alive past its session, so the end is
/// told by the server tasks, not by the channel closing.)
pub async fn run(
    servers: Vec<Arc<OpcuaServer>>,
    mut routes_rx: watch::Receiver<Vec<Route>>,
    counters: Arc<OpcuaIngestCounters>,
    stop: watch::Receiver<bool>,
) {
    // Unbounded: the client hands notifications over from inside its event loop, which
    // must not wait; the router only casts and forwards, and the stream channels behind
    // it are bounded.
    let (rows_tx, mut rows_rx) = mpsc::unbounded_channel::<OpcuaRow>();
    let mut tasks = JoinSet::new();
    for s in servers {
        tasks.spawn(s.run(rows_tx.clone(), stop.clone()));
    }
    drop(rows_tx);
    let mut routes = routes_rx.borrow_and_update().clone();
    loop {
        let row = tokio::select! {
            row = rows_rx.recv() => match row {
                Some(r) => r,
                None => break,
            },
            _ = tasks.join_next(), if !tasks.is_empty() => {
                if tasks.is_empty() {
                    while let Ok(row) = rows_rx.try_recv() {
                        route(row, &mut routes, &mut routes_rx, &counters).await;
                    }
                    break;
                }
                continue;
            }
        };
        route(row, &mut routes, &mut routes_rx, &counters).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// Hands one row batch to the streams reading its group.
async fn route(
    row: OpcuaRow,
    routes: &mut Vec<Route>,
    routes_rx: &mut watch::Receiver<Vec<Route>>,
    counters: &OpcuaIngestCounters,
) {
    let n = row.batch.num_rows() as u64;
    counters.rows.fetch_add(n, Ordering::Relaxed);
    if routes_rx.has_changed().unwrap_or(false) {
        *routes = routes_rx.borrow_and_update().clone();
    }
    let mut routed = false;
    for r in routes.iter() {
        let Source::Opcua { server, group } = &r.source else {
            continue;
        };
        if **server != *row.server || **group != *row.group {
            continue;
        }
        routed = true;
        match conform(&row.batch, &r.schema) {
            Ok(batch) => {
                if r.tx.send(Input::Rows(batch)).await.is_err() {
                    tracing::error!(stream = %r.stream, "stream task is gone; OPC UA rows dropped");
                }
            }
            Err(e) => {
                counters.cast_errors.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(stream = %r.stream, error = %e, "OPC UA rows do not fit the stream");
            }
        }
    }
    if !routed {
        counters.unrouted.fetch_add(n, Ordering::Relaxed);
    }
}
