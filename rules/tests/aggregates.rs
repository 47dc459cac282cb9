//! Windowed aggregates beyond count/sum/max: FILTER (WHERE ...), HAVING, CASE over
//! aggregates, min/avg/stddev/median, DISTINCT, windows without keys. Random streams go
//! through tumbling and hopping windows (kept as partial state per pane) and the results
//! are compared with a reference computed here in plain Rust over the input rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use fieldgate_rules::StreamPipeline;
use fieldgate_rules::arrow::array::UInt64Array;
use fieldgate_rules::arrow::array::{Array, AsArray};
use fieldgate_rules::arrow::datatypes::{DataType, Float64Type, Int64Type};
use rand::{Rng, SeedableRng};

const LATENESS: i64 = 1_500;

/// (device, event time, value)
type Event = (String, i64, i64);

async fn pipeline(rule: &str) -> StreamPipeline {
    let text = format!(
        "CREATE STREAM t (device STRING, ts BIGINT, v DOUBLE)
           WITH (DATASOURCE = 'x/+', TIMESTAMP = 'ts', LATENESS = '{LATENESS}ms');
         CREATE RULE r INTO out AS {rule};"
    );
    common::only_pipeline("a.sql", &text).await
}

/// Mostly increasing times with jitter inside the lateness and a few far-behind rows,
/// cut into random batches.
fn events(seed: u64) -> Vec<Vec<Event>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ev: Vec<Event> = (0..1_200i64)
        .map(|i| {
            let jitter = rng.random_range(-1_200..1_200);
            (
                format!("d{}", rng.random_range(0..4)),
                (i * 25 + jitter).max(0),
                rng.random_range(-60..100),
            )
        })
        .collect();
    for _ in 0..25 {
        let at = rng.random_range(100..ev.len());
        let ts = (ev[at].1 - rng.random_range(3_000..10_000)).max(0);
        ev.insert(at, (format!("d{}", rng.random_range(0..4)), ts, 7));
    }
    let mut batches = Vec::new();
    let mut rest = &ev[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..60).min(rest.len());
        batches.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    batches
}

/// Rows of every window `[k·slide, k·slide + size)` that was still open (watermark
/// before the row's batch below its end) when the row arrived.
fn reference_windows(batches: &[Vec<Event>], size: i64, slide: i64) -> BTreeMap<i64, Vec<Event>> {
    let mut windows: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    let mut max_seen: Option<i64> = None;
    for b in batches {
        let wm = max_seen.map(|m| m - LATENESS);
        for e in b {
            let mut start = e.1.div_euclid(slide) * slide;
            while start > e.1 - size {
                if wm.is_none_or(|w| w < start + size) {
                    windows.entry(start).or_default().push(e.clone());
                }
                start -= slide;
            }
        }
        let m = b.iter().map(|e| e.1).max().expect("batches are not empty");
        max_seen = Some(max_seen.map_or(m, |x| x.max(m)));
    }
    windows
}

use common::events_batch as batch;

/// Every result row as column name → value rendered as text (floats to 6 decimals).
async fn run(p: &mut StreamPipeline, batches: &[Vec<Event>]) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for b in batches {
        let (o, errs) = p.push_at(&batch(p, b), 0).await;
        assert!(errs.is_empty(), "{errs:?}");
        out.extend(o);
    }
    let (o, errs) = p.finish().await;
    assert!(errs.is_empty(), "{errs:?}");
    out.extend(o);
    let mut rows = Vec::new();
    for o in out {
        for b in o.batches {
            for i in 0..b.num_rows() {
                let mut row = BTreeMap::new();
                for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                    let v = if c.is_null(i) {
                        "null".to_string()
                    } else {
                        match c.data_type() {
                            DataType::Int64 => c.as_primitive::<Int64Type>().value(i).to_string(),
                            DataType::UInt64 => c
                                .as_any()
                                .downcast_ref::<UInt64Array>()
                                .unwrap()
                                .value(i)
                                .to_string(),
                            DataType::Float64 => {
                                format!("{:.6}", c.as_primitive::<Float64Type>().value(i))
                            }
                            DataType::Utf8 => c.as_string::<i32>().value(i).to_string(),
                            other => panic!("unexpected result type {other}"),
                        }
                    };
                    row.insert(f.name().clone(), v);
                }
                rows.push(row);
            }
        }
    }
    rows.sort();
    rows
}

fn row(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn f(x: f64) -> String {
    format!("{x:.6}")
}

fn assert_rows(
    what: &str,
    got: Vec<BTreeMap<String, String>>,
    mut want: Vec<BTreeMap<String, String>>,
) {
    want.sort();
    if got != want {
        let g: BTreeSet<_> = got.iter().collect();
        let w: BTreeSet<_> = want.iter().collect();
        panic!(
            "{what}: {} rows, expected {}\nunexpected: {:?}\nmissing: {:?}",
            got.len(),
            want.len(),
            g.difference(&w).take(3).collect::<Vec<_>>(),
            w.difference(&g).take(3).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn filter_having_case_and_statistics_per_key_match_the_reference() {
    let rule = "SELECT device, window_start, window_end,
                  count(*) AS n,
                  count(*) FILTER (WHERE v > 0) AS pos,
                  min(v) AS mn,
                  avg(v) AS a,
                  stddev_pop(v) AS sd,
                  median(v) AS med,
                  CASE WHEN max(v) >= 90 THEN 'hot' ELSE 'ok' END AS level
                FROM t
                WHERE v <> 13
                GROUP BY device, HOPPINGWINDOW(ms, 2000, 500)
                HAVING count(*) >= 3";
    for seed in 0..3 {
        let batches = events(seed);
        let mut p = pipeline(rule).await;
        assert!(p.rules[0].is_incremental());
        let got = run(&mut p, &batches).await;
        let mut want = Vec::new();
        let kept: Vec<Vec<Event>> = batches
            .iter()
            .map(|b| b.iter().filter(|e| e.2 != 13).cloned().collect())
            .collect();
        // WHERE drops rows before windows; the watermark still sees every row's time.
        let windows = {
            let mut w: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
            let all = reference_windows(&batches, 2_000, 500);
            let keep: BTreeSet<&Event> = kept.iter().flatten().collect();
            for (s, rows) in all {
                w.insert(s, rows.into_iter().filter(|e| keep.contains(e)).collect());
            }
            w
        };
        for (start, rows) in &windows {
            let mut by_dev: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for e in rows {
                by_dev.entry(&e.0).or_default().push(e.2 as f64);
            }
            for (dev, mut vs) in by_dev {
                if vs.len() < 3 {
                    continue;
                }
                let n = vs.len() as f64;
                let mean = vs.iter().sum::<f64>() / n;
                let sd = (vs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
                vs.sort_by(f64::total_cmp);
                let med = if vs.len() % 2 == 1 {
                    vs[vs.len() / 2]
                } else {
                    (vs[vs.len() / 2 - 1] + vs[vs.len() / 2]) / 2.0
                };
                let max = vs[vs.len() - 1];
                want.push(row(&[
                    ("device", dev.to_string()),
                    ("window_start", start.to_string()),
                    ("window_end", (start + 2_000).to_string()),
                    ("n", vs.len().to_string()),
                    ("pos", vs.iter().filter(|x| **x > 0.0).count().to_string()),
                    ("mn", f(vs[0])),
                    ("a", f(mean)),
                    ("sd", f(sd)),
                    ("med", f(med)),
                    ("level", if max >= 90.0 { "hot" } else { "ok" }.to_string()),
                ]));
            }
        }
        assert!(
            want.len() > 50,
            "the reference has too few windows to mean much"
        );
        assert_rows(&format!("seed {seed}"), got, want);
    }
}

/// eKuiper's `deduplicate` and `merge_agg` fold rows into pane state and merge panes
/// like the other aggregates; counted here without regard to order.
#[tokio::test]
async fn deduplicate_and_merge_agg_per_key_match_the_reference() {
    let rule = "SELECT device, window_start,
                  cardinality(deduplicate(v, true)) AS kinds,
                  merge_agg(named_struct('neg', CASE WHEN v < 0 THEN 1 END,
                                         'hot', CASE WHEN v >= 90 THEN 1 END))['neg'] AS neg,
                  merge_agg(named_struct('neg', CASE WHEN v < 0 THEN 1 END,
                                         'hot', CASE WHEN v >= 90 THEN 1 END))['hot'] AS hot
                FROM t
                GROUP BY device, HOPPINGWINDOW(ms, 1500, 500)";
    for seed in 20..23 {
        let batches = events(seed);
        let mut p = pipeline(rule).await;
        let got = run(&mut p, &batches).await;
        let mut want = Vec::new();
        for (start, rows) in reference_windows(&batches, 1_500, 500) {
            let mut by_dev: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for e in &rows {
                by_dev.entry(&e.0).or_default().push(e.2);
            }
            for (dev, vs) in by_dev {
                let kinds: BTreeSet<i64> = vs.iter().copied().collect();
                let flag = |yes: bool| if yes { "1" } else { "null" }.to_string();
                want.push(row(&[
                    ("device", dev.to_string()),
                    ("window_start", start.to_string()),
                    ("kinds", kinds.len().to_string()),
                    ("neg", flag(vs.iter().any(|v| *v < 0))),
                    ("hot", flag(vs.iter().any(|v| *v >= 90))),
                ]));
            }
        }
        assert!(want.len() > 50, "too few windows to mean much");
        assert_rows(&format!("seed {seed}"), got, want);
    }
}

#[tokio::test]
async fn a_window_without_keys_aggregates_every_row() {
    let rule = "SELECT window_start, window_end, count(*) AS n, sum(v) AS s,
                       count(DISTINCT device) AS devices
                FROM t GROUP BY TUMBLINGWINDOW(ms, 700)";
    for seed in 10..13 {
        let batches = events(seed);
        let mut p = pipeline(rule).await;
        let got = run(&mut p, &batches).await;
        let mut want = Vec::new();
        for (start, rows) in reference_windows(&batches, 700, 700) {
            let devices: BTreeSet<&str> = rows.iter().map(|e| e.0.as_str()).collect();
            want.push(row(&[
                ("window_start", start.to_string()),
                ("window_end", (start + 700).to_string()),
                ("n", rows.len().to_string()),
                ("s", f(rows.iter().map(|e| e.2 as f64).sum())),
                ("devices", devices.len().to_string()),
            ]));
        }
        assert_rows(&format!("seed {seed}"), got, want);
    }
}

#[tokio::test]
async fn open_window_state_grows_with_keys_not_rows() {
    let rule = "SELECT device, window_start, avg(v) AS a FROM t
                GROUP BY device, TUMBLINGWINDOW(ss, 60)";
    let mut p = pipeline(rule).await;
    let b = |rows: i64| -> Vec<Event> {
        (0..rows)
            .map(|i| (format!("d{}", i % 10), 1_000 + i % 500, i % 7))
            .collect()
    };
    let (_, errs) = p.push_at(&batch(&p, &b(1_000)), 0).await;
    assert!(errs.is_empty());
    let after_1k = p.rules[0].state_bytes();
    for _ in 0..50 {
        let (_, errs) = p.push_at(&batch(&p, &b(1_000)), 0).await;
        assert!(errs.is_empty());
    }
    let after_51k = p.rules[0].state_bytes();
    assert!(after_1k > 0);
    assert!(
        after_51k <= after_1k * 2,
        "state grew from {after_1k} to {after_51k} bytes for the same 10 keys"
    );
    assert_eq!(p.rules[0].open_windows(), 1);
}
