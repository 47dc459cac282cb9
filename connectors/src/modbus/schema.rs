//! Poll groups as stream columns: which columns each configured group has, whether a
//! stream's declared columns can be read from them, and each poll row cast to the
//! stream's types. Rules that name a group or a column that does not exist are refused
//! when they load, with the message [`Groups::check`] gives.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::DevicePoller;

/// The columns of every configured poll group, by device and group name.
#[derive(Debug, Default, Clone)]
pub struct Groups(HashMap<(String, String), SchemaRef>);

impl Groups {
    /// The groups of these pollers.
    pub fn of(pollers: &[Arc<DevicePoller>]) -> Groups {
        let mut map = HashMap::new();
        for p in pollers {
            for g in p.groups() {
                map.insert((p.name().to_string(), g.name.to_string()), g.schema.clone());
            }
        }
        Groups(map)
    }

    /// Checks stream `stream`, declared with `columns` on group `device/group`: the group
    /// exists and each declared column is one of its columns, of a type it can be read as.
    pub fn check(
        &self,
        stream: &str,
        device: &str,
        group: &str,
        columns: &Schema,
    ) -> Result<(), String> {
        let Some(schema) = self.0.get(&(device.to_string(), group.to_string())) else {
            let mut known: Vec<String> = self.0.keys().map(|(d, g)| format!("{d}/{g}")).collect();
            known.sort();
            return Err(if known.is_empty() {
                format!(
                    "stream `{}` reads Modbus group `{device}/{group}`, but the gateway's \
                     config has no [modbus] devices",
                    stream
                )
            } else {
                format!(
                    "stream `{}` reads Modbus group `{device}/{group}`, which is not configured \
                     (configured: {})",
                    stream,
                    known.join(", ")
                )
            });
        };
        for field in columns.fields() {
            let Ok(have) = schema.field_with_name(field.name()) else {
                let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(format!(
                    "column `{}` of stream `{}` is not a column of Modbus group \
                     `{device}/{group}` (its columns: {})",
                    field.name(),
                    stream,
                    cols.join(", ")
                ));
            };
            if !readable_as(have.data_type(), field.data_type()) {
                return Err(format!(
                    "column `{}` of stream `{}`: the tag's values are {} and cannot be read \
                     as {}; declare it {}",
                    field.name(),
                    stream,
                    have.data_type(),
                    field.data_type(),
                    natural_type(have.data_type())
                ));
            }
        }
        Ok(())
    }
}

/// Whether a poll column of type `from` may be declared as `to` without losing values.
fn readable_as(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (a, b) if a == b => true,
        (_, Utf8) => true,
        (Boolean, Boolean) => true,
        (UInt16 | Int16 | UInt32 | Int32 | Int64, Int64) => true,
        // u64 values above i64::MAX cannot be BIGINT; those arrive as DOUBLE.
        (UInt16 | Int16 | UInt32 | Int32 | Int64 | UInt64 | Float32 | Float64, Float64) => true,
        // The row's `timestamp` (epoch milliseconds).
        (Int64, Timestamp(TimeUnit::Millisecond, _)) => true,
        _ => false,
    }
}

/// The stream type to declare for a poll column.
fn natural_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "BOOLEAN",
        DataType::Utf8 => "STRING",
        DataType::Float32 | DataType::Float64 | DataType::UInt64 => "DOUBLE",
        _ => "BIGINT (or DOUBLE)",
    }
}

/// The row in the stream's schema: its columns by name, cast to the declared types.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            None => Ok(new_null_array(field.data_type(), rows)),
            Some(col) if col.data_type() == field.data_type() => Ok(col.clone()),
            Some(col) => match (col.data_type(), field.data_type()) {
                (DataType::Float32, DataType::Float64) => Ok(f32_as_f64(col)),
                _ => cast(col, field.data_type()),
            },
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// f32 values as the f64 with the same shortest decimal form, so a register holding
/// 1.1 reads as 1.1 and not as 1.100000023841858.
fn f32_as_f64(col: &ArrayRef) -> ArrayRef {
    let values = col.as_primitive::<Float32Type>();
    Arc::new(
        values
            .iter()
            .map(|v| v.map(|x| x.to_string().parse::<f64>().unwrap_or(f64::from(x))))
            .collect::<Float64Array>(),
    )
}
