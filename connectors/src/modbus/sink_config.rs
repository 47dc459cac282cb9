//! Configuration of the Modbus sink.

use std::time::Duration;

use serde::Deserialize;

/// `[sinks.NAME]` with `type = "modbus"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusSinkConfig {
    /// The `[modbus]` device written to. Without it, each result names its device in a
    /// `device` field.
    #[serde(default)]
    pub device: Option<String>,
    /// A result not written within this long (the device unreachable) is dropped from
    /// the queue instead of switching something long after the rule asked for it.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_max_age() -> Duration {
    Duration::from_secs(10)
}

impl ModbusSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age.is_zero() {
            return Err("`max_age` must be positive".into());
        }
        if self.device.as_deref() == Some("") {
            return Err("`device` is empty".into());
        }
        Ok(())
    }
}
