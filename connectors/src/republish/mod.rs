//! The local republish sink: results published to the gateway's embedded broker, for
//! applications on the box (an HMI, a historian, a local dashboard) to subscribe to.

mod config;
mod sink;

pub use config::RepublishSinkConfig;
pub use sink::{Publish, RepublishSink};
