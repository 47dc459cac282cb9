//! eKuiper's hit functions through the public API: `last_hit_count()` and
//! `last_hit_time()` count the earlier rows that passed a rule without a window, and
//! `last_agg_hit_count()` and `last_agg_hit_time()` the earlier windows that gave a
//! result, whatever the micro-batches.

mod common;

use fieldgate_rules::StreamPipeline;
use proptest::prelude::*;
use serde_json::{Value, json};

const STREAM: &str = "CREATE STREAM s (device STRING, ts BIGINT, temp DOUBLE)
  WITH (DATASOURCE = 's', FORMAT = 'json', TIMESTAMP = 'ts');\n";

async fn pipeline(rules: &str) -> StreamPipeline {
    common::only_pipeline("hits.sql", &format!("{STREAM}{rules}")).await
}

async fn errors_of(rules: &str) -> Vec<String> {
    common::errors("hits.sql", &format!("{STREAM}{rules}"), "out").await
}

/// Pushes `rows` in batches of the sizes in `cuts` (cycled), then ends the input;
/// returns every result row.
async fn run(p: &mut StreamPipeline, rows: &[(&str, i64, f64)], cuts: &[usize]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.iter().cycle() {
        if at >= rows.len() {
            break;
        }
        let end = (at + c.max(&1)).min(rows.len());
        let (outs, errs) = p.push(&common::batch(p, &rows[at..end])).await;
        assert!(errs.is_empty(), "{errs:?}");
        out.extend(common::json_rows(&outs));
        at = end;
    }
    let (outs, errs) = p.finish().await;
    assert!(errs.is_empty(), "{errs:?}");
    out.extend(common::json_rows(&outs));
    out
}

/// What a rule `SELECT ts, last_hit_count() AS c, last_hit_time() AS t WHERE cond`
/// gives, computed one row at a time; `cond` sees the row and the counts so far.
fn reference(
    rows: &[(&str, i64, f64)],
    cond: impl Fn(&(&str, i64, f64), i64, i64) -> bool,
) -> Vec<Value> {
    let (mut count, mut time) = (0, 0);
    let mut out = Vec::new();
    for r in rows {
        if cond(r, count, time) {
            out.push(json!({"ts": r.1, "c": count, "t": time}));
            count += 1;
            time = r.1;
        }
    }
    out
}

/// A WHERE in plain Rust: the row, the count and the time so far.
type Cond = dyn Fn(&(&str, i64, f64), i64, i64) -> bool;

fn rows_of(temps: &[(i64, u8)]) -> Vec<(&'static str, i64, f64)> {
    let mut ts = 1_764_000_000_000;
    temps
        .iter()
        .map(|(gap, temp)| {
            ts += gap;
            ("d", ts, f64::from(*temp))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A WHERE that does not read the counts, one that stops after three passes, and a
    /// throttle of one row per second: the counts are those of a row-at-a-time
    /// computation, whatever the batches.
    #[test]
    fn row_hits_match_a_row_at_a_time_reference(
        temps in prop::collection::vec((0i64..800, 0u8..100), 1..120),
        cuts in prop::collection::vec(1usize..15, 1..20),
    ) {
        let rows = rows_of(&temps);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let cases: [(&str, Box<Cond>); 3] = [
            ("temp > 50", Box::new(|r, _, _| r.2 > 50.0)),
            ("temp > 20 AND last_hit_count() < 3", Box::new(|r, c, _| r.2 > 20.0 && c < 3)),
            ("ts - last_hit_time() >= 1000", Box::new(|r, _, t| r.1 - t >= 1000)),
        ];
        for (cond, f) in cases {
            let got = runtime.block_on(async {
                let mut p = pipeline(&format!(
                    "CREATE RULE r INTO out AS SELECT ts, last_hit_count() AS c, \
                     last_hit_time() AS t FROM s WHERE {cond};"
                ))
                .await;
                run(&mut p, &rows, &cuts).await
            });
            prop_assert_eq!(got, reference(&rows, f), "WHERE {}", cond);
        }
    }
}

#[tokio::test]
async fn without_where_every_row_counts_and_star_hides_the_counts() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT *, last_hit_count() + 1 AS n, last_hit_time() FROM s;",
    )
    .await;
    let rows = [("a", 1_000, 1.0), ("b", 2_000, 2.0), ("c", 3_500, 3.0)];
    let got = run(&mut p, &rows, &[2]).await;
    assert_eq!(
        got,
        vec![
            json!({"device": "a", "ts": 1000, "temp": 1.0, "n": 1, "last_hit_time": 0}),
            json!({"device": "b", "ts": 2000, "temp": 2.0, "n": 2, "last_hit_time": 1000}),
            json!({"device": "c", "ts": 3500, "temp": 3.0, "n": 3, "last_hit_time": 2000}),
        ]
    );
}

/// Events at 0.5 s steps: windows of one second hold two rows, except the one with a
/// gap. Only windows that pass HAVING count.
const WINDOW_ROWS: [(&str, i64, f64); 7] = [
    ("d", 10_000, 1.0),
    ("d", 10_500, 1.0),
    ("d", 11_000, 1.0),
    ("d", 13_000, 1.0),
    ("d", 13_500, 1.0),
    ("d", 14_000, 1.0),
    ("d", 14_500, 1.0),
];

#[tokio::test]
async fn windows_count_the_earlier_windows_that_passed_having() {
    // Tumbling (aggregated pane by pane), and session windows (buffered rows).
    for window in ["TUMBLINGWINDOW(ss, 1)", "SESSIONWINDOW(ms, 10000, 600)"] {
        let mut p = pipeline(&format!(
            "CREATE RULE r INTO out AS SELECT window_end AS e, count(*) AS n, \
             last_agg_hit_count() AS c, last_agg_hit_time() AS t FROM s \
             GROUP BY {window} HAVING count(*) >= 2;"
        ))
        .await;
        let got = run(&mut p, &WINDOW_ROWS, &[1, 3]).await;
        let expected = match window.starts_with("TUMBLING") {
            // [10,11) has 2 rows, [11,12) 1 (no result), [13,14) 2, [14,15) 2.
            true => vec![
                json!({"e": 11_000, "n": 2, "c": 0, "t": 0}),
                json!({"e": 14_000, "n": 2, "c": 1, "t": 11_000}),
                json!({"e": 15_000, "n": 2, "c": 2, "t": 14_000}),
            ],
            // Sessions end 0.6 s after their last row: 10.0-11.0 (3 rows), 13.0-14.5 (4).
            false => vec![
                json!({"e": 11_600, "n": 3, "c": 0, "t": 0}),
                json!({"e": 15_100, "n": 4, "c": 1, "t": 11_600}),
            ],
        };
        assert_eq!(got, expected, "{window}");
    }
}

#[tokio::test]
async fn having_may_read_the_window_count_by_its_alias() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT window_end AS e, last_agg_hit_count() AS c FROM s \
         GROUP BY HOPPINGWINDOW(ss, 2, 1) HAVING c < 2;",
    )
    .await;
    let got = run(&mut p, &WINDOW_ROWS, &[7]).await;
    assert_eq!(
        got,
        vec![json!({"e": 11_000, "c": 0}), json!({"e": 12_000, "c": 1})]
    );
}

#[tokio::test]
async fn count_windows_count_too() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT sum(temp) AS total, last_agg_hit_count() AS c FROM s \
         GROUP BY COUNTWINDOW(2);",
    )
    .await;
    let got = run(&mut p, &WINDOW_ROWS, &[3]).await;
    let counts: Vec<i64> = got.iter().map(|r| r["c"].as_i64().unwrap()).collect();
    assert_eq!(counts, vec![0, 1, 2]);
}

#[tokio::test]
async fn each_kind_of_rule_is_told_which_functions_it_has() {
    let cases = [
        (
            "SELECT last_hit_count() FROM s GROUP BY TUMBLINGWINDOW(ss, 1);",
            "last_agg_hit_count()",
        ),
        ("SELECT last_agg_hit_time() FROM s;", "last_hit_time()"),
        ("SELECT last_hit_count(ts) FROM s;", "takes no arguments"),
        (
            "SELECT count(*) FROM s WHERE last_agg_hit_count() < 3 \
             GROUP BY TUMBLINGWINDOW(ss, 1);",
            "use it in SELECT or HAVING",
        ),
    ];
    for (query, said) in cases {
        let errors = errors_of(&format!("CREATE RULE r INTO out AS {query}")).await;
        assert!(
            errors
                .iter()
                .any(|e| e.contains(said) && e.contains("hits.sql:")),
            "{query}: {errors:?}"
        );
    }
}

#[tokio::test]
async fn event_time_is_the_rows_time_or_the_windows_end() {
    let mut p = pipeline(
        "CREATE RULE rows INTO out AS SELECT temp, event_time() AS et FROM s WHERE temp > 1;\n\
         CREATE RULE windows INTO out AS SELECT count(*) AS n, event_time() AS et FROM s \
         GROUP BY TUMBLINGWINDOW(ss, 1);",
    )
    .await;
    let rows = [("d", 10_200, 2.0), ("d", 10_700, 1.0), ("d", 11_300, 3.0)];
    let got = run(&mut p, &rows, &[2]).await;
    assert_eq!(
        got,
        vec![
            json!({"temp": 2.0, "et": 10_200}),
            json!({"temp": 3.0, "et": 11_300}),
            json!({"n": 2, "et": 11_000}),
            json!({"n": 1, "et": 12_000}),
        ]
    );
    // Without TIMESTAMP, a row's event time is when it arrived.
    let mut p = common::only_pipeline(
        "hits.sql",
        "CREATE STREAM s (device STRING, ts BIGINT, temp DOUBLE) WITH (DATASOURCE = 's');\n\
         CREATE RULE r INTO out AS SELECT ts, event_time() AS et FROM s;",
    )
    .await;
    let (outs, errs) = p.push_at(&common::batch(&p, &rows[..1]), 777).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        common::json_rows(&outs),
        vec![json!({"ts": 10_200, "et": 777})]
    );
    let errors = errors_of(
        "CREATE RULE r INTO out AS SELECT count(*) FROM s WHERE event_time() > 0 \
         GROUP BY TUMBLINGWINDOW(ss, 1);",
    )
    .await;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("the stream's TIMESTAMP column")),
        "{errors:?}"
    );
}
