//! JSON payloads straight into Arrow batches of a stream's declared schema.
//!
//! Each payload first passes the [`Screen`] (input limits, JSON syntax, whole numbers
//! for integer columns); the ones that pass are fed to one `arrow_json` decoder as a
//! run; no `serde_json::Value` is built. When the run fails (a value of the wrong type),
//! the same payloads are decoded one by one so that only the bad ones are rejected, each
//! with its reason.

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows decoded per Arrow batch before the decoder flushes.
const BATCH_ROWS: usize = 8192;

use super::screen::{InputLimits, RejectReason, Screen};

/// Decodes JSON payloads into batches of one schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    decoder: Decoder,
    screen: Screen,
}

/// A payload that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the payload in the decoded slice.
    pub index: usize,
    /// What was wrong, in words.
    pub reason: String,
    /// What was wrong, as a counter's label.
    pub kind: RejectReason,
}

/// The result of decoding a run of payloads.
#[derive(Debug)]
pub struct Decoded {
    /// The rows of every good payload, in order; `None` when there were none.
    pub batch: Option<RecordBatch>,
    /// The payloads that could not be decoded, each with its reason.
    pub rejected: Vec<Rejected>,
}

impl JsonDecoder {
    /// A decoder for `schema` with the default [`InputLimits`].
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        Self::with_limits(schema, InputLimits::default())
    }

    /// A decoder for `schema` that refuses payloads over `limits`.
    pub fn with_limits(schema: SchemaRef, limits: InputLimits) -> Result<Self, ArrowError> {
        let decoder = Self::build(&schema)?;
        let screen = Screen::new(&schema, limits);
        Ok(Self {
            schema,
            decoder,
            screen,
        })
    }

    fn build(schema: &SchemaRef) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
    }

    /// The schema payloads are decoded into.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The limits payloads are held to.
    pub fn limits(&self) -> &InputLimits {
        self.screen.limits()
    }

    /// Decodes a run of payloads, each holding one JSON object (or several, separated by
    /// whitespace). Bad payloads are rejected; the others are decoded.
    pub fn decode<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Decoded {
        let mut rejected = Vec::new();
        let good: Vec<usize> = (0..payloads.len())
            .filter(|&i| match self.screen.check(payloads[i].as_ref()) {
                Ok(()) => true,
                Err((kind, reason)) => {
                    rejected.push(Rejected {
                        index: i,
                        reason,
                        kind,
                    });
                    false
                }
            })
            .collect();
        match self.run(good.iter().map(|&i| payloads[i].as_ref())) {
            Ok(batches) => Decoded {
                batch: self.concat(batches, &mut rejected, &good),
                rejected,
            },
            Err(_) => {
                // Start over from a clean decoder and isolate the bad payloads.
                let mut batches = Vec::new();
                for &i in &good {
                    match self.run(std::iter::once(payloads[i].as_ref())) {
                        Ok(b) => batches.extend(b),
                        // The screen passed its syntax: what the decoder refuses is a
                        // value its column cannot take.
                        Err(e) => rejected.push(Rejected {
                            index: i,
                            reason: e.to_string(),
                            kind: RejectReason::WrongType,
                        }),
                    }
                }
                rejected.sort_by_key(|r| r.index);
                Decoded {
                    batch: self.concat(batches, &mut rejected, &good),
                    rejected,
                }
            }
        }
    }

    fn concat(
        &self,
        batches: Vec<RecordBatch>,
        rejected: &mut Vec<Rejected>,
        good: &[usize],
    ) -> Option<RecordBatch> {
        match batches.len() {
            0 => None,
            1 => batches.into_iter().next(),
            _ => match concat_batches(&self.schema, &batches) {
                Ok(b) => Some(b),
                Err(e) => {
                    rejected.extend(good.iter().map(|&index| Rejected {
                        index,
                        reason: e.to_string(),
                        kind: RejectReason::WrongType,
                    }));
                    None
                }
            },
        }
    }

    /// Feeds payloads to the decoder, each terminated so that a truncated object cannot
    /// swallow the next payload, and flushes. On error the decoder is rebuilt.
    fn run<'a>(
        &mut self,
        payloads: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let result = self.feed(payloads);
        if result.is_err() {
            self.decoder = Self::build(&self.schema)?;
        }
        result
    }

    fn feed<'a>(
        &mut self,
        payloads: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut out = Vec::new();
        // The screen checked each payload is UTF-8.
        for payload in payloads {
            let mut buf = payload;
            while !buf.is_empty() {
                let read = self.decoder.decode(buf)?;
                buf = &buf[read..];
                if !buf.is_empty() || read == 0 {
                    // The batch is full: flush before reading on.
                    if let Some(b) = self.decoder.flush()? {
                        out.push(b);
                    }
                }
            }
            if self.decoder.has_partial_record() {
                return Err(ArrowError::JsonError(
                    "payload ends inside a JSON value".into(),
                ));
            }
        }
        if let Some(b) = self.decoder.flush()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type, Int64Type, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("temp", DataType::Float64, true),
        ]))
    }

    #[test]
    fn good_payloads_become_rows_in_order() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&[
            r#"{"device":"a","ts":1,"temp":20.5}"#,
            r#"{"temp":7,"device":"b","ts":2,"extra":{"x":[1,2]}}"#,
            "{\"device\":\"c\",\"ts\":3}\n{\"device\":\"d\",\"ts\":4,\"temp\":-1.25}",
        ]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 4);
        let dev: &StringArray = b.column(0).as_string();
        assert_eq!(
            dev.iter().flatten().collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![1, 2, 3, 4])
        );
        assert_eq!(
            b.column(2).as_primitive::<Float64Type>(),
            &Float64Array::from(vec![Some(20.5), Some(7.0), None, Some(-1.25)])
        );
    }

    #[test]
    fn bad_payloads_are_rejected_alone() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&[
            &br#"{"device":"a","ts":1,"temp":1.0}"#[..],
            br#"{"device":"b","ts":2,"temp":"#,
            br#"{"device":"c","ts":3,"temp":"hot"}"#,
            b"   ",
            b"\xff\xfe",
            br#"not json"#,
            br#"{"device":"d","ts":4,"temp":4.0}"#,
        ]);
        let idx: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, [1, 2, 3, 4, 5], "{:?}", out.rejected);
        let b = out.batch.unwrap();
        let dev: &StringArray = b.column(0).as_string();
        assert_eq!(dev.iter().flatten().collect::<Vec<_>>(), ["a", "d"]);
        assert!(
            out.rejected[1].reason.contains("hot"),
            "{}",
            out.rejected[1].reason
        );
        // The decoder is usable afterwards.
        let again = d.decode(&[r#"{"device":"e","ts":5}"#]);
        assert_eq!(again.batch.unwrap().num_rows(), 1);
    }

    #[test]
    fn deep_nesting_and_fractions_for_integers_are_refused_by_reason() {
        let mut d = JsonDecoder::new(nested_schema()).unwrap();
        // 30,000 levels in a declared column overflowed the decoder's stack once.
        let deep = format!("{{\"tags\":{}{}}}", "[".repeat(30_000), "]".repeat(30_000));
        let out = d.decode(&[
            deep.as_str(),
            r#"{"device":"a","tags":[1,2]}"#,
            r#"{"device":"b","tags":[1.5]}"#,
            r#"{"device":"c","tags":["x"]}"#,
        ]);
        let got: Vec<(usize, RejectReason)> =
            out.rejected.iter().map(|r| (r.index, r.kind)).collect();
        assert_eq!(
            got,
            [
                (0, RejectReason::TooDeep),
                (2, RejectReason::WrongType),
                (3, RejectReason::WrongType)
            ],
            "{:?}",
            out.rejected
        );
        assert!(
            out.rejected[1].reason.contains("1.5"),
            "{}",
            out.rejected[1].reason
        );
        assert_eq!(out.batch.unwrap().num_rows(), 1);
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&[r#"{"device":"a","ts":1.5,"temp":1}"#, r#"{"ts":2.0}"#]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].kind, RejectReason::WrongType);
        let b = out.batch.unwrap();
        assert_eq!(b.column(1).as_primitive::<Int64Type>().value(0), 2);
    }

    #[test]
    fn a_truncated_payload_does_not_swallow_the_next() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&[r#"{"device":"a","ts":1"#, r#"{"device":"b","ts":2}"#]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, 0);
        assert_eq!(out.batch.unwrap().num_rows(), 1);
    }

    /// `device STRING, reading STRUCT(site STRING, temp DOUBLE), tags ARRAY(BIGINT)`.
    fn nested_schema() -> SchemaRef {
        let reading = DataType::Struct(Fields::from(vec![
            Field::new("site", DataType::Utf8, true),
            Field::new("temp", DataType::Float64, true),
        ]));
        let tags = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
        Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("reading", reading, true),
            Field::new("tags", tags, true),
        ]))
    }

    /// The struct's fields and the list's values of row `i`, read back from Arrow.
    fn nested_row(b: &RecordBatch, i: usize) -> (Option<&str>, Option<f64>, Option<Vec<i64>>) {
        let reading = b.column(1).as_struct();
        let site = reading.column(0).as_string::<i32>();
        let temp = reading.column(1).as_primitive::<Float64Type>();
        let tags = b.column(2).as_list::<i32>();
        (
            (reading.is_valid(i) && site.is_valid(i)).then(|| site.value(i)),
            (reading.is_valid(i) && temp.is_valid(i)).then(|| temp.value(i)),
            tags.is_valid(i).then(|| {
                tags.value(i)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .flatten()
                    .collect()
            }),
        )
    }

    #[test]
    fn nested_objects_and_arrays_fill_struct_and_list_columns() {
        let mut d = JsonDecoder::new(nested_schema()).unwrap();
        let out = d.decode(&[
            r#"{"device":"a","reading":{"site":"n","temp":20.5},"tags":[1,2,3]}"#,
            // Unknown fields, at the top and inside the struct, are ignored.
            r#"{"device":"b","reading":{"temp":-3,"extra":{"deep":[1]},"site":"s"},"tags":[],"x":1}"#,
            // A missing nested field is null, so is a missing struct or list.
            r#"{"device":"c","reading":{"site":"e"}}"#,
            r#"{"device":"d","reading":null,"tags":[4,null]}"#,
        ]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 4);
        assert_eq!(
            nested_row(&b, 0),
            (Some("n"), Some(20.5), Some(vec![1, 2, 3]))
        );
        assert_eq!(nested_row(&b, 1), (Some("s"), Some(-3.0), Some(vec![])));
        assert_eq!(nested_row(&b, 2), (Some("e"), None, None));
        assert!(b.column(1).as_struct().is_valid(2));
        assert_eq!(nested_row(&b, 3), (None, None, Some(vec![4])));
        assert!(b.column(1).is_null(3));
        let tags = b.column(2).as_list::<i32>();
        assert_eq!(tags.value(3).len(), 2, "a null element stays an element");
        assert!(tags.value(3).is_null(1));
    }

    #[test]
    fn a_wrong_nested_type_rejects_only_its_payload() {
        let mut d = JsonDecoder::new(nested_schema()).unwrap();
        let out = d.decode(&[
            r#"{"device":"a","reading":{"site":"n","temp":1.5},"tags":[1]}"#,
            r#"{"device":"b","reading":{"site":"n","temp":"warm"}}"#,
            r#"{"device":"c","reading":"n/1.5"}"#,
            r#"{"device":"d","tags":{"0":1}}"#,
            r#"{"device":"e","tags":["x"]}"#,
            r#"{"device":"f","reading":{"site":"s","temp":2.5},"tags":[7,8]}"#,
        ]);
        let idx: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, [1, 2, 3, 4], "{:?}", out.rejected);
        assert!(
            out.rejected[0].reason.contains("warm"),
            "{}",
            out.rejected[0].reason
        );
        let b = out.batch.unwrap();
        let dev: &StringArray = b.column(0).as_string();
        assert_eq!(dev.iter().flatten().collect::<Vec<_>>(), ["a", "f"]);
        assert_eq!(nested_row(&b, 0), (Some("n"), Some(1.5), Some(vec![1])));
        assert_eq!(nested_row(&b, 1), (Some("s"), Some(2.5), Some(vec![7, 8])));
    }

    #[test]
    fn many_rows_span_several_arrow_batches() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let payloads: Vec<String> = (0..20_000)
            .map(|i| format!(r#"{{"device":"d{}","ts":{i},"temp":{}.5}}"#, i % 7, i % 40))
            .collect();
        let out = d.decode(&payloads);
        assert!(out.rejected.is_empty());
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 20_000);
        let ts = b.column(1).as_primitive::<Int64Type>();
        assert!(ts.values().iter().enumerate().all(|(i, v)| *v == i as i64));
    }
}
