//! Configuration of the JSONL file sink.

use std::path::PathBuf;

use serde::Deserialize;

/// `[sinks.NAME]` with `type = "file"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to; `{rule}` is replaced by the rule's name. Relative paths are
    /// relative to the gateway's working directory.
    pub path: PathBuf,
}

impl FileSinkConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("`path` is empty".into());
        }
        Ok(())
    }
}
