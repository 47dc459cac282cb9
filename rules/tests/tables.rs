//! Lookup tables: rows from a CSV or JSON-lines file beside the rule file, joined to a
//! stream row by row, and read again when the rule files are.

mod common;
use common::{batch, json_rows};

use std::path::{Path, PathBuf};

use fieldgate_rules::{RuleSet, StreamPipeline, plan_reload};
use serde_json::{Value, json};

const STREAM: &str = "CREATE STREAM readings (device STRING, ts BIGINT, value DOUBLE)
  WITH (DATASOURCE = 'sensors/+/r', FORMAT = 'json');\n";

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fieldgate-tables-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SITES: &str = "device,site,max\nd1,north,30.0\nd2,south,25.5\n";
const TABLE: &str = "CREATE TABLE sites (device STRING, site STRING, max DOUBLE) \
  WITH (PATH = 'sites.csv');\n";

fn load(dir: &Path, rules: &str) -> (RuleSet, Vec<String>) {
    let file = dir.join("rules.sql");
    std::fs::write(&file, rules).unwrap();
    let (set, errors) = RuleSet::load(&[file]);
    (set, errors.iter().map(|e| e.to_string()).collect())
}

async fn pipeline(dir: &Path, rules: &str) -> StreamPipeline {
    let (set, errors) = load(dir, rules);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut pipelines, errors) = set.build(|s| s == "out").await;
    assert!(errors.is_empty(), "{errors:?}");
    pipelines.remove(0)
}

async fn push(p: &mut StreamPipeline, rows: &[(&str, i64, f64)]) -> Vec<Value> {
    let (outs, errs) = p.push(&batch(p, rows)).await;
    assert!(errs.is_empty(), "{errs:?}");
    json_rows(&outs)
}

#[tokio::test]
async fn a_stream_is_enriched_from_a_csv_table_batch_after_batch() {
    let d = dir("enrich");
    std::fs::write(d.join("sites.csv"), SITES).unwrap();
    let mut p = pipeline(
        &d,
        &format!(
            "{STREAM}{TABLE}CREATE RULE r INTO out AS SELECT r.device, s.site, r.value \
             FROM readings r JOIN sites s ON r.device = s.device;\n\
             CREATE RULE l INTO out AS SELECT r.device, s.site FROM readings r \
             LEFT JOIN sites s ON r.device = s.device;"
        ),
    )
    .await;
    // Each batch is joined to the table on its own: the first batch's rows do not stay.
    let first = push(&mut p, &[("d1", 1, 20.0), ("d9", 1, 1.0)]).await;
    assert_eq!(
        first,
        [
            json!({"device": "d1", "site": "north", "value": 20.0}),
            json!({"device": "d1", "site": "north"}),
            json!({"device": "d9"}),
        ]
    );
    let second = push(&mut p, &[("d2", 2, 21.0)]).await;
    assert_eq!(
        second,
        [
            json!({"device": "d2", "site": "south", "value": 21.0}),
            json!({"device": "d2", "site": "south"}),
        ]
    );
}

#[tokio::test]
async fn limits_per_sensor_come_from_a_json_lines_table() {
    let d = dir("limits");
    std::fs::write(
        d.join("limits.jsonl"),
        "{\"device\": \"d1\", \"max\": 30}\n{\"device\": \"d2\", \"max\": 20.5}\n",
    )
    .unwrap();
    let mut p = pipeline(
        &d,
        &format!(
            "{STREAM}CREATE TABLE limits (device STRING, max DOUBLE) WITH (PATH = 'limits.jsonl');\n\
             CREATE RULE over INTO out AS SELECT r.device, r.value, l.max FROM readings r \
             JOIN limits l ON r.device = l.device WHERE r.value > l.max;"
        ),
    )
    .await;
    let got = push(&mut p, &[("d1", 1, 25.0), ("d2", 1, 25.0), ("d1", 2, 31.0)]).await;
    assert_eq!(
        got,
        [
            json!({"device": "d2", "value": 25.0, "max": 20.5}),
            json!({"device": "d1", "value": 31.0, "max": 30.0}),
        ]
    );
}

#[tokio::test]
async fn a_changed_table_file_replans_the_rules_joining_it() {
    let d = dir("reload");
    std::fs::write(d.join("sites.csv"), SITES).unwrap();
    let rules = format!(
        "{STREAM}{TABLE}CREATE RULE r INTO out AS SELECT r.device, s.site \
         FROM readings r JOIN sites s ON r.device = s.device;\n\
         CREATE RULE plain INTO out AS SELECT device FROM readings;"
    );
    let (running, errors) = load(&d, &rules);
    assert!(errors.is_empty(), "{errors:?}");
    // Unchanged file: both rules kept as they run.
    let (again, _) = load(&d, &rules);
    let plan = plan_reload(&running, again, vec![], |s| s == "out").await;
    assert_eq!(plan.summary.rules_unchanged, ["r", "plain"]);
    // A new site: the rule joining the table is planned afresh, with the new rows.
    std::fs::write(d.join("sites.csv"), format!("{SITES}d3,east,40\n")).unwrap();
    let (changed, _) = load(&d, &rules);
    let plan = plan_reload(&running, changed, vec![], |s| s == "out").await;
    assert_eq!(plan.summary.rules_changed, ["r"]);
    assert_eq!(plan.summary.rules_unchanged, ["plain"]);
    // A broken file keeps the rows that ran.
    std::fs::write(d.join("sites.csv"), "device,site\nd1,north\n").unwrap();
    let file = d.join("rules.sql");
    let (broken, errors) = RuleSet::load(&[file]);
    assert!(
        errors.len() == 1
            && errors[0]
                .to_string()
                .contains("the header line names the columns device, site"),
        "{errors:?}"
    );
    let plan = plan_reload(&running, broken, errors, |s| s == "out").await;
    assert!(
        plan.summary
            .kept_previous
            .contains(&"table sites".to_string()),
        "{:?}",
        plan.summary.kept_previous
    );
    assert_eq!(plan.summary.rules_unchanged, ["r", "plain"]);
}

#[tokio::test]
async fn table_mistakes_are_explained() {
    let d = dir("errors");
    std::fs::write(d.join("sites.csv"), SITES).unwrap();
    std::fs::write(d.join("bad.csv"), "device,site,max\nd1,north,hot\n").unwrap();
    let cases = [
        (
            "CREATE TABLE t (device STRING) WITH (PATH = 'missing.csv');",
            "cannot read table file",
        ),
        (
            "CREATE TABLE t (device STRING, site STRING, max DOUBLE) WITH (PATH = 'bad.csv');",
            "bad.csv",
        ),
        (
            "CREATE TABLE t (device STRING) WITH (PATH = 'sites.txt');",
            "say the table file's FORMAT",
        ),
        (
            "CREATE RULE r INTO out AS SELECT r.device FROM readings r JOIN nowhere n ON r.device = n.device;",
            "joins table `nowhere`, which is not declared",
        ),
        (
            "CREATE RULE r INTO out AS SELECT device FROM sites;",
            "reads table `sites`: a rule reads a stream",
        ),
        (
            "CREATE RULE r INTO out AS SELECT count(*) AS n FROM readings r JOIN sites s \
             ON r.device = s.device GROUP BY s.site, SESSIONWINDOW(ss, 60, 10);",
            "session and state windows are formed per key before the join",
        ),
        (
            "CREATE RULE r INTO out AS SELECT count(*) AS n FROM readings r JOIN sites s \
             ON r.device = s.device WHERE r.value > s.max GROUP BY TUMBLINGWINDOW(ss, 10);",
            "WHERE runs on the stream's rows before the table is joined",
        ),
        (
            "CREATE RULE r INTO out AS SELECT r.device FROM readings r CROSS JOIN sites s;",
            "[INNER | LEFT] JOIN sites ON <condition>",
        ),
    ];
    for (statement, words) in cases {
        let text = format!("{STREAM}{TABLE}{statement}");
        let (set, mut errors) = load(&d, &text);
        let (_, more) = set.build(|s| s == "out").await;
        errors.extend(more.iter().map(|e| e.to_string()));
        assert!(
            errors.len() == 1 && errors[0].contains(words) && errors[0].contains("rules.sql:4:"),
            "{statement}\n  gave {errors:?}\n  expected {words:?}"
        );
    }
}

#[tokio::test]
async fn joined_rows_keep_the_stream_order_and_star_lists_the_stream_first() {
    let d = dir("order");
    std::fs::write(d.join("sites.csv"), SITES).unwrap();
    let mut p = pipeline(
        &d,
        &format!(
            "{STREAM}{TABLE}CREATE RULE r INTO out AS SELECT * FROM readings \
             JOIN sites ON readings.device = sites.device;"
        ),
    )
    .await;
    let rows: Vec<(&str, i64, f64)> = (0..50)
        .map(|i| (if i % 3 == 0 { "d2" } else { "d1" }, i, i as f64))
        .collect();
    let got = push(&mut p, &rows).await;
    let ts: Vec<i64> = got.iter().map(|r| r["ts"].as_i64().unwrap()).collect();
    assert_eq!(ts, (0..50).collect::<Vec<_>>());
    let (outs, _) = p.push(&batch(&p, &rows[..1])).await;
    let schema = outs[0].batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["device", "ts", "value", "device", "site", "max"]);
}

#[tokio::test]
async fn a_windowed_rule_aggregates_per_column_of_the_table() {
    let d = dir("windowed");
    std::fs::write(
        d.join("sites.csv"),
        "device,site,max\nd1,north,0\nd2,north,0\nd3,south,0\n",
    )
    .unwrap();
    // Incremental (tumbling) and buffered (count) windows.
    for window in ["TUMBLINGWINDOW(ss, 10)", "COUNTWINDOW(4)"] {
        let mut p = pipeline(
            &d,
            &format!(
                "{STREAM}{TABLE}CREATE RULE r INTO out AS \
                 SELECT s.site, count(*) AS n, avg(r.value) AS mean \
                 FROM readings r JOIN sites s ON r.device = s.device \
                 WHERE r.value >= 0 GROUP BY s.site, {window} ORDER BY s.site;"
            ),
        )
        .await;
        // One window of four rows that pass WHERE (the -1 does not); d9 is in no row of
        // the table.
        let mut got = push(&mut p, &[("d1", 1, 10.0), ("d2", 2, 20.0), ("d9", 3, 5.0)]).await;
        got.extend(push(&mut p, &[("d3", 4, 7.0), ("d1", 5, -1.0)]).await);
        let (outs, errs) = p.finish().await;
        assert!(errs.is_empty(), "{errs:?}");
        got.extend(json_rows(&outs));
        assert_eq!(
            got,
            [
                json!({"site": "north", "n": 2, "mean": 15.0}),
                json!({"site": "south", "n": 1, "mean": 7.0}),
            ],
            "{window}"
        );
    }
}

#[tokio::test]
async fn an_ekuiper_file_table_holds_one_json_array() {
    let d = dir("ekuiper-file");
    std::fs::write(
        d.join("sites.json"),
        r#"[{"device": "d1", "site": "north", "max": 30.0},
            {"device": "d2", "site": "south", "max": 25.5}]"#,
    )
    .unwrap();
    let mut p = pipeline(
        &d,
        &format!(
            "{STREAM}CREATE TABLE sites (device STRING, site STRING, max DOUBLE) \
             WITH (DATASOURCE = \"sites.json\", TYPE = \"file\", FORMAT = \"JSON\");\n\
             CREATE RULE r INTO out AS SELECT r.device, s.site FROM readings r \
             JOIN sites s ON r.device = s.device;"
        ),
    )
    .await;
    let got = push(&mut p, &[("d2", 1, 20.0), ("d9", 1, 1.0)]).await;
    assert_eq!(got, [json!({"device": "d2", "site": "south"})]);
    // Only file tables exist.
    let (_, errors) = load(
        &d,
        &format!(
            "{STREAM}CREATE TABLE t (device STRING) WITH (DATASOURCE = \"t\", TYPE = \"memory\");"
        ),
    );
    assert!(
        errors.iter().any(|e| e.contains("only file tables")),
        "{errors:?}"
    );
}
