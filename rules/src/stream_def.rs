//! Stream declarations: what a stream's rows look like and where they come from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};

use crate::error::Pos;

/// A declared stream: `CREATE STREAM name (columns) WITH (options)`.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// The stream's name, which rules read `FROM`.
    pub name: String,
    /// The typed columns; payloads are decoded straight into this schema.
    pub schema: SchemaRef,
    /// Where the stream's rows come from.
    pub source: Source,
    /// Where `DATASOURCE` is written, for errors about the source.
    pub source_pos: Pos,
    /// How the stream's payloads are decoded (`FORMAT`).
    pub format: PayloadFormat,
    /// Event time, when the stream declares one; without it, windows run on the time
    /// rows arrive (processing time).
    pub event_time: Option<EventTime>,
    /// With event time: after this long without rows, the watermark follows the clock
    /// so that open windows still close.
    pub idle_timeout: Option<std::time::Duration>,
    /// The rule file that declares the stream.
    pub file: PathBuf,
    /// Where the stream's name is written in `file`.
    pub pos: Pos,
}

/// Where a stream's rows come from (`TYPE` and `DATASOURCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Messages of the embedded broker whose topic matches this filter,
    /// e.g. `sensors/+/telemetry`.
    Mqtt {
        /// The MQTT topic filter, wildcards (`+`, `#`) allowed.
        filter: String,
    },
    /// The rows of one Modbus poll group, one per poll.
    Modbus {
        /// The device's name in the gateway's config; `+` for every device with the
        /// group.
        device: String,
        /// The name of the device's poll group.
        group: String,
    },
    /// The rows of one OPC UA node group, one per change set.
    Opcua {
        /// The server's name in the gateway's config.
        server: String,
        /// The name of the server's node group.
        group: String,
    },
}

impl Source {
    /// The MQTT topic filter, for an MQTT stream.
    pub fn mqtt_filter(&self) -> Option<&str> {
        match self {
            Source::Mqtt { filter } => Some(filter),
            Source::Modbus { .. } | Source::Opcua { .. } => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mqtt { filter } => write!(f, "MQTT topic filter `{filter}`"),
            Source::Modbus { device, group } => write!(f, "Modbus group `{device}/{group}`"),
            Source::Opcua { server, group } => write!(f, "OPC UA group `{server}/{group}`"),
        }
    }
}

/// How a stream's payloads are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// One JSON object per message (several whitespace-separated objects are several rows).
    Json,
}

/// The event-time column of a stream and how late its rows may arrive.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTime {
    /// Name of the event-time column (`TIMESTAMP`).
    pub column: String,
    /// Index of the column in the stream's schema.
    pub index: usize,
    /// How the column encodes an instant (`TIMESTAMP_FORMAT`).
    pub encoding: TimeEncoding,
    /// How far behind the largest event time seen a row may still arrive.
    pub lateness: Duration,
}

/// How the event-time column encodes an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEncoding {
    /// Integer milliseconds since the Unix epoch.
    EpochMillis,
    /// Seconds since the Unix epoch, integer or fractional.
    EpochSeconds,
    /// An RFC 3339 string, decoded into a `TIMESTAMP` column.
    Rfc3339,
}

impl TimeEncoding {
    /// Reads a `TIMESTAMP_FORMAT` value, in any case: `epoch_ms` (or `ms`, `millis`),
    /// `epoch_s` (or `s`, `seconds`), `rfc3339` (or `iso8601`); `None` for any other.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "epoch_ms" | "ms" | "millis" => Some(Self::EpochMillis),
            "epoch_s" | "s" | "seconds" => Some(Self::EpochSeconds),
            "rfc3339" | "iso8601" => Some(Self::Rfc3339),
            _ => None,
        }
    }

    /// Whether a column of this type can carry this encoding.
    pub fn fits(&self, dt: &DataType) -> bool {
        match self {
            Self::EpochMillis => matches!(dt, DataType::Int64),
            Self::EpochSeconds => matches!(dt, DataType::Int64 | DataType::Float64),
            Self::Rfc3339 => matches!(dt, DataType::Timestamp(TimeUnit::Millisecond, _)),
        }
    }
}

impl EventTime {
    /// Event times of a batch's rows in epoch milliseconds; null where the row has none.
    pub fn millis(&self, column: &ArrayRef) -> Int64Array {
        match (self.encoding, column.data_type()) {
            (TimeEncoding::EpochMillis, DataType::Int64) => {
                column.as_primitive::<Int64Type>().clone()
            }
            (TimeEncoding::EpochSeconds, DataType::Int64) => column
                .as_primitive::<Int64Type>()
                .unary(|s| s.saturating_mul(1000)),
            (TimeEncoding::EpochSeconds, DataType::Float64) => column
                .as_primitive::<Float64Type>()
                .unary(|s| (s * 1000.0).round() as i64),
            (TimeEncoding::Rfc3339, DataType::Timestamp(TimeUnit::Millisecond, _)) => column
                .as_primitive::<TimestampMillisecondType>()
                .reinterpret_cast::<Int64Type>(),
            // Declarations are checked when parsed, so this is unreachable in practice;
            // a column of another type yields no event times rather than a panic.
            _ => Int64Array::new_null(column.len()),
        }
    }
}

/// Maps a scalar column type name (SQL or eKuiper spelling) to an Arrow type; STRUCT and
/// ARRAY are parsed in `sql/types.rs`.
pub fn column_type(name: &str) -> Option<DataType> {
    Some(match name.to_ascii_uppercase().as_str() {
        "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
        "BIGINT" | "INT" | "INTEGER" | "LONG" => DataType::Int64,
        "DOUBLE" | "FLOAT" | "REAL" => DataType::Float64,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" | "DATETIME" => {
            DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC")))
        }
        _ => return None,
    })
}
