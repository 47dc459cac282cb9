//! The cloud MQTT sink: QoS 1 publishes, confirmed by the broker's PUBACK, over TCP or
//! TLS; one result per publish, or a JSON array of results per publish.

mod config;
mod sink;
mod tls;

pub use config::{MqttFormat, MqttSinkConfig};
pub use sink::MqttSink;
pub use tls::{MqttTlsConfig, TlsError};
