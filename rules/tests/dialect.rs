//! Rule files in eKuiper's dialect mean what eKuiper means by the same text: strings in
//! double quotes, 0-based indexes and end-exclusive slices, `->` for struct fields,
//! column names in any case, and eKuiper's `substring`, `array_position`,
//! `array_remove`, `lpad` and `rpad`.

mod common;
use common::json_rows;

use std::io::Cursor;
use std::path::Path;

use fieldgate_rules::arrow::json::ReaderBuilder;
use fieldgate_rules::{RuleSet, StreamPipeline};
use serde_json::{Value, json};

const EKUIPER_STREAM: &str = "SET DIALECT = ekuiper;\n\
CREATE STREAM demo (deviceId STRING, ID BIGINT, color STRING, children ARRAY(BIGINT),\n\
  info STRUCT(site STRING, level BIGINT)) WITH (DATASOURCE=\"demo\", FORMAT=\"JSON\");\n";

async fn pipeline(text: &str) -> StreamPipeline {
    common::only_pipeline("ek.sql", text).await
}

async fn errors_of(text: &str) -> Vec<String> {
    let (set, mut errors) = RuleSet::parse(Path::new("ek.sql"), text);
    let (_, more) = set.build(|s| s == "out").await;
    errors.extend(more);
    errors.iter().map(|e| e.to_string()).collect()
}

fn input() -> Vec<Value> {
    vec![
        json!({"deviceId": "a", "ID": 1, "color": "red", "children": [10, 20, 30, 20],
               "info": {"site": "north", "level": 2}}),
        json!({"deviceId": "b", "ID": 2, "color": "say \"hi\"", "children": [5],
               "info": {"site": "south", "level": 1}}),
    ]
}

/// Runs `rule` (after the eKuiper stream) over [`input`] and returns its rows as JSON.
async fn rows(stream: &str, rule: &str) -> Vec<Value> {
    let mut p = pipeline(&format!("{stream}{rule}")).await;
    let text: String = input().iter().map(|v| format!("{v}\n")).collect();
    let mut reader = ReaderBuilder::new(p.stream.schema.clone())
        .build(Cursor::new(text))
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let (outs, errs) = p.push(&batch).await;
    assert!(errs.is_empty(), "{errs:?}");
    json_rows(&outs)
}

#[tokio::test]
async fn double_quotes_are_strings_and_names_match_in_any_case() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT id, DEVICEID AS dev FROM demo WHERE color = \"red\";",
    )
    .await;
    assert_eq!(got, [json!({"ID": 1, "dev": "a"})]);
    // A backslash escapes a quote inside a string.
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT deviceId FROM demo WHERE color = \"say \\\"hi\\\"\";",
    )
    .await;
    assert_eq!(got, [json!({"deviceId": "b"})]);
}

#[tokio::test]
async fn indexes_count_from_zero_and_slices_leave_out_their_end() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT children[0] AS first, children[-1] AS last, \
         children[1:3] AS mid, children[:2] AS head, children[2:] AS tail, \
         children[0:-1] AS but_last FROM demo WHERE deviceId = \"a\";",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"first": 10, "last": 20, "mid": [20, 30], "head": [10, 20],
                "tail": [30, 20], "but_last": [10, 20, 30]})
        ]
    );
}

#[tokio::test]
async fn the_arrow_reaches_into_structs() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT deviceId, info->site AS site FROM demo \
         WHERE info->level > 1;",
    )
    .await;
    assert_eq!(got, [json!({"deviceId": "a", "site": "north"})]);
}

#[tokio::test]
async fn string_and_array_functions_follow_ekuiper() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT substring(color, 1, 3) AS s, substring(color, 1) AS rest, \
         array_position(children, 30) AS p, array_position(children, 99) AS missing, \
         array_remove(children, 20) AS removed, lpad(color, 2) AS l, rpad(color, 1) AS r \
         FROM demo WHERE deviceId = \"a\";",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"s": "ed", "rest": "ed", "p": 2, "missing": -1, "removed": [10, 30],
                "l": "  red", "r": "red "})
        ]
    );
}

#[tokio::test]
async fn the_default_dialect_keeps_sql_meanings() {
    let stream = EKUIPER_STREAM
        .replace("SET DIALECT = ekuiper;\n", "")
        .replace('"', "'");
    let got = rows(
        &stream,
        "CREATE RULE r INTO out AS SELECT children[1] AS first, \"ID\" AS id FROM demo \
         WHERE color = 'red';",
    )
    .await;
    assert_eq!(got, [json!({"first": 10, "id": 1})]);
}

#[tokio::test]
async fn dialect_mistakes_are_reported() {
    let errors = errors_of("SET DIALECT = sparksql;\n").await;
    assert_eq!(
        errors,
        ["ek.sql:1:1: unknown dialect `sparksql`: the dialects are ekuiper and fieldgate"]
    );
    let late = format!("{}SET DIALECT = ekuiper;\n", EKUIPER_STREAM);
    let errors = errors_of(&late).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("ek.sql:4:1: SET DIALECT must be the first statement"),
        "{errors:?}"
    );
    let errors = errors_of(&format!(
        "{EKUIPER_STREAM}CREATE RULE r INTO out AS SELECT info->(1 + 2) FROM demo;"
    ))
    .await;
    assert!(
        errors.len() == 1 && errors[0].contains("`->` takes a field name on its right"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn the_default_dialect_warns_where_ekuiper_means_otherwise() {
    let stream = EKUIPER_STREAM
        .replace("SET DIALECT = ekuiper;\n", "")
        .replace('"', "'");
    let text = format!(
        "{stream}CREATE RULE r INTO out AS SELECT children[0] AS first, \"ID\", \
         substring(color, 1, 2) AS s, array_position(children, 5) AS p FROM demo;\n\
         CREATE RULE quiet INTO out AS SELECT children[-1] AS last, color FROM demo;"
    );
    let (set, errors) = RuleSet::parse(Path::new("ek.sql"), &text);
    assert!(errors.is_empty(), "{errors:?}");
    let warnings: Vec<String> = set.rules[0]
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    let expect = [
        ("ek.sql:3:", "`children[0]`: indexes count from 1 here"),
        (
            "ek.sql:3:",
            "\"ID\" is a name here; eKuiper reads it as the string 'ID'",
        ),
        (
            "ek.sql:3:",
            "SQL's substring(s, from, length) counts from 1",
        ),
        (
            "ek.sql:3:",
            "`array_position` is 1-based and null when absent here",
        ),
    ];
    assert_eq!(warnings.len(), expect.len(), "{warnings:?}");
    for ((at, words), w) in expect.iter().zip(&warnings) {
        assert!(w.starts_with(at) && w.contains(words), "{w} lacks {words}");
    }
    assert!(
        set.rules[1].warnings.is_empty(),
        "{:?}",
        set.rules[1].warnings
    );
    // In the eKuiper dialect the same text means eKuiper's: nothing to warn of.
    let (set, _) = RuleSet::parse(
        Path::new("ek.sql"),
        &format!(
            "{EKUIPER_STREAM}CREATE RULE r INTO out AS SELECT children[0] AS first FROM demo;"
        ),
    );
    assert!(set.rules[0].warnings.is_empty());
}
