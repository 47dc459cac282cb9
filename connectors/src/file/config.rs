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
    /// Once a file would grow past this many bytes it is renamed to `<path>.1` (older
    /// ones to `.2`, ...) and a new one started; without it files grow without bound.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Rolled files kept besides the current one.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_max_files() -> usize {
    5
}

impl FileSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("`path` is empty".into());
        }
        if self.max_file_bytes == Some(0) {
            return Err("`max_file_bytes` must be positive".into());
        }
        Ok(())
    }
}
