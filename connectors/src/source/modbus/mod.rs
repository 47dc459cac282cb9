//! Modbus source: polls PLCs, meters and drives over Modbus TCP and RTU and turns each poll
//! of a group of tags into one Arrow row.
//!
//! - [`config`]: devices, transports, poll groups and tags as configured; validation.
//! - [`plan`]: coalescing a group's tags into the fewest read requests.
//! - [`decode`]: registers and bits to values (and values to registers for writes).
//! - [`line`](mod@line): connections with reconnect backoff, one per TCP device or serial port.
//! - [`poller`]: polling, qualities, counters, degraded state and writes per device.

pub mod config;
pub mod decode;
pub mod line;
pub mod plan;
pub mod poller;

pub use config::{DeviceConfig, ModbusConfig, Tag, Transport};
pub use decode::Value;
pub use poller::{DeviceCounters, DevicePoller, ModbusError, PollRow, Quality, pollers};
