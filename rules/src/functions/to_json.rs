//! `__fg_to_json(x)`: any value as its JSON text (eKuiper's `to_json`), object keys in
//! sorted order as eKuiper writes them; null stays null.

use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The function's name in rewritten queries.
pub(crate) const TO_JSON: &str = "__fg_to_json";

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToJson {
    signature: Signature,
}

pub(super) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ToJson {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        TO_JSON
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return exec_err!("to_json takes one argument");
        };
        let values = value.to_array(args.number_rows)?;
        // One object per row, {"v": value}; the writer leaves a null value out.
        let schema = Schema::new(vec![Field::new("v", values.data_type().clone(), true)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::clone(&values)])?;
        let mut lines = LineDelimitedWriter::new(Vec::new());
        lines.write(&batch)?;
        lines.finish()?;
        let text = lines.into_inner();
        let text = std::str::from_utf8(&text)
            .map_err(|e| DataFusionError::Execution(format!("to_json: {e}")))?;
        let out: StringArray = text
            .lines()
            .map(|line| {
                let mut row: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line)
                        .map_err(|e| DataFusionError::Execution(format!("to_json: {e}")))?;
                Ok(row.remove("v").map(|v| sorted(v).to_string()))
            })
            .collect::<Result<_>>()?;
        if out.len() != values.len() {
            return exec_err!("to_json: {} rows in, {} out", values.len(), out.len());
        }
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `v` with the keys of every object in it in sorted order.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
