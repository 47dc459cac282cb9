//! Modbus: polls PLCs, meters and drives over Modbus TCP and RTU, turns each poll of a
//! group of tags into one Arrow row, and writes rule results back to writable tags.
//!
//! - [`config`]: devices, transports, poll groups and tags as configured; validation.
//! - [`requests`]: coalescing a group's tags into the fewest read requests.
//! - [`registers`]: registers and bits to values (and values to registers for writes).
//! - [`line`](mod@line): connections with reconnect backoff, one per TCP device or serial port.
//! - [`poller`]: polling, qualities, counters, degraded state and writes per device.
//! - [`schema`]: the poll groups' columns as streams declare them.
//! - [`sink`](mod@sink): rule results written to a device's tags, each result one write.

pub mod config;
pub mod line;
pub mod poller;
pub mod registers;
pub mod requests;
pub mod schema;
pub mod sink;
mod sink_config;

pub use crate::groups::{Groups, conform};
pub use config::{DeviceConfig, ModbusConfig, Tag, Transport};
pub use poller::{DeviceCounters, DevicePoller, ModbusError, PollRow, Quality, pollers};
pub use registers::Value;
pub use schema::groups;
pub use sink::{ModbusSink, ModbusSinkCounters};
pub use sink_config::ModbusSinkConfig;
