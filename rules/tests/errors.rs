//! Bad stream and rule declarations give errors with file, line and column.

use std::path::Path;

use fieldgate_rules::RuleSet;

/// Parses and builds `text`; returns every error as `file:line:col: message`.
async fn errors_of(text: &str) -> Vec<String> {
    let (set, mut errors) = RuleSet::parse(Path::new("rules/bad.sql"), text);
    let (_, build_errors) = set.build(|s| s == "cloud").await;
    errors.extend(build_errors);
    errors.iter().map(|e| e.to_string()).collect()
}

const GOOD_STREAM: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE)\nWITH (DATASOURCE = 'a/+', TIMESTAMP = 'ts');\n";

async fn assert_error(text: &str, at: &str, words: &[&str]) {
    let errs = errors_of(text).await;
    assert_eq!(
        errs.len(),
        1,
        "expected one error for:\n{text}\ngot {errs:?}"
    );
    let e = &errs[0];
    assert!(
        e.starts_with(&format!("rules/bad.sql:{at}: ")),
        "position of {e:?}, expected {at}"
    );
    for w in words {
        assert!(e.contains(w), "{e:?} should mention {w:?}");
    }
}

#[tokio::test]
async fn modbus_stream_declarations() {
    let (set, errors) = RuleSet::parse(
        Path::new("rules/plc.sql"),
        "CREATE STREAM line1 (device STRING, timestamp BIGINT, speed DOUBLE)\n\
         WITH (TYPE = 'modbus', DATASOURCE = 'plc1/fast', TIMESTAMP = 'timestamp');",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        set.streams[0].source,
        fieldgate_rules::Source::Modbus {
            device: "plc1".into(),
            group: "fast".into()
        }
    );
    assert_eq!(
        (
            set.streams[0].source_pos.line,
            set.streams[0].source_pos.column
        ),
        (2, 37)
    );
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'modbus', DATASOURCE = 'plc1');",
        "1:64",
        &["device/group", "plc1"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'modbus', DATASOURCE = 'a/b/c');",
        "1:64",
        &["device/group"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'opc', DATASOURCE = 'a/b');",
        "1:41",
        &["opc", "mqtt, modbus or opcua"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'modbus', FORMAT = 'json', DATASOURCE = 'a/b');",
        "1:60",
        &["FORMAT"],
    )
    .await;
}

#[tokio::test]
async fn opcua_stream_declarations() {
    let (set, errors) = RuleSet::parse(
        Path::new("rules/press.sql"),
        "CREATE STREAM press (temp DOUBLE, temp_source_time TIMESTAMP)\n\
         WITH (TYPE = 'OPCUA', DATASOURCE = 'line1/press', TIMESTAMP = 'temp_source_time');",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        set.streams[0].source,
        fieldgate_rules::Source::Opcua {
            server: "line1".into(),
            group: "press".into()
        }
    );
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'opcua', DATASOURCE = 'line1');",
        "1:63",
        &["server/group", "line1", "opcua.servers"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (TYPE = 'opcua', FORMAT = 'json', DATASOURCE = 'a/b');",
        "1:59",
        &["FORMAT", "OPC UA"],
    )
    .await;
}

#[tokio::test]
async fn stream_declaration_errors() {
    assert_error(
        "CREATE STREAM t (a STRNG) WITH (DATASOURCE = 'x');",
        "1:20",
        &["unknown type", "STRNG"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT)\n  WITH (DATASOURCE = 'x', COLOUR = 'red');",
        "2:27",
        &["COLOUR"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (DATASOURCE = 'a/#/b');",
        "1:47",
        &["#"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (FORMAT = 'json');",
        "1:15",
        &["DATASOURCE"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (DATASOURCE = 'x', TIMESTAMP = 'b');",
        "1:64",
        &["TIMESTAMP column `b`"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a STRING) WITH (DATASOURCE = 'x', TIMESTAMP = 'a');",
        "1:64",
        &["cannot hold"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT) WITH (DATASOURCE = 'x', LATENESS = 'soon');",
        "1:63",
        &["LATENESS"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (a BIGINT, a STRING) WITH (DATASOURCE = 'x');",
        "1:28",
        &["twice"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_nested_field_is_pointed_at() {
    assert_error(
        "CREATE STREAM t (ts BIGINT, r STRUCT(site STRING)) WITH (DATASOURCE = 'x');\n\
         CREATE RULE bad INTO cloud AS\nSELECT r['site'] AS site,\n       r['nope'] AS x FROM t;",
        "4:10",
        &["nope", "rule `bad`"],
    )
    .await;
}

#[tokio::test]
async fn nested_type_errors() {
    assert_error(
        "CREATE STREAM t (a BIGINT,\n  r STRUCT(site STRING, temp DUBLE)) WITH (DATASOURCE = 'x');",
        "2:30",
        &["unknown type `DUBLE`", "field `r.temp`"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (r STRUCT<site STRING, temp DOUBLE) WITH (DATASOURCE = 'x');",
        "1:51",
        &["`,` or `>`", "STRUCT< opened at 1:26"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (tags ARRAY(STRING, n BIGINT) WITH (DATASOURCE = 'x');",
        "1:35",
        &["`)` to close the ARRAY( opened at 1:28"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (r STRUCT(a BIGINT, b STRING, \"a\" DOUBLE)) WITH (DATASOURCE = 'x');",
        "1:47",
        &["field `a` is declared twice in `r`"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (r STRUCT()) WITH (DATASOURCE = 'x');",
        "1:27",
        &["at least one field"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (m ARRAY<ARRAY<STRUCT<x BIGINT>>) WITH (DATASOURCE = 'x');",
        "1:49",
        &["`>` to close the ARRAY< opened at 1:25", "found `)`"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (r STRUCT(ts BIGINT)) WITH (DATASOURCE = 'x', TIMESTAMP = 'r.ts');",
        "1:75",
        &["inside the nested column `r`", "top-level"],
    )
    .await;
    assert_error(
        "CREATE STREAM t (r STRUCT(ts BIGINT)) WITH (DATASOURCE = 'x', TIMESTAMP = 'r');",
        "1:75",
        &["is a STRUCT", "top-level"],
    )
    .await;
}

#[tokio::test]
async fn rule_errors() {
    let at = |line: u32, col: u32| format!("{}:{col}", line + 2);
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS\nSELECT device FROM t WHERE;"),
        &at(2, 27),
        &["Expected", "found: EOF"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r cloud AS SELECT 1 FROM t;"),
        &at(1, 15),
        &["expected INTO"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO nowhere AS SELECT device FROM t;"),
        &at(1, 13),
        &["unknown sink `nowhere`"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device FROM u;"),
        &at(1, 29),
        &["unknown stream `u`"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS\nSELECT device, count(*) FROM t GROUP BY device;"),
        &at(2, 1),
        &["without a window"],
    )
    .await;
    assert_error(
        &rule(
            "CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY TUMBLINGWINDOW(weeks, 1);",
        ),
        &at(1, 76),
        &["unknown time unit"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY TUMBLINGWINDOW(ss, 0);"),
        &at(1, 80),
        &["positive"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT pressure FROM t;"),
        &at(1, 36),
        &["pressure"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device FROM t; extra"),
        &at(1, 51),
        &["expected CREATE", "extra"],
    )
    .await;
}

#[tokio::test]
async fn header_mistakes_are_named() {
    let at = |line: u32, col: u32| format!("{}:{col}", line + 2);
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO AS SELECT device FROM t;"),
        &at(1, 20),
        &["sink name is missing after INTO"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE INTO cloud AS SELECT device FROM t;"),
        &at(1, 13),
        &["rule's name is missing"],
    )
    .await;
    // A rule may still be called `into`.
    assert!(
        errors_of(&rule(
            "CREATE RULE into INTO cloud AS SELECT device FROM t;"
        ))
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn a_misspelt_clause_keyword_is_named() {
    let at = |line: u32, col: u32| format!("{}:{col}", line + 2);
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS\nSELECT device FROM t GRUOP BY device;"),
        &at(2, 22),
        &["`GRUOP` is not a keyword", "GROUP BY"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device FROM t WEHRE temp > 0;"),
        &at(1, 50),
        &["`WEHRE`", "WHERE"],
    )
    .await;
    // A real alias followed by something unexpected keeps the plain message.
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device FROM t readings BY device;"),
        &at(1, 59),
        &["unexpected `BY`"],
    )
    .await;
}

#[tokio::test]
async fn functions_of_other_places_are_explained() {
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device FROM t WHERE tumblingwindow(ss, 10) > 0;"),
        "3:56",
        &["a window belongs in GROUP BY", "TUMBLINGWINDOW(ss, 10)"],
    )
    .await;
    let errs = errors_of(&rule(
        "CREATE RULE r INTO cloud AS SELECT get_keyed_state('k', 'bigint', 0) AS v FROM t;",
    ))
    .await;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("eKuiper's function `get_keyed_state` is not supported yet"),
        "{errs:?}"
    );
    assert!(!errs[0].contains("Did you mean"), "{errs:?}");
    // SQL's own window functions would run per batch: refused where the call stands.
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT row_number() OVER (PARTITION BY device ORDER BY ts) AS n FROM t;"),
        "3:36",
        &["`row_number(...) OVER (...)` is not supported", "one batch", "lag, latest"],
    )
    .await;
    // Over the rows of a window it is what it says.
    assert!(
        errors_of(&rule(
            "CREATE RULE r INTO cloud AS SELECT device, avg(temp) AS a, \
             row_number() OVER (ORDER BY avg(temp) DESC) AS place \
             FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);"
        ))
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn an_oversized_window_length_says_so() {
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY TUMBLINGWINDOW(ss, 99999999999999999999);"),
        "3:80",
        &["too large", "at most"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY TUMBLINGWINDOW(dd, 999999999999999);"),
        "3:80",
        &["too large"],
    )
    .await;
}

#[tokio::test]
async fn an_unclosed_comment_is_reported_where_it_opens() {
    assert_error(
        &format!("{GOOD_STREAM}/* the cloud rule,\n   not finished\nCREATE RULE r INTO cloud AS SELECT device FROM t;"),
        "3:1",
        &["never closed", "/*"],
    )
    .await;
    // Comment markers inside strings and line comments do not count.
    assert!(
        errors_of(&format!(
            "{GOOD_STREAM}-- a line comment with /* in it\nCREATE RULE r INTO cloud AS SELECT device FROM t WHERE device <> '/*';"
        ))
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn window_errors() {
    let at = |line: u32, col: u32| format!("{}:{col}", line + 2);
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule(
            "CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY HOPPINGWINDOW(ss, 5, 10);",
        ),
        &at(1, 61),
        &["hop", "must not exceed"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY COUNTWINDOW(0);"),
        &at(1, 73),
        &["positive"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY SESSIONWINDOW(ss, 10);"),
        &at(1, 61),
        &["max duration, gap"],
    )
    .await;
    assert_error(
        &rule(
            "CREATE RULE r INTO cloud AS SELECT count(*) FROM t GROUP BY TUMBLE(INTERVAL 'soon');",
        ),
        &at(1, 77),
        &["not an interval"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT count(*) FROM t\nGROUP BY TUMBLINGWINDOW(ss, 1), COUNTWINDOW(2);"),
        &at(2, 33),
        &["only one window"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud LATE INTO cloud AS SELECT device FROM t;"),
        &at(1, 13),
        &["LATE INTO needs a time window"],
    )
    .await;
    assert_error(
        &rule("CREATE RULE r INTO cloud LATE INTO dlq AS SELECT count(*) FROM t GROUP BY TUMBLINGWINDOW(ss, 1);"),
        &at(1, 13),
        &["unknown sink `dlq`"],
    )
    .await;
    // Windows on event time need a TIMESTAMP column... unless they run on arrival time.
    let errs = errors_of(
        "CREATE STREAM p (a BIGINT) WITH (DATASOURCE = 'x');\n\
         CREATE RULE r INTO cloud AS SELECT count(*) AS n FROM p GROUP BY TUMBLINGWINDOW(ss, 1);",
    )
    .await;
    assert!(
        errs.is_empty(),
        "processing-time windows are allowed: {errs:?}"
    );
}

#[tokio::test]
async fn one_bad_rule_does_not_stop_the_others() {
    let text = format!(
        "{GOOD_STREAM}CREATE RULE good INTO cloud AS SELECT device FROM t;\n\
         CREATE RULE bad INTO cloud AS SELECT nope FROM t;\n\
         CREATE RULE good2 INTO cloud AS SELECT temp FROM t WHERE temp > 1;\n"
    );
    let (set, errors) = RuleSet::parse(Path::new("x.sql"), &text);
    assert!(errors.is_empty());
    let (pipelines, errors) = set.build(|_| true).await;
    assert_eq!(errors.len(), 1);
    let names: Vec<&str> = pipelines[0].rules.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["good", "good2"]);
}

#[tokio::test]
async fn a_rule_on_a_broken_stream_is_told_so() {
    let errs = errors_of(
        "CREATE STREAM t (device STRING, temp DUBBLE) WITH (DATASOURCE = 'a/+');\n\
         CREATE RULE r INTO cloud AS SELECT device FROM t;\n\
         CREATE RULE s INTO cloud AS SELECT device FROM nowhere;\n",
    )
    .await;
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].contains("DUBBLE"), "{errs:?}");
    assert!(
        errs[1].starts_with("rules/bad.sql:2:")
            && errs[1].contains("reads stream `t`, whose declaration has an error"),
        "{errs:?}"
    );
    assert!(
        errs[2].contains("reads unknown stream `nowhere`"),
        "{errs:?}"
    );
}

#[tokio::test]
async fn planning_errors_are_explained() {
    let rule = |sql: &str| format!("{GOOD_STREAM}{sql}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT sum(device) AS x FROM t GROUP BY TUMBLINGWINDOW(ss, 10);"),
        "3:36",
        &["function 'sum' does not take (Utf8)", "sum(Float64)", "CAST"],
    )
    .await;
    let errs = errors_of(&rule(
        "CREATE RULE r INTO cloud AS SELECT sum(device) AS x FROM t GROUP BY TUMBLINGWINDOW(ss, 10);",
    ))
    .await;
    assert!(!errs[0].contains("bug report"), "{errs:?}");
    assert_error(
        &rule("CREATE RULE r INTO cloud AS SELECT device, temp, count(*) AS n FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);"),
        "3:44",
        &["column 'temp' is neither in GROUP BY nor inside an aggregate"],
    )
    .await;
    let errs = errors_of(&rule(
        "CREATE RULE r INTO cloud AS SELECT device, temp, count(*) AS n FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);",
    ))
    .await;
    assert!(!errs[0].contains("wildcard"), "{errs:?}");
}

#[tokio::test]
async fn unsupported_sql_and_internal_errors_are_explained() {
    let stream = "CREATE STREAM t (device STRING, tags ARRAY(STRING))\n\
                  WITH (DATASOURCE = 'a/+');\n";
    let errs = errors_of(&format!(
        "{stream}CREATE RULE r INTO cloud AS SELECT tags[2:] AS rest FROM t;"
    ))
    .await;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("a slice needs both bounds here: write tags[2:cardinality(tags)]"),
        "{errs:?}"
    );
    assert!(!errs[0].contains("not implemented"), "{errs:?}");
}
