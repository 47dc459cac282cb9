//! The admin endpoint's accept loop: what a connection may cost the gateway.
//!
//! Connections are capped (`admin.max_connections`): at the cap, the loop stops
//! accepting and further connections wait in the kernel's backlog, so the admin port
//! can never use up the process's file descriptors, which the broker needs for devices.
//! A client has [`HEADER_TIMEOUT`] to send a request's head, and a connection lives at
//! most [`CONNECTION_LIFETIME`]. Accept errors are logged at a bounded rate; running out
//! of file descriptors (or memory) makes the loop back off instead of spinning.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

/// Time a client has to send the head of a request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, idle keep-alive included; a request running then is
/// let finish.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// First and longest pause after an accept that failed for want of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Least time between two log lines about failed accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether an accept error means the process is out of something (descriptors,
/// memory), so that retrying at once would only spin.
pub fn out_of_resources(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let scarce = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];
    e.raw_os_error()
        .is_some_and(|n| scarce.contains(&Errno::from_raw_os_error(n)))
        || e.kind() == ErrorKind::OutOfMemory
}

/// Serves `app` on `listener` until `stop` turns true.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut backoff = BACKOFF_MIN;
    let mut accept_log = crate::logging::RateLimited::new(ACCEPT_LOG_EVERY);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = crate::stopped(&mut stop) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff = BACKOFF_MIN;
                stream
            }
            Err(e) => {
                if let Some(held) = accept_log.allow(1) {
                    tracing::warn!(error = %e, failures = held + 1, "admin HTTP cannot accept connections");
                }
                if out_of_resources(&e) {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ending = tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => true,
                _ = crate::stopped(&mut stop) => true,
            };
            if ending {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
            }
        });
    }
}
