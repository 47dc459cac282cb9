//! What screening payloads costs before they are decoded: the same micro-batch of JSON
//! readings through the payload screen alone, through `JsonDecoder` (screen, then the
//! Arrow decoder), and through the Arrow decoder alone as it was used before the screen
//! (the baseline), all in one process.
//!
//! Run with `cargo bench -p fieldgate-connectors --bench decode`.
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
use fieldgate_connectors::source::mqtt::{InputLimits, JsonDecoder, Screen};

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

/// The Arrow decoder alone, fed and flushed as `JsonDecoder` feeds it: the baseline.
fn arrow_only(schema: &SchemaRef, payloads: &[String]) -> usize {
    let mut d = ReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .build_decoder()
        .expect("decoder");
    for p in payloads {
        d.decode(p.as_bytes()).expect("decodes");
    }
    d.flush().expect("flush").map_or(0, |b| b.num_rows())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, (schema, payloads)) in [("flat", flat()), ("nested", nested())] {
        let screen = Screen::new(&schema, InputLimits::default());
        let mut decoder = JsonDecoder::new(schema.clone()).expect("decoder");
        assert_eq!(arrow_only(&schema, &payloads), BATCH);
        assert!(decoder.decode(&payloads).rejected.is_empty());
        g.bench_with_input(BenchmarkId::new("arrow_only", name), &payloads, |b, p| {
            b.iter(|| black_box(arrow_only(&schema, p)))
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

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
