//! Writing results: each queued result is a JSON object whose fields name tags; its
//! non-null fields are written to the device in one go.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::time::Instant;

use super::sink_config::ModbusSinkConfig;
use crate::modbus::{DevicePoller, ModbusError, Quality, Value};
use crate::rate_limited::RateLimited;
use crate::sink::{Message, Sink, SinkError, SinkEvent, push_outcomes, write_target};

/// Field of a result that names the device, when the sink has no `device`.
const DEVICE_FIELD: &str = "device";
/// The device a result goes to and its tags' new values.
type Writes = (Arc<DevicePoller>, Vec<(String, Value)>);

/// Wait before trying an unreachable device again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per this long about refused results.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counters of a Modbus sink.
#[derive(Debug, Default)]
pub struct ModbusSinkCounters {
    /// Results written.
    pub written: AtomicU64,
    /// Results refused before anything was sent: not an object, unknown device or tag,
    /// a tag not writable, a value of the wrong type or out of range.
    pub refused: AtomicU64,
    /// Results the device answered with a Modbus exception.
    pub failed: AtomicU64,
}

/// Writes results to Modbus devices.
pub struct ModbusSink {
    name: String,
    device: Option<String>,
    devices: HashMap<String, Arc<DevicePoller>>,
    events: VecDeque<SinkEvent>,
    /// When the device was unreachable: when to report ready again.
    retry_at: Option<Instant>,
    counters: Arc<ModbusSinkCounters>,
    refused_log: RateLimited,
}

impl ModbusSink {
    /// A sink writing through these pollers (by device name). A configured `device`
    /// must be one of them.
    pub fn new(
        name: &str,
        cfg: &ModbusSinkConfig,
        devices: HashMap<String, Arc<DevicePoller>>,
    ) -> Result<Self, SinkError> {
        if let Some(d) = &cfg.device
            && !devices.contains_key(d)
        {
            return Err(SinkError::Config(format!(
                "device `{d}` is not a [modbus] device"
            )));
        }
        Ok(ModbusSink {
            name: name.into(),
            device: cfg.device.clone(),
            devices,
            events: VecDeque::from([SinkEvent::Ready]),
            retry_at: None,
            counters: Arc::default(),
            refused_log: RateLimited::new(LOG_EVERY),
        })
    }

    /// The sink's counters.
    pub fn counters(&self) -> &Arc<ModbusSinkCounters> {
        &self.counters
    }

    /// The device and the writes a result asks for.
    fn writes(&self, msg: &Message) -> Result<Writes, String> {
        let row: serde_json::Map<String, Json> = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("result is not a JSON object: {e}"))?;
        let device = write_target(self.device.as_deref(), &row, DEVICE_FIELD, "device")?;
        let poller = self
            .devices
            .get(&device)
            .ok_or_else(|| format!("no [modbus] device `{device}`"))?
            .clone();
        let mut writes = Vec::with_capacity(row.len());
        for (field, value) in row {
            // No tag is called `device`: the field names the device.
            if field == DEVICE_FIELD {
                continue;
            }
            let value = match value {
                Json::Null => continue,
                Json::Bool(b) => Value::Bool(b),
                Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => Value::U64(u),
                    (None, Some(i), _) => Value::I64(i),
                    (None, None, Some(f)) => Value::F64(f),
                    _ => return Err(format!("`{field}`: number {n} is out of range")),
                },
                Json::String(s) => Value::Str(s),
                other => {
                    return Err(format!("`{field}`: {other} is not a value a tag can take"));
                }
            };
            writes.push((field, value));
        }
        if writes.is_empty() {
            return Err("result has no value to write".into());
        }
        Ok((poller, writes))
    }

    fn log_refused(&mut self, rule: &str, reason: &str) {
        let Some(held) = self.refused_log.allow(1) else {
            return;
        };
        tracing::warn!(sink = %self.name, %rule, %reason, not_logged_before = held, "Modbus write refused");
    }
}

impl Sink for ModbusSink {
    fn max_in_flight(&self) -> usize {
        64
    }

    async fn send(&mut self, msgs: &[Message]) -> Result<(), SinkError> {
        let mut done = Vec::with_capacity(msgs.len());
        let mut refused = Vec::new();
        for msg in msgs {
            let result = match self.writes(msg) {
                Ok((poller, writes)) => poller.write_all(&writes).await.map_err(|e| match e {
                    ModbusError::WriteFailed {
                        quality: Quality::Exception(_),
                        ..
                    } => Failure::Exception(e.to_string()),
                    ModbusError::WriteFailed { .. } => Failure::Unreachable(e.to_string()),
                    other => Failure::Refused(other.to_string()),
                }),
                Err(reason) => Err(Failure::Refused(reason)),
            };
            match result {
                Ok(()) => {
                    self.counters.written.fetch_add(1, Ordering::Relaxed);
                    done.push(msg.seq);
                }
                Err(Failure::Refused(reason)) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    self.log_refused(&msg.rule, &reason);
                    refused.push(msg.seq);
                }
                Err(Failure::Exception(reason)) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    self.log_refused(&msg.rule, &reason);
                    refused.push(msg.seq);
                }
                Err(Failure::Unreachable(reason)) => {
                    // Kept in the queue; tried again after a pause, until `max_age`.
                    push_outcomes(&mut self.events, done, refused);
                    self.events.push_back(SinkEvent::Down(reason));
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

/// Why a result was not written.
enum Failure {
    /// The result cannot be written as it is; dropped.
    Refused(String),
    /// The device answered with an exception; dropped.
    Exception(String),
    /// No answer; kept and tried again.
    Unreachable(String),
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::modbus::ModbusConfig;

    /// A sink for device `plc` whose TCP port nothing listens on.
    fn sink(device: Option<&str>) -> ModbusSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let cfg: ModbusConfig = toml::from_str(&format!(
            r#"
            [[devices]]
            name = "plc"
            transport = {{ type = "tcp", host = "127.0.0.1", port = {port} }}
            timeout = "200ms"
            [[devices.groups]]
            name = "g"
            interval = "1s"
            tags = [
              {{ name = "pump", area = "coil", address = 0, writable = true }},
              {{ name = "speed", register = 40001, writable = true }},
              {{ name = "fixed", register = 40002 }},
            ]
            "#
        ))
        .unwrap();
        let p = Arc::new(DevicePoller::standalone(&cfg.devices[0]).unwrap());
        let cfg = ModbusSinkConfig {
            device: device.map(Into::into),
            max_age: Duration::from_secs(10),
        };
        ModbusSink::new("ctl", &cfg, HashMap::from([("plc".to_string(), p)])).unwrap()
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
    fn results_name_tags_and_the_device() {
        let s = sink(None);
        let (p, w) = s
            .writes(&msg(
                1,
                r#"{"device":"plc","pump":true,"speed":7,"x":null}"#,
            ))
            .unwrap();
        assert_eq!(p.name(), "plc");
        assert_eq!(
            w,
            [
                ("pump".into(), Value::Bool(true)),
                ("speed".into(), Value::U64(7))
            ]
        );
        for (body, why) in [
            (r#"{"pump":true}"#, "no `device`"),
            (
                r#"{"device":"other","pump":true}"#,
                "no [modbus] device `other`",
            ),
            (r#"{"device":"plc","x":null}"#, "no value"),
            (r#"{"device":"plc","pump":[1]}"#, "not a value"),
            ("[1,2]", "not a JSON object"),
        ] {
            let e = s.writes(&msg(1, body)).map(|_| ()).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
        let s = sink(Some("plc"));
        assert!(s.writes(&msg(1, r#"{"pump":false}"#)).is_ok());
        assert!(
            s.writes(&msg(1, r#"{"device":"plc","pump":false}"#))
                .is_ok()
        );
        let e = s
            .writes(&msg(1, r#"{"device":"plc2","pump":false}"#))
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("writes to `plc`"), "{e}");
        assert!(
            ModbusSink::new(
                "x",
                &ModbusSinkConfig {
                    device: Some("nope".into()),
                    max_age: Duration::from_secs(1)
                },
                HashMap::new()
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn refused_rows_are_dropped_and_unanswered_ones_kept() {
        let mut s = sink(Some("plc"));
        assert_eq!(s.next_event().await, SinkEvent::Ready);
        // Refused before anything is sent: confirmed (dropped) and counted.
        s.send(&[
            msg(1, r#"{"fixed":3}"#),
            msg(2, r#"{"speed":70000}"#),
            msg(3, r#"{"nope":1}"#),
        ])
        .await
        .unwrap();
        // Refused: deleted from the queue but not delivered.
        assert_eq!(s.next_event().await, SinkEvent::Refused(vec![1, 2, 3]));
        assert_eq!(s.counters().refused.load(Ordering::Relaxed), 3);
        // The device does not answer: the row stays queued, the sink goes down and
        // comes back after a pause to try again.
        s.send(&[msg(4, r#"{"pump":true}"#), msg(5, r#"{"pump":false}"#)])
            .await
            .unwrap();
        assert!(matches!(s.next_event().await, SinkEvent::Down(_)));
        let waited = Instant::now();
        // The uplink's `select!` may stop waiting before the retry is due: the retry
        // must still come.
        let early = tokio::time::timeout(RETRY_DELAY / 4, s.next_event()).await;
        assert!(early.is_err(), "{early:?}");
        let ready = tokio::time::timeout(RETRY_DELAY * 3, s.next_event()).await;
        assert_eq!(ready.ok(), Some(SinkEvent::Ready));
        assert!(waited.elapsed() >= RETRY_DELAY / 2);
        assert_eq!(s.counters().written.load(Ordering::Relaxed), 0);
    }
}
