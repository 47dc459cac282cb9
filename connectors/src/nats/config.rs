//! Configuration of the NATS JetStream sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::subject;
use crate::secret::Secret;
use crate::tls::ClientTlsConfig;

/// `[sinks.NAME]` with `type = "nats"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Servers of the cluster (`nats://host:4222`, `tls://host:4222` or `host:port`);
    /// the client connects to one and moves to another when it is lost.
    pub servers: Vec<String>,
    /// The JetStream stream that must take the results; checked at every connection.
    pub stream: String,
    /// Subject of each result; `{gateway}`, `{rule}` and `{device}` (the result's
    /// `device` field) are replaced.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Client name the servers show; defaults to `fieldgate-<gateway id>-<sink name>`.
    #[serde(default)]
    pub client_name: Option<String>,
    /// How the client authenticates; without it, it does not.
    #[serde(default)]
    pub auth: Option<NatsAuth>,
    /// TLS to the servers; without it, whatever the servers ask for (plain TCP when
    /// they do not ask for TLS).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// Publishes sent and not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u16,
    /// How long a publish waits for its acknowledgement before the connection is
    /// treated as lost and everything unacknowledged is sent again.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay; 10s by default.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// `message` (default): one message per result. `json_array`: consecutive results
    /// for the same subject go out as one JSON array per message, up to `batch_max`.
    #[serde(default)]
    pub format: NatsFormat,
    /// Results per message in `json_array` format, at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Largest message payload sent, in bytes; a `json_array` message is cut to stay
    /// below it. At most the servers' `max_payload` (1 MiB by default).
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Creates the stream (one replica, file storage, a 2-minute duplicate window) when
    /// it does not exist. For development: production streams are set up by their
    /// operators with the replicas and duplicate window they need (docs/deploy.md).
    #[serde(default)]
    pub create_stream: bool,
}

/// How results are laid out in messages.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NatsFormat {
    /// Each result is one message: a JSON object.
    #[default]
    Message,
    /// Each message is a JSON array of results.
    JsonArray,
}

/// `[sinks.NAME.auth]`: one way of authenticating.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum NatsAuth {
    /// A token the servers know.
    Token {
        /// The token.
        token: Secret,
    },
    /// A user name and password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// An NKey: the user's seed (`SU…`), which signs the servers' challenge.
    Nkey {
        /// The seed.
        seed: Secret,
    },
    /// A credentials file (`.creds`: a user JWT and its NKey seed), as `nsc` writes.
    Credentials {
        /// The file.
        file: PathBuf,
    },
}

fn default_subject() -> String {
    "fieldgate.{gateway}.{rule}".into()
}
fn default_in_flight() -> u16 {
    256
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}
fn default_batch_max() -> usize {
    100
}
fn default_max_payload() -> usize {
    512 * 1024
}

impl NatsSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() || self.servers.iter().any(|s| s.trim().is_empty()) {
            return Err("`servers` must name at least one server, none empty".into());
        }
        if let Some(bad) = self.servers.iter().find(|s| {
            !s.parse::<async_nats::ServerAddr>()
                .is_ok_and(|a| !a.host().is_empty())
        }) {
            return Err(format!("`servers`: {bad:?} is not a server address"));
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
        {
            return Err(format!(
                "`stream` = {:?} must be a stream name (no `.`, `*`, `>`, slashes or spaces)",
                self.stream
            ));
        }
        subject::validate(&self.subject)?;
        if self.max_in_flight == 0 {
            return Err("`max_in_flight` must be at least 1".into());
        }
        if self.ack_timeout < Duration::from_millis(100) {
            return Err("`ack_timeout` must be at least 100ms".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err("`reconnect_min` must be positive and not above `reconnect_max`".into());
        }
        if self.batch_max == 0 {
            return Err("`batch_max` must be at least 1".into());
        }
        if self.max_payload < 1024 {
            return Err("`max_payload` must be at least 1024".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        match &self.auth {
            Some(NatsAuth::UserPassword { user, .. }) if user.is_empty() => {
                Err("`auth.user` is empty".into())
            }
            Some(NatsAuth::Nkey { seed }) if !seed.expose().starts_with("SU") => {
                Err("`auth.seed` must be a user NKey seed (it starts with `SU`)".into())
            }
            _ => Ok(()),
        }
    }

    /// Takes relative paths from `base`.
    pub fn rebase(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            tls.rebase(base);
        }
        if let Some(NatsAuth::Credentials { file }) = &mut self.auth {
            *file = base.join(&*file);
        }
    }

    /// Reads the TLS and credentials files as the sink does at start: `validate`
    /// refuses what `run` would.
    pub fn check_files(&self) -> Result<(), super::NatsStartError> {
        super::sink::secured_options(self).map(drop)
    }

    /// Results per message: 1, or `batch_max` in `json_array` format.
    pub fn per_message(&self) -> usize {
        match self.format {
            NatsFormat::Message => 1,
            NatsFormat::JsonArray => self.batch_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<NatsSinkConfig, String> {
        let mut text = String::new();
        if !extra.starts_with("servers") {
            text.push_str("servers = [\"nats://127.0.0.1:4222\"]\n");
        }
        if !extra.starts_with("stream") {
            text.push_str("stream = \"FG\"\n");
        }
        text.push_str(extra);
        let cfg: NatsSinkConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate().map(|()| cfg)
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = parse("").unwrap();
        assert_eq!(c.subject, "fieldgate.{gateway}.{rule}");
        assert_eq!((c.max_in_flight, c.per_message()), (256, 1));
        assert_eq!(
            parse("format = \"json_array\"\nbatch_max = 50")
                .unwrap()
                .per_message(),
            50
        );
        for (extra, says) in [
            ("subject = \"a.*.b\"", "wildcard"),
            ("subject = \"a..b\"", "empty token"),
            ("max_in_flight = 0", "max_in_flight"),
            ("batch_max = 0", "batch_max"),
            ("stream = \"a.b\"", "stream"),
            ("servers = []", "servers"),
            ("servers = [\"nats://\"]", "server address"),
            ("servers = [\"http://127.0.0.1:4222\"]", "server address"),
            ("auth = { method = \"nkey\", seed = \"nope\" }", "SU"),
            ("auth = { method = \"token\" }", "token"),
            ("auth = { method = \"kerberos\" }", "kerberos"),
        ] {
            let e = parse(extra).expect_err(extra);
            assert!(e.contains(says), "{extra}: {e}");
        }
        let c = parse("auth = { method = \"user_password\", user = \"gw\", password = \"pw\" }")
            .unwrap();
        assert!(
            !format!("{c:?}").contains("\"pw\""),
            "the password shows in {c:?}"
        );
    }
}
