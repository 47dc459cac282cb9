//! Sources: the way messages enter a stream.

pub mod mqtt;
