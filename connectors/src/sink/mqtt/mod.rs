//! The cloud MQTT sink: QoS 1 publishes, confirmed by the broker's PUBACK.

mod config;
mod sink;

pub use config::MqttSinkConfig;
pub use sink::MqttSink;
