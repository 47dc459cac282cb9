//! Encoding rule results: one JSON object per result row.

use bytes::Bytes;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::{WriterBuilder, writer::LineDelimited};
use datafusion::arrow::record_batch::RecordBatch;

/// Encodes each row of the batches as a JSON object, nulls written as `null`.
pub fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Bytes>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    let buf = Bytes::from(buf);
    let mut rows = Vec::new();
    let mut start = 0;
    for (i, byte) in buf.iter().enumerate() {
        if *byte == b'\n' {
            rows.push(buf.slice(start..i));
            start = i + 1;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn one_object_per_row_with_explicit_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("avg", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b\n\"x\"")])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
            ],
        )
        .unwrap();
        let rows = json_rows(&[b.clone(), b]).unwrap();
        assert_eq!(rows.len(), 4);
        let v: serde_json::Value = serde_json::from_slice(&rows[1]).unwrap();
        assert_eq!(v, serde_json::json!({"device": "b\n\"x\"", "avg": null}));
        let v: serde_json::Value = serde_json::from_slice(&rows[2]).unwrap();
        assert_eq!(v, serde_json::json!({"device": "a", "avg": 1.5}));
    }
}
