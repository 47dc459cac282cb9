//! `__fg_list_where(list, 'field', 'op', value)`: the objects of a list whose field
//! compares to a literal (`>`, `>=`, `<`, `<=`, `==`, `!=`): the filter of a JSON path
//! such as eKuiper's `$.friends[? @.age > 30]`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, ListArray, Scalar, StructArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::kernels::cmp;
use datafusion::arrow::compute::{cast, filter};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The function's name in rewritten queries.
pub(crate) const LIST_WHERE: &str = "__fg_list_where";

#[derive(Debug, PartialEq, Eq, Hash)]
struct ListWhere {
    signature: Signature,
}

pub(super) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ListWhere {
        signature: Signature::any(4, Volatility::Immutable),
    })
}

fn text(v: &ColumnarValue, what: &str) -> Result<String> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => exec_err!("{LIST_WHERE}: the {what} must be a literal"),
    }
}

impl ScalarUDFImpl for ListWhere {
    fn name(&self) -> &str {
        LIST_WHERE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t @ DataType::List(item)) if matches!(item.data_type(), DataType::Struct(_)) => {
                Ok(t.clone())
            }
            Some(other) => {
                plan_err!("a JSON path filter `[? ...]` needs a list of objects, not {other}")
            }
            None => plan_err!("{LIST_WHERE} takes a list"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [list, field, op, value] = args.args.as_slice() else {
            return exec_err!("{LIST_WHERE} takes a list, a field, an operator and a value");
        };
        let (field, op) = (text(field, "field")?, text(op, "operator")?);
        let ColumnarValue::Scalar(value) = value else {
            return exec_err!("{LIST_WHERE}: the value must be a literal");
        };
        let list = list.to_array(args.number_rows)?;
        let Some(list) = list.as_any().downcast_ref::<ListArray>() else {
            return exec_err!("{LIST_WHERE} needs a list");
        };
        let Some(objects) = list.values().as_any().downcast_ref::<StructArray>() else {
            return exec_err!("{LIST_WHERE} needs a list of objects");
        };
        let Some(column) = objects.column_by_name(&field) else {
            return exec_err!("the list's objects have no field `{field}`");
        };
        // Numbers compare as numbers, anything else as text.
        let common = if column.data_type().is_numeric() && value.data_type().is_numeric() {
            DataType::Float64
        } else {
            DataType::Utf8
        };
        let left: ArrayRef = cast(column, &common)?;
        let right = Scalar::new(cast(&value.to_array()?, &common)?);
        let mask: BooleanArray = match op.as_str() {
            "==" | "=" => cmp::eq(&left, &right)?,
            "!=" | "<>" => cmp::neq(&left, &right)?,
            ">" => cmp::gt(&left, &right)?,
            ">=" => cmp::gt_eq(&left, &right)?,
            "<" => cmp::lt(&left, &right)?,
            "<=" => cmp::lt_eq(&left, &right)?,
            other => return exec_err!("{LIST_WHERE}: unknown operator `{other}`"),
        };
        // A null comparison keeps nothing.
        let mask: BooleanArray = mask.iter().map(|b| Some(b == Some(true))).collect();
        let kept = filter(list.values().as_ref(), &mask)?;
        let lengths = list.offsets().windows(2).map(|w| {
            (w[0] as usize..w[1] as usize)
                .filter(|&i| mask.value(i))
                .count()
        });
        let offsets = OffsetBuffer::from_lengths(lengths);
        let item = match list.data_type() {
            DataType::List(item) => item.clone(),
            _ => return exec_err!("{LIST_WHERE} needs a list"),
        };
        let out = ListArray::try_new(item, offsets, kept, list.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
