//! MQTT ingest: messages published to the embedded broker become rows of every stream
//! whose topic filter matches.

mod decode;
mod screen;
mod topic;

pub use decode::{Decoded, JsonDecoder, Rejected};
pub use screen::{InputLimits, RejectReason, Screen};
pub use topic::topic_matches;
