//! Encoding rule results: one JSON object per result row.

use bytes::Bytes;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::{WriterBuilder, writer::LineDelimited};
use datafusion::arrow::record_batch::RecordBatch;

/// Encodes each row of the batches as a JSON object; a null field is written as
/// `null` with `explicit_nulls`, else left out.
pub fn json_rows(batches: &[RecordBatch], explicit_nulls: bool) -> Result<Vec<Bytes>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(explicit_nulls)
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

/// Results (each a JSON object) as one JSON array.
pub fn json_array(rows: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    out.push(b']');
    out
}

/// Name of the field that carries a result's message id.
pub const MESSAGE_ID_FIELD: &str = "_msg_id";

/// A result's stable message id: `<prefix><sequence>`, where the prefix names the
/// gateway, the sink and the queue's epoch (see [`MessageIds`]).
#[derive(Debug, Clone)]
pub struct MessageIds {
    prefix: String,
}

impl MessageIds {
    /// Ids `<gateway>/<sink>/<epoch as hex>-<sequence>`. The epoch is drawn when the
    /// sink's queue is created, so ids stay unique if a queue file is ever recreated.
    pub fn new(gateway: &str, sink: &str, epoch: u64) -> Self {
        Self {
            prefix: format!("{gateway}/{sink}/{epoch:016x}-"),
        }
    }

    /// The id of the result with this queue sequence number.
    pub fn id(&self, seq: u64) -> String {
        format!("{}{seq}", self.prefix)
    }

    /// The payload (a JSON object) with `"_msg_id": "<id>"` as its first field; other
    /// payloads are returned unchanged.
    pub fn stamp(&self, payload: &Bytes, seq: u64) -> Bytes {
        let Some(rest) = payload.strip_prefix(b"{") else {
            return payload.clone();
        };
        let id = self.id(seq);
        let mut out = Vec::with_capacity(payload.len() + id.len() + 16);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(MESSAGE_ID_FIELD.as_bytes());
        out.extend_from_slice(b"\":\"");
        // Gateway ids and sink names are plain ASCII without quotes or backslashes.
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
        if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        Bytes::from(out)
    }
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
    fn results_join_into_one_array() {
        let rows = [&b"{\"a\":1}"[..], b"{\"b\":2}"].map(Bytes::from_static);
        assert_eq!(json_array(&rows), b"[{\"a\":1},{\"b\":2}]");
        assert_eq!(json_array(&[]), b"[]");
    }

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
        let rows = json_rows(&[b.clone(), b.clone()], true).unwrap();
        assert_eq!(rows.len(), 4);
        let v: serde_json::Value = serde_json::from_slice(&rows[1]).unwrap();
        assert_eq!(v, serde_json::json!({"device": "b\n\"x\"", "avg": null}));
        let v: serde_json::Value = serde_json::from_slice(&rows[2]).unwrap();
        assert_eq!(v, serde_json::json!({"device": "a", "avg": 1.5}));
        // Without explicit nulls a null field is left out.
        let rows = json_rows(&[b], false).unwrap();
        assert_eq!(&rows[1][..], &b"{\"device\":\"b\\n\\\"x\\\"\"}"[..]);
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
        let rows: Vec<serde_json::Value> = json_rows(&[b], true)
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

    #[test]
    fn message_ids_lead_each_object_and_are_stable() {
        let ids = MessageIds::new("gw-1", "cloud", 0xabc);
        let stamped = ids.stamp(&Bytes::from_static(br#"{"a":1,"b":"x"}"#), 42);
        let v: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"_msg_id": "gw-1/cloud/0000000000000abc-42", "a": 1, "b": "x"})
        );
        assert!(stamped.starts_with(b"{\"_msg_id\""));
        assert_eq!(
            ids.stamp(&Bytes::from_static(br#"{"a":1,"b":"x"}"#), 42),
            stamped
        );
        let empty = ids.stamp(&Bytes::from_static(b"{}"), 7);
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"_msg_id": "gw-1/cloud/0000000000000abc-7"})
        );
        let not_object = Bytes::from_static(b"[1,2]");
        assert_eq!(ids.stamp(&not_object, 1), not_object);
    }
}
