//! Configuration of the HTTP sink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// How a batch is written in the request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// One JSON object per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// One JSON array of objects (`application/json`).
    JsonArray,
}

/// `[sinks.NAME]` with `type = "http"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where batches are POSTed (`http://` or `https://`).
    pub url: String,
    /// How a batch is written in the body; `ndjson` by default.
    #[serde(default)]
    pub format: HttpFormat,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Value of the `Authorization` header, e.g. `"Bearer abc"`.
    #[serde(default)]
    pub auth: Option<Secret>,
    /// Name of an environment variable holding the `Authorization` value instead.
    #[serde(default)]
    pub auth_env: Option<String>,
    /// Further request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Results per request, at most.
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Longest a request may take, from connecting to the end of the answer; 10s by
    /// default.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay; doubles per failed attempt up to `retry_max`.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest retry delay; 60s by default.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// JSONL file receiving batches the receiver refused with a 4xx answer.
    pub dead_letter: PathBuf,
}

fn default_batch() -> usize {
    500
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_min() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

impl HttpSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "`url` = {:?} must start with http:// or https://",
                self.url
            ));
        }
        if self.auth.is_some() && self.auth_env.is_some() {
            return Err("set `auth` or `auth_env`, not both".into());
        }
        if self.batch_max == 0 {
            return Err("`batch_max` must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("`timeout` must be positive".into());
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return Err("`retry_min` must be positive and not above `retry_max`".into());
        }
        Ok(())
    }

    /// Takes a relative dead-letter path from `base`.
    pub fn rebase(&mut self, base: &Path) {
        self.dead_letter = base.join(&self.dead_letter);
    }
}
