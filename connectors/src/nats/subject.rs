//! NATS subjects: checking a configured subject template, and whether a stream's
//! subject filters take every subject the template can render.

/// A template token a result fills in.
const VARIABLES: [&str; 2] = ["{rule}", "{device}"];

/// Checks a configured template: dot-separated non-empty tokens, no wildcards, no
/// white space.
pub fn validate(template: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`subject` = {template:?}: {why}"));
    if template.is_empty() {
        return bad("empty");
    }
    if template.chars().any(char::is_whitespace) {
        return bad("white space in a subject");
    }
    for token in template.split('.') {
        if token.is_empty() {
            return bad("an empty token (two dots, or a dot at an end)");
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return bad("a wildcard (`*`, `>`) in a subject one publishes to");
        }
    }
    Ok(())
}

/// The subject pattern a stream must cover: the template (with `{gateway}` filled in)
/// where a token holding `{rule}` or `{device}` may be anything.
fn pattern(template: &str) -> Vec<Option<&str>> {
    template
        .split('.')
        .map(|t| (!VARIABLES.iter().any(|v| t.contains(v))).then_some(t))
        .collect()
}

/// Whether one stream subject filter takes every subject of the pattern.
fn covers(filter: &str, pattern: &[Option<&str>]) -> bool {
    let mut tokens = filter.split('.');
    for (i, want) in pattern.iter().enumerate() {
        match tokens.next() {
            Some(">") => return i < pattern.len(),
            Some("*") => {}
            Some(literal) if *want == Some(literal) => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Whether some of a stream's subject filters take every subject `template` (its
/// `{gateway}` filled in) renders. A rule name with dots adds tokens, which only a
/// `>` filter takes; the check assumes one token per variable.
pub fn stream_takes(filters: &[String], template: &str) -> bool {
    let p = pattern(template);
    filters.iter().any(|f| covers(f, &p))
}

/// The subject filter `create_stream` gives a new stream: the template with its
/// variable tokens as `*`.
pub fn filter_for(template: &str) -> String {
    pattern(template)
        .iter()
        .map(|t| t.unwrap_or("*"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_subjects_without_wildcards() {
        assert!(validate("fieldgate.{gateway}.{rule}").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a.b*"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stream_must_take_every_rule_and_device() {
        let t = "fg.gw1.{rule}.{device}";
        let takes =
            |f: &[&str]| stream_takes(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>(), t);
        assert!(takes(&["fg.>"]));
        assert!(takes(&["fg.gw1.>"]));
        assert!(takes(&["fg.*.*.*"]));
        assert!(takes(&["other.>", "fg.gw1.*.*"]));
        assert!(!takes(&["fg.gw1.hot.*"]), "one rule only");
        assert!(!takes(&["fg.gw2.>"]), "another gateway");
        assert!(!takes(&["fg.gw1.*"]), "too short");
        assert!(!takes(&["fg.gw1.*.*.*"]), "too long");
        assert!(!takes(&["fg.gw1.*.*.>"]), "`>` needs one token more");
        assert!(!takes(&[]));
        assert_eq!(filter_for(t), "fg.gw1.*.*");
        assert_eq!(filter_for("fg.{rule}-x.raw"), "fg.*.raw");
    }
}
