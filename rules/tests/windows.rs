//! Property tests: random event streams (random keys, out of order within the lateness,
//! some late rows, random batch sizes) through every window kind, compared exactly with
//! a reference computed here in plain Rust over the input rows.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use fieldgate_rules::arrow::array::AsArray;
use fieldgate_rules::arrow::datatypes::{Float64Type, Int64Type};
use fieldgate_rules::{RuleOutput, StreamPipeline};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const LATENESS: i64 = 2_000;

/// (device, event time, value)
type Event = (String, i64, i64);
/// (device, window_start, window_end, count, sum, max)
type Row = (String, i64, i64, i64, i64, i64);

async fn pipeline(window: &str) -> StreamPipeline {
    let text = format!(
        "CREATE STREAM t (device STRING, ts BIGINT, v DOUBLE)
           WITH (DATASOURCE = 'x/+', TIMESTAMP = 'ts', LATENESS = '{LATENESS}ms');
         CREATE RULE r INTO out AS
           SELECT device, window_start, window_end, count(*) AS n, sum(v) AS s, max(v) AS mx
           FROM t GROUP BY device, {window};"
    );
    common::only_pipeline("w.sql", &text).await
}

/// Random arrival order: mostly increasing times, shuffled in blocks spanning less than
/// the lateness, with some far-behind (late) rows mixed in; cut into random batches.
fn events(seed: u64) -> Vec<Vec<Event>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ev: Vec<Event> = (0..1_500i64)
        .map(|i| {
            // Gaps now and then, so that sessions end.
            let ts = i * 40 + if (i / 100) % 3 == 2 { 5_000 } else { 0 } + rng.random_range(0..40);
            (
                format!("d{}", rng.random_range(0..5)),
                ts,
                rng.random_range(-100..100),
            )
        })
        .collect();
    for block in ev.chunks_mut(30) {
        block.shuffle(&mut rng);
    }
    for _ in 0..30 {
        let at = rng.random_range(200..ev.len());
        let ts = ev[at].1 - rng.random_range(3_000..30_000);
        ev.insert(at, (format!("d{}", rng.random_range(0..5)), ts, 1_000));
    }
    let mut batches = Vec::new();
    let mut rest = &ev[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..80).min(rest.len());
        batches.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    batches
}

async fn run(p: &mut StreamPipeline, batches: &[Vec<Event>]) -> Vec<Row> {
    let mut outs: Vec<RuleOutput> = Vec::new();
    for b in batches {
        let batch = common::events_batch(p, b);
        let (o, errs) = p.push_at(&batch, 0).await;
        assert!(errs.is_empty(), "{errs:?}");
        outs.extend(o);
    }
    let (o, errs) = p.finish().await;
    assert!(errs.is_empty(), "{errs:?}");
    outs.extend(o);
    let mut rows = Vec::new();
    for o in outs {
        for b in o.batches {
            let s = b.schema();
            let c = |n: &str| b.column(s.index_of(n).unwrap()).clone();
            let (dev, ws, we, n, sum, mx) = (
                c("device"),
                c("window_start"),
                c("window_end"),
                c("n"),
                c("s"),
                c("mx"),
            );
            for i in 0..b.num_rows() {
                rows.push((
                    dev.as_string::<i32>().value(i).to_string(),
                    ws.as_primitive::<Int64Type>().value(i),
                    we.as_primitive::<Int64Type>().value(i),
                    n.as_primitive::<Int64Type>().value(i),
                    sum.as_primitive::<Float64Type>().value(i) as i64,
                    mx.as_primitive::<Float64Type>().value(i) as i64,
                ));
            }
        }
    }
    rows.sort();
    rows
}

/// Aggregates rows into result rows per device, for one window.
fn aggregate(out: &mut Vec<Row>, start: i64, end: i64, members: &[&Event]) {
    let mut by_dev: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for e in members {
        let a = by_dev.entry(e.0.as_str()).or_insert((0, 0, i64::MIN));
        a.0 += 1;
        a.1 += e.2;
        a.2 = a.2.max(e.2);
    }
    for (d, (n, s, m)) in by_dev {
        out.push((d.to_string(), start, end, n, s, m));
    }
}

/// Replays arrival order: the watermark before each batch decides which rows are late.
fn replay(
    batches: &[Vec<Event>],
    mut accept: impl FnMut(&Event, Option<i64>) -> bool,
    mut after: impl FnMut(Option<i64>),
) -> u64 {
    let mut max_seen: Option<i64> = None;
    let mut late = 0;
    for b in batches {
        let wm = max_seen.map(|m| m - LATENESS);
        for e in b {
            if !accept(e, wm) {
                late += 1;
            }
        }
        let m = b.iter().map(|e| e.1).max().unwrap();
        max_seen = Some(max_seen.map_or(m, |x| x.max(m)));
        after(max_seen.map(|m| m - LATENESS));
    }
    late
}

async fn check(window: &str, batches: &[Vec<Event>], expected: Vec<Row>, late: u64) {
    let mut p = pipeline(window).await;
    let panes = ["TUMBL", "HOP"].iter().any(|k| window.starts_with(k));
    assert_eq!(
        p.rules[0].is_incremental(),
        panes,
        "{window}: tumbling and hopping windows keep partial state, others rows"
    );
    let got = run(&mut p, batches).await;
    let mut expected = expected;
    expected.sort();
    if got != expected {
        let g: BTreeSet<_> = got.iter().collect();
        let e: BTreeSet<_> = expected.iter().collect();
        panic!(
            "{window}: {} rows, expected {}\nunexpected: {:?}\nmissing: {:?}",
            got.len(),
            expected.len(),
            g.difference(&e).take(5).collect::<Vec<_>>(),
            e.difference(&g).take(5).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        p.rules[0].counters.late.load(Ordering::Relaxed),
        late,
        "{window}: late rows"
    );
}

/// Tumbling and hopping windows `[k·slide, k·slide + size)`.
fn panes_reference(batches: &[Vec<Event>], size: i64, slide: i64) -> (Vec<Row>, u64) {
    let mut windows: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    let late = replay(
        batches,
        |e, wm| {
            let mut any = false;
            // Every window start k·slide with k·slide <= ts < k·slide + size.
            let mut start = e.1.div_euclid(slide) * slide;
            while start > e.1 - size {
                if wm.is_none_or(|w| w < start + size) {
                    windows.entry(start).or_default().push(e.clone());
                    any = true;
                }
                start -= slide;
            }
            any
        },
        |_| {},
    );
    let mut out = Vec::new();
    for (start, rows) in &windows {
        aggregate(
            &mut out,
            *start,
            start + size,
            &rows.iter().collect::<Vec<_>>(),
        );
    }
    (out, late)
}

#[tokio::test]
async fn tumbling_windows_match_the_reference() {
    for seed in 0..4 {
        let b = events(seed);
        let (rows, late) = panes_reference(&b, 1_000, 1_000);
        assert!(late > 0);
        check("TUMBLINGWINDOW(ss, 1)", &b, rows.clone(), late).await;
        check("TUMBLE(INTERVAL '1' SECOND)", &b, rows, late).await;
    }
}

#[tokio::test]
async fn hopping_windows_match_the_reference() {
    for seed in 10..14 {
        let b = events(seed);
        let (rows, late) = panes_reference(&b, 3_000, 1_000);
        check("HOPPINGWINDOW(ms, 3000, 1000)", &b, rows.clone(), late).await;
        check(
            "HOP(INTERVAL '3' SECOND, INTERVAL '1' SECOND)",
            &b,
            rows,
            late,
        )
        .await;
        let (rows, late) = panes_reference(&b, 2_000, 700);
        check("HOPPINGWINDOW(ms, 2000, 700)", &b, rows, late).await;
    }
}

#[tokio::test]
async fn sliding_windows_match_the_reference() {
    for seed in 20..24 {
        let b = events(seed);
        let size = 1_500;
        let mut accepted: Vec<Event> = Vec::new();
        let late = replay(
            &b,
            |e, wm| {
                let ok = wm.is_none_or(|w| e.1 > w);
                if ok {
                    accepted.push(e.clone());
                }
                ok
            },
            |_| {},
        );
        let triggers: BTreeSet<i64> = accepted.iter().map(|e| e.1).collect();
        // Without and with eKuiper's delay: a window also holds what comes `delay` after
        // its trigger.
        for delay in [0, 400] {
            let mut rows = Vec::new();
            for t in &triggers {
                let members: Vec<&Event> = accepted
                    .iter()
                    .filter(|e| e.1 > t - size && e.1 <= t + delay)
                    .collect();
                aggregate(&mut rows, t - size, t + delay, &members);
            }
            let spelling = match delay {
                0 => "SLIDINGWINDOW(ms, 1500)".to_string(),
                d => format!("SLIDINGWINDOW(ms, 1500, {d})"),
            };
            check(&spelling, &b, rows, late).await;
        }
    }
}

#[tokio::test]
async fn session_windows_match_the_reference() {
    for seed in 30..34 {
        let b = events(seed);
        let (max, gap) = (4_000, 300);
        // Per device: pending rows, and the end of the last emitted session.
        let mut pending: HashMap<String, Vec<Event>> = HashMap::new();
        let mut closed_to: HashMap<String, i64> = HashMap::new();
        let mut rows = Vec::new();
        let sessions = |evs: &mut Vec<Event>| -> Vec<(i64, i64, Vec<Event>)> {
            evs.sort_by_key(|e| e.1);
            let mut out: Vec<(i64, i64, Vec<Event>)> = Vec::new();
            for e in evs.iter() {
                match out.last_mut() {
                    Some((start, _, members))
                        if e.1 - members.last().unwrap().1 < gap && e.1 - *start < max =>
                    {
                        members.push(e.clone())
                    }
                    _ => out.push((e.1, 0, vec![e.clone()])),
                }
            }
            for s in &mut out {
                s.1 = (s.2.last().unwrap().1 + gap).min(s.0 + max);
            }
            out
        };
        let pending_cell = std::cell::RefCell::new(&mut pending);
        let closed_cell = std::cell::RefCell::new(&mut closed_to);
        let rows_cell = std::cell::RefCell::new(&mut rows);
        let late = replay(
            &b,
            |e, wm| {
                let c = closed_cell.borrow().get(&e.0).copied();
                if wm.is_some_and(|w| w >= e.1 + gap) || c.is_some_and(|c| e.1 < c) {
                    return false;
                }
                pending_cell
                    .borrow_mut()
                    .entry(e.0.clone())
                    .or_default()
                    .push(e.clone());
                true
            },
            |wm| {
                let Some(wm) = wm else { return };
                for (dev, evs) in pending_cell.borrow_mut().iter_mut() {
                    let ss = sessions(evs);
                    let mut kept = Vec::new();
                    let mut open = false;
                    for (start, end, members) in ss {
                        if !open && end <= wm {
                            aggregate(
                                &mut rows_cell.borrow_mut(),
                                start,
                                end,
                                &members.iter().collect::<Vec<_>>(),
                            );
                            closed_cell.borrow_mut().insert(dev.clone(), end);
                        } else {
                            open = true;
                            kept.extend(members);
                        }
                    }
                    *evs = kept;
                }
            },
        );
        for evs in pending_cell.borrow_mut().values_mut() {
            for (start, end, members) in sessions(evs) {
                aggregate(
                    &mut rows_cell.borrow_mut(),
                    start,
                    end,
                    &members.iter().collect::<Vec<_>>(),
                );
            }
        }
        let _ = rows_cell.into_inner();
        check("SESSIONWINDOW(ms, 4000, 300)", &b, rows.clone(), late).await;
        check("SESSION(INTERVAL '300 ms', INTERVAL '4 s')", &b, rows, late).await;
    }
}

#[tokio::test]
async fn count_windows_match_the_reference() {
    for seed in 40..44 {
        let b = events(seed);
        let all: Vec<&Event> = b.iter().flatten().collect();
        for (size, slide) in [(50usize, 50usize), (40, 15), (7, 3)] {
            let mut rows = Vec::new();
            // A window ends at every slide-th row that has `size` rows up to it.
            let mut end = slide;
            while end < size {
                end += slide;
            }
            while end <= all.len() {
                let members = &all[end - size..end];
                let lo = members.iter().map(|e| e.1).min().unwrap();
                let hi = members.iter().map(|e| e.1).max().unwrap();
                aggregate(&mut rows, lo, hi, members);
                end += slide;
            }
            let spelling = if size == slide {
                format!("COUNTWINDOW({size})")
            } else {
                format!("COUNTWINDOW({size}, {slide})")
            };
            check(&spelling, &b, rows, 0).await;
        }
    }
}
