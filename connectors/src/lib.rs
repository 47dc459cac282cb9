//! fieldgate's connectors: what comes into the gateway and what goes out of it.
//!
//! - [`source`]: turning device messages into Arrow batches of a declared stream
//!   ([`source::mqtt::JsonDecoder`]), and matching MQTT topics to stream filters; polling
//!   Modbus TCP/RTU devices into one Arrow row per poll group ([`source::modbus`]).
//! - [`sink`]: delivering queued rule results to their destinations behind one
//!   [`sink::Sink`] trait: the cloud over MQTT ([`sink::mqtt`]) and JSONL files
//!   ([`sink::file`]). Sinks report which messages are confirmed so the queue in front of
//!   them deletes only what arrived.

pub mod sink;
pub mod source;
