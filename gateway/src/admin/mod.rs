//! The admin HTTP endpoint: the operations surface.
//!
//! - `/healthz` (the process answers) and `/readyz` (broker listening, rules loaded,
//!   queues open): open to everyone, for probes;
//! - `/metrics`: Prometheus text ([`metrics`]);
//! - `/api/...`: the REST API ([`api`]).
//!
//! When a token is configured, `/metrics` and `/api` require `Authorization: Bearer
//! <token>`; the config refuses a listen address other than loopback without one.

pub mod api;
pub mod metrics;
pub mod ops;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

pub use ops::Ops;

/// Serves the admin endpoint until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    ops: Arc<Ops>,
    token: Option<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/rules", get(api::rules))
        .route("/api/rules/reload", post(api::reload))
        .route("/api/rules/{name}", get(api::rule))
        .route("/api/rules/{name}/stop", post(api::stop))
        .route("/api/rules/{name}/start", post(api::start))
        .route("/api/sinks", get(api::sinks))
        .route("/api/modbus/devices", get(api::devices))
        .route_layer(middleware::from_fn_with_state(
            token.map(Arc::<str>::from),
            require_token,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(ops);
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

/// Lets a request through when no token is set or it carries the token.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response(),
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"s3cret", b"s3cre"));
        assert!(!same(b"", b"x"));
    }
}
