//! Who may ask the admin endpoint what: the checks every request passes before a
//! handler sees it.
//!
//! - **Host.** The `Host` header must name the admin address, a loopback name or
//!   address, or one of `admin.allowed_hosts`; so a web page whose name was rebound to
//!   the box's address (DNS rebinding) is refused. When the endpoint listens on every
//!   interface and `allowed_hosts` is empty, any name is taken: a token guards it then.
//! - **Size.** A request body over [`MAX_BODY`] is refused before it is read, and a
//!   request that takes longer than [`REQUEST_TIMEOUT`] is answered 503.
//! - **Browsers.** Without a token, a browser on the box is the one client that could
//!   reach a loopback endpoint on someone else's behalf: state-changing requests are
//!   taken only as same-origin JSON (`Content-Type: application/json`, which a page
//!   cannot send cross-origin without a CORS preflight the endpoint never grants; no
//!   foreign `Origin` or `Referer`).
//! - **Token.** With a token configured, `/metrics` and `/api` need
//!   `Authorization: Bearer <token>`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Largest request body taken.
pub const MAX_BODY: u64 = 64 * 1024;
/// Longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the checks compare against.
#[derive(Debug)]
pub struct Policy {
    /// The admin address.
    pub listen: SocketAddr,
    /// Further names the `Host` header may carry.
    pub allowed_hosts: Vec<String>,
    /// The bearer token, when one is configured.
    pub token: Option<String>,
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// Checks every request: host, size, browser origin; then lets it run, bounded in time.
pub async fn check(State(p): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "a Host header is required");
    };
    if !p.host_allowed(host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this Host is not the admin endpoint's (see admin.allowed_hosts)",
        );
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_BODY) || headers.contains_key(header::TRANSFER_ENCODING) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are limited to 64 KiB and need a Content-Length",
        );
    }
    let changes_state = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes_state
        && p.token.is_none()
        && let Err(why) = same_origin_json(headers, host)
    {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the request took too long"),
    }
}

impl Policy {
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if let Ok(ip) = name.parse::<IpAddr>()
            && (ip.is_loopback() || ip == self.listen.ip())
        {
            return true;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        self.listen.ip().is_unspecified() && self.allowed_hosts.is_empty()
    }
}

/// The name part of a `Host` value: without the port, IPv6 brackets removed.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A state-changing request a page of another origin cannot have sent.
fn same_origin_json(headers: &HeaderMap, host: &str) -> Result<(), &'static str> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err("state-changing requests need Content-Type: application/json");
    }
    for h in [header::ORIGIN, header::REFERER] {
        let Some(v) = headers.get(&h) else { continue };
        let v = v.to_str().unwrap_or("");
        if !same_origin(v, host) {
            return Err("a request from another origin is refused");
        }
    }
    Ok(())
}

/// Whether an `Origin` or `Referer` value is `http://<host>` (the request's own).
fn same_origin(url: &str, host: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let normal = |a: &str| a.strip_suffix(":80").unwrap_or(a).to_ascii_lowercase();
    normal(authority) == normal(host)
}

/// Lets a request through when no token is set or it carries the token.
pub async fn require_token(State(p): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    let Some(token) = &p.token else {
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
    use axum::http::HeaderValue;

    use super::*;

    fn policy(listen: &str, allowed: &[&str]) -> Policy {
        Policy {
            listen: listen.parse().unwrap(),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            token: None,
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"s3cret", b"s3cre"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn hosts_must_name_the_endpoint() {
        let p = policy("127.0.0.1:9180", &["gw1.plant.local"]);
        for ok in [
            "127.0.0.1:9180",
            "localhost",
            "LOCALHOST:8080",
            "[::1]:9180",
            "127.0.0.2",
            "gw1.plant.local:9180",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9180",
            "10.0.0.5:9180",
            "localhost.evil.example",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let p = policy("10.0.0.5:9180", &[]);
        assert!(p.host_allowed("10.0.0.5:9180"));
        assert!(!p.host_allowed("10.0.0.6"));
        // On every interface any name goes (a token is required there), unless listed.
        assert!(policy("0.0.0.0:9180", &[]).host_allowed("fieldgate.default.svc"));
        assert!(!policy("0.0.0.0:9180", &["gw1"]).host_allowed("evil.example"));
    }

    #[test]
    fn state_changes_need_same_origin_json() {
        let mut h = HeaderMap::new();
        assert!(
            same_origin_json(&h, "127.0.0.1:9180").is_err(),
            "no content type"
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(same_origin_json(&h, "127.0.0.1:9180").is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(same_origin_json(&h, "127.0.0.1:9180").is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9180"),
        );
        assert!(same_origin_json(&h, "127.0.0.1:9180").is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin_json(&h, "127.0.0.1:9180").is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:3000"),
        );
        assert!(
            same_origin_json(&h, "localhost:9180").is_err(),
            "another port is another origin"
        );
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin_json(&h, "localhost:9180").is_err());
        h.remove(header::ORIGIN);
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://evil.example/page"),
        );
        assert!(same_origin_json(&h, "localhost:9180").is_err());
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://localhost:9180/api/rules"),
        );
        assert!(same_origin_json(&h, "localhost:9180").is_ok());
    }
}
