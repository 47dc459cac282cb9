//! Sending batches over HTTP, one request at a time so that results keep their order.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use tokio::time::Instant;

use super::{HttpSinkConfig, encoder};
use crate::codec::MessageIds;
use crate::retry::backoff;
use crate::sink::{Message, Sink, SinkError, SinkEvent};

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Most response text kept in a dead-letter line.
const MAX_RESPONSE_TEXT: usize = 2000;

/// What the HTTP sink counts.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests answered with 2xx.
    pub delivered_requests: AtomicU64,
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Results written to the dead-letter file after a 4xx answer.
    pub dead_lettered: AtomicU64,
}

/// POSTs queued results in batches.
pub struct HttpSink {
    name: String,
    cfg: HttpSinkConfig,
    client: reqwest::Client,
    auth: Option<String>,
    ids: MessageIds,
    events: VecDeque<SinkEvent>,
    /// After a failure: when to try again.
    retry_at: Option<Instant>,
    attempt: u32,
    counters: Arc<HttpCounters>,
}

impl HttpSink {
    /// A sink for `cfg`; fails when `auth_env` names a variable that is not set.
    pub fn new(name: &str, cfg: &HttpSinkConfig, ids: MessageIds) -> Result<Self, SinkError> {
        let auth = match (&cfg.auth, &cfg.auth_env) {
            (Some(a), _) => Some(a.expose().to_string()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                SinkError::Config(format!(
                    "environment variable `{var}` (auth_env) is not set"
                ))
            })?),
            (None, None) => None,
        };
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| SinkError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            client,
            auth,
            ids,
            events: VecDeque::from([SinkEvent::Ready]),
            retry_at: None,
            attempt: 0,
            counters: Arc::default(),
        })
    }

    /// The sink's counters.
    pub fn counters(&self) -> Arc<HttpCounters> {
        self.counters.clone()
    }

    fn fail(&mut self, reason: String, at_least: Duration) {
        let delay = backoff(self.attempt, self.cfg.retry_min, self.cfg.retry_max).max(at_least);
        self.attempt = self.attempt.saturating_add(1);
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.retry_at = Some(Instant::now() + delay);
        self.events
            .push_back(SinkEvent::Down(format!("{reason}; retrying in {delay:?}")));
    }

    /// Appends the refused batch, with the answer, to the dead-letter file.
    fn dead_letter(&self, status: StatusCode, text: &str, rows: &[Bytes]) -> std::io::Result<()> {
        if let Some(dir) = self
            .cfg
            .dead_letter
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.dead_letter)?;
        let cut: String = text.chars().take(MAX_RESPONSE_TEXT).collect();
        let response = serde_json::to_string(&cut).unwrap_or_else(|_| "\"\"".into());
        let sink = serde_json::to_string(&self.name).unwrap_or_else(|_| "\"\"".into());
        let status = status.as_u16();
        let mut buf = Vec::new();
        for r in rows {
            write!(
                buf,
                "{{\"sink\":{sink},\"status\":{status},\"response\":{response},\"message\":"
            )?;
            buf.extend_from_slice(r);
            buf.extend_from_slice(b"}\n");
        }
        f.write_all(&buf)?;
        f.sync_data()
    }
}

/// A `Retry-After` given in seconds.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

impl Sink for HttpSink {
    fn max_in_flight(&self) -> usize {
        self.cfg.batch_max
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        if self.retry_at.is_some() {
            return Err(SinkError::NotConnected);
        }
        let Some((first, last)) = msgs.first().zip(msgs.last()) else {
            return Ok(());
        };
        let rows: Vec<Bytes> = msgs
            .iter()
            .map(|m| self.ids.stamp(&m.payload, m.seq))
            .collect();
        let (body, content_type) = encoder::body(&rows, self.cfg.format);
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header(CONTENT_TYPE, content_type)
            .header(
                "X-Message-Ids",
                format!("{}..{}", self.ids.id(first.seq), self.ids.id(last.seq)),
            );
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        if let Some(a) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req = if self.cfg.gzip {
            let z = encoder::gzip(&body).map_err(|source| SinkError::Io {
                path: "gzip".into(),
                source,
            })?;
            req.header(CONTENT_ENCODING, "gzip").body(z)
        } else {
            req.body(body)
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.fail(format!("request failed: {e}"), Duration::ZERO);
                return Ok(());
            }
        };
        let status = resp.status();
        let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        if status.is_success() {
            self.attempt = 0;
            self.counters
                .delivered_requests
                .fetch_add(1, Ordering::Relaxed);
            self.events.push_back(SinkEvent::Confirmed(seqs));
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
        {
            let wait = retry_after(&resp).unwrap_or_default();
            self.fail(format!("answered {status}"), wait);
        } else if status.is_client_error() {
            let text = resp.text().await.unwrap_or_default();
            match self.dead_letter(status, &text, &rows) {
                Ok(()) => {
                    self.counters
                        .dead_lettered
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        sink = %self.name,
                        %status,
                        results = rows.len(),
                        file = %self.cfg.dead_letter.display(),
                        "receiver refused results; written to the dead-letter file"
                    );
                    self.events.push_back(SinkEvent::Confirmed(seqs));
                }
                Err(e) => self.fail(
                    format!("answered {status} and the dead-letter file failed: {e}"),
                    Duration::ZERO,
                ),
            }
        } else {
            self.fail(format!("answered {status}"), Duration::ZERO);
        }
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        crate::sink::queued_event(&mut self.events, &mut self.retry_at).await
    }
}
