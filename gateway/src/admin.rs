//! The admin HTTP endpoint: health and readiness probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

/// What readiness depends on.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Broker listening, rules loaded, queues open.
    pub ready: AtomicBool,
}

/// Serves `/healthz` and `/readyz` until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin HTTP cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "admin HTTP listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::stopped(&mut stop).await;
        })
        .await?;
    Ok(())
}

async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    if r.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
