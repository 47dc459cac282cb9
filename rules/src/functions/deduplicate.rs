//! eKuiper's `deduplicate(key, all)` over a group's rows, rewritten per its second
//! argument into one of two aggregates over `(key, row)`, `row` being the whole row as
//! an object:
//!
//! - [`DEDUP_ALL`] (`all` true): every row whose key had not been seen before it in
//!   the group, in arrival order;
//! - [`DEDUP_LAST`] (`all` false): the group's last row, or null when its key had been
//!   seen before it.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

/// `deduplicate(key, true)`.
pub(crate) const DEDUP_ALL: &str = "__fg_dedup_all";
/// `deduplicate(key, false)`.
pub(crate) const DEDUP_LAST: &str = "__fg_dedup_last";

#[derive(Debug, PartialEq, Eq, Hash)]
struct Deduplicate {
    all: bool,
    signature: Signature,
}

pub(super) fn udafs() -> Vec<AggregateUDF> {
    [true, false]
        .into_iter()
        .map(|all| {
            AggregateUDF::new_from_impl(Deduplicate {
                all,
                signature: Signature::any(2, Volatility::Immutable),
            })
        })
        .collect()
}

fn list_of(t: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(t.clone(), true)))
}

impl AggregateUDFImpl for Deduplicate {
    fn name(&self) -> &str {
        if self.all { DEDUP_ALL } else { DEDUP_LAST }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let [_, row] = arg_types else {
            return plan_err!("deduplicate takes (key, all)");
        };
        Ok(if self.all { list_of(row) } else { row.clone() })
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let row_type = match self.all {
            true => match args.return_field.data_type() {
                DataType::List(item) => item.data_type().clone(),
                other => return exec_err!("deduplicate: unexpected type {other}"),
            },
            false => args.return_field.data_type().clone(),
        };
        let key_type = match args.exprs.first() {
            Some(e) => e.data_type(args.schema)?,
            None => return plan_err!("deduplicate takes (key, all)"),
        };
        Ok(Box::new(Seen {
            all: self.all,
            key_type,
            row_type,
            keys: Vec::new(),
            seen: HashSet::new(),
            rows: Vec::new(),
            last: None,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let [key, row] = args.input_fields else {
            return plan_err!("deduplicate takes (key, all)");
        };
        let field = |name: &str, t: DataType| Arc::new(Field::new(name, t, true));
        Ok(vec![
            field("keys", list_of(key.data_type())),
            field("rows", list_of(row.data_type())),
            field("last_key", key.data_type().clone()),
            field("last_row", row.data_type().clone()),
            field("last_seen_before", DataType::Boolean),
        ])
    }
}

/// The keys seen, the first row of each (when all are wanted) and the last row.
#[derive(Debug)]
struct Seen {
    all: bool,
    key_type: DataType,
    row_type: DataType,
    /// Distinct keys in the order first seen.
    keys: Vec<ScalarValue>,
    seen: HashSet<ScalarValue>,
    /// The first row of each key (only when `all`).
    rows: Vec<ScalarValue>,
    /// The last row's key, the row, and whether its key had been seen before it.
    last: Option<(ScalarValue, ScalarValue, bool)>,
}

impl Seen {
    /// Takes in one row; `before` says its key was seen before it elsewhere.
    fn push(&mut self, key: ScalarValue, row: ScalarValue, before: bool) {
        let new = self.seen.insert(key.clone());
        if new {
            self.keys.push(key.clone());
            if self.all {
                self.rows.push(row.clone());
            }
        }
        if !self.all {
            self.last = Some((key, row, before || !new));
        }
    }
}

fn list(values: &[ScalarValue], t: &DataType) -> ScalarValue {
    ScalarValue::List(ScalarValue::new_list_nullable(values, t))
}

impl Accumulator for Seen {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [keys, rows] = values else {
            return exec_err!("deduplicate takes (key, all)");
        };
        for i in 0..keys.len() {
            let key = ScalarValue::try_from_array(keys, i)?;
            let row = ScalarValue::try_from_array(rows, i)?;
            self.push(key, row, false);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [keys, rows, last_key, last_row, before] = states else {
            return exec_err!("deduplicate: unexpected state");
        };
        let (keys, rows, before) = (
            keys.as_list::<i32>(),
            rows.as_list::<i32>(),
            before.as_boolean(),
        );
        for j in 0..keys.len() {
            let state_keys = keys.value(j);
            if self.all {
                let state_rows = rows.value(j);
                for i in 0..state_keys.len() {
                    let key = ScalarValue::try_from_array(&state_keys, i)?;
                    let row = ScalarValue::try_from_array(&state_rows, i)?;
                    self.push(key, row, false);
                }
            } else if before.is_valid(j) {
                // The other state's last row came after all of this one's.
                let key = ScalarValue::try_from_array(last_key, j)?;
                let row = ScalarValue::try_from_array(last_row, j)?;
                let seen_here = self.seen.contains(&key);
                for i in 0..state_keys.len() {
                    let k = ScalarValue::try_from_array(&state_keys, i)?;
                    if self.seen.insert(k.clone()) {
                        self.keys.push(k);
                    }
                }
                self.last = Some((key, row, before.value(j) || seen_here));
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (key, row, before) = match &self.last {
            Some((k, r, b)) => (k.clone(), r.clone(), ScalarValue::Boolean(Some(*b))),
            None => (
                ScalarValue::try_from(&self.key_type)?,
                ScalarValue::try_from(&self.row_type)?,
                ScalarValue::Boolean(None),
            ),
        };
        Ok(vec![
            list(&self.keys, &self.key_type),
            list(&self.rows, &self.row_type),
            key,
            row,
            before,
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.all {
            return Ok(list(&self.rows, &self.row_type));
        }
        match &self.last {
            Some((_, row, false)) => Ok(row.clone()),
            _ => ScalarValue::try_from(&self.row_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.keys.iter().map(|k| 2 * k.size()).sum::<usize>()
            + self.rows.iter().map(|r| r.size()).sum::<usize>()
    }
}
