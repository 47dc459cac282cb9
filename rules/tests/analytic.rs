//! eKuiper's analytic functions and `deadband`, driven through the public API: their
//! state carries from one micro-batch to the next, per partition key, as if the rule saw
//! one row at a time.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fieldgate_rules::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use fieldgate_rules::arrow::datatypes::{DataType, Float64Type, Int64Type};
use fieldgate_rules::arrow::util::display::array_value_to_string;
use fieldgate_rules::{RuleOutput, StreamPipeline};
use proptest::prelude::*;

const STREAM: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE, status BIGINT)
  WITH (DATASOURCE = 'sensors/+/t', FORMAT = 'json');\n";

type Row = (&'static str, i64, Option<f64>, Option<i64>);

async fn pipeline(rules: &str) -> StreamPipeline {
    common::only_pipeline("test.sql", &format!("{STREAM}{rules}")).await
}

async fn errors_of(rules: &str) -> Vec<String> {
    common::errors("test.sql", &format!("{STREAM}{rules}"), "out").await
}

fn batch(p: &StreamPipeline, rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        p.stream.schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Pushes each batch at its own time, one second apart, and returns every output row as
/// `column=value` text, in order.
async fn run(p: &mut StreamPipeline, batches: &[Vec<Row>]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rows) in batches.iter().enumerate() {
        let (outs, errs) = p.push_at(&batch(p, rows), 1_000 * (i as i64 + 1)).await;
        assert!(errs.is_empty(), "{errs:?}");
        out.extend(text_rows(&outs));
    }
    out
}

fn text_rows(outs: &[RuleOutput]) -> Vec<String> {
    let mut rows = Vec::new();
    for o in outs {
        for b in &o.batches {
            for i in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| format!("{}={}", f.name(), cell(c, i)))
                    .collect();
                rows.push(cells.join(" "));
            }
        }
    }
    rows
}

fn cell(c: &ArrayRef, i: usize) -> String {
    if c.is_null(i) {
        "null".into()
    } else {
        array_value_to_string(c, i).unwrap()
    }
}

/// One row per batch.
fn single(rows: &[Row]) -> Vec<Vec<Row>> {
    rows.iter().map(|r| vec![*r]).collect()
}

#[tokio::test]
async fn lag_sees_the_previous_row_of_its_key_across_batches() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT device, temp, lag(temp) OVER (PARTITION BY device) AS prev FROM t;",
    )
    .await;
    let rows = run(
        &mut p,
        &[
            vec![("a", 1, Some(1.0), None), ("b", 1, Some(10.0), None)],
            vec![("a", 2, Some(2.0), None)],
            vec![("b", 2, Some(20.0), None), ("a", 3, Some(3.0), None)],
        ],
    )
    .await;
    assert_eq!(
        rows,
        [
            "device=a temp=1.0 prev=null",
            "device=b temp=10.0 prev=null",
            "device=a temp=2.0 prev=1.0",
            "device=b temp=20.0 prev=10.0",
            "device=a temp=3.0 prev=2.0",
        ]
    );
}

#[tokio::test]
async fn lag_with_offset_default_and_nulls() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, lag(temp, 2, -1.0) AS two_back, \
         lag(temp, 1, 0.0, false) AS with_nulls FROM t;",
    )
    .await;
    let rows = run(
        &mut p,
        &single(&[
            ("a", 1, Some(1.0), None),
            ("a", 2, None, None),
            ("a", 3, Some(3.0), None),
            ("a", 4, Some(4.0), None),
        ]),
    )
    .await;
    // Nulls are skipped by default: two counted rows back from ts 4 is ts 1.
    assert_eq!(
        rows,
        [
            "ts=1 two_back=-1.0 with_nulls=0.0",
            "ts=2 two_back=-1.0 with_nulls=1.0",
            "ts=3 two_back=-1.0 with_nulls=null",
            "ts=4 two_back=1.0 with_nulls=3.0",
        ]
    );
}

#[tokio::test]
async fn latest_keeps_the_last_non_null_value() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, latest(temp) AS l, latest(temp, 7.5) AS d FROM t;",
    )
    .await;
    let rows = run(
        &mut p,
        &single(&[
            ("a", 1, None, None),
            ("a", 2, Some(2.0), None),
            ("a", 3, None, None),
        ]),
    )
    .await;
    assert_eq!(
        rows,
        ["ts=1 l=null d=7.5", "ts=2 l=2.0 d=2.0", "ts=3 l=2.0 d=2.0"]
    );
}

/// eKuiper's own example of change detection, with our data: temperature 23, 23, 25,
/// 25 and humidity (here `status`) changing on rows 1, 4 and 5.
fn changes() -> Vec<Row> {
    vec![
        ("a", 1, Some(23.0), Some(88)),
        ("a", 2, Some(23.0), Some(88)),
        ("a", 3, Some(25.0), Some(88)),
        ("a", 4, Some(25.0), Some(90)),
        ("a", 5, Some(25.0), Some(91)),
        ("a", 6, None, Some(91)),
    ]
}

#[tokio::test]
async fn had_changed_filters_in_where_before_it_is_filtered() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts FROM t WHERE had_changed(true, temp, status) = true;",
    )
    .await;
    let rows = run(&mut p, &single(&changes())).await;
    assert_eq!(rows, ["ts=1", "ts=3", "ts=4", "ts=5"]);

    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts FROM t \
         WHERE had_changed(true, temp) AND NOT had_changed(true, status);",
    )
    .await;
    assert_eq!(run(&mut p, &single(&changes())).await, ["ts=3"]);

    // Not ignoring nulls, the missing temperature on row 6 is a change.
    let mut p =
        pipeline("CREATE RULE r INTO out AS SELECT ts FROM t WHERE had_changed(false, *);").await;
    assert_eq!(
        run(&mut p, &single(&changes())).await,
        ["ts=1", "ts=2", "ts=3", "ts=4", "ts=5", "ts=6"]
    );
}

#[tokio::test]
async fn changed_col_names_its_column_and_returns_null_when_unchanged() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT changed_col(true, temp), changed_col(true, status) AS s FROM t;",
    )
    .await;
    let rows = run(&mut p, &single(&changes())).await;
    assert_eq!(
        rows,
        [
            "changed_col=23.0 s=88",
            "changed_col=null s=null",
            "changed_col=25.0 s=null",
            "changed_col=null s=90",
            "changed_col=null s=91",
            "changed_col=null s=null",
        ]
    );
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, temp FROM t WHERE changed_col(true, temp) > 24;",
    )
    .await;
    assert_eq!(run(&mut p, &single(&changes())).await, ["ts=3 temp=25.0"]);
}

#[tokio::test]
async fn acc_functions_accumulate_and_reset_on_conditions() {
    let values = [1.0, 2.0, 1.0, 3.0, -1.0, 1.0];
    let rows: Vec<Row> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ("a", i as i64, Some(*v), None))
        .collect();
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT acc_sum(temp) AS s, acc_count(temp) AS n, \
         acc_min(temp) AS lo, acc_max(temp) AS hi, acc_avg(temp) AS m, \
         acc_count(temp, temp > 1, temp < 0) AS c FROM t;",
    )
    .await;
    let out = run(&mut p, &[rows[..2].to_vec(), rows[2..].to_vec()]).await;
    assert_eq!(
        out,
        [
            "s=1.0 n=1 lo=1.0 hi=1.0 m=1.0 c=0",
            "s=3.0 n=2 lo=1.0 hi=2.0 m=1.5 c=1",
            "s=4.0 n=3 lo=1.0 hi=2.0 m=1.3333333333333333 c=2",
            "s=7.0 n=4 lo=1.0 hi=3.0 m=1.75 c=3",
            "s=6.0 n=5 lo=-1.0 hi=3.0 m=1.2 c=4",
            "s=7.0 n=6 lo=-1.0 hi=3.0 m=1.1666666666666667 c=0",
        ]
    );
}

#[tokio::test]
async fn when_decides_which_rows_count_and_calls_nest() {
    // eKuiper's duration example: how long each status lasted, from the time it began.
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, status, \
         ts - lag(ts, 1, ts, true) OVER (WHEN had_changed(true, status)) AS lasted FROM t;",
    )
    .await;
    let rows = run(
        &mut p,
        &single(&[
            ("a", 100, None, Some(1)),
            ("a", 130, None, Some(1)),
            ("a", 150, None, Some(2)),
            ("a", 190, None, Some(2)),
            ("a", 200, None, Some(3)),
        ]),
    )
    .await;
    assert_eq!(
        rows,
        [
            "ts=100 status=1 lasted=0",
            "ts=130 status=1 lasted=30",
            "ts=150 status=2 lasted=50",
            "ts=190 status=2 lasted=40",
            "ts=200 status=3 lasted=50",
        ]
    );
}

#[tokio::test]
async fn select_star_does_not_show_the_analytic_columns() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT * FROM t WHERE changed_col(true, status) IS NOT NULL;",
    )
    .await;
    let rows = run(&mut p, &single(&changes())).await;
    assert_eq!(
        rows,
        [
            "device=a ts=1 temp=23.0 status=88",
            "device=a ts=4 temp=25.0 status=90",
            "device=a ts=5 temp=25.0 status=91",
        ]
    );
}

#[tokio::test]
async fn deadband_passes_moves_beyond_the_band_and_heartbeats() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT device, ts, temp FROM t \
         WHERE deadband(temp, 0.5, '3s') OVER (PARTITION BY device);",
    )
    .await;
    // Arrival times are 1 s apart (see `run`); the heartbeat is every 3 s.
    let rows = run(
        &mut p,
        &single(&[
            ("a", 1, Some(20.0), None),
            ("a", 2, Some(20.3), None),
            ("a", 3, Some(20.6), None),
            ("a", 4, Some(20.7), None),
            ("a", 5, Some(20.8), None),
            ("a", 6, Some(20.9), None),
            ("a", 7, None, None),
            ("a", 8, Some(19.0), None),
        ]),
    )
    .await;
    assert_eq!(
        rows,
        [
            "device=a ts=1 temp=20.0",
            "device=a ts=3 temp=20.6",
            "device=a ts=6 temp=20.9",
            "device=a ts=8 temp=19.0",
        ]
    );
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts FROM t WHERE deadband_pct(temp, 10) OVER (PARTITION BY device);",
    )
    .await;
    let rows = run(
        &mut p,
        &[vec![
            ("a", 1, Some(100.0), None),
            ("b", 2, Some(5.0), None),
            ("a", 3, Some(109.0), None),
            ("a", 4, Some(111.0), None),
            ("b", 5, Some(5.4), None),
            ("b", 6, Some(5.6), None),
        ]],
    )
    .await;
    assert_eq!(rows, ["ts=1", "ts=2", "ts=4", "ts=6"]);
}

#[tokio::test]
async fn analytic_calls_feed_a_window() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT count(*) AS changes FROM t \
         WHERE had_changed(true, status) OVER (PARTITION BY device) GROUP BY COUNTWINDOW(2);",
    )
    .await;
    let rows = run(
        &mut p,
        &single(&[
            ("a", 1, None, Some(1)),
            ("a", 2, None, Some(1)),
            ("b", 3, None, Some(1)),
            ("a", 4, None, Some(2)),
            ("b", 5, None, Some(2)),
            ("b", 6, None, Some(2)),
        ]),
    )
    .await;
    // Changes at ts 1 (a), 3 (b), 4 (a) and 5 (b): two count windows of two. (Without
    // the partition there would be two changes, at ts 1 and 4.)
    assert_eq!(rows, ["changes=2", "changes=2"]);
}

#[tokio::test]
async fn idle_keys_are_forgotten_and_counted() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT device, lag(temp) OVER (PARTITION BY device) AS prev FROM t;",
    )
    .await;
    let day = 24 * 3_600_000;
    let b = batch(&p, &[("a", 1, Some(1.0), None), ("b", 1, Some(2.0), None)]);
    p.push_at(&b, 1_000).await;
    assert_eq!(p.rules[0].analytic_keys(), 2);
    let b = batch(&p, &[("a", 2, Some(3.0), None)]);
    let (outs, _) = p.push_at(&b, 1_000 + day / 2).await;
    assert_eq!(text_rows(&outs), ["device=a prev=1.0"]);
    // `b` was last seen a day and a minute ago, `a` half a day ago.
    let b = batch(&p, &[("a", 3, Some(4.0), None)]);
    p.push_at(&b, 1_000 + day + 60_000).await;
    assert_eq!(p.rules[0].analytic_keys(), 1);
    assert_eq!(
        p.rules[0].counters.keys_forgotten.load(Ordering::Relaxed),
        1
    );
    let b = batch(&p, &[("b", 4, Some(5.0), None)]);
    let (outs, _) = p.push_at(&b, 2_000 + day + 60_000).await;
    assert_eq!(text_rows(&outs), ["device=b prev=null"]);
}

#[tokio::test]
async fn keys_past_the_limit_forget_the_least_recently_seen() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, lag(ts) OVER (PARTITION BY ts) AS prev FROM t;",
    )
    .await;
    let limit = 100_000i64;
    for chunk in 0..11 {
        let rows: Vec<Row> = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| ("a", i, None, None))
            .collect();
        p.push_at(&batch(&p, &rows), 1_000 + chunk).await;
    }
    let held = p.rules[0].analytic_keys() as i64;
    assert!(held <= limit, "{held} keys held");
    let forgotten = p.rules[0].counters.keys_forgotten.load(Ordering::Relaxed) as i64;
    assert_eq!(held + forgotten, 110_000);
    // The newest keys are kept, the oldest forgotten.
    let (outs, _) = p
        .push_at(
            &batch(&p, &[("a", 109_999, None, None), ("a", 0, None, None)]),
            2_000,
        )
        .await;
    assert_eq!(
        text_rows(&outs),
        ["ts=109999 prev=109999", "ts=0 prev=null"]
    );
}

#[tokio::test]
async fn analytic_mistakes_are_explained() {
    let cases = [
        (
            "CREATE RULE r INTO out AS SELECT lag(avg(temp)) FROM t GROUP BY TUMBLINGWINDOW(ss, 1);",
            "cannot be aggregates",
        ),
        (
            "CREATE RULE r INTO out AS SELECT lag(temp) OVER (ORDER BY ts) FROM t;",
            "ORDER BY has no place here",
        ),
        (
            "CREATE RULE r INTO out AS SELECT row_number() OVER (WHEN temp > 1) FROM t;",
            "WHEN in OVER (...) is for eKuiper's analytic functions",
        ),
        (
            "CREATE RULE r INTO out AS SELECT acc_sum(device) FROM t;",
            "acc_sum takes a number, not Utf8",
        ),
        (
            "CREATE RULE r INTO out AS SELECT lag(temp, 1.5) FROM t;",
            "lag's offset must be a whole number",
        ),
        (
            "CREATE RULE r INTO out AS SELECT changed_col(temp) FROM t;",
            "changed_col takes (ignore null, expr)",
        ),
        (
            "CREATE RULE r INTO out AS SELECT lag(temp) OVER (WHEN temp) FROM t;",
            "the condition after WHEN must be true or false",
        ),
        (
            "CREATE RULE r INTO out AS SELECT ts FROM t WHERE deadband(temp, -1);",
            "deadband's band must be a number, 0 or more",
        ),
        (
            "CREATE RULE r INTO out AS SELECT row_number() OVER () AS n FROM t;",
            "`row_number(...) OVER (...)` is not supported in a rule without a window",
        ),
    ];
    for (rule, words) in cases {
        let errors = errors_of(rule).await;
        assert!(
            errors.len() == 1 && errors[0].contains(words),
            "{rule}\n  gave {errors:?}\n  expected {words:?}"
        );
        assert!(errors[0].starts_with("test.sql:3:"), "{errors:?}");
    }
}

/// What the functions answer row by row, computed plainly over the whole input.
fn reference(rows: &[(usize, Option<i64>)]) -> Vec<String> {
    let mut last: std::collections::HashMap<usize, i64> = Default::default();
    let mut changed: std::collections::HashMap<usize, i64> = Default::default();
    let mut sums: std::collections::HashMap<usize, f64> = Default::default();
    let mut out = Vec::new();
    for (key, v) in rows {
        let prev = last.get(key).copied();
        let ch = match v {
            Some(v) if changed.get(key) != Some(v) => {
                changed.insert(*key, *v);
                Some(*v)
            }
            _ => None,
        };
        if let Some(v) = v {
            last.insert(*key, *v);
            *sums.entry(*key).or_default() += *v as f64;
        }
        let s = sums.get(key).copied().unwrap_or(0.0);
        let show = |o: Option<i64>| o.map_or("null".to_string(), |v| v.to_string());
        out.push(format!("{} {} {s}", show(prev), show(ch)));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random keys, values (some null) and batch sizes: the answers are those of a
    /// plain computation over all rows, whatever the batches.
    #[test]
    fn stateful_functions_match_a_brute_force_reference(
        rows in prop::collection::vec((0usize..5, prop::option::weighted(0.8, 0i64..4)), 1..200),
        cuts in prop::collection::vec(1usize..20, 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got: Vec<String> = runtime.block_on(async {
            let mut p = pipeline(
                "CREATE RULE r INTO out AS SELECT lag(status) OVER (PARTITION BY device) AS l, \
                 changed_col(true, status) OVER (PARTITION BY device) AS c, \
                 acc_sum(status) OVER (PARTITION BY device) AS s FROM t;",
            )
            .await;
            let names = ["d0", "d1", "d2", "d3", "d4"];
            let all: Vec<Row> = rows.iter().map(|(k, v)| (names[*k], 0, None, *v)).collect();
            let mut batches = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= all.len() {
                    break;
                }
                let end = (at + c).min(all.len());
                batches.push(all[at..end].to_vec());
                at = end;
            }
            let mut got = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                let (outs, errs) = p.push_at(&batch(&p, b), i as i64).await;
                assert!(errs.is_empty(), "{errs:?}");
                for o in &outs {
                    for b in &o.batches {
                        let l = b.column(0).as_primitive::<Int64Type>();
                        let c = b.column(1).as_primitive::<Int64Type>();
                        let s = b.column(2).as_primitive::<Float64Type>();
                        assert_eq!(b.column(2).data_type(), &DataType::Float64);
                        for r in 0..b.num_rows() {
                            let show = |a: &fieldgate_rules::arrow::array::Int64Array| {
                                if a.is_null(r) { "null".to_string() } else { a.value(r).to_string() }
                            };
                            got.push(format!("{} {} {}", show(l), show(c), s.value(r)));
                        }
                    }
                }
            }
            got
        });
        prop_assert_eq!(got, reference(&rows));
    }
}

#[tokio::test]
async fn a_state_window_runs_from_its_begin_row_to_its_end_row_per_key() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT device, count(*) AS n, min(ts) AS first, max(ts) AS last \
         FROM t GROUP BY device, STATEWINDOW(status = 1, status = 0);",
    )
    .await;
    let rows = run(
        &mut p,
        &[
            vec![("a", 1, None, Some(0)), ("a", 2, None, Some(1))],
            vec![("b", 3, None, Some(1)), ("a", 4, None, Some(2))],
            vec![("a", 5, None, Some(0)), ("b", 6, None, Some(0))],
            vec![("a", 7, None, Some(0)), ("b", 8, None, Some(1))],
        ],
    )
    .await;
    // a: rows 2 to 5; b: rows 3 to 6; row 1 came before a began, row 7 after it ended;
    // b's window begun at row 8 is still open.
    assert_eq!(
        rows,
        ["device=a n=3 first=2 last=5", "device=b n=2 first=3 last=6",]
    );
    assert_eq!(p.rules[0].open_windows(), 1);
}

#[tokio::test]
async fn a_single_condition_state_window_is_cut_where_its_trigger_holds() {
    // eKuiper's example: the trigger starts the next window and closes the one before.
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT count(*) AS n, max(status) AS s \
         FROM t GROUP BY STATEWINDOW(had_changed(true, status));",
    )
    .await;
    let statuses = [1, 1, 1, 2, 2, 3];
    let rows: Vec<Row> = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| ("a", i as i64, None, Some(*s)))
        .collect();
    assert_eq!(run(&mut p, &single(&rows)).await, ["n=3 s=1", "n=2 s=2"]);
    // OVER (PARTITION BY ...) keys it as GROUP BY does.
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT count(*) AS n, max(ts) AS last \
         FROM t GROUP BY STATEWINDOW(status = 1, status = 5) OVER (PARTITION BY device);",
    )
    .await;
    let rows = run(
        &mut p,
        &single(&[
            ("b1", 1, None, Some(1)),
            ("b2", 2, None, Some(1)),
            ("b1", 3, None, Some(5)),
        ]),
    )
    .await;
    assert_eq!(rows, ["n=2 last=3"]);
}

#[tokio::test]
async fn changed_cols_gives_one_column_per_expression_under_a_prefix() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, changed_cols('c_', true, temp, status) FROM t;",
    )
    .await;
    let rows = run(&mut p, &single(&changes()[..5])).await;
    assert_eq!(
        rows,
        [
            "ts=1 c_temp=23.0 c_status=88",
            "ts=2 c_temp=null c_status=null",
            "ts=3 c_temp=25.0 c_status=null",
            "ts=4 c_temp=null c_status=90",
            "ts=5 c_temp=null c_status=91",
        ]
    );
    let errors =
        errors_of("CREATE RULE r INTO out AS SELECT changed_cols('c_', true, *) FROM t;").await;
    assert!(
        errors.len() == 1 && errors[0].contains("`*` is not supported"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_row_whose_arguments_fail_is_left_out_before_it_reaches_the_state() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT ts, lag(CAST(device AS BIGINT)) AS prev FROM t;",
    )
    .await;
    let b = batch(
        &p,
        &[
            ("1", 1, None, None),
            ("x", 2, None, None),
            ("3", 3, None, None),
        ],
    );
    let (outs, errs) = p.push_at(&b, 1_000).await;
    // Row 2 cannot be cast: it is counted and left out, and lag skips it.
    assert_eq!(text_rows(&outs), ["ts=1 prev=null", "ts=3 prev=1"]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].to_string().contains("1 row(s) failed"), "{errs:?}");
    assert_eq!(p.rules[0].counters.failed_rows.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn collect_gathers_a_windows_values_or_rows() {
    let mut p = pipeline(
        "CREATE RULE r INTO out AS SELECT collect(temp) AS temps, collect(*) AS readings \
         FROM t GROUP BY COUNTWINDOW(2);",
    )
    .await;
    let (outs, errs) = p
        .push_at(
            &batch(&p, &[("a", 1, Some(1.5), Some(7)), ("b", 2, None, None)]),
            1_000,
        )
        .await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        text_rows(&outs),
        [
            "temps=[1.5, ] readings=[{device: a, ts: 1, temp: 1.5, status: 7}, \
          {device: b, ts: 2, temp: , status: }]"
        ]
    );
}
