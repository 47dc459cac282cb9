//! `/metrics`: every counter of the running gateway in the Prometheus text format, read
//! at scrape time from the parts that keep them (nothing is copied in between).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fieldgate_connectors::codec::RejectReason;
use fieldgate_connectors::modbus::DevicePoller;
use fieldgate_rules::LatencySnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::ops::{Ops, Running, SinkExtra};
use crate::broker::{ProtocolError, Refusal};
use crate::journal::COMMIT_BUCKETS;

/// Label pairs of one sample.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// The Prometheus text of everything `ops` can see.
pub fn render(ops: Arc<Ops>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(OpsCollector(ops)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct OpsCollector(Arc<Ops>);

impl Collector for OpsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "fieldgate_build_info",
            "The running build: 1, with its version as a label.",
            [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        gauge(
            &mut e,
            "fieldgate_ready",
            "1 once the broker listens, the rules are loaded and the queues are open.",
            [(vec![], i64::from(self.0.is_ready()))],
        )?;
        process(&mut e)?;
        counter(
            &mut e,
            "fieldgate_log_lines_suppressed_total",
            "Log lines of the libraries under the gateway (broker, HTTP) cut by the log's rate limit.",
            [(vec![], crate::logging::suppressed())],
        )?;
        if let Some(r) = self.0.running.get() {
            ingest(&mut e, r)?;
            rules(&mut e, r)?;
            sinks(&mut e, r)?;
            modbus(&mut e, r)?;
            opcua(&mut e, r)?;
        }
        Ok(())
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter<'a, V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
{
    // The encoder appends `_total` to counters.
    let base = name.strip_suffix("_total").unwrap_or(name);
    let mut m = e.encode_descriptor(base, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<'a, V>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram from cumulative `(upper bound, count)` pairs, a count and a sum.
fn histogram<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, f64, u64, Vec<(f64, u64)>)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sum, count, cumulative) in samples {
        // The encoder takes counts per bucket and adds them up itself.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = cumulative
            .into_iter()
            .map(|(bound, c)| {
                let here = c.saturating_sub(previous);
                previous = c;
                (bound, here)
            })
            .collect();
        m.encode_family(&labels)?
            .encode_histogram::<Labels>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn latency_seconds(s: &LatencySnapshot) -> (f64, u64, Vec<(f64, u64)>) {
    let buckets = s
        .cumulative
        .iter()
        .map(|(us, c)| (*us as f64 / 1e6, *c))
        .collect();
    (s.sum_ns as f64 / 1e9, s.count, buckets)
}

fn ingest(e: &mut DescriptorEncoder, r: &Running) -> Result<(), std::fmt::Error> {
    counter(
        e,
        "fieldgate_mqtt_messages_received_total",
        "Messages the embedded broker forwarded to the gateway's streams.",
        [(vec![], load(&r.mqtt.messages))],
    )?;
    counter(
        e,
        "fieldgate_mqtt_messages_unrouted_total",
        "Messages whose topic matched no stream.",
        [(vec![], load(&r.mqtt.unrouted))],
    )?;
    gauge(
        e,
        "fieldgate_broker_connections",
        "MQTT connections open on the embedded broker.",
        [(vec![], r.broker.connections.load(Ordering::Relaxed))],
    )?;
    counter(
        e,
        "fieldgate_broker_connections_accepted_total",
        "MQTT connections the embedded broker accepted (CONNACK success).",
        [(vec![], load(&r.broker.accepted))],
    )?;
    counter(
        e,
        "fieldgate_broker_refused_total",
        "Connections, subscriptions and publishes the embedded broker refused, by reason.",
        Refusal::ALL
            .iter()
            .map(|v| (vec![("reason", v.as_str())], r.broker.refusals(*v))),
    )?;
    counter(
        e,
        "fieldgate_broker_protocol_errors_total",
        "Device connections the embedded broker closed for a protocol error, by reason.",
        ProtocolError::ALL.iter().map(|v| {
            (
                vec![("reason", v.as_str())],
                crate::broker::protocol_errors_count(*v),
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_broker_access_reloads_total",
        "Reloads of the broker's password and ACL files, by result.",
        [
            (vec![("result", "ok")], load(&r.broker.access_reloads)),
            (
                vec![("result", "error")],
                load(&r.broker.access_reload_errors),
            ),
        ],
    )?;
    let j = &r.journal;
    gauge(
        e,
        "fieldgate_journal_bytes",
        "Bytes of accepted messages in the ingest journal not yet processed.",
        [(vec![], load(&j.bytes))],
    )?;
    gauge(
        e,
        "fieldgate_journal_entries",
        "Accepted messages in the ingest journal not yet processed.",
        [(vec![], load(&j.entries))],
    )?;
    counter(
        e,
        "fieldgate_journal_appended_total",
        "Messages appended to the ingest journal.",
        [(vec![], load(&j.appended))],
    )?;
    counter(
        e,
        "fieldgate_journal_recovered_total",
        "Messages read back from the journal at start, to be processed again.",
        [(vec![], load(&j.recovered))],
    )?;
    counter(
        e,
        "fieldgate_journal_write_errors_total",
        "Journal writes or syncs that failed (each retried; devices wait meanwhile).",
        [(vec![], load(&j.write_errors))],
    )?;
    histogram(
        e,
        "fieldgate_journal_commit_seconds",
        "Time of one journal commit (write and fdatasync), shared by the appends it holds.",
        [(
            vec![],
            load(&j.commit_nanos) as f64 / 1e9,
            load(&j.commits),
            COMMIT_BUCKETS
                .iter()
                .zip(&j.commit_buckets)
                .map(|(b, c)| (*b, load(c)))
                .collect(),
        )],
    )?;
    counter(
        e,
        "fieldgate_journal_waits_total",
        "Publishes that waited for room in a full journal (their devices held back).",
        [(vec![], load(&j.waits))],
    )?;
    counter(
        e,
        "fieldgate_journal_wait_seconds_total",
        "Time publishes spent waiting for room in the journal.",
        [(vec![], load(&j.wait_nanos) as f64 / 1e9)],
    )?;
    let view = r.rules.read().map_err(|_| std::fmt::Error)?;
    counter(
        e,
        "fieldgate_stream_rows_total",
        "Rows decoded (MQTT) or received (Modbus) per stream.",
        view.streams
            .iter()
            .map(|s| (vec![("stream", s.name.as_str())], load(&s.counters.rows))),
    )?;
    counter(
        e,
        "fieldgate_stream_bytes_in_total",
        "Bytes of the payloads a stream decoded (MQTT streams); with \
         fieldgate_sink_delivered_bytes_total, what the rules saved on the uplink.",
        view.streams.iter().map(|s| {
            (
                vec![("stream", s.name.as_str())],
                load(&s.counters.bytes_in),
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_stream_decode_errors_total",
        "Payloads that did not fit the stream's columns or its input limits.",
        view.streams.iter().map(|s| {
            (
                vec![("stream", s.name.as_str())],
                load(&s.counters.decode_errors),
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_stream_payloads_rejected_total",
        "Payloads refused, by reason: empty, not_utf8, too_large, too_deep, \
         string_too_long, array_too_long, malformed, wrong_type.",
        view.streams.iter().flat_map(|s| {
            RejectReason::ALL.iter().map(|r| {
                (
                    vec![("stream", s.name.as_str()), ("reason", r.as_str())],
                    load(&s.counters.rejected[r.index()]),
                )
            })
        }),
    )?;
    counter(
        e,
        "fieldgate_stream_queue_waits_total",
        "Times a stream's results waited for a queue that could not make them durable \
         yet (a full or failing disk); ingest waits meanwhile.",
        view.streams.iter().map(|s| {
            (
                vec![("stream", s.name.as_str())],
                load(&s.counters.queue_waits),
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_stream_results_lost_total",
        "Result rows a stream could not queue at all (a queue error, or a disk still \
         failing when the gateway stopped).",
        view.streams.iter().map(|s| {
            (
                vec![("stream", s.name.as_str())],
                load(&s.counters.queue_errors),
            )
        }),
    )?;
    Ok(())
}

fn rules(e: &mut DescriptorEncoder, r: &Running) -> Result<(), std::fmt::Error> {
    let view = r.rules.read().map_err(|_| std::fmt::Error)?;
    let each = |f: &dyn Fn(&fieldgate_rules::RuleCounters) -> u64| {
        view.rules
            .iter()
            .map(|rule| {
                (
                    vec![
                        ("rule", rule.name.as_str()),
                        ("stream", rule.stream.as_str()),
                    ],
                    f(&rule.counters),
                )
            })
            .collect::<Vec<_>>()
    };
    counter(
        e,
        "fieldgate_rule_records_in_total",
        "Rows offered to the rule.",
        each(&|c| load(&c.records_in)),
    )?;
    counter(
        e,
        "fieldgate_rule_records_out_total",
        "Result rows the rule produced.",
        each(&|c| load(&c.records_out)),
    )?;
    counter(
        e,
        "fieldgate_rule_late_records_total",
        "Rows that arrived after their window was complete.",
        each(&|c| load(&c.late)),
    )?;
    counter(
        e,
        "fieldgate_rule_errors_total",
        "Rows without an event time and failed executions.",
        each(&|c| load(&c.errors)),
    )?;
    counter(
        e,
        "fieldgate_rule_failed_rows_total",
        "Rows the rule failed on (left out of its results; sent to its ERRORS INTO sink \
         if it has one). Also counted in fieldgate_rule_errors_total.",
        each(&|c| load(&c.failed_rows)),
    )?;
    gauge(
        e,
        "fieldgate_rule_analytic_keys",
        "Partition keys the rule's analytic functions (lag, changed_col, deadband, ...) \
         hold state for.",
        view.rules.iter().map(|rule| {
            (
                vec![
                    ("rule", rule.name.as_str()),
                    ("stream", rule.stream.as_str()),
                ],
                load(&rule.counters.analytic_keys) as i64,
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_rule_analytic_keys_forgotten_total",
        "Partition keys of analytic functions forgotten: idle for 24 hours, or past \
         100,000 keys per call (the least recently seen).",
        each(&|c| load(&c.keys_forgotten)),
    )?;
    gauge(
        e,
        "fieldgate_rule_running",
        "1 while the rule runs; 0 when stopped through the API or failed.",
        view.rules.iter().map(|rule| {
            (
                vec![
                    ("rule", rule.name.as_str()),
                    ("stream", rule.stream.as_str()),
                ],
                i64::from(rule.status() == "running"),
            )
        }),
    )?;
    histogram(
        e,
        "fieldgate_rule_batch_duration_seconds",
        "Time the rule took per micro-batch.",
        view.rules.iter().map(|rule| {
            let (sum, count, buckets) = latency_seconds(&rule.counters.latency.snapshot());
            (
                vec![
                    ("rule", rule.name.as_str()),
                    ("stream", rule.stream.as_str()),
                ],
                sum,
                count,
                buckets,
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_rules_reloads_total",
        "Rule reloads, by whether they found errors in the rule files.",
        [
            (vec![("result", "ok")], load(&r.reloads.succeeded)),
            (vec![("result", "error")], load(&r.reloads.failed)),
        ],
    )?;
    Ok(())
}

fn sinks(e: &mut DescriptorEncoder, r: &Running) -> Result<(), std::fmt::Error> {
    fn sink(s: &super::ops::SinkView) -> Labels<'_> {
        vec![("sink", s.name.as_str())]
    }
    let stats: Vec<_> = r.sinks.iter().map(|s| s.queue.stats().clone()).collect();
    gauge(
        e,
        "fieldgate_queue_entries",
        "Results waiting in the sink's durable queue.",
        r.sinks
            .iter()
            .zip(&stats)
            .map(|(s, st)| (sink(s), load(&st.entries) as i64)),
    )?;
    gauge(
        e,
        "fieldgate_queue_bytes",
        "Bytes of the results waiting in the queue.",
        r.sinks
            .iter()
            .zip(&stats)
            .map(|(s, st)| (sink(s), load(&st.bytes) as i64)),
    )?;
    gauge(
        e,
        "fieldgate_queue_file_bytes",
        "Size of the queue's file on disk.",
        r.sinks
            .iter()
            .map(|s| (sink(s), s.queue.file_bytes() as i64)),
    )?;
    gauge(
        e,
        "fieldgate_queue_oldest_age_seconds",
        "Age of the oldest result waiting in the queue; 0 when empty.",
        r.sinks.iter().map(|s| {
            let age = s.queue.oldest_age().ok().flatten().unwrap_or_default();
            (sink(s), age.as_secs_f64())
        }),
    )?;
    counter(
        e,
        "fieldgate_queue_dropped_total",
        "Results the queue dropped or refused, by reason.",
        r.sinks.iter().zip(&stats).flat_map(|(s, st)| {
            [
                ("oldest", load(&st.dropped_oldest)),
                ("rejected", load(&st.rejected)),
                ("expired", load(&st.expired)),
            ]
            .map(|(reason, v)| (vec![("sink", s.name.as_str()), ("reason", reason)], v))
        }),
    )?;
    counter(
        e,
        "fieldgate_queue_storage_errors_total",
        "Operations of the queue's store that failed on the disk (full, I/O error).",
        r.sinks
            .iter()
            .zip(&stats)
            .map(|(s, st)| (sink(s), load(&st.storage_errors))),
    )?;
    gauge(
        e,
        "fieldgate_queue_writable",
        "1 while the queue can make new results durable; 0 while its store failed or \
         its disk is down to the reserve (queue.min_free_bytes).",
        r.sinks
            .iter()
            .zip(&stats)
            .map(|(s, st)| (sink(s), i64::from(st.writable.load(Ordering::Relaxed)))),
    )?;
    gauge(
        e,
        "fieldgate_queue_disk_free_bytes",
        "Free bytes of the file system holding the queue, as last seen by its writer.",
        r.sinks
            .iter()
            .zip(&stats)
            .map(|(s, st)| (sink(s), load(&st.disk_free) as i64)),
    )?;
    counter(
        e,
        "fieldgate_sink_delivered_total",
        "Results the sink's destination confirmed.",
        r.sinks.iter().map(|s| (sink(s), load(&s.uplink.delivered))),
    )?;
    counter(
        e,
        "fieldgate_sink_delivered_bytes_total",
        "Bytes of the results the sink's destination confirmed (their encoded payloads).",
        r.sinks
            .iter()
            .map(|s| (sink(s), load(&s.uplink.delivered_bytes))),
    )?;
    counter(
        e,
        "fieldgate_sink_retries_total",
        "Failed sends and lost connections, each followed by a retry.",
        r.sinks.iter().map(|s| (sink(s), load(&s.uplink.retries))),
    )?;
    gauge(
        e,
        "fieldgate_sink_up",
        "1 while the sink's destination is reachable.",
        r.sinks
            .iter()
            .map(|s| (sink(s), i64::from(s.uplink.up.load(Ordering::Relaxed)))),
    )?;
    counter(
        e,
        "fieldgate_sink_dropped_total",
        "Results a sink gave up on, by reason: refused by an HTTP receiver (dead_letter), \
         not writable to a Modbus or OPC UA device (refused), answered with a device \
         exception (device_exception), or larger than the NATS servers take (too_large). \
         Every sink has every reason, at 0 where its kind never drops.",
        r.sinks.iter().flat_map(|s| {
            let (mut dead_letter, mut refused, mut exception, mut too_large) = (0, 0, 0, 0);
            match &s.extra {
                SinkExtra::None => {}
                SinkExtra::Http(h) => dead_letter = load(&h.dead_lettered),
                SinkExtra::Modbus(m) => {
                    refused = load(&m.refused);
                    exception = load(&m.failed);
                }
                SinkExtra::Opcua(o) => {
                    refused = load(&o.refused);
                    exception = load(&o.failed);
                }
                SinkExtra::Nats(n) => too_large = load(&n.too_large),
            }
            [
                ("dead_letter", dead_letter),
                ("refused", refused),
                ("device_exception", exception),
                ("too_large", too_large),
            ]
            .map(|(reason, v)| (vec![("sink", s.name.as_str()), ("reason", reason)], v))
        }),
    )?;
    counter(
        e,
        "fieldgate_sink_duplicates_total",
        "Results the destination already held when they were sent again (NATS JetStream's \
         duplicate detection): resends after an outage or a restart, stored once. 0 for \
         kinds that do not report duplicates.",
        r.sinks.iter().map(|s| {
            let v = match &s.extra {
                SinkExtra::Nats(n) => load(&n.duplicates),
                _ => 0,
            };
            (vec![("sink", s.name.as_str())], v)
        }),
    )?;
    Ok(())
}

fn modbus(e: &mut DescriptorEncoder, r: &Running) -> Result<(), std::fmt::Error> {
    counter(
        e,
        "fieldgate_modbus_rows_total",
        "Poll rows from all Modbus devices.",
        [(vec![], load(&r.modbus.rows))],
    )?;
    fn dev(p: &DevicePoller) -> Labels<'_> {
        vec![("device", p.name())]
    }
    counter(
        e,
        "fieldgate_modbus_polls_total",
        "Poll cycles, one row each.",
        r.devices
            .iter()
            .map(|p| (dev(p), load(&p.counters().polls))),
    )?;
    counter(
        e,
        "fieldgate_modbus_requests_total",
        "Requests sent, retries included.",
        r.devices
            .iter()
            .map(|p| (dev(p), load(&p.counters().requests))),
    )?;
    counter(
        e,
        "fieldgate_modbus_errors_total",
        "Failed requests by kind.",
        r.devices.iter().flat_map(|p| {
            let c = p.counters();
            [
                ("timeout", load(&c.errors_timeout)),
                ("exception", load(&c.errors_exception)),
                ("bad_frame", load(&c.errors_frame)),
                ("io", load(&c.errors_io)),
            ]
            .map(|(kind, v)| (vec![("device", p.name()), ("kind", kind)], v))
        }),
    )?;
    histogram(
        e,
        "fieldgate_modbus_request_duration_seconds",
        "Round trips of answered requests.",
        r.devices.iter().map(|p| {
            let c = p.counters();
            let count = load(&c.latency_count);
            (dev(p), load(&c.latency_us_sum) as f64 / 1e6, count, vec![])
        }),
    )?;
    counter(
        e,
        "fieldgate_modbus_writes_total",
        "Tags written.",
        r.devices
            .iter()
            .map(|p| (dev(p), load(&p.counters().writes))),
    )?;
    counter(
        e,
        "fieldgate_modbus_write_errors_total",
        "Tag writes refused or failed.",
        r.devices
            .iter()
            .map(|p| (dev(p), load(&p.counters().write_errors))),
    )?;
    counter(
        e,
        "fieldgate_modbus_polls_skipped_total",
        "Polls not sent: the device answered none of its last polls and is probed at the \
         reconnect backoff (its rows say `offline`).",
        r.devices
            .iter()
            .map(|p| (dev(p), load(&p.counters().skipped_polls))),
    )?;
    gauge(
        e,
        "fieldgate_modbus_device_degraded",
        "1 while the device has failed its last poll cycles.",
        r.devices
            .iter()
            .map(|p| (dev(p), i64::from(p.is_degraded()))),
    )?;
    Ok(())
}

fn opcua(e: &mut DescriptorEncoder, r: &Running) -> Result<(), std::fmt::Error> {
    use fieldgate_connectors::opcua::ServerCounters;
    counter(
        e,
        "fieldgate_opcua_rows_total",
        "Rows from all OPC UA node groups.",
        [(vec![], load(&r.opcua.rows))],
    )?;
    let per_server = |f: fn(&ServerCounters) -> &AtomicU64| {
        r.opcua_servers
            .iter()
            .map(move |s| (vec![("server", s.name())], load(f(s.counters()))))
    };
    gauge(
        e,
        "fieldgate_opcua_server_connected",
        "1 while a session with the server is up.",
        r.opcua_servers.iter().map(|s| {
            (
                vec![("server", s.name())],
                i64::from(s.counters().connected.load(Ordering::Relaxed)),
            )
        }),
    )?;
    counter(
        e,
        "fieldgate_opcua_connects_total",
        "Sessions established: the first and every reconnect.",
        per_server(|c| &c.connects),
    )?;
    counter(
        e,
        "fieldgate_opcua_connect_failures_total",
        "Failed attempts to connect or reconnect.",
        per_server(|c| &c.connect_failures),
    )?;
    counter(
        e,
        "fieldgate_opcua_connection_lost_total",
        "Sessions lost: keepalive failed, connection closed, server gone.",
        per_server(|c| &c.connection_lost),
    )?;
    counter(
        e,
        "fieldgate_opcua_untrusted_total",
        "Connection attempts refused because the server's certificate is not trusted.",
        per_server(|c| &c.untrusted),
    )?;
    counter(
        e,
        "fieldgate_opcua_values_total",
        "Values received: data changes and polled values.",
        per_server(|c| &c.values),
    )?;
    counter(
        e,
        "fieldgate_opcua_type_errors_total",
        "Values not of their node's configured type (read as null, BadTypeMismatch).",
        per_server(|c| &c.type_errors),
    )?;
    counter(
        e,
        "fieldgate_opcua_node_errors_total",
        "Nodes the server refused to monitor or read (unknown id, no access).",
        per_server(|c| &c.node_errors),
    )?;
    counter(
        e,
        "fieldgate_opcua_read_failures_total",
        "Reads of polled groups that failed as a whole.",
        per_server(|c| &c.read_failures),
    )?;
    Ok(())
}

/// The process's resident memory and CPU time, from `/proc/self` (Linux).
fn process(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    // Linux's usual page size and clock tick (USER_HZ).
    let page = 4096.0;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|pages| pages * page);
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start at `)`.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        });
    if let Some(rss) = rss {
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            [(vec![], rss)],
        )?;
    }
    if let Some(cpu) = cpu {
        counter(
            e,
            "process_cpu_seconds_total",
            "User and system CPU time spent in seconds.",
            [(vec![], cpu)],
        )?;
    }
    Ok(())
}
