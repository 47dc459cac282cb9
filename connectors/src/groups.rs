//! Source groups as stream columns, for the sources whose rows come typed (Modbus poll
//! groups, OPC UA node groups): which columns each configured group has, whether a
//! stream's declared columns can be read from them, and each row cast to the stream's
//! types. Rules that name a group or a column that does not exist are refused when they
//! load, with the message [`Groups::check`] gives.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// A device name in a `DATASOURCE` that stands for every device with the group.
pub const ANY: &str = "+";

/// Whether a source naming `device` (maybe [`ANY`]) reads rows of `row_device`.
pub fn device_matches(device: &str, row_device: &str) -> bool {
    device == ANY || device == row_device
}

/// The columns of every configured group of one protocol, by device (or server) and
/// group name.
#[derive(Debug, Clone)]
pub struct Groups {
    /// The protocol, in messages: `Modbus`, `OPC UA`.
    protocol: &'static str,
    /// The config section that defines the groups, in messages: `[modbus] devices`.
    section: &'static str,
    map: HashMap<(String, String), SchemaRef>,
}

impl Groups {
    /// No groups yet, of `protocol`, defined in config `section`.
    pub fn new(protocol: &'static str, section: &'static str) -> Groups {
        Groups {
            protocol,
            section,
            map: HashMap::new(),
        }
    }

    /// Adds a group's columns.
    pub fn insert(&mut self, device: &str, group: &str, schema: SchemaRef) {
        self.map
            .insert((device.to_string(), group.to_string()), schema);
    }

    /// The columns of `device/group`.
    pub fn get(&self, device: &str, group: &str) -> Option<&SchemaRef> {
        self.map.get(&(device.to_string(), group.to_string()))
    }

    /// The devices (or servers) that have a group of this name, sorted.
    pub fn devices_with(&self, group: &str) -> Vec<&str> {
        let mut d: Vec<&str> = self
            .map
            .keys()
            .filter(|(_, g)| g == group)
            .map(|(d, _)| d.as_str())
            .collect();
        d.sort();
        d
    }

    /// Checks stream `stream`, declared with `columns` on group `device/group`: the group
    /// exists and each declared column is one of its columns, of a type it can be read as.
    ///
    /// `device` may be [`ANY`] (`+`): then every device with a group of that name is
    /// read, and the columns must fit each of them.
    pub fn check(
        &self,
        stream: &str,
        device: &str,
        group: &str,
        columns: &Schema,
    ) -> Result<(), String> {
        if device == ANY {
            let devices = self.devices_with(group);
            if devices.is_empty() {
                return Err(format!(
                    "stream `{stream}` reads {} group `{group}` of every device (`+/{group}`), \
                     but no device has a group `{group}`",
                    self.protocol
                ));
            }
            return devices
                .into_iter()
                .try_for_each(|d| self.check(stream, d, group, columns));
        }
        let protocol = self.protocol;
        let Some(schema) = self.get(device, group) else {
            let mut known: Vec<String> = self.map.keys().map(|(d, g)| format!("{d}/{g}")).collect();
            known.sort();
            return Err(if known.is_empty() {
                format!(
                    "stream `{}` reads {protocol} group `{device}/{group}`, but the gateway's \
                     config has no {}",
                    stream, self.section
                )
            } else {
                format!(
                    "stream `{}` reads {protocol} group `{device}/{group}`, which is not configured \
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
                    "column `{}` of stream `{}` is not a column of {protocol} group \
                     `{device}/{group}` (its columns: {})",
                    field.name(),
                    stream,
                    cols.join(", ")
                ));
            };
            if !readable_as(have.data_type(), field.data_type()) {
                return Err(format!(
                    "column `{}` of stream `{}`: its values are {} and cannot be read \
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

/// Whether a column of type `from` may be declared as `to` without losing values.
fn readable_as(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (a, b) if a == b => true,
        (List(a), List(b)) => readable_as(a.data_type(), b.data_type()),
        (List(_), _) | (_, List(_)) => false,
        (_, Utf8) => true,
        (Boolean, Boolean) => true,
        (Int8 | UInt8 | UInt16 | Int16 | UInt32 | Int32 | Int64, Int64) => true,
        // u64 values above i64::MAX cannot be BIGINT; those arrive as DOUBLE.
        (
            Int8 | UInt8 | UInt16 | Int16 | UInt32 | Int32 | Int64 | UInt64 | Float32 | Float64,
            Float64,
        ) => true,
        // Epoch milliseconds: the row's `timestamp`, OPC UA's source and server times.
        (Int64 | Timestamp(TimeUnit::Millisecond, _), Timestamp(TimeUnit::Millisecond, _)) => true,
        _ => false,
    }
}

/// The stream type to declare for a poll column.
fn natural_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "BOOLEAN",
        DataType::Utf8 => "STRING",
        DataType::Float32 | DataType::Float64 | DataType::UInt64 => "DOUBLE",
        DataType::Timestamp(..) => "TIMESTAMP",
        DataType::List(_) => "ARRAY(<element type>)",
        _ => "BIGINT (or DOUBLE)",
    }
}

/// The row in the stream's schema: its columns by name, cast to the declared types
/// (f32 values, also in lists, as the f64 of the same decimal form).
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
                (DataType::List(a), DataType::List(b))
                    if a.data_type() == &DataType::Float32
                        && b.data_type() == &DataType::Float64 =>
                {
                    let list = col.as_list::<i32>();
                    let values = f32_as_f64(list.values());
                    ListArray::try_new(
                        b.clone(),
                        list.offsets().clone(),
                        values,
                        list.nulls().cloned(),
                    )
                    .map(|l| Arc::new(l) as ArrayRef)
                }
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
