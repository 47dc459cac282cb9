//! What screening payloads costs before they are decoded: the same micro-batch of JSON
//! readings through the payload screen alone, through `JsonDecoder` (screen, then the
//! Arrow decoder), and, as the baseline, through the Arrow decoder fed the way
//! `JsonDecoder` fed it before the screen existed (each payload checked for UTF-8,
//! decoded, checked for a partial record), all in one process.
//!
//! Run with `cargo bench -p fieldgate-connectors --bench decode`.
//!
//! This machine's speed drifts from minute to minute, so besides criterion's per-case
//! figures the benchmark prints paired ratios: the baseline and the screened decoder run
//! alternately on the same batch, 301 times, and the median of the per-pair ratios is
//! reported with its quartiles.
//!
//! Cases, 4096 payloads each:
//! - `flat`: a sensor reading, `{"device":"dev-17","ts":...,"temp":21.5,"hum":40,"ok":true}`
//!   (about 90 bytes);
//! - `nested`: a reading with a struct and a list of integers (about 200 bytes).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use fieldgate_connectors::codec::{InputLimits, JsonDecoder, Screen};

const BATCH: usize = 4096;

fn flat() -> (SchemaRef, Vec<String>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("temp", DataType::Float64, true),
        Field::new("hum", DataType::Int64, true),
        Field::new("ok", DataType::Boolean, true),
    ]));
    let payloads = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"device":"dev-{}","ts":{},"temp":{}.{},"hum":{},"ok":{}}}"#,
                i % 100,
                1_764_000_000_000i64 + i as i64 * 10,
                15 + i % 20,
                i % 10,
                30 + i % 50,
                i % 3 != 0
            )
        })
        .collect();
    (schema, payloads)
}

fn nested() -> (SchemaRef, Vec<String>) {
    let reading = DataType::Struct(Fields::from(vec![
        Field::new("site", DataType::Utf8, true),
        Field::new("temp", DataType::Float64, true),
        Field::new("count", DataType::Int64, true),
    ]));
    let ids = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
    let schema = Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("reading", reading, true),
        Field::new("ids", ids, true),
    ]));
    let payloads = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"device":"dev-{}","ts":{},"reading":{{"site":"hall-{}","temp":{}.5,"count":{}}},"ids":[{},{},{},{}],"note":"calibrated \"ok\""}}"#,
                i % 100,
                1_764_000_000_000i64 + i as i64 * 10,
                i % 7,
                15 + i % 20,
                i,
                i,
                i + 1,
                i + 2,
                i + 3
            )
        })
        .collect();
    (schema, payloads)
}

/// The Arrow decoder fed as `JsonDecoder` fed it before payloads were screened: the
/// baseline.
fn unscreened(schema: &SchemaRef, payloads: &[String]) -> usize {
    let mut d = ReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .build_decoder()
        .expect("decoder");
    for p in payloads {
        std::str::from_utf8(p.as_bytes()).expect("UTF-8");
        let mut buf = p.as_bytes();
        while !buf.is_empty() {
            let read = d.decode(buf).expect("decodes");
            buf = &buf[read..];
        }
        assert!(!d.has_partial_record());
    }
    d.flush().expect("flush").map_or(0, |b| b.num_rows())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, (schema, payloads)) in [("flat", flat()), ("nested", nested())] {
        let screen = Screen::new(&schema, InputLimits::default());
        let mut decoder = JsonDecoder::new(schema.clone()).expect("decoder");
        assert_eq!(unscreened(&schema, &payloads), BATCH);
        assert!(decoder.decode(&payloads).rejected.is_empty());
        g.bench_with_input(BenchmarkId::new("unscreened", name), &payloads, |b, p| {
            b.iter(|| black_box(unscreened(&schema, p)))
        });
        g.bench_with_input(BenchmarkId::new("screen", name), &payloads, |b, p| {
            b.iter(|| {
                for x in p {
                    black_box(screen.check(x.as_bytes()).is_ok());
                }
            })
        });
        g.bench_with_input(
            BenchmarkId::new("screen_and_decode", name),
            &payloads,
            |b, p| b.iter(|| black_box(decoder.decode(p).batch.map_or(0, |b| b.num_rows()))),
        );
    }
    g.finish();
}

/// Times `f` once.
fn once(f: &mut dyn FnMut() -> usize) -> f64 {
    let t = std::time::Instant::now();
    black_box(f());
    t.elapsed().as_secs_f64()
}

/// The baseline and the screened decoder alternately on one batch: the median and
/// quartiles of screened / baseline, and the median times.
fn paired(c: &mut Criterion) {
    let _ = c;
    for (name, (schema, payloads)) in [("flat", flat()), ("nested", nested())] {
        let mut decoder = JsonDecoder::new(schema.clone()).expect("decoder");
        let mut ratios = Vec::new();
        let (mut base, mut screened) = (Vec::new(), Vec::new());
        for round in 0..311 {
            let b = once(&mut || unscreened(&schema, &payloads));
            let s = once(&mut || decoder.decode(&payloads).batch.map_or(0, |b| b.num_rows()));
            // The first rounds warm the caches and the allocator.
            if round >= 10 {
                ratios.push(s / b);
                base.push(b);
                screened.push(s);
            }
        }
        for v in [&mut ratios, &mut base, &mut screened] {
            v.sort_by(f64::total_cmp);
        }
        let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
        println!(
            "paired/{name}: screened / baseline median {:.3} (quartiles {:.3}–{:.3}); median \
             baseline {:.3} ms, screened {:.3} ms per 4096 payloads",
            q(&ratios, 0.5),
            q(&ratios, 0.25),
            q(&ratios, 0.75),
            q(&base, 0.5) * 1e3,
            q(&screened, 0.5) * 1e3
        );
    }
}

criterion::criterion_group!(benches, bench, paired);
criterion::criterion_main!(benches);
