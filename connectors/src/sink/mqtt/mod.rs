//! The cloud MQTT sink: QoS 1 publishes, confirmed by the broker's PUBACK, over TCP or
//! TLS.

mod config;
mod sink;
mod tls;

pub use config::MqttSinkConfig;
pub use sink::MqttSink;
pub use tls::{MqttTlsConfig, TlsError};
