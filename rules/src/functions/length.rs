//! eKuiper's `length` and `array_cardinality`, which read lists as well as strings:
//! `__fg_length(x)` is the characters of a string or the elements of a list, and
//! `__fg_present(list)` the elements that are not null (0 for a null list).

use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, ListArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The functions' names in rewritten queries.
pub(crate) const LENGTH: &str = "__fg_length";
pub(crate) const PRESENT: &str = "__fg_present";

#[derive(Debug, PartialEq, Eq, Hash)]
struct Length {
    name: &'static str,
    signature: Signature,
}

pub(super) fn udfs() -> Vec<ScalarUDF> {
    [LENGTH, PRESENT]
        .into_iter()
        .map(|name| {
            ScalarUDF::new_from_impl(Length {
                name,
                signature: Signature::any(1, Volatility::Immutable),
            })
        })
        .collect()
}

impl ScalarUDFImpl for Length {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match (self.name, arg_types.first()) {
            (_, Some(DataType::List(_))) => Ok(DataType::Int64),
            (LENGTH, Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)) => {
                Ok(DataType::Int64)
            }
            (LENGTH, Some(DataType::Null)) | (PRESENT, Some(DataType::Null)) => Ok(DataType::Int64),
            (LENGTH, Some(other)) => plan_err!("length takes a string or a list, not {other}"),
            (_, other) => plan_err!("array_cardinality takes a list, not {other:?}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [x] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name);
        };
        let x = x.to_array(args.number_rows)?;
        let out: Int64Array = if let Some(list) = x.as_any().downcast_ref::<ListArray>() {
            (0..list.len())
                .map(|i| {
                    if list.is_null(i) {
                        return (self.name == PRESENT).then_some(0);
                    }
                    let n = if self.name == PRESENT {
                        let v = list.value(i);
                        v.len() - v.null_count()
                    } else {
                        list.value_length(i) as usize
                    };
                    Some(n as i64)
                })
                .collect()
        } else if x.data_type() == &DataType::Null {
            (0..x.len())
                .map(|_| (self.name == PRESENT).then_some(0))
                .collect()
        } else {
            let text = cast(&x, &DataType::Utf8)?;
            let Some(text) = text.as_any().downcast_ref::<StringArray>() else {
                return exec_err!("{}: unexpected argument type", self.name);
            };
            text.iter()
                .map(|s| s.map(|s| s.chars().count() as i64))
                .collect()
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
