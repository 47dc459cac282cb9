//! fieldgate's connectors: what comes into the gateway and what goes out of it, one
//! module per protocol.
//!
//! - [`mqtt`]: the cloud MQTT sink (QoS 1, TLS) and the topic filters that route
//!   messages the embedded broker accepted to the streams.
//! - [`modbus`]: Modbus TCP/RTU devices polled into one Arrow row per poll group, the
//!   poll groups' columns as streams see them, and rule results written back to tags.
//! - [`nats`]: results published into a NATS JetStream stream, stored once by their
//!   message ids.
//! - [`http`]: results POSTed in batches, with retries and a dead-letter file.
//! - [`file`]: results appended to JSONL files.
//! - [`republish`]: results published to the embedded broker for applications on the box.
//!
//! Shared by them: [`codec`] (device JSON into Arrow, rule results out as JSON, message
//! ids), [`sink`] (the one [`sink::Sink`] trait the uplink drives: only what a
//! destination confirmed is deleted from the queue in front of it), [`retry`]
//! (reconnect backoff), [`topic_template`] (per-result topics and subjects), [`tls`] (client TLS), [`rate_limited`] (warnings at a bounded
//! rate) and [`secret`].

#![warn(missing_docs)]

/// The clock, in epoch milliseconds: the `timestamp` of Modbus and OPC UA rows.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub mod codec;
pub mod file;
pub mod groups;
pub mod http;
pub mod modbus;
pub mod mqtt;
pub mod nats;
pub mod opcua;
pub mod rate_limited;
pub mod republish;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod tls;
pub mod topic_template;
