//! Helpers shared by the engine's integration tests.

#![allow(dead_code)]

use std::sync::Arc;

use fieldgate_rules::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use fieldgate_rules::arrow::json::ArrayWriter;
use fieldgate_rules::{RuleOutput, StreamPipeline};
use serde_json::Value;

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
