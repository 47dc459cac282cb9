//! Helpers shared by the engine's integration tests.

#![allow(dead_code)]

use std::sync::Arc;

use fieldgate_rules::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use fieldgate_rules::arrow::json::ArrayWriter;
use std::path::Path;

use fieldgate_rules::{RuleOutput, RuleSet, StreamPipeline};
use serde_json::Value;

/// The pipeline of the one stream `text` declares (in a file named `file`), with every
/// rule planned; its sinks are all called `out`.
pub async fn only_pipeline(file: &str, text: &str) -> StreamPipeline {
    let (set, errors) = RuleSet::parse(Path::new(file), text);
    assert!(errors.is_empty(), "{errors:?}");
    let (mut pipelines, errors) = set.build(|s| s == "out").await;
    assert!(errors.is_empty(), "{errors:?}");
    pipelines.remove(0)
}

/// Every error parsing and planning `text` (a file named `file`, whose only sink is
/// `sink`) gives, as the user reads them.
pub async fn errors(file: &str, text: &str, sink: &str) -> Vec<String> {
    let (set, mut errors) = RuleSet::parse(Path::new(file), text);
    let (_, more) = set.build(|s| s == sink).await;
    errors.extend(more);
    errors.iter().map(|e| e.to_string()).collect()
}

/// A batch of a `(STRING, BIGINT, DOUBLE)` stream, such as `(device, ts, temp)`.
pub fn batch(p: &StreamPipeline, rows: &[(&str, i64, f64)]) -> RecordBatch {
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
        ],
    )
    .unwrap()
}

/// A batch of a `(STRING, BIGINT, DOUBLE)` stream from `(device, time, integer value)`
/// events.
pub fn events_batch(p: &StreamPipeline, events: &[(String, i64, i64)]) -> RecordBatch {
    let rows: Vec<(&str, i64, f64)> = events
        .iter()
        .map(|e| (e.0.as_str(), e.1, e.2 as f64))
        .collect();
    batch(p, &rows)
}

/// Every result row, as the JSON object Arrow's writer makes of it, in order.
pub fn json_rows(outs: &[RuleOutput]) -> Vec<Value> {
    let mut out = Vec::new();
    for o in outs {
        for b in &o.batches {
            let mut w = ArrayWriter::new(Vec::new());
            w.write(b).unwrap();
            w.finish().unwrap();
            let text = w.into_inner();
            if !text.is_empty() {
                out.extend(serde_json::from_slice::<Vec<Value>>(&text).unwrap());
            }
        }
    }
    out
}
