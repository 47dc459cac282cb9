//! Configuration of the local republish sink.

use serde::Deserialize;

/// `[sinks.NAME]` with `type = "republish"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepublishSinkConfig {
    /// Topic of each result on the embedded broker; `{gateway}`, `{rule}` and `{device}`
    /// (the result's `device` field) are replaced.
    #[serde(default = "default_topic")]
    pub topic: String,
}

fn default_topic() -> String {
    "fieldgate/{gateway}/{rule}".into()
}

impl RepublishSinkConfig {
    /// Checks the topic template: a non-empty topic name without wildcards.
    pub fn validate(&self) -> Result<(), String> {
        crate::topic_template::validate(&self.topic)
    }
}
