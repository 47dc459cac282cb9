//! The Modbus sink: a rule's results written to writable tags of a polled device, each
//! result one write (one row's tags in the fewest requests; see
//! [`DevicePoller::write_all`](crate::source::modbus::DevicePoller::write_all)).

mod config;
mod sink;

pub use config::ModbusSinkConfig;
pub use sink::{ModbusSink, ModbusSinkCounters};
