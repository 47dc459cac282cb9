//! MQTT topic filter matching (`+` one level, `#` the rest).

/// Whether `topic` matches the subscription `filter`, as MQTT 3.1.1 §4.7 defines:
/// `+` matches one level, a trailing `#` matches its parent and everything below, and
/// wildcards at the first level do not match topics starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn wildcards() {
        assert!(topic_matches(
            "sensors/+/telemetry",
            "sensors/dev1/telemetry"
        ));
        assert!(!topic_matches("sensors/+/telemetry", "sensors/dev1/status"));
        assert!(!topic_matches(
            "sensors/+/telemetry",
            "sensors/a/b/telemetry"
        ));
        assert!(topic_matches("sensors/#", "sensors"));
        assert!(topic_matches("sensors/#", "sensors/a/b"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/broker"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert!(
            topic_matches("+/+", "/x"),
            "an empty level is still a level"
        );
    }
}
