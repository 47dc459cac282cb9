//! Rate-limited logging: at most one line per interval for a repeated event, saying how
//! many were held back, for the gateway's and the connectors' own warnings.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs at most one line per interval, counting the events it held back: for the
/// gateway's own repeated messages.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimited {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `n` more events happened: when they may be logged now (in one line), returns how
    /// many were held back before them; otherwise holds them back.
    pub fn allow(&mut self, n: u64) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.held += n;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// A [`RateLimited`] that can be a `static`, shared by every thread that logs one kind
/// of event.
#[derive(Debug)]
pub struct SharedRateLimited(Mutex<RateLimited>);

impl SharedRateLimited {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self(Mutex::new(RateLimited::new(every)))
    }

    /// As [`RateLimited::allow`].
    pub fn allow(&self, n: u64) -> Option<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).allow(n)
    }
}
