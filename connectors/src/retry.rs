//! Reconnect and retry delays shared by the sinks and the Modbus lines.

/// Delay before reconnect attempt `attempt` (0-based): exponential from `min` up to `max`,
/// with full jitter in its upper half so a fleet does not reconnect in step.
pub fn backoff(
    attempt: u32,
    min: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    use rand::Rng;
    let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + rand::rng().random_range(std::time::Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::backoff;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            let d0 = backoff(0, min, max);
            assert!(d0 >= Duration::from_millis(50) && d0 <= min, "{d0:?}");
            let d3 = backoff(3, min, max);
            assert!(
                d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
                "{d3:?}"
            );
            let d30 = backoff(30, min, max);
            assert!(d30 >= max / 2 && d30 <= max, "{d30:?}");
        }
    }
}
