//! Window specifications and the assignment of event times to windows.

/// A window declared in a rule's GROUP BY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows `[k·size, (k+1)·size)` in event time.
    Tumbling { size_ms: i64 },
}

impl WindowSpec {
    /// The start of the tumbling window that holds `ts` (epoch ms), aligned to the epoch.
    pub fn window_start(&self, ts: i64) -> i64 {
        match *self {
            WindowSpec::Tumbling { size_ms } => ts.div_euclid(size_ms) * size_ms,
        }
    }

    /// The exclusive end of the window starting at `start`.
    pub fn window_end(&self, start: i64) -> i64 {
        match *self {
            WindowSpec::Tumbling { size_ms } => start.saturating_add(size_ms),
        }
    }
}

/// Milliseconds in one unit of eKuiper's time-unit spelling (`ms`, `ss`, `mi`, `hh`, `dd`).
pub fn unit_millis(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "ss" => 1_000,
        "mi" => 60_000,
        "hh" => 3_600_000,
        "dd" => 86_400_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_assignment_is_epoch_aligned_and_half_open() {
        let w = WindowSpec::Tumbling { size_ms: 10_000 };
        assert_eq!(w.window_start(0), 0);
        assert_eq!(w.window_start(9_999), 0);
        assert_eq!(w.window_start(10_000), 10_000);
        assert_eq!(w.window_start(1_764_000_012_345), 1_764_000_010_000);
        assert_eq!(w.window_end(10_000), 20_000);
    }

    #[test]
    fn negative_times_fall_in_the_window_below() {
        let w = WindowSpec::Tumbling { size_ms: 1_000 };
        assert_eq!(w.window_start(-1), -1_000);
        assert_eq!(w.window_start(-1_000), -1_000);
        assert_eq!(w.window_start(-1_001), -2_000);
    }

    #[test]
    fn units() {
        assert_eq!(unit_millis("ss"), Some(1_000));
        assert_eq!(unit_millis("MI"), Some(60_000));
        assert_eq!(unit_millis("dd"), Some(86_400_000));
        assert_eq!(unit_millis("week"), None);
    }
}
