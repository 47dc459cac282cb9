//! Property tests: whatever text a rule file holds, parsing and planning it answers
//! with declarations or errors (each with a position inside the text), never a panic.

use std::path::Path;

use fieldgate_rules::RuleSet;
use proptest::prelude::*;

const VALID: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE, tags ARRAY(STRING))\n\
WITH (DATASOURCE = 'a/+', FORMAT = 'json', TIMESTAMP = 'ts', LATENESS = '2s');\n\
CREATE RULE hot INTO cloud AS SELECT device, temp FROM t WHERE temp > 30;\n\
CREATE RULE avg10 INTO cloud AS SELECT device, window_start, avg(temp) AS a FROM t\n\
GROUP BY device, TUMBLINGWINDOW(ss, 10);\n";

/// Pieces of the rule language, shuffled into text that is close to valid.
fn sqlish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "CREATE ",
        "STREAM ",
        "RULE ",
        "INTO ",
        "AS ",
        "SELECT ",
        "FROM ",
        "WHERE ",
        "GROUP BY ",
        "WITH ",
        "(",
        ")",
        ",",
        ";",
        "'",
        "\"",
        "=",
        "t ",
        "cloud ",
        "device ",
        "ts ",
        "*",
        "STRING",
        "BIGINT",
        "ARRAY(",
        "STRUCT(",
        "DATASOURCE = 'a/+'",
        "TIMESTAMP = 'ts'",
        "TUMBLINGWINDOW(ss, 10)",
        "HOPPINGWINDOW(ss, 10, 5)",
        "COUNTWINDOW(3)",
        "avg(",
        "\n",
        "-- note\n",
        "/*",
        "*/",
        "1e309",
        "'\\'",
        "\u{0}",
        "é",
    ]);
    prop::collection::vec(piece, 0..80).prop_map(|p| p.concat())
}

/// Lines and columns of every error fall inside the text.
fn positions_inside(text: &str, errors: &[fieldgate_rules::SqlError]) -> Result<(), String> {
    let lines = text.lines().count().max(1) + 1;
    for e in errors {
        let s = e.to_string();
        let line: usize = s
            .split(':')
            .nth(1)
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("no line in {s:?}"))?;
        if line > lines {
            return Err(format!("{s:?} is past the end ({lines} lines)"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_parses_to_declarations_or_positioned_errors(text in ".{0,400}") {
        let (_, errors) = RuleSet::parse(Path::new("rules/x.sql"), &text);
        prop_assert!(positions_inside(&text, &errors).is_ok(), "{:?}", positions_inside(&text, &errors));
    }

    #[test]
    fn rule_language_pieces_parse_without_panicking(text in sqlish()) {
        let (_, errors) = RuleSet::parse(Path::new("rules/x.sql"), &text);
        prop_assert!(positions_inside(&text, &errors).is_ok(), "{:?}", positions_inside(&text, &errors));
    }
}

proptest! {
    // Planning runs DataFusion: fewer cases.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_valid_file_with_bytes_changed_parses_and_plans_without_panicking(
        edits in prop::collection::vec((0usize..VALID.len(), prop::sample::select(vec!["", " ", "(", ")", ",", "'", "x", "9", ";", "\n", "SELECT"])), 1..4)
    ) {
        let mut text = VALID.to_string();
        for (at, with) in edits {
            let at = (0..=at.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + 1..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(at..end, with);
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (set, mut errors) = RuleSet::parse(Path::new("rules/x.sql"), &text);
        let (_, build) = runtime.block_on(set.build(|s| s == "cloud"));
        errors.extend(build);
        prop_assert!(positions_inside(&text, &errors).is_ok(), "{:?}", positions_inside(&text, &errors));
    }
}
