//! NATS JetStream: the fleet sink. Results are published to a stream of a NATS cluster,
//! each message with a `Nats-Msg-Id` that a resend repeats, so that the stream's
//! duplicate detection stores every result once however often an outage or a crash
//! makes the gateway send it.

mod batch;
mod config;
mod sink;
mod stream;
mod subject;

pub use config::{NatsAuth, NatsFormat, NatsSinkConfig};
pub use sink::{NatsCounters, NatsSink, NatsStartError};
