//! eKuiper's functions of objects, typed from the object's (struct's) fields when the
//! rule is planned: `keys`, `values`, `object_pick`, `erase`, `object_concat` and
//! `obj_to_kvpair_array`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ListArray, ListBuilder, StringArray, StringBuilder, StructArray, UInt32Array,
    make_array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{concat, is_not_null, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// What a function does with its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjectOp {
    /// The field names, as a list.
    Keys,
    /// The field values, as a list (the fields must have one type).
    Values,
    /// Only the fields named by the literal arguments.
    Pick,
    /// All fields but those named.
    Erase,
    /// The fields of every argument; a later field of the same name wins unless null.
    Concat,
    /// `[{"key": name, "value": v}, ...]` (the fields must have one type).
    KeyValuePairs,
}

impl ObjectOp {
    /// The function's name in rewritten queries.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ObjectOp::Keys => "__fg_keys",
            ObjectOp::Values => "__fg_values",
            ObjectOp::Pick => "__fg_object_pick",
            ObjectOp::Erase => "__fg_erase",
            ObjectOp::Concat => "__fg_object_concat",
            ObjectOp::KeyValuePairs => "__fg_obj_to_kvpair_array",
        }
    }

    const ALL: [ObjectOp; 6] = [
        ObjectOp::Keys,
        ObjectOp::Values,
        ObjectOp::Pick,
        ObjectOp::Erase,
        ObjectOp::Concat,
        ObjectOp::KeyValuePairs,
    ];
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ObjectFunction {
    op: ObjectOp,
    signature: Signature,
}

pub(super) fn udfs() -> Vec<ScalarUDF> {
    ObjectOp::ALL
        .into_iter()
        .map(|op| {
            ScalarUDF::new_from_impl(ObjectFunction {
                op,
                signature: Signature::variadic_any(Volatility::Immutable),
            })
        })
        .collect()
}

fn struct_fields(t: &DataType, what: &str) -> Result<Fields> {
    match t {
        DataType::Struct(f) => Ok(f.clone()),
        other => plan_err!("{what} takes an object (a STRUCT), not {other}"),
    }
}

/// The one type of all the fields.
fn one_type(fields: &Fields, what: &str) -> Result<DataType> {
    let Some(first) = fields.first() else {
        return plan_err!("{what} of an object without fields");
    };
    if let Some(other) = fields.iter().find(|f| f.data_type() != first.data_type()) {
        return plan_err!(
            "{what} needs fields of one type: `{}` is {}, `{}` is {}",
            first.name(),
            first.data_type(),
            other.name(),
            other.data_type()
        );
    }
    Ok(first.data_type().clone())
}

/// The field names a pick or erase names, from its literal arguments.
fn names(args: &[Option<&ScalarValue>], what: &str) -> Result<Vec<String>> {
    args.iter()
        .map(|a| match a {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => Ok(s.clone()),
            _ => plan_err!("{what} takes field names as string literals"),
        })
        .collect()
}

fn kv_item(value: &DataType) -> FieldRef {
    Arc::new(Field::new_list_field(
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", value.clone(), true),
        ])),
        true,
    ))
}

impl ObjectFunction {
    fn what(&self) -> &'static str {
        &self.op.name()[5..]
    }

    /// The fields the result keeps, from the arguments' types and literal names.
    fn kept(&self, arg_types: &[DataType], names: &[String]) -> Result<Fields> {
        let Some(first) = arg_types.first() else {
            return plan_err!("{} takes an object", self.what());
        };
        let fields = struct_fields(first, self.what())?;
        Ok(match self.op {
            ObjectOp::Pick => {
                let mut kept = Vec::new();
                for n in names {
                    match fields.find(n) {
                        Some((_, f)) => kept.push(f.clone()),
                        None => return plan_err!("object_pick: the object has no field `{n}`"),
                    }
                }
                Fields::from(kept)
            }
            ObjectOp::Erase => fields
                .iter()
                .filter(|f| !names.contains(f.name()))
                .cloned()
                .collect(),
            ObjectOp::Concat => {
                let mut out: Vec<FieldRef> = Vec::new();
                for t in arg_types {
                    for f in struct_fields(t, self.what())?.iter() {
                        match out.iter().position(|o| o.name() == f.name()) {
                            Some(i) if out[i].data_type() != f.data_type() => {
                                return plan_err!(
                                    "object_concat: `{}` is {} in one object and {} in another",
                                    f.name(),
                                    out[i].data_type(),
                                    f.data_type()
                                );
                            }
                            Some(_) => {}
                            None => out.push(f.clone()),
                        }
                    }
                }
                Fields::from(out)
            }
            _ => fields,
        })
    }
}

impl ScalarUDFImpl for ObjectFunction {
    fn name(&self) -> &str {
        self.op.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{} is typed from its arguments", self.what())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let named = match self.op {
            ObjectOp::Pick | ObjectOp::Erase => names(
                args.scalar_arguments.get(1..).unwrap_or_default(),
                self.what(),
            )?,
            _ => Vec::new(),
        };
        let kept = self.kept(&types, &named)?;
        let t = match self.op {
            ObjectOp::Keys => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            ObjectOp::Values => DataType::List(Arc::new(Field::new_list_field(
                one_type(&kept, self.what())?,
                true,
            ))),
            ObjectOp::KeyValuePairs => DataType::List(kv_item(&one_type(&kept, self.what())?)),
            ObjectOp::Pick | ObjectOp::Erase | ObjectOp::Concat => DataType::Struct(kept),
        };
        Ok(Arc::new(Field::new(self.op.name(), t, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<_>>()?;
        let objects: Vec<&StructArray> = match self.op {
            ObjectOp::Concat => arrays.iter().collect::<Vec<_>>(),
            _ => arrays.iter().take(1).collect(),
        }
        .into_iter()
        .map(|a| {
            a.as_any().downcast_ref::<StructArray>().ok_or_else(|| {
                datafusion::error::DataFusionError::Execution(format!(
                    "{} takes an object, got {}",
                    self.what(),
                    a.data_type()
                ))
            })
        })
        .collect::<Result<_>>()?;
        let Some(first) = objects.first() else {
            return exec_err!("{} takes an object", self.what());
        };
        let out: ArrayRef = match self.op {
            ObjectOp::Keys => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for i in 0..rows {
                    if first.is_null(i) {
                        b.append_null();
                    } else {
                        for f in first.fields() {
                            b.values().append_value(f.name());
                        }
                        b.append(true);
                    }
                }
                Arc::new(b.finish())
            }
            ObjectOp::Values | ObjectOp::KeyValuePairs => {
                let n = first.num_columns();
                let columns: Vec<&dyn Array> = first.columns().iter().map(|c| c.as_ref()).collect();
                let all = concat(&columns)?;
                // Row-major: row i's fields are at j * rows + i.
                let order = UInt32Array::from_iter_values(
                    (0..rows).flat_map(|i| (0..n).map(move |j| (j * rows + i) as u32)),
                );
                let values = take(all.as_ref(), &order, None)?;
                let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(n, rows));
                let (item, values): (FieldRef, ArrayRef) = if self.op == ObjectOp::Values {
                    (
                        Arc::new(Field::new_list_field(values.data_type().clone(), true)),
                        values,
                    )
                } else {
                    let keys: Vec<&str> = (0..rows)
                        .flat_map(|_| first.fields().iter().map(|f| f.name().as_str()))
                        .collect();
                    let keys = StringArray::from(keys);
                    let item = kv_item(values.data_type());
                    let DataType::Struct(kv) = item.data_type().clone() else {
                        return exec_err!("obj_to_kvpair_array: unexpected item type");
                    };
                    let pairs = StructArray::try_new(kv, vec![Arc::new(keys), values], None)?;
                    (item, Arc::new(pairs))
                };
                Arc::new(ListArray::try_new(
                    item,
                    offsets,
                    values,
                    first.nulls().cloned(),
                )?)
            }
            ObjectOp::Pick | ObjectOp::Erase | ObjectOp::Concat => {
                let DataType::Struct(kept) = args.return_field.data_type().clone() else {
                    return exec_err!("{}: unexpected result type", self.what());
                };
                let mut columns = Vec::with_capacity(kept.len());
                for f in kept.iter() {
                    let mut value: Option<ArrayRef> = None;
                    for o in &objects {
                        let Some(c) = o.column_by_name(f.name()) else {
                            continue;
                        };
                        // A null object has null fields.
                        let nulls = NullBuffer::union(o.nulls(), c.nulls());
                        let c = make_array(c.to_data().into_builder().nulls(nulls).build()?);
                        value = Some(match value {
                            None => c,
                            Some(earlier) => zip(&is_not_null(&c)?, &c, &earlier)?,
                        });
                    }
                    match value {
                        Some(v) => columns.push(v),
                        None => return exec_err!("{}: no field `{}`", self.what(), f.name()),
                    }
                }
                let nulls = if self.op == ObjectOp::Concat {
                    None
                } else {
                    first.nulls().cloned()
                };
                Arc::new(StructArray::try_new_with_length(
                    kept, columns, nulls, rows,
                )?)
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}
