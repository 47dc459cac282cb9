//! The event-time watermark of a stream.

/// Watermark = largest event time seen − allowed lateness. It never moves back.
#[derive(Debug, Clone)]
pub struct Watermark {
    lateness_ms: i64,
    max_seen: Option<i64>,
}

impl Watermark {
    /// A watermark trailing the largest event time by `lateness_ms` milliseconds, with
    /// no event seen yet.
    pub fn new(lateness_ms: i64) -> Self {
        Self {
            lateness_ms,
            max_seen: None,
        }
    }

    /// The current watermark in epoch ms; `None` before any event was seen.
    pub fn current(&self) -> Option<i64> {
        self.max_seen.map(|m| m.saturating_sub(self.lateness_ms))
    }

    /// Takes note of an event time; returns the (possibly advanced) watermark.
    pub fn observe(&mut self, ts: i64) -> Option<i64> {
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
        self.current()
    }

    /// Whether a window ending at `end` (exclusive) is complete and may be emitted.
    pub fn closes(&self, end: i64) -> bool {
        self.current().is_some_and(|w| w >= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_empty_and_never_moves_back() {
        let mut w = Watermark::new(2_000);
        assert_eq!(w.current(), None);
        assert!(!w.closes(i64::MIN + 1));
        assert_eq!(w.observe(10_000), Some(8_000));
        assert_eq!(
            w.observe(9_000),
            Some(8_000),
            "older events must not move it back"
        );
        assert_eq!(w.observe(12_500), Some(10_500));
    }

    #[test]
    fn closes_a_window_once_its_end_is_reached() {
        let mut w = Watermark::new(1_000);
        w.observe(10_999);
        assert!(!w.closes(10_000), "watermark 9999 < end 10000");
        w.observe(11_000);
        assert!(w.closes(10_000), "watermark 10000 >= end 10000");
        assert!(!w.closes(10_001));
    }
}
