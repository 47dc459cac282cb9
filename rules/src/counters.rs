//! What each rule counts while it runs, kept in atomics so that the operations surface
//! can read them at any time without stopping the rule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Per-rule counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Rows the rule was offered.
    pub records_in: AtomicU64,
    /// Result rows the rule produced.
    pub records_out: AtomicU64,
    /// Rows that arrived after their window was complete.
    pub late: AtomicU64,
    /// Rows without an event time, and failed executions.
    pub errors: AtomicU64,
    /// Partition keys of analytic calls forgotten: idle too long, or too many.
    pub keys_forgotten: AtomicU64,
    /// Partition keys analytic calls hold state for, after the last batch.
    pub analytic_keys: AtomicU64,
    /// Rows the rule failed on and left out (counted in `errors` too).
    pub failed_rows: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
    /// Time the rule took per micro-batch.
    pub latency: LatencyHistogram,
    /// Why the rule stopped for good (a panic in its execution), once it did.
    pub failure: std::sync::OnceLock<String>,
}

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le` values).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A cumulative-ready histogram of durations: a count per bucket (non-cumulative; the
/// last one counts what exceeded every bound), their number and their sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A reading of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// `(upper bound in µs, observations at or below it)`, cumulative, ascending.
    pub cumulative: Vec<(u64, u64)>,
    /// Number of observations, those above every bound included.
    pub count: u64,
    /// Sum of the observed durations, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts so far, cumulative per bound as Prometheus expects.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let cumulative = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(bound, c)| {
                running += c.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        LatencySnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::default();
        for us in [10, 50, 51, 900, 1_000, 300_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum_ns, (10 + 50 + 51 + 900 + 1_000 + 300_000) * 1_000);
        let at = |bound: u64| s.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(50), 2, "10 and 50 µs");
        assert_eq!(at(100), 3);
        assert_eq!(at(500), 3);
        assert_eq!(at(1_000), 5);
        assert_eq!(at(250_000), 5, "300 ms is above every bound");
    }
}
