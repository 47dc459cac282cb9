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
    common::errors("ek.sql", text, "out").await
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
    rows_of(&format!("{stream}{rule}"), &input()).await
}

/// Runs a rule file over payloads, as one batch, and returns the rows as JSON.
async fn rows_of(text: &str, payloads: &[Value]) -> Vec<Value> {
    let mut p = pipeline(text).await;
    let text: String = payloads.iter().map(|v| format!("{v}\n")).collect();
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
async fn unnamed_items_are_named_as_ekuiper_names_them() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT deviceId, demo.color, info->site, children[0], \
         abs(ID), ID + 1, children[1], children[1:] FROM demo WHERE deviceId = \"a\";",
    )
    .await;
    // A field is named by its last name, an index or slice by what it indexes, a call by
    // its function; the rest (and a repeated name) are numbered.
    assert_eq!(
        got,
        [
            json!({"deviceId": "a", "color": "red", "site": "north", "children": 10,
                "abs": 1, "kuiper_field_0": 2, "kuiper_field_1": 20,
                "kuiper_field_2": [20, 30, 20]})
        ]
    );
}

#[tokio::test]
async fn an_alias_stands_for_its_expression_in_the_other_items() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT ID + 1 AS sum1, sum1 + 1 AS sum2, \
         sum2 * 10 AS sum3 FROM demo WHERE deviceId = \"a\";",
    )
    .await;
    assert_eq!(got, [json!({"sum1": 2, "sum2": 3, "sum3": 30})]);
    // In its own item a name is the column; in the others, the alias.
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT ID + 1 AS ID, ID + 2 AS sum2 FROM demo \
         WHERE deviceId = \"a\";",
    )
    .await;
    assert_eq!(got, [json!({"ID": 2, "sum2": 4})]);
    // An aggregate's alias is not put inside another aggregate.
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT max(ID) AS ID, min(ID) AS low, ID * 10 AS top \
         FROM demo GROUP BY COUNTWINDOW(2);",
    )
    .await;
    assert_eq!(got, [json!({"ID": 2, "low": 1, "top": 20})]);
    // An alias keeps its case, and HAVING and ORDER BY find it in any case.
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT deviceId, sum(ID) AS idSum FROM demo \
         GROUP BY deviceId, COUNTWINDOW(2) HAVING IDSUM > 0 ORDER BY idsum DESC;",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"deviceId": "b", "idSum": 2}),
            json!({"deviceId": "a", "idSum": 1})
        ]
    );
}

#[tokio::test]
async fn changed_cols_names_its_own_columns() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT CHANGED_COLS(\"c_\", true, color, ID) FROM demo;",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"c_color": "red", "c_ID": 1}),
            json!({"c_color": "say \"hi\"", "c_ID": 2})
        ]
    );
}

const PEOPLE: &str = "SET DIALECT = ekuiper;\n\
CREATE STREAM demo (name STRUCT(first STRING, last STRING),\n\
  friends ARRAY(STRUCT(first STRING, age BIGINT))) WITH (DATASOURCE=\"people\");\n";

#[tokio::test]
async fn a_field_of_a_slice_is_taken_from_every_element() {
    let payload = json!({"name": {"first": "Tom", "last": "Anderson"},
        "friends": [{"first": "Dale", "age": 44}, null, {"first": "Jane", "age": 47}]});
    let got = rows_of(
        &format!(
            "{PEOPLE}CREATE RULE r INTO out AS SELECT friends[*]->first, \
             friends[:1]->age AS ages, friends[1:]->first[-1] AS last_first, \
             demo.name.first AS fname FROM demo;"
        ),
        &[payload],
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"first": ["Dale", null, "Jane"], "ages": [44], "last_first": "Jane",
                "fname": "Tom"})
        ]
    );
    let errs = errors_of(&format!(
        "{PEOPLE}CREATE RULE r INTO out AS SELECT friends[*]->nick FROM demo;"
    ))
    .await;
    assert!(
        errs.len() == 1 && errs[0].contains("no field `nick`; they have first, age"),
        "{errs:?}"
    );
}

#[tokio::test]
async fn statistics_are_the_population_ones() {
    let got = rows(
        EKUIPER_STREAM,
        "CREATE RULE r INTO out AS SELECT stddev(ID) AS sd, stddevs(ID) AS sds, var(ID) AS v, \
         vars(ID) AS vs, percentile(ID, 0.5) AS p FROM demo GROUP BY COUNTWINDOW(2);",
    )
    .await;
    // IDs 1 and 2: population variance 0.25, sample variance 0.5.
    assert_eq!(
        got,
        [json!({"sd": 0.5, "sds": 0.5f64.sqrt(), "v": 0.25, "vs": 0.5, "p": 1.5})]
    );
}

#[tokio::test]
async fn whole_row_aggregates_keep_arrival_order() {
    let payloads: Vec<Value> = [(1, "red"), (2, "blue"), (1, "green"), (3, "red")]
        .iter()
        .map(|(id, color)| json!({"ID": id, "color": color, "info": {"site": color}}))
        .collect();
    let got = rows_of(
        &format!(
            "{EKUIPER_STREAM}CREATE RULE r INTO out AS SELECT \
             deduplicate(ID, true)[*]->color AS firsts, deduplicate(ID, false)->color AS latest, \
             merge_agg(info)->site AS site, collect(color) AS colors \
             FROM demo GROUP BY COUNTWINDOW(3, 1);"
        ),
        &payloads,
    )
    .await;
    assert_eq!(
        got,
        [
            // Rows 1-3: the third row's ID 1 was seen first.
            // (A null field is left out, as in eKuiper.)
            json!({"firsts": ["red", "blue"], "site": "green",
                   "colors": ["red", "blue", "green"]}),
            json!({"firsts": ["blue", "green", "red"], "latest": "red", "site": "red",
                   "colors": ["blue", "green", "red"]}),
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

#[tokio::test]
async fn in_a_list_column_and_fields_after_an_arrow() {
    // A trailing comma ends the column lists, as eKuiper allows.
    let text = "SET DIALECT = ekuiper;\n\
        CREATE STREAM demo (a BIGINT, tags ARRAY(BIGINT), ops STRUCT(f STRUCT(n BIGINT, m ARRAY(BIGINT))),)\n\
        WITH (DATASOURCE=\"demo\");\n\
        CREATE RULE r INTO out AS SELECT a, ops->f.n AS n FROM demo \
        WHERE a IN tags AND a NOT IN ops->f->m;";
    let got = rows_of(
        text,
        &[
            json!({"a": 1, "tags": [1, 2], "ops": {"f": {"n": 7, "m": [9]}}}),
            json!({"a": 3, "tags": [1, 2], "ops": {"f": {"n": 8, "m": [9]}}}),
            json!({"a": 9, "tags": [9], "ops": {"f": {"n": 6, "m": [9]}}}),
        ],
    )
    .await;
    assert_eq!(got, [json!({"a": 1, "n": 7})]);
}

#[tokio::test]
async fn replace_keeps_a_column_the_exception_names_and_rule_id_is_the_rules_name() {
    let text = "SET DIALECT = ekuiper;\n\
        CREATE STREAM demo (a BIGINT, b BIGINT, c BIGINT) WITH (DATASOURCE=\"demo\");\n\
        CREATE RULE checked INTO out AS \
        SELECT * EXCEPT(a, b) REPLACE(a * 10 AS a, b + c AS c), rule_id() AS id FROM demo;";
    let got = rows_of(text, &[json!({"a": 1, "b": 2, "c": 3})]).await;
    assert_eq!(got, [json!({"a": 10, "c": 5, "id": "checked"})]);
}

#[tokio::test]
async fn the_clock_functions_are_text() {
    let text = "SET DIALECT = ekuiper;\n\
        CREATE STREAM demo (a BIGINT) WITH (DATASOURCE=\"demo\");\n\
        CREATE RULE r INTO out AS SELECT now() AS t, now(3) AS ms, cur_date() AS d, \
        cur_time() AS h FROM demo;";
    let got = rows_of(text, &[json!({"a": 1})]).await;
    let field = |k: &str| got[0][k].as_str().unwrap_or_default().to_string();
    let shape = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect()
    };
    assert_eq!(shape(&field("t")), "9999-99-99 99:99:99");
    assert_eq!(shape(&field("ms")), "9999-99-99 99:99:99.999");
    assert_eq!(shape(&field("d")), "9999-99-99");
    assert_eq!(shape(&field("h")), "99:99:99");
}
