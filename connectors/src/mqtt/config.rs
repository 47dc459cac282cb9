//! Configuration of the cloud MQTT sink.

use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
use crate::tls::ClientTlsConfig;

/// `[sinks.NAME]` with `type = "mqtt"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; defaults to `fieldgate-<gateway id>-<sink name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic of each result; `{gateway}`, `{rule}` and `{device}` (the result's `device`
    /// field) are replaced.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// MQTT keep-alive interval; at least 1s, 30s by default.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// User name sent to the broker; without it, no credentials are sent.
    #[serde(default)]
    pub username: Option<String>,
    /// Password sent with `username` (empty when not given); ignored without `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Publishes sent and not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u16,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay; 30s by default.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// TLS to the broker; without it, plain TCP.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// `message` (default): one publish per result. `json_array`: consecutive results for
    /// the same topic go out as one JSON array per publish, up to `batch_max` of them.
    #[serde(default)]
    pub format: MqttFormat,
    /// Results per publish in `json_array` format, at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Largest MQTT packet sent, in bytes; a `json_array` publish is cut to stay below
    /// it. Match the broker's limit (AWS IoT Core: 131072).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: usize,
}

/// How results are laid out in publishes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MqttFormat {
    /// Each result is one publish: a JSON object.
    #[default]
    Message,
    /// Each publish is a JSON array of results.
    JsonArray,
}

fn default_port() -> u16 {
    1883
}
fn default_topic() -> String {
    "fieldgate/{gateway}/{rule}".into()
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_in_flight() -> u16 {
    100
}
fn default_batch_max() -> usize {
    100
}
fn default_max_packet_size() -> usize {
    256 * 1024
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl MqttSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("`host` is empty".into());
        }
        if self.max_in_flight == 0 {
            return Err("`max_in_flight` must be at least 1".into());
        }
        if self.keepalive < Duration::from_secs(1) {
            return Err("`keepalive` must be at least 1s".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err("`reconnect_min` must be positive and not above `reconnect_max`".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.batch_max == 0 {
            return Err("`batch_max` must be at least 1".into());
        }
        if self.max_packet_size < 1024 {
            return Err("`max_packet_size` must be at least 1024".into());
        }
        crate::topic_template::validate(&self.topic)
    }
}
