//! Sources: the way messages enter a stream.

pub mod modbus;
pub mod mqtt;
