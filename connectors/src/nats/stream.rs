//! The stream a NATS sink publishes into: checked at every connection, created only
//! when the configuration asks for it (development).

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::jetstream::{Context, ErrorCode};

use super::subject::{filter_for, stream_takes};

/// What to check.
pub struct StreamCheck {
    /// The stream's name.
    pub stream: String,
    /// The subject template, `{gateway}` filled in.
    pub template: String,
    /// Create the stream when it does not exist.
    pub create: bool,
}

/// What the connection logs about the stream.
pub struct StreamFacts {
    /// Its replicas.
    pub replicas: usize,
    /// Its duplicate window.
    pub duplicate_window: Duration,
}

/// Checks that the stream exists and takes the template's subjects (or creates it);
/// the error says what is wrong and what to do.
pub async fn check_stream(js: &Context, check: &StreamCheck) -> Result<StreamFacts, String> {
    let name = &check.stream;
    let config = match js.get_stream(name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                if !check.create {
                    return Err(format!(
                        "stream `{name}` does not exist: create it (docs/deploy.md, \"Fleet\"), \
                         or set `create_stream = true` for development"
                    ));
                }
                let config = Config {
                    name: name.clone(),
                    subjects: vec![filter_for(&check.template)],
                    storage: StorageType::File,
                    num_replicas: 1,
                    duplicate_window: Duration::from_secs(120),
                    ..Config::default()
                };
                js.create_stream(config.clone())
                    .await
                    .map_err(|e| format!("cannot create stream `{name}`: {e}"))?;
                tracing::warn!(stream = %name, subjects = ?config.subjects, "created the stream (create_stream: one replica, for development)");
                config
            }
            _ => return Err(format!("cannot look up stream `{name}`: {e}")),
        },
    };
    if !stream_takes(&config.subjects, &check.template) {
        return Err(format!(
            "stream `{name}` takes subjects {:?}, not every subject of `{}`: add a filter such as `{}`",
            config.subjects,
            check.template,
            filter_for(&check.template)
        ));
    }
    Ok(StreamFacts {
        replicas: config.num_replicas,
        duplicate_window: config.duplicate_window,
    })
}
