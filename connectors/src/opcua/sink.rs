//! Writing results to nodes: each queued result is a JSON object whose fields name
//! nodes of one server (by their column names in the config); its non-null fields are
//! type- and range-checked and written in one Write request. Only nodes marked
//! `writable` are written. Results refused (by the gateway's checks or by the server's
//! status codes) are counted apart from the written ones and dropped; results that find
//! the server unreachable stay queued and are tried again, until `max_age`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opcua::types::{NodeId, Variant};
use serde::Deserialize;
use serde_json::Value as Json;
use tokio::time::Instant;

use super::server::{OpcuaServer, WriteError};
use super::values::to_variant;
use crate::rate_limited::RateLimited;
use crate::sink::{Message, Sink, SinkError, SinkEvent, push_outcomes, write_target};

/// Field of a result that names the server, when the sink has no `server`.
const SERVER_FIELD: &str = "server";
/// Wait before trying an unreachable server again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per this long about refused results.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// `[sinks.NAME]` with `type = "opcua"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSinkConfig {
    /// The `[[opcua.servers]]` entry written to. Without it, each result names its
    /// server in a `server` field.
    #[serde(default)]
    pub server: Option<String>,
    /// A result not written within this long (the server unreachable) is dropped from
    /// the queue instead of setting something long after the rule asked for it.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_max_age() -> Duration {
    Duration::from_secs(10)
}

impl OpcuaSinkConfig {
    /// Checks values serde cannot: returns a message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age.is_zero() {
            return Err("`max_age` must be positive".into());
        }
        if self.server.as_deref() == Some("") {
            return Err("`server` is empty".into());
        }
        Ok(())
    }
}

/// Counters of an OPC UA sink.
#[derive(Debug, Default)]
pub struct OpcuaSinkCounters {
    /// Results written (every node Good).
    pub written: AtomicU64,
    /// Results refused before anything was sent: not an object, unknown server or node,
    /// a node not writable, a value of the wrong type or out of range.
    pub refused: AtomicU64,
    /// Results the server answered with a bad status for a node.
    pub failed: AtomicU64,
}

/// The server a result goes to and its nodes' new values.
type Writes = (Arc<OpcuaServer>, Vec<(NodeId, Variant)>);

/// Writes results to OPC UA nodes.
pub struct OpcuaSink {
    name: String,
    server: Option<String>,
    servers: HashMap<String, Arc<OpcuaServer>>,
    events: VecDeque<SinkEvent>,
    retry_at: Option<Instant>,
    counters: Arc<OpcuaSinkCounters>,
    refused_log: RateLimited,
}

impl OpcuaSink {
    /// A sink writing through these servers (by name). A configured `server` must be one.
    pub fn new(
        name: &str,
        cfg: &OpcuaSinkConfig,
        servers: HashMap<String, Arc<OpcuaServer>>,
    ) -> Result<Self, SinkError> {
        if let Some(s) = &cfg.server
            && !servers.contains_key(s)
        {
            return Err(SinkError::Config(format!(
                "server `{s}` is not an [[opcua.servers]] entry"
            )));
        }
        Ok(OpcuaSink {
            name: name.into(),
            server: cfg.server.clone(),
            servers,
            events: VecDeque::from([SinkEvent::Ready]),
            retry_at: None,
            counters: Arc::default(),
            refused_log: RateLimited::new(LOG_EVERY),
        })
    }

    /// The sink's counters.
    pub fn counters(&self) -> &Arc<OpcuaSinkCounters> {
        &self.counters
    }

    /// The server and the checked writes a result asks for.
    fn writes(&self, msg: &Message) -> Result<Writes, String> {
        let row: serde_json::Map<String, Json> = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("result is not a JSON object: {e}"))?;
        let server = write_target(self.server.as_deref(), &row, SERVER_FIELD, "server")?;
        let srv = self
            .servers
            .get(&server)
            .ok_or_else(|| format!("no [[opcua.servers]] entry `{server}`"))?
            .clone();
        let mut writes = Vec::with_capacity(row.len());
        for (field, value) in row {
            if field == SERVER_FIELD || value.is_null() {
                continue;
            }
            let node = srv
                .config()
                .node(&field)
                .ok_or_else(|| format!("`{field}` is not a node of server `{server}`"))?;
            if !node.writable {
                return Err(format!(
                    "node `{field}` ({}) is not marked writable",
                    node.node_id
                ));
            }
            let v = to_variant(node.node_type, &value, node.min, node.max)
                .map_err(|e| format!("`{field}`: {e}"))?;
            writes.push((node.id(), v));
        }
        if writes.is_empty() {
            return Err("result has no value to write".into());
        }
        Ok((srv, writes))
    }

    fn log_refused(&mut self, rule: &str, reason: &str) {
        let Some(held) = self.refused_log.allow(1) else {
            return;
        };
        tracing::warn!(sink = %self.name, %rule, %reason, not_logged_before = held, "OPC UA write refused");
    }
}

impl Sink for OpcuaSink {
    fn max_in_flight(&self) -> usize {
        64
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let mut done = Vec::with_capacity(msgs.len());
        let mut refused = Vec::new();
        for msg in msgs {
            let outcome = match self.writes(msg) {
                Ok((srv, values)) => srv.write(values).await,
                Err(reason) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    self.log_refused(&msg.rule, &reason);
                    refused.push(msg.seq);
                    continue;
                }
            };
            match outcome {
                Ok(()) => {
                    self.counters.written.fetch_add(1, Ordering::Relaxed);
                    done.push(msg.seq);
                }
                Err(WriteError::Refused(reason)) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.log_refused(&msg.rule, &reason);
                    refused.push(msg.seq);
                }
                Err(e @ (WriteError::NotConnected(_) | WriteError::Request(_))) => {
                    push_outcomes(&mut self.events, done, refused);
                    self.events.push_back(SinkEvent::Down(e.to_string()));
                    self.retry_at = Some(Instant::now() + RETRY_DELAY);
                    return Ok(());
                }
            }
        }
        push_outcomes(&mut self.events, done, refused);
        Ok(())
    }

    async fn next_event(&mut self) -> SinkEvent {
        crate::sink::queued_event(&mut self.events, &mut self.retry_at).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::opcua::{OpcuaConfig, Pki};

    fn sink() -> OpcuaSink {
        let cfg: OpcuaConfig = toml::from_str(
            r#"
            [[servers]]
            name = "plc"
            endpoint = "opc.tcp://127.0.0.1:9"
            [[servers.groups]]
            name = "g"
            nodes = [
              { name = "setpoint", node_id = "ns=2;s=SP", type = "double", writable = true, min = 0, max = 100 },
              { name = "mode", node_id = "ns=2;s=Mode", type = "string", writable = true },
              { name = "temp", node_id = "ns=2;s=T", type = "double" },
            ]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let dir = std::env::temp_dir();
        let srv = OpcuaServer::new(cfg.servers[0].clone(), Pki::under(&dir), "gw");
        let sc = OpcuaSinkConfig {
            server: Some("plc".into()),
            max_age: Duration::from_secs(10),
        };
        OpcuaSink::new("ctl", &sc, HashMap::from([("plc".to_string(), srv)])).unwrap()
    }

    fn msg(seq: u64, body: &str) -> Message {
        Message {
            seq,
            rule: Arc::from("r"),
            payload: Bytes::from(body.to_string()),
            commit_end: true,
        }
    }

    #[test]
    fn only_writable_nodes_with_values_of_their_type_and_range_are_written() {
        let s = sink();
        let (_, w) = s
            .writes(&msg(1, r#"{"setpoint": 42.5, "mode": "auto", "x": null}"#))
            .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].1, Variant::Double(42.5));
        for (body, why) in [
            (r#"{"temp": 1.0}"#, "not marked writable"),
            (r#"{"setpoint": 101}"#, "outside"),
            (r#"{"setpoint": "hot"}"#, "is not a double"),
            (r#"{"nope": 1}"#, "not a node of server `plc`"),
            (r#"{"server": "other", "setpoint": 1}"#, "writes to `plc`"),
            (r#"{"mode": null}"#, "no value"),
            ("[1]", "not a JSON object"),
        ] {
            let e = s.writes(&msg(1, body)).map(|_| ()).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[tokio::test]
    async fn refused_results_are_reported_apart_and_unreachable_ones_stay_queued() {
        let mut s = sink();
        assert_eq!(s.next_event().await, SinkEvent::Ready);
        s.send(&[msg(1, r#"{"temp": 1}"#), msg(2, r#"{"setpoint": 500}"#)])
            .await
            .unwrap();
        assert_eq!(s.next_event().await, SinkEvent::Refused(vec![1, 2]));
        assert_eq!(s.counters().refused.load(Ordering::Relaxed), 2);
        // No session: kept queued, down, ready again after a pause.
        s.send(&[msg(3, r#"{"setpoint": 5}"#)]).await.unwrap();
        assert!(matches!(s.next_event().await, SinkEvent::Down(_)));
        assert_eq!(s.counters().written.load(Ordering::Relaxed), 0);
    }
}
