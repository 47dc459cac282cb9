//! MQTT: the cloud sink (QoS 1 publishes, confirmed by the broker's PUBACK, over TCP or
//! TLS; one result per publish, or a JSON array of results per publish) and the topic
//! filters by which messages the embedded broker accepted reach their streams.

mod config;
mod sink;
mod topic_filter;

pub use config::{MqttFormat, MqttSinkConfig};
pub use sink::MqttSink;
pub use topic_filter::topic_matches;
