//! The rule engine driven through its public API: rule files in, result rows out.

mod common;
use common::batch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fieldgate_rules::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use fieldgate_rules::arrow::datatypes::{DataType, Float64Type, Int64Type};
use fieldgate_rules::{RuleOutput, RuleSet, StreamPipeline};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const STREAM: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE)
  WITH (DATASOURCE = 'sensors/+/t', FORMAT = 'json', TIMESTAMP = 'ts', LATENESS = '3s');\n";

async fn pipeline(rules: &str) -> StreamPipeline {
    common::only_pipeline("test.sql", &format!("{STREAM}{rules}")).await
}

/// Result rows as (device, window_start, count, avg, max).
fn window_rows(outs: &[RuleOutput]) -> Vec<(String, i64, i64, f64, f64)> {
    let mut rows = Vec::new();
    for o in outs {
        for b in &o.batches {
            let s = b.schema();
            let col = |n: &str| b.column(s.index_of(n).unwrap()).clone();
            let dev = col("device");
            let dev = dev.as_string::<i32>();
            let ws = col("window_start");
            let n = col("n");
            let avg = col("avg_temp");
            let max = col("max_temp");
            for i in 0..b.num_rows() {
                rows.push((
                    dev.value(i).to_string(),
                    ws.as_primitive::<Int64Type>().value(i),
                    n.as_primitive::<Int64Type>().value(i),
                    avg.as_primitive::<Float64Type>().value(i),
                    max.as_primitive::<Float64Type>().value(i),
                ));
            }
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

#[tokio::test]
async fn a_stateless_rule_filters_and_projects_every_batch() {
    let mut p = pipeline(
        "CREATE RULE hot INTO out AS SELECT device, temp * 2 AS twice FROM t WHERE temp > 30;",
    )
    .await;
    let (outs, errs) = p
        .push(&batch(
            &p,
            &[("a", 1, 31.0), ("b", 2, 20.0), ("c", 3, 40.5)],
        ))
        .await;
    assert!(errs.is_empty());
    assert_eq!(outs.len(), 1);
    assert_eq!(&*outs[0].rule, "hot");
    assert_eq!(&outs[0].sinks[..], ["out".to_string()]);
    let b = &outs[0].batches[0];
    assert_eq!(
        b.column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(
        b.column(1).as_primitive::<Float64Type>().values(),
        &[62.0, 81.0]
    );
    // The same plan serves the next batch.
    let (outs, _) = p.push(&batch(&p, &[("d", 4, 35.0)])).await;
    assert_eq!(outs[0].batches[0].num_rows(), 1);
    assert_eq!(p.rules[0].counters.records_in.load(Ordering::Relaxed), 4);
    assert_eq!(p.rules[0].counters.records_out.load(Ordering::Relaxed), 3);
}

const WINDOW_RULE: &str = "CREATE RULE w INTO out AS
  SELECT device, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp, max(temp) AS max_temp
  FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);";

#[tokio::test]
async fn a_window_is_emitted_once_the_watermark_passes_its_end() {
    let mut p = pipeline(WINDOW_RULE).await;
    let (outs, _) = p
        .push(&batch(
            &p,
            &[("a", 1_000, 1.0), ("a", 9_999, 3.0), ("b", 5_000, 7.0)],
        ))
        .await;
    assert!(outs.is_empty());
    // Watermark 12_999 - 3_000 < 10_000: still open.
    let (outs, _) = p.push(&batch(&p, &[("a", 12_999, 5.0)])).await;
    assert!(outs.is_empty());
    assert_eq!(p.watermark(), Some(9_999));
    // Within the lateness: still counted in [0, 10s).
    let (outs, _) = p.push(&batch(&p, &[("a", 8_000, 8.0)])).await;
    assert!(outs.is_empty());
    let (outs, _) = p
        .push(&batch(&p, &[("c", 13_000, 0.0), ("c", 12_000, 0.5)]))
        .await;
    assert_eq!(
        window_rows(&outs),
        [("a".into(), 0, 3, 4.0, 8.0), ("b".into(), 0, 1, 7.0, 7.0)],
        "closed at watermark 10_000"
    );
    // The window is closed: a row for it is late and counted, never emitted.
    let (outs, _) = p.push(&batch(&p, &[("a", 500, 100.0)])).await;
    assert!(outs.is_empty());
    assert_eq!(p.rules[0].counters.late.load(Ordering::Relaxed), 1);
    let (outs, _) = p.finish().await;
    assert_eq!(
        window_rows(&outs),
        [
            ("a".into(), 10_000, 1, 5.0, 5.0),
            ("c".into(), 10_000, 2, 0.25, 0.5)
        ]
    );
}

#[tokio::test]
async fn random_out_of_order_streams_match_a_brute_force_reference() {
    for seed in 0..5u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut p = pipeline(WINDOW_RULE).await;
        let lateness = 3_000;
        let mut events: Vec<(String, i64, f64)> = (0..3_000)
            .map(|i| {
                let ts = i * 37 + rng.random_range(0..37);
                (
                    format!("d{}", rng.random_range(0..13)),
                    ts,
                    f64::from(rng.random_range(-500..500)) / 10.0,
                )
            })
            .collect();
        // Shuffle within blocks spanning less than the lateness, and add some late rows.
        for block in events.chunks_mut(60) {
            block.shuffle(&mut rng);
        }
        for k in 0..40 {
            let at = rng.random_range(500..events.len());
            let ts = events[at].1 - 20_000 - k;
            events.insert(at, ("late".into(), ts, 0.0));
        }
        // Reference: replay the same arrival order with the watermark rule.
        let mut expected: BTreeMap<(String, i64), (i64, f64, f64)> = BTreeMap::new();
        let mut max_seen = i64::MIN;
        let mut late = 0;
        let sizes: Vec<usize> = (0..events.len())
            .map(|_| rng.random_range(1..200))
            .collect();
        let mut batches = Vec::new();
        let mut rest = &events[..];
        for s in sizes {
            if rest.is_empty() {
                break;
            }
            let (b, r) = rest.split_at(s.min(rest.len()));
            batches.push(b);
            rest = r;
        }
        for b in &batches {
            let watermark = max_seen.saturating_sub(lateness);
            for (d, ts, t) in b.iter() {
                let start = ts.div_euclid(10_000) * 10_000;
                if max_seen != i64::MIN && start + 10_000 <= watermark {
                    late += 1;
                    continue;
                }
                let e = expected
                    .entry((d.clone(), start))
                    .or_insert((0, 0.0, f64::MIN));
                e.0 += 1;
                e.1 += t;
                e.2 = e.2.max(*t);
            }
            max_seen = max_seen.max(b.iter().map(|e| e.1).max().unwrap());
        }
        let mut outs = Vec::new();
        for b in &batches {
            let rows: Vec<(&str, i64, f64)> =
                b.iter().map(|(d, ts, t)| (d.as_str(), *ts, *t)).collect();
            let (o, errs) = p.push(&batch(&p, &rows)).await;
            assert!(errs.is_empty(), "{errs:?}");
            outs.extend(o);
        }
        outs.extend(p.finish().await.0);
        let got = window_rows(&outs);
        assert_eq!(got.len(), expected.len(), "seed {seed}");
        for ((d, ws, n, avg, max), ((ed, ews), (en, esum, emax))) in got.iter().zip(&expected) {
            assert_eq!((d, ws, n, max), (ed, ews, en, emax), "seed {seed}");
            let eavg = esum / *en as f64;
            assert!(
                (avg - eavg).abs() < 1e-9,
                "seed {seed}: avg {avg} vs {eavg}"
            );
        }
        assert_eq!(
            p.rules[0].counters.late.load(Ordering::Relaxed),
            late,
            "seed {seed}"
        );
        assert!(late > 0, "the test must exercise late rows");
    }
}

#[tokio::test]
async fn rows_without_event_time_are_counted_not_windowed() {
    let mut p = pipeline(WINDOW_RULE).await;
    let b = RecordBatch::try_new(
        p.stream.schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "a"])),
            Arc::new(Int64Array::from(vec![Some(1_000), None])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .unwrap();
    assert_eq!(b.column(1).null_count(), 1);
    p.push(&b).await;
    let (outs, _) = p.finish().await;
    assert_eq!(window_rows(&outs), [("a".into(), 0, 1, 1.0, 1.0)]);
    assert_eq!(p.rules[0].counters.errors.load(Ordering::Relaxed), 1);
}

fn strings(outs: &[RuleOutput], column: &str) -> Vec<String> {
    let mut v = Vec::new();
    for o in outs {
        for b in &o.batches {
            let c = b.column(b.schema().index_of(column).unwrap()).clone();
            let c = fieldgate_rules::arrow::compute::cast(
                &c,
                &fieldgate_rules::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            for i in 0..b.num_rows() {
                v.push(c.as_string::<i32>().value(i).to_string());
            }
        }
    }
    v
}

#[tokio::test]
async fn order_by_with_limit_runs_on_every_batch() {
    let mut p =
        pipeline("CREATE RULE top2 INTO out AS SELECT device FROM t ORDER BY temp DESC LIMIT 2;")
            .await;
    for (round, rows) in [
        [("a", 1, 5.0), ("b", 2, 9.0), ("c", 3, 7.0)],
        [("d", 4, 1.0), ("e", 5, 2.0), ("f", 6, 3.0)],
        [("g", 7, 8.0), ("h", 8, 9.5), ("i", 9, 0.0)],
    ]
    .iter()
    .enumerate()
    {
        let (outs, errs) = p.push_at(&batch(&p, rows), 0).await;
        assert!(errs.is_empty(), "round {round}: {errs:?}");
        let mut sorted = rows.to_vec();
        sorted.sort_by(|x, y| y.2.total_cmp(&x.2));
        let want: Vec<String> = sorted[..2].iter().map(|r| r.0.to_string()).collect();
        assert_eq!(strings(&outs, "device"), want, "round {round}");
    }
}

#[tokio::test]
async fn an_ekuiper_window_filter_selects_the_rows_that_enter_the_window() {
    let mut p = pipeline(
        "CREATE RULE warm INTO out AS
         SELECT device, window_start, count(*) AS n, avg(temp) AS avg_temp, max(temp) AS max_temp
         FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10) FILTER (WHERE temp > 25);",
    )
    .await;
    let rows = [
        ("a", 1_000, 20.0),
        ("a", 2_000, 30.0),
        ("a", 3_000, 40.0),
        ("b", 4_000, 26.0),
        ("b", 5_000, 10.0),
    ];
    let (outs, errs) = p.push_at(&batch(&p, &rows), 0).await;
    assert!(errs.is_empty() && outs.is_empty(), "{errs:?}");
    let (outs, errs) = p.finish().await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        window_rows(&outs),
        vec![
            ("a".to_string(), 0, 2, 35.0, 40.0),
            ("b".to_string(), 0, 1, 26.0, 26.0)
        ]
    );
}

#[tokio::test]
async fn hashing_functions_are_available() {
    let mut p = pipeline("CREATE RULE h INTO out AS SELECT md5(device) AS d FROM t;").await;
    let (outs, errs) = p.push_at(&batch(&p, &[("abc", 1, 1.0)]), 0).await;
    assert!(errs.is_empty(), "{errs:?}");
    // RFC 1321's test vector for "abc".
    assert_eq!(strings(&outs, "d"), ["900150983cd24fb0d6963f7d28e17f72"]);
}

#[tokio::test]
async fn an_idle_stream_closes_its_windows_by_the_clock() {
    let text = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE)
      WITH (DATASOURCE = 'sensors/+/t', TIMESTAMP = 'ts', LATENESS = '3s', IDLE_TIMEOUT = '5s');
      CREATE RULE w INTO out AS
      SELECT device, window_start, count(*) AS n, avg(temp) AS avg_temp, max(temp) AS max_temp
      FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);";
    let (set, errors) = RuleSet::parse(Path::new("idle.sql"), text);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut ps, errors) = set.build(|_| true).await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut p = ps.remove(0);
    // Arrives at wall-clock 1_000_000 with event time 8 s: watermark 5 s, window open.
    let wall = 1_000_000;
    let (outs, _) = p.push_at(&batch(&p, &[("a", 8_000, 1.0)]), wall).await;
    assert!(outs.is_empty());
    // Not idle long enough yet: nothing moves.
    let (outs, _) = p.tick(wall + 4_999).await;
    assert!(outs.is_empty());
    assert_eq!(p.watermark(), Some(5_000));
    // Idle 5 s: the watermark follows the clock from the last event time (8 s + 5 s
    // − 3 s lateness = 10 s), which completes the window [0, 10 s).
    let (outs, errs) = p.tick(wall + 5_000).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(window_rows(&outs), vec![("a".to_string(), 0, 1, 1.0, 1.0)]);
}

#[tokio::test]
async fn a_row_the_rule_fails_on_is_left_out_and_the_rest_of_its_batch_goes_on() {
    let text = format!(
        "{STREAM}CREATE RULE r INTO out ERRORS INTO dead AS \
         SELECT device, CAST(device AS INT) + 1 AS next FROM t;\n\
         CREATE RULE w INTO out ERRORS INTO dead AS SELECT count(*) AS n FROM t \
         WHERE CAST(device AS INT) > 1 GROUP BY COUNTWINDOW(2);\n\
         CREATE RULE quiet INTO out AS SELECT CAST(device AS INT) AS d FROM t;"
    );
    let (set, errors) = RuleSet::parse(Path::new("test.sql"), &text);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut pipelines, errors) = set.build(|s| s == "out" || s == "dead").await;
    assert!(errors.is_empty(), "{errors:?}");
    let p = &mut pipelines[0];
    let rows: Vec<(String, i64, f64)> = (0..40)
        .map(|i| {
            let device = if i % 13 == 5 {
                format!("x{i}")
            } else {
                i.to_string()
            };
            (device, i, 0.0)
        })
        .collect();
    let refs: Vec<(&str, i64, f64)> = rows.iter().map(|r| (r.0.as_str(), r.1, r.2)).collect();
    let (outs, errs) = p.push(&batch(p, &refs)).await;
    // Rows 5, 18 and 31 cannot be cast: each rule left out those three and ran the rest.
    let of = |rule: &str, sink: &str| -> Vec<RecordBatch> {
        outs.iter()
            .filter(|o| &*o.rule == rule && o.sinks.iter().any(|s| s == sink))
            .flat_map(|o| o.batches.clone())
            .collect()
    };
    let next: Vec<i64> = of("r", "out")
        .iter()
        .flat_map(|b| {
            let c = fieldgate_rules::arrow::compute::cast(b.column(1), &DataType::Int64).unwrap();
            c.as_primitive::<Int64Type>().values().to_vec()
        })
        .collect();
    let expected: Vec<i64> = (0..40).filter(|i| i % 13 != 5).map(|i| i + 1).collect();
    assert_eq!(next, expected);
    for rule in ["r", "w"] {
        let dead = of(rule, "dead");
        let devices: Vec<&str> = dead
            .iter()
            .flat_map(|b| b.column(0).as_string::<i32>().iter().flatten())
            .collect();
        assert_eq!(devices, ["x5", "x18", "x31"], "{rule}");
        let b = &dead[0];
        assert_eq!(b.schema().field(b.num_columns() - 1).name(), "error");
        let error = b.column(b.num_columns() - 1).as_string::<i32>().value(0);
        assert!(error.contains("x5"), "{error}");
    }
    // Rows 2..40 but the three: 34 rows greater than 1, 17 count windows of 2.
    let windows: usize = of("w", "out").iter().map(|b| b.num_rows()).sum();
    assert_eq!(windows, 17);
    // Without an error sink the rows are counted and reported all the same.
    assert!(
        of("quiet", "out")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            == 37
    );
    for rule in &p.rules {
        assert_eq!(
            rule.counters.errors.load(Ordering::Relaxed),
            3,
            "{}",
            rule.name()
        );
    }
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].to_string().contains("3 row(s) failed"), "{errs:?}");
}

/// `now()` is the time a batch runs, not the time the rule was planned.
#[tokio::test]
async fn now_reads_the_clock_for_every_batch() {
    let mut p =
        pipeline("CREATE RULE r INTO out AS SELECT CAST(now() AS BIGINT) AS n FROM t;").await;
    let epoch_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    let mut readings = Vec::new();
    for i in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = epoch_ns();
        let (outs, errs) = p.push(&batch(&p, &[("a", i, 1.0)])).await;
        assert!(errs.is_empty(), "{errs:?}");
        let n = outs[0].batches[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0);
        assert!(
            n >= before && n <= epoch_ns(),
            "now() = {n}, batch ran from {before}"
        );
        readings.push(n);
    }
    assert!(readings[1] > readings[0], "{readings:?}");
}

#[tokio::test]
async fn a_window_without_aggregates_emits_its_rows() {
    let mut p = pipeline(
        "CREATE RULE all_rows INTO out AS SELECT * FROM t GROUP BY TUMBLINGWINDOW(ss, 10);\n\
         CREATE RULE hottest INTO out AS SELECT device, temp, window_end FROM t \
         GROUP BY TUMBLINGWINDOW(ss, 10) ORDER BY temp DESC LIMIT 2;\n\
         CREATE RULE counted INTO out AS SELECT count(*) AS n FROM t \
         GROUP BY TUMBLINGWINDOW(ss, 10);",
    )
    .await;
    let rows = [
        ("a", 1_000, 20.0),
        ("b", 2_000, 35.0),
        ("c", 3_000, 27.5),
        // Closes the first window (3 s of lateness).
        ("d", 14_000, 1.0),
    ];
    let (outs, errs) = p.push(&common::batch(&p, &rows)).await;
    assert!(errs.is_empty(), "{errs:?}");
    let of = |rule: &str| -> Vec<serde_json::Value> {
        let only: Vec<RuleOutput> = outs.iter().filter(|o| &*o.rule == rule).cloned().collect();
        common::json_rows(&only)
    };
    assert_eq!(
        of("all_rows"),
        [
            serde_json::json!({"device": "a", "ts": 1000, "temp": 20.0}),
            serde_json::json!({"device": "b", "ts": 2000, "temp": 35.0}),
            serde_json::json!({"device": "c", "ts": 3000, "temp": 27.5}),
        ]
    );
    assert_eq!(
        of("hottest"),
        [
            serde_json::json!({"device": "b", "temp": 35.0, "window_end": 10_000}),
            serde_json::json!({"device": "c", "temp": 27.5, "window_end": 10_000}),
        ]
    );
    assert_eq!(of("counted"), [serde_json::json!({"n": 3})]);
}
