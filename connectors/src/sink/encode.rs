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

    use datafusion::arrow::array::{
        Array, Float64Array, Int64Builder, ListBuilder, StringArray, StructArray,
    };
    use datafusion::arrow::buffer::NullBuffer;
    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};

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

    #[test]
    fn struct_and_list_values_become_nested_json() {
        let reading = Fields::from(vec![
            Field::new("site", DataType::Utf8, true),
            Field::new("temp", DataType::Float64, true),
        ]);
        let structs = StructArray::new(
            reading.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("n"), None, None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(-2.0), None])),
            ],
            Some(NullBuffer::from(vec![true, true, false])),
        );
        let mut tags = ListBuilder::new(Int64Builder::new());
        tags.append_value([Some(1), Some(2)]);
        tags.append_value([None, Some(3)]);
        tags.append_null();
        let tags = tags.finish();
        let schema = Arc::new(Schema::new(vec![
            Field::new("reading", DataType::Struct(reading), true),
            Field::new("tags", tags.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(structs), Arc::new(tags)]).unwrap();
        let rows: Vec<serde_json::Value> = json_rows(&[b])
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(
            rows,
            [
                serde_json::json!({"reading": {"site": "n", "temp": 1.5}, "tags": [1, 2]}),
                serde_json::json!({"reading": {"site": null, "temp": -2.0}, "tags": [null, 3]}),
                serde_json::json!({"reading": null, "tags": null}),
            ]
        );
    }
}
