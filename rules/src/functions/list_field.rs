//! `__fg_list_field(list, 'name')`: the field `name` of every object in a list, as a
//! list of the same length (eKuiper's list projection, `friends[*]->first`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ListArray, StructArray, make_array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// The function's name in rewritten queries.
pub(crate) const LIST_FIELD: &str = "__fg_list_field";

#[derive(Debug, PartialEq, Eq, Hash)]
struct ListField {
    signature: Signature,
}

pub(super) fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ListField {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// The field a call names, from its literal second argument.
fn field_name(arg: Option<&Option<&ScalarValue>>) -> Result<String> {
    match arg {
        Some(Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)))) => Ok(s.clone()),
        _ => plan_err!("a list projection takes a field name"),
    }
}

/// The type of the field `name` of a list's objects.
fn element_field(list: &DataType, name: &str) -> Result<FieldRef> {
    let DataType::List(item) = list else {
        return plan_err!("`[*]->{name}` needs a list of objects; this is {list}");
    };
    let DataType::Struct(fields) = item.data_type() else {
        return plan_err!(
            "`[*]->{name}` needs a list of objects; its elements are {}",
            item.data_type()
        );
    };
    match fields.find(name) {
        Some((_, f)) => Ok(Arc::new(Field::new_list_field(f.data_type().clone(), true))),
        None => plan_err!(
            "the list's objects have no field `{name}`; they have {}",
            fields
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ScalarUDFImpl for ListField {
    fn name(&self) -> &str {
        LIST_FIELD
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{LIST_FIELD} is typed from its arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = field_name(args.scalar_arguments.get(1))?;
        let Some(list) = args.arg_fields.first() else {
            return plan_err!("{LIST_FIELD} takes a list and a field name");
        };
        let item = element_field(list.data_type(), &name)?;
        Ok(Arc::new(Field::new(LIST_FIELD, DataType::List(item), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [list, name] = args.args.as_slice() else {
            return exec_err!("{LIST_FIELD} takes a list and a field name");
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))) = name else {
            return exec_err!("{LIST_FIELD} takes a literal field name");
        };
        let list = list.to_array(args.number_rows)?;
        let Some(list) = list.as_any().downcast_ref::<ListArray>() else {
            return exec_err!("{LIST_FIELD} needs a list, got {}", list.data_type());
        };
        let Some(objects) = list.values().as_any().downcast_ref::<StructArray>() else {
            return exec_err!("{LIST_FIELD} needs a list of objects");
        };
        let Some(values) = objects.column_by_name(name) else {
            return exec_err!("the list's objects have no field `{name}`");
        };
        // A null object has a null field.
        let nulls = NullBuffer::union(objects.nulls(), values.nulls());
        let values: ArrayRef = make_array(values.to_data().into_builder().nulls(nulls).build()?);
        let item = Arc::new(Field::new_list_field(values.data_type().clone(), true));
        let out = ListArray::try_new(item, list.offsets().clone(), values, list.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
