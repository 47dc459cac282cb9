//! The admin HTTP endpoint: the operations surface.
//!
//! - `/healthz` (the process answers) and `/readyz` (broker listening, rules loaded,
//!   queues open): open to everyone, for probes;
//! - `/metrics`: Prometheus text ([`metrics`]);
//! - `/api/...`: the REST API ([`api`]).
//!
//! Every request first passes [`guard`] (Host, size, same-origin JSON for state
//! changes, the token for `/metrics` and `/api` when one is configured; the config
//! refuses a listen address other than loopback without one); [`server`] bounds what a
//! connection may cost (a connection cap, header and request timeouts).

pub mod api;
pub mod guard;
pub mod metrics;
pub mod ops;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

pub use guard::Policy;
pub use ops::Ops;

/// Binds the admin address, so that a port in use stops the start, before anything else.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("key `admin.listen`: cannot listen on {addr}"))?;
    l.set_nonblocking(true)
        .context("admin listener: cannot make it non-blocking")?;
    Ok(l)
}

/// Serves the admin endpoint on `listener` until `stop` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    ops: Arc<Ops>,
    policy: Policy,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let policy = Arc::new(policy);
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/rules", get(api::rules))
        .route("/api/rules/reload", post(api::reload))
        .route("/api/rules/{name}", get(api::rule))
        .route("/api/rules/{name}/stop", post(api::stop))
        .route("/api/rules/{name}/start", post(api::start))
        .route("/api/sinks", get(api::sinks))
        .route("/api/modbus/devices", get(api::devices))
        .route("/api/opcua/servers", get(api::opcua_servers))
        .route_layer(middleware::from_fn_with_state(
            policy.clone(),
            guard::require_token,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(ops)
        .layer(middleware::from_fn_with_state(policy, guard::check));
    let listener = tokio::net::TcpListener::from_std(listener)
        .with_context(|| format!("admin HTTP cannot listen on {addr}"))?;
    tracing::info!(%addr, "admin HTTP listening");
    server::run(listener, app, max_connections, stop).await;
    Ok(())
}

/// 200 when the gateway can do its job; 503 with the reasons, one a line, when not.
async fn readyz(State(ops): State<Arc<Ops>>) -> (StatusCode, String) {
    let problems = ops.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let mut body = String::from("not ready\n");
        for p in problems {
            body.push_str(&p);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    match metrics::render(ops) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
