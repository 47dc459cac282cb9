//! The file sink: results appended as JSON lines, confirmed once written and synced.

mod config;
mod sink;

pub use config::FileSinkConfig;
pub use sink::FileSink;
