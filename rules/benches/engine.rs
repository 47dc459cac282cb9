//! Rule engine throughput on one core, driven through the public API as the gateway
//! drives it: rule files parsed and planned once, then decoded micro-batches of 4096 rows
//! pushed through the stream's pipeline.
//!
//! Run with `cargo bench -p fieldgate-rules --bench engine`. Besides criterion's
//! measurements it prints the partial-aggregate state held per key and open window.
//!
//! Cases:
//! - `filter`: a stateless filter rule (about half the rows pass), on 4096-row batches
//!   and, for contrast, on one-row batches (a message at a time);
//! - `window`: tumbling average by key over 1k and 100k keys, hopping at 1k keys, and a
//!   session window (rows buffered) at 1k keys. One iteration is 10 s of event time:
//!   25 batches of 4096 rows (10,240 rows/s of event time) and the window(s) closing;
//! - `analytic`: eKuiper's stateful functions over 10k keys on 4096-row batches, each
//!   per partition key: `lag`, `changed_col` in WHERE, `deadband` in WHERE, and for
//!   contrast the same projection without any (`plain`); and a join to a lookup table of
//!   10k devices (`join`, every row matching one);
//! - `baseline`: the same filter as a bare Arrow kernel (the floor), and as DataFusion SQL
//!   planned per micro-batch and per message (what the engine avoids).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use fieldgate_rules::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use fieldgate_rules::arrow::compute::filter_record_batch;
use fieldgate_rules::arrow::compute::kernels::cmp::gt;
use fieldgate_rules::arrow::datatypes::SchemaRef;
use fieldgate_rules::{RuleSet, StreamPipeline};
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;

const STREAM: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE)
  WITH (DATASOURCE = 'sensors/+/telemetry', FORMAT = 'json', TIMESTAMP = 'ts', LATENESS = '2s');\n";

const FILTER: &str = "SELECT device, ts, temp FROM t WHERE temp > 30";
const TUMBLING: &str = "SELECT device, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp, \
     max(temp) AS max_temp FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10)";
const HOPPING: &str = "SELECT device, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp, \
     max(temp) AS max_temp FROM t GROUP BY device, HOPPINGWINDOW(ss, 10, 5)";
const SESSION: &str = "SELECT device, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp, \
     max(temp) AS max_temp FROM t GROUP BY device, SESSIONWINDOW(ss, 60, 10)";

/// The gateway's default micro-batch.
const BATCH_ROWS: usize = 4096;
/// Event time one batch spans: 25 batches per 10 s window, 10,240 rows/s.
const BATCH_SPAN_MS: i64 = 400;
const BATCHES_PER_WINDOW: usize = 25;
/// Event times start here (a multiple of 10 s).
const T0: i64 = 1_764_000_000_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A pipeline of one rule over stream `t`, planned once.
fn pipeline(rt: &Runtime, query: &str) -> StreamPipeline {
    pipeline_in(rt, Path::new("bench.sql"), "", query)
}

/// [`pipeline`], with more declarations (`extra`) in a rule file at `file`.
fn pipeline_in(rt: &Runtime, file: &Path, extra: &str, query: &str) -> StreamPipeline {
    let text = format!("{STREAM}{extra}CREATE RULE r INTO out AS {query};");
    let (set, errors) = RuleSet::parse(file, &text);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut pipelines, errors) = rt.block_on(set.build(|_| true));
    assert!(errors.is_empty(), "{errors:?}");
    pipelines.remove(0)
}

/// Batches of the stream with event time advancing: device and temperature columns are
/// built once (a pool of batches); each batch gets its own event-time column, increasing
/// by `BATCH_SPAN_MS` per batch with up to 200 ms of disorder inside the batch (within
/// the stream's lateness, so no row is late).
struct Feed {
    schema: SchemaRef,
    pool: Vec<(ArrayRef, ArrayRef)>,
    offsets: Vec<i64>,
    next: u64,
}

impl Feed {
    fn new(schema: SchemaRef, keys: usize, rows: usize, pool: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(keys as u64);
        let names: Vec<String> = (0..keys).map(|k| format!("dev-{k:06}")).collect();
        let pool = (0..pool)
            .map(|_| {
                let device: StringArray = (0..rows)
                    .map(|_| Some(names[rng.random_range(0..keys)].as_str()))
                    .collect();
                let temp: Float64Array = (0..rows)
                    .map(|_| Some(rng.random_range(10.0..50.0)))
                    .collect();
                (Arc::new(device) as ArrayRef, Arc::new(temp) as ArrayRef)
            })
            .collect();
        let offsets = (0..rows)
            .map(|i| i as i64 * BATCH_SPAN_MS / rows as i64 + rng.random_range(0..200))
            .collect();
        Self {
            schema,
            pool,
            offsets,
            next: 0,
        }
    }

    /// Event time at which the next batch starts.
    fn time(&self) -> i64 {
        T0 + self.next as i64 * BATCH_SPAN_MS
    }

    fn next(&mut self) -> RecordBatch {
        let base = self.time();
        let (device, temp) = &self.pool[self.next as usize % self.pool.len()];
        self.next += 1;
        let ts: Int64Array = self.offsets.iter().map(|o| Some(base + o)).collect();
        RecordBatch::try_new(
            self.schema.clone(),
            vec![device.clone(), Arc::new(ts), temp.clone()],
        )
        .expect("batch")
    }
}

/// Pushes `batches` batches per iteration; only `push_at` is timed (building the
/// event-time column and dropping the results are not).
fn run(
    rt: &Runtime,
    p: &mut StreamPipeline,
    feed: &mut Feed,
    iters: u64,
    batches: usize,
) -> Duration {
    let mut busy = Duration::ZERO;
    for _ in 0..iters {
        for _ in 0..batches {
            let batch = feed.next();
            let now = feed.time();
            let start = Instant::now();
            let (outs, errors) = rt.block_on(p.push_at(&batch, now));
            busy += start.elapsed();
            assert!(errors.is_empty(), "{errors:?}");
            black_box(outs);
        }
    }
    busy
}

fn filter(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("filter");
    for rows in [BATCH_ROWS, 1] {
        let mut p = pipeline(&rt, FILTER);
        let mut feed = Feed::new(p.stream.schema.clone(), 1_000, rows, 64);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("batch_rows", rows), |b| {
            b.iter_custom(|iters| run(&rt, &mut p, &mut feed, iters, 1))
        });
        let c = &p.rules[0].counters;
        let (inn, out) = (
            c.records_in.load(Ordering::Relaxed),
            c.records_out.load(Ordering::Relaxed),
        );
        // Zero when a filter on the command line skipped the case.
        assert!(
            inn == 0 || (out > inn / 3 && out < inn * 2 / 3),
            "{out} of {inn} passed"
        );
    }
    group.finish();
}

fn window(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("window");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(
        (BATCH_ROWS * BATCHES_PER_WINDOW) as u64,
    ));
    for (name, query, keys) in [
        ("tumbling", TUMBLING, 1_000),
        ("tumbling", TUMBLING, 100_000),
        ("hopping", HOPPING, 1_000),
        ("session", SESSION, 1_000),
    ] {
        let mut p = pipeline(&rt, query);
        let mut feed = Feed::new(p.stream.schema.clone(), keys, BATCH_ROWS, 64);
        group.bench_function(BenchmarkId::new(name, format!("{keys}_keys")), |b| {
            b.iter_custom(|iters| run(&rt, &mut p, &mut feed, iters, BATCHES_PER_WINDOW))
        });
        let r = &p.rules[0];
        let inn = r.counters.records_in.load(Ordering::Relaxed);
        if inn == 0 {
            continue; // skipped by a filter on the command line
        }
        let out = r.counters.records_out.load(Ordering::Relaxed);
        let late = r.counters.late.load(Ordering::Relaxed);
        let windows = (feed.time() - T0) / 10_000;
        println!(
            "  {name} {keys} keys: {inn} rows in, {late} late, {out} result rows over \
             {windows} windows of event time ({} per 10 s), {} open window(s) at the end",
            out / windows.max(1) as u64,
            r.open_windows()
        );
        assert_eq!(late, 0);
        assert!(out > 0);
        if name != "session" {
            assert!(r.is_incremental(), "{name} should keep partial state");
        }
    }
    group.finish();
}

fn baseline(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("baseline");
    let schema = pipeline(&rt, FILTER).stream.schema.clone();
    let mut feed = Feed::new(schema.clone(), 1_000, BATCH_ROWS, 1);
    let batch = feed.next();

    group.throughput(Throughput::Elements(BATCH_ROWS as u64));
    group.bench_function("arrow_filter_kernel", |b| {
        b.iter(|| {
            let mask = gt(batch.column(2), &Float64Array::new_scalar(30.0)).expect("gt");
            filter_record_batch(black_box(&batch), &mask).expect("filter")
        })
    });

    // A SessionContext, table registration, SQL parsing, planning and optimisation for
    // every micro-batch (or message): what planning per batch would cost.
    let per_batch = |batch: RecordBatch| {
        let schema = schema.clone();
        async move {
            let config = SessionConfig::new().with_target_partitions(1);
            let ctx = SessionContext::new_with_config(config);
            let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
            ctx.register_table("t", Arc::new(table)).expect("register");
            let df = ctx.sql(FILTER).await.expect("plan");
            df.collect().await.expect("run")
        }
    };
    group.bench_function("datafusion_sql_per_batch", |b| {
        b.iter(|| rt.block_on(per_batch(black_box(batch.clone()))))
    });
    group.throughput(Throughput::Elements(1));
    let one = batch.slice(0, 1);
    group.bench_function("datafusion_sql_per_message", |b| {
        b.iter(|| rt.block_on(per_batch(black_box(one.clone()))))
    });
    group.finish();
}

/// Partial aggregate state per key and open window, from feeding `keys` keys
/// (each `rows_per_key` times) into one 10 s window.
fn memory() {
    let rt = runtime();
    println!("memory per open window (partial aggregate state, Rule::state_bytes):");
    for (name, query) in [("tumbling", TUMBLING), ("hopping", HOPPING)] {
        for keys in [1_000usize, 100_000] {
            let mut p = pipeline(&rt, query);
            let schema = p.stream.schema.clone();
            let rows_per_key = 10;
            let total = keys * rows_per_key;
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let names: Vec<String> = (0..keys).map(|k| format!("dev-{k:06}")).collect();
            let mut fed = 0;
            let mut input_bytes = 0;
            while fed < total {
                let n = BATCH_ROWS.min(total - fed);
                let device: StringArray = (fed..fed + n)
                    .map(|i| Some(names[i % keys].as_str()))
                    .collect();
                // Spread over the first 6.9 s of the window: the watermark (max − 2 s)
                // stays before 5 s, so no tumbling or hopping window containing these
                // rows closes; a hopping rule holds two 5 s panes.
                let ts: Int64Array = (fed..fed + n)
                    .map(|i| Some(T0 + (i * 6_900 / total) as i64))
                    .collect();
                let temp: Float64Array =
                    (0..n).map(|_| Some(rng.random_range(10.0..50.0))).collect();
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(device), Arc::new(ts), Arc::new(temp)],
                )
                .expect("batch");
                input_bytes += batch.get_array_memory_size();
                let (outs, errors) = rt.block_on(p.push_at(&batch, T0));
                assert!(errors.is_empty() && outs.is_empty());
                fed += n;
            }
            let rule = &p.rules[0];
            let (bytes, open) = (rule.state_bytes(), rule.open_windows());
            assert!(open >= 1);
            println!(
                "  {name:8} {keys:>7} keys, {total:>8} rows: {open} open pane(s), \
                 {bytes:>10} bytes of state, {:>6.1} bytes per key per open pane \
                 (the rows themselves: {:.1} bytes per row)",
                bytes as f64 / (keys * open) as f64,
                input_bytes as f64 / total as f64,
            );
        }
    }
}

const ANALYTIC_KEYS: usize = 10_000;

fn analytic(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("analytic");
    for (name, query) in [
        ("plain", "SELECT device, temp FROM t"),
        (
            "lag",
            "SELECT device, temp, lag(temp) OVER (PARTITION BY device) AS prev FROM t",
        ),
        (
            "changed_col",
            "SELECT device, temp FROM t \
             WHERE changed_col(true, round(temp)) OVER (PARTITION BY device) IS NOT NULL",
        ),
        (
            "deadband",
            "SELECT device, temp FROM t WHERE deadband(temp, 10) OVER (PARTITION BY device)",
        ),
        (
            "join",
            "SELECT t.device, s.site, t.temp FROM t JOIN sites s ON t.device = s.device",
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("fieldgate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let sites: String = std::iter::once("device,site\n".to_string())
            .chain((0..ANALYTIC_KEYS).map(|k| format!("dev-{k:06},site-{}\n", k % 40)))
            .collect();
        std::fs::write(dir.join("sites.csv"), sites).expect("sites.csv");
        let table = "CREATE TABLE sites (device STRING, site STRING) WITH (PATH = 'sites.csv');\n";
        let mut p = pipeline_in(&rt, &dir.join("bench.sql"), table, query);
        let mut feed = Feed::new(p.stream.schema.clone(), ANALYTIC_KEYS, BATCH_ROWS, 64);
        group.throughput(Throughput::Elements(BATCH_ROWS as u64));
        group.bench_function(BenchmarkId::new(name, "10000_keys"), |b| {
            b.iter_custom(|iters| run(&rt, &mut p, &mut feed, iters, 1))
        });
        // Every key seen is held (a test-mode run sees one batch: part of the keys).
        let (keys, ran) = (
            p.rules[0].analytic_keys(),
            p.rules[0].counters.batches.load(Ordering::Relaxed),
        );
        assert!(
            matches!(name, "plain" | "join") || ran == 0 || (keys > 0 && keys <= ANALYTIC_KEYS),
            "{name}: {keys} keys"
        );
    }
    group.finish();
}

fn main() {
    // `cargo bench -- NAME` runs the benchmarks whose id contains NAME; the memory
    // report runs unless a filter excludes it.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let listing = std::env::args().any(|a| a == "--list");
    if !listing && (filters.is_empty() || filters.iter().any(|f| "memory".contains(f.as_str()))) {
        memory();
    }
    let mut c = Criterion::default().configure_from_args();
    filter(&mut c);
    window(&mut c);
    analytic(&mut c);
    baseline(&mut c);
    c.final_summary();
}
