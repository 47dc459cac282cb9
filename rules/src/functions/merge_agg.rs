//! `merge_agg(object)`: the objects of a group merged into one, a later value of a
//! field replacing an earlier one and a missing (null) value keeping it (eKuiper's
//! `merge_agg`; `merge_agg(*)` is given the whole row as one object).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct MergeAgg {
    signature: Signature,
}

pub(super) fn udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(MergeAgg {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

fn fields_of(t: &DataType) -> Result<Fields> {
    match t {
        DataType::Struct(fields) => Ok(fields.clone()),
        other => {
            plan_err!("merge_agg takes an object (a STRUCT column or expression) or *, not {other}")
        }
    }
}

impl AggregateUDFImpl for MergeAgg {
    fn name(&self) -> &str {
        "merge_agg"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let Some(t) = arg_types.first() else {
            return plan_err!("merge_agg takes one argument");
        };
        Ok(DataType::Struct(fields_of(t)?))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let fields = fields_of(args.return_field.data_type())?;
        let values = fields
            .iter()
            .map(|f| ScalarValue::try_from(f.data_type()))
            .collect::<Result<_>>()?;
        Ok(Box::new(Merged { fields, values }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            "merged",
            args.return_type().clone(),
            true,
        ))])
    }
}

/// The latest non-null value of every field.
#[derive(Debug)]
struct Merged {
    fields: Fields,
    values: Vec<ScalarValue>,
}

impl Merged {
    fn fold(&mut self, column: &ArrayRef) -> Result<()> {
        let Some(objects) = column.as_any().downcast_ref::<StructArray>() else {
            return exec_err!("merge_agg got {}, not objects", column.data_type());
        };
        for (value, field) in self.values.iter_mut().zip(objects.columns()) {
            let last = (0..objects.len())
                .rev()
                .find(|&i| objects.is_valid(i) && field.is_valid(i));
            if let Some(i) = last {
                *value = ScalarValue::try_from_array(field, i)?;
            }
        }
        Ok(())
    }
}

impl Accumulator for Merged {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(column) => self.fold(column),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let columns = self
            .values
            .iter()
            .map(|v| v.to_array())
            .collect::<Result<Vec<_>>>()?;
        let merged = StructArray::try_new(self.fields.clone(), columns, None)?;
        Ok(ScalarValue::Struct(Arc::new(merged)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.iter().map(|v| v.size()).sum::<usize>()
    }
}
