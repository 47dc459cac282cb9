//! The HTTP sink: batches of results POSTed as NDJSON or a JSON array, optionally
//! gzipped, deleted from the queue on a 2xx answer. 5xx answers, timeouts and network
//! errors are retried with exponential backoff and jitter (429 and 503 honour
//! `Retry-After`); any other 4xx answer sends the batch, with the response, to a
//! dead-letter file and counts it, since sending it again would fail again.

mod config;
mod encoder;
mod sink;

pub use config::{HttpFormat, HttpSinkConfig};
pub use sink::{HttpCounters, HttpSink};
