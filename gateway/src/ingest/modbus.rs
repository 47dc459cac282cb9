//! Modbus ingest: runs the pollers of the `[modbus]` devices, hands each poll row to the
//! streams declared on its group (`TYPE = 'modbus', DATASOURCE = 'device/group'`), cast
//! to each stream's columns, and, when `republish` is on, publishes it as JSON to the
//! embedded broker (`modbus/<device>/<group>` by default) for local subscribers.
//!
//! [`Groups`] knows every group's columns, so a stream that names a missing group or
//! a column its group does not have is refused when the rules load, with file:line:col.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, AsArray, Float64Array, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use fieldgate_connectors::sink::encode::json_rows;
use fieldgate_connectors::source::modbus::{DevicePoller, PollRow};
use fieldgate_rules::{RuleSet, Source, SqlError, StreamDef};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Input, Route};
use crate::broker::Publisher;

/// Poll rows waiting for the router before pollers wait.
const ROWS_CHANNEL: usize = 1024;

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

    /// Checks a Modbus stream against its group: the group exists and each declared
    /// column is one of its columns, of a type it can be read as. MQTT streams pass.
    pub fn check(&self, stream: &StreamDef) -> Result<(), String> {
        let Source::Modbus { device, group } = &stream.source else {
            return Ok(());
        };
        let Some(schema) = self.0.get(&(device.clone(), group.clone())) else {
            let mut known: Vec<String> = self.0.keys().map(|(d, g)| format!("{d}/{g}")).collect();
            known.sort();
            return Err(if known.is_empty() {
                format!(
                    "stream `{}` reads Modbus group `{device}/{group}`, but the gateway's \
                     config has no [modbus] devices",
                    stream.name
                )
            } else {
                format!(
                    "stream `{}` reads Modbus group `{device}/{group}`, which is not configured \
                     (configured: {})",
                    stream.name,
                    known.join(", ")
                )
            });
        };
        for field in stream.schema.fields() {
            let Ok(have) = schema.field_with_name(field.name()) else {
                let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(format!(
                    "column `{}` of stream `{}` is not a column of Modbus group \
                     `{device}/{group}` (its columns: {})",
                    field.name(),
                    stream.name,
                    cols.join(", ")
                ));
            };
            if !readable_as(have.data_type(), field.data_type()) {
                return Err(format!(
                    "column `{}` of stream `{}`: the tag's values are {} and cannot be read \
                     as {}; declare it {}",
                    field.name(),
                    stream.name,
                    have.data_type(),
                    field.data_type(),
                    natural_type(have.data_type())
                ));
            }
        }
        Ok(())
    }
}

impl Groups {
    /// Takes the Modbus streams that [`Self::check`] refuses out of `set`, adding an
    /// error at each one's `DATASOURCE`. Their rules then fail for want of a stream.
    pub fn retain_known(&self, set: &mut RuleSet, errors: &mut Vec<SqlError>) {
        set.streams.retain(|s| match self.check(s) {
            Ok(()) => true,
            Err(message) => {
                errors.push(SqlError::new(&s.file, s.source_pos, message));
                false
            }
        });
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

/// Modbus ingest counters.
#[derive(Debug, Default)]
pub struct ModbusIngestCounters {
    /// Poll rows received from the pollers.
    pub rows: AtomicU64,
    /// Rows that no stream reads.
    pub unrouted: AtomicU64,
    /// Rows that could not be cast to a stream's columns.
    pub cast_errors: AtomicU64,
    /// Rows published to the embedded broker.
    pub republished: AtomicU64,
}

/// Publishing poll rows to the embedded broker.
pub struct Republish {
    /// Topic template with `{device}` and `{group}`.
    pub topic: String,
    /// A publishing link ([`crate::broker::Broker::publisher`]).
    pub link: Publisher,
}

/// Starts every poller and the router between them and the streams; returns once the
/// pollers stopped (on `stop`) and every row they produced was handed on.
pub async fn run(
    pollers: Vec<Arc<DevicePoller>>,
    mut routes_rx: watch::Receiver<Vec<Route>>,
    republish: Option<Republish>,
    counters: Arc<ModbusIngestCounters>,
    stop: watch::Receiver<bool>,
) {
    let (rows_tx, mut rows_rx) = mpsc::channel::<PollRow>(ROWS_CHANNEL);
    let mut tasks = JoinSet::new();
    for p in pollers {
        tasks.spawn(p.run(rows_tx.clone(), stop.clone()));
    }
    drop(rows_tx);
    let (topic, link) = match republish {
        Some(Republish { topic, link }) => (topic, Some(link)),
        None => (String::new(), None),
    };
    let mut routes = routes_rx.borrow_and_update().clone();
    // Ends when every poller has stopped and dropped its sender.
    while let Some(row) = rows_rx.recv().await {
        counters.rows.fetch_add(1, Ordering::Relaxed);
        if routes_rx.has_changed().unwrap_or(false) {
            routes = routes_rx.borrow_and_update().clone();
        }
        let mut routed = false;
        for r in &routes {
            let Source::Modbus { device, group } = &r.source else {
                continue;
            };
            if **device != *row.device || **group != *row.group {
                continue;
            }
            routed = true;
            match conform(&row.batch, &r.schema) {
                Ok(batch) => {
                    if r.tx.send(Input::Rows(batch)).await.is_err() {
                        tracing::error!(stream = %r.stream, "stream task is gone; Modbus row dropped");
                    }
                }
                Err(e) => {
                    counters.cast_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = %r.stream, error = %e, "Modbus row does not fit the stream");
                }
            }
        }
        if !routed {
            counters.unrouted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = link.as_ref() {
            publish(tx, &topic, &row, &counters).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn publish(tx: &Publisher, template: &str, row: &PollRow, counters: &ModbusIngestCounters) {
    let topic = template
        .replace("{device}", &row.device)
        .replace("{group}", &row.group);
    let payloads: Vec<Bytes> = match json_rows(std::slice::from_ref(&row.batch), true) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(device = %row.device, group = %row.group, error = %e, "cannot encode a Modbus row");
            return;
        }
    };
    let n = payloads.len() as u64;
    let messages = payloads.into_iter().map(|p| (topic.clone(), p)).collect();
    match tx.publish(messages).await {
        Ok(()) => {
            counters.republished.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(%topic, error = %e, "Modbus row not republished"),
    }
}
