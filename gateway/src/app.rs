//! Wiring: starts the queues and uplinks, the rules, the broker and its ingest, the
//! Modbus pollers, and the admin endpoint; reloads the rules on file changes and SIGHUP; on SIGINT/SIGTERM
//! stops them in data-flow order so that everything accepted is durable before the
//! process exits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use fieldgate_connectors::codec::MessageIds;
use fieldgate_connectors::file::FileSink;
use fieldgate_connectors::http::HttpSink;
use fieldgate_connectors::modbus::ModbusSink;
use fieldgate_connectors::modbus::{DevicePoller, pollers};
use fieldgate_connectors::mqtt::MqttSink;
use fieldgate_connectors::nats::NatsSink;
use fieldgate_connectors::opcua::{OpcuaServer, OpcuaSink};
use fieldgate_connectors::republish::{Publish, RepublishSink};
use fieldgate_connectors::sink::Sink;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::ops::{Running, SinkExtra, SinkView};
use crate::admin::{self, Ops};
use crate::config::{Config, SinkConfig};
use crate::ingest::modbus::{self, ModbusIngestCounters, Republish};
use crate::ingest::mqtt::{self, IngestCounters};
use crate::ingest::opcua::{self, OpcuaIngestCounters};
use crate::journal::{Journal, JournalOptions};
use crate::live::stream_task::StreamContext;
use crate::live::{LiveRules, Triggers};
use crate::queue::{Queue, QueueOptions};
use crate::uplink::UplinkCounters;
use crate::{broker, uplink};

/// What an uplink worker needs besides its sink.
struct Uplink {
    name: String,
    queue: Queue,
    counters: Arc<UplinkCounters>,
    stop: watch::Receiver<bool>,
    drain: Duration,
}

impl Uplink {
    fn spawn<S: Sink + 'static>(self, sink: S) -> JoinHandle<()> {
        tokio::spawn(uplink::run(
            self.name,
            sink,
            self.queue,
            self.counters,
            self.stop,
            self.drain,
        ))
    }
}

/// Starts one sink and its uplink worker; returns the worker, the sink's kind and its
/// own counters.
fn start_sink(
    cfg: &Config,
    sink_cfg: &SinkConfig,
    ids: MessageIds,
    up: Uplink,
    broker: &broker::Broker,
    devices: &HashMap<String, Arc<DevicePoller>>,
    servers: &HashMap<String, Arc<OpcuaServer>>,
) -> anyhow::Result<(JoinHandle<()>, &'static str, SinkExtra)> {
    let name = up.name.clone();
    Ok(match sink_cfg {
        SinkConfig::Mqtt(m) => {
            let sink = MqttSink::start(&name, &cfg.gateway_id, m, ids).context("TLS")?;
            (up.spawn(sink), "mqtt", SinkExtra::None)
        }
        SinkConfig::Http(h) => {
            let sink = HttpSink::new(&name, h, ids)?;
            let counters = sink.counters();
            (up.spawn(sink), "http", SinkExtra::Http(counters))
        }
        SinkConfig::Nats(n) => {
            let sink = NatsSink::start(&name, &cfg.gateway_id, n, ids)?;
            let counters = sink.counters().clone();
            (up.spawn(sink), "nats", SinkExtra::Nats(counters))
        }
        SinkConfig::File(f) => (up.spawn(FileSink::new(f, ids)), "file", SinkExtra::None),
        SinkConfig::Modbus(m) => {
            let sink = ModbusSink::new(&name, m, devices.clone())?;
            let counters = sink.counters().clone();
            (up.spawn(sink), "modbus", SinkExtra::Modbus(counters))
        }
        SinkConfig::Opcua(o) => {
            let sink = OpcuaSink::new(&name, o, servers.clone())?;
            let counters = sink.counters().clone();
            (up.spawn(sink), "opcua", SinkExtra::Opcua(counters))
        }
        SinkConfig::Republish(r) => {
            let link = Arc::new(broker.publisher(&format!("fieldgate-sink-{name}")));
            let publish: Publish = Box::new(move |batch| {
                let link = link.clone();
                Box::pin(async move { link.publish(batch).await })
            });
            let sink = RepublishSink::new(r, &cfg.gateway_id, ids, publish);
            (up.spawn(sink), "republish", SinkExtra::None)
        }
    })
}

/// Descriptors the gateway needs besides device and admin connections: queues, log,
/// rule files, sinks' connections, Modbus devices.
const OTHER_FILES: u64 = 256;

/// Raises the open-files limit to its hard limit (systemd's default soft limit is 1024)
/// and warns when the configured connections may still not fit: a broker out of
/// descriptors cannot accept devices.
pub fn raise_open_files_limit(cfg: &Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = match (limit.current, limit.maximum) {
        (Some(cur), max) if max.is_none_or(|m| m > cur) => {
            let want = Rlimit {
                current: max,
                maximum: max,
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => max,
                Err(_) => Some(cur),
            }
        }
        (cur, _) => cur,
    };
    let Some(open_files) = raised else { return };
    let needed = cfg.broker.max_connections as u64 + cfg.admin.max_connections as u64 + OTHER_FILES;
    if needed > open_files {
        tracing::warn!(
            open_files,
            broker_max_connections = cfg.broker.max_connections,
            admin_max_connections = cfg.admin.max_connections,
            "the process may open fewer files than the configured connections need: \
             lower `broker.max_connections` or raise the limit (LimitNOFILE, ulimit -n)"
        );
    }
}

/// Runs the gateway until a termination signal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // What cannot run is refused now, naming its key, rather than failing later.
    cfg.check_host()?;
    broker::check_files(&cfg.broker)?;
    let ops = Arc::new(Ops::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Admin first, so probes answer (not ready) while the rest starts; a port in use
    // stops the start here.
    let token = cfg.admin.resolve_token()?;
    let admin_listener = admin::bind(cfg.admin.listen)?;
    let admin_task = {
        let policy = admin::Policy {
            listen: cfg.admin.listen,
            allowed_hosts: cfg.admin.allowed_hosts.clone(),
            token,
        };
        let ops = ops.clone();
        let stop = stop_rx.clone();
        let max = cfg.admin.max_connections;
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin_listener, ops, policy, max, stop).await {
                tracing::error!(error = %e, "admin HTTP stopped");
            }
        })
    };

    if !cfg.rules_dir.is_dir() {
        bail!("rules directory {} does not exist", cfg.rules_dir.display());
    }

    // The ingest journal, then the broker that writes it (its listeners open last):
    // republish sinks publish into it.
    let (journal, journaled) = Journal::open(
        &cfg.data_dir.join("journal"),
        JournalOptions {
            max_bytes: cfg.journal.max_bytes,
            segment_bytes: cfg.journal.segment_bytes,
            max_payload: cfg.broker.max_payload_size,
        },
    )
    .context("ingest journal")?;
    let mut broker = broker::start(&cfg.broker, journal.clone(), &cfg.data_dir).await?;

    // Modbus pollers, before the sinks: Modbus sinks write through them.
    let pollers: Vec<Arc<DevicePoller>> = pollers(&cfg.modbus.source())
        .context("Modbus devices")?
        .into_iter()
        .map(Arc::new)
        .collect();
    let devices: HashMap<String, Arc<DevicePoller>> = pollers
        .iter()
        .map(|p| (p.name().to_string(), p.clone()))
        .collect();
    // OPC UA servers, before the sinks too: OPC UA sinks write through their sessions.
    let opcua_servers =
        fieldgate_connectors::opcua::servers(&cfg.opcua, &cfg.data_dir, &cfg.gateway_id)
            .context("OPC UA application certificate")?;
    let servers_by_name: HashMap<String, Arc<OpcuaServer>> = opcua_servers
        .iter()
        .map(|s| (s.name().to_string(), s.clone()))
        .collect();

    // Queues and their uplinks.
    let queue_dir = cfg.data_dir.join("queue");
    let mut queues = HashMap::new();
    let mut uplinks: Vec<JoinHandle<()>> = Vec::new();
    let mut sink_views = Vec::new();
    for (name, sink_cfg) in &cfg.sinks {
        let mut opts = cfg.queue.options(name);
        let max_age = match sink_cfg {
            SinkConfig::Modbus(m) => Some(m.max_age),
            SinkConfig::Opcua(o) => Some(o.max_age),
            _ => None,
        };
        if let Some(max_age) = max_age {
            // A write waits at most `max_age` for its device.
            let ttl = &mut opts.limits.ttl;
            *ttl = Some(ttl.map_or(max_age, |t| t.min(max_age)));
        }
        let path = queue_dir.join(format!("{name}.redb"));
        let q = Queue::open(name, &path, opts)
            .with_context(|| format!("cannot open queue {}", path.display()))?;
        warn_if_larger_than_disk(name, &queue_dir, &q, &opts);
        let depth = q.depth().unwrap_or(0);
        if depth > 0 {
            let oldest = q.oldest_age().ok().flatten().unwrap_or_default();
            tracing::info!(
                sink = %name,
                queued = depth,
                oldest_s = oldest.as_secs(),
                "resuming delivery of queued results"
            );
        }
        let ids = MessageIds::new(&cfg.gateway_id, name, q.epoch()?);
        let counters = Arc::new(UplinkCounters::default());
        let link = Uplink {
            name: name.clone(),
            queue: q.clone(),
            counters: counters.clone(),
            stop: stop_rx.clone(),
            drain: cfg.queue.drain_timeout,
        };
        let (task, kind, extra) = start_sink(
            &cfg,
            sink_cfg,
            ids,
            link,
            &broker,
            &devices,
            &servers_by_name,
        )
        .with_context(|| format!("sink `{name}`"))?;
        sink_views.push(SinkView {
            name: name.clone(),
            kind,
            queue: q.clone(),
            uplink: counters,
            extra,
        });
        uplinks.push(task);
        queues.insert(name.clone(), q);
    }
    let queues = Arc::new(queues);

    // Rules, one task per stream: a broken rule is reported and left out; the others
    // run. Watching for changes starts before loading, so none is missed.
    let (triggers, reload_requests) = Triggers::start(&cfg.rules_dir)?;
    let stream_ctx = StreamContext {
        batch_rows: cfg.ingest.batch_rows,
        limits: cfg.input_limits(),
        queues: queues.clone(),
        stop: stop_rx.clone(),
        give_up_at: Arc::default(),
    };
    let rules = LiveRules::start(
        &cfg.rules_dir,
        cfg.sinks.keys().cloned().collect(),
        crate::ingest::SourceGroups {
            modbus: fieldgate_connectors::modbus::groups(&pollers),
            opcua: fieldgate_connectors::opcua::groups(&cfg.opcua),
        },
        stream_ctx,
    )
    .await?;
    let routes = rules.routes();
    let reload_counters = rules.counters.clone();
    let rules_view = rules.view.clone();
    let reload_task = tokio::spawn(triggers.run(rules, stop_rx.clone()));
    tokio::spawn(crate::heap::run(crate::heap::TRIM_PERIOD, stop_rx.clone()));

    let ingest_counters = Arc::new(IngestCounters::default());
    let modbus_counters = Arc::new(ModbusIngestCounters::default());
    let modbus_task = if pollers.is_empty() {
        None
    } else {
        let republish = match cfg.modbus.republish {
            true => Some(Republish {
                topic: cfg.modbus.republish_topic.clone(),
                link: broker.publisher("fieldgate-modbus"),
            }),
            false => None,
        };
        tracing::info!(devices = pollers.len(), "Modbus polling started");
        Some(tokio::spawn(modbus::run(
            pollers.clone(),
            routes.clone(),
            republish,
            modbus_counters.clone(),
            stop_rx.clone(),
        )))
    };
    let opcua_counters = Arc::new(OpcuaIngestCounters::default());
    let opcua_task = if opcua_servers.is_empty() {
        None
    } else {
        tracing::info!(servers = opcua_servers.len(), "OPC UA started");
        Some(tokio::spawn(opcua::run(
            opcua_servers.clone(),
            routes.clone(),
            opcua_counters.clone(),
            stop_rx.clone(),
        )))
    };
    // Ingest reads the journal (what was not processed before the last stop comes first)
    // before devices can connect.
    let ingest_task = tokio::spawn(mqtt::run(
        journaled,
        journal.holds().clone(),
        routes,
        cfg.ingest.batch_rows,
        cfg.ingest.batch_delay,
        ingest_counters.clone(),
        stop_rx.clone(),
    ));
    broker.listen();
    let _ = ops.running.set(Running {
        gateway_id: cfg.gateway_id.clone(),
        broker: broker.counters.clone(),
        broker_health: broker.health.clone(),
        journal: journal.stats().clone(),
        journal_handle: journal.clone(),
        mqtt: ingest_counters.clone(),
        modbus: modbus_counters.clone(),
        // In configuration order, as the operator wrote them.
        devices: pollers,
        opcua: opcua_counters.clone(),
        opcua_servers,
        sinks: sink_views,
        rules: rules_view,
        reloads: reload_counters.clone(),
        reload: reload_requests,
    });
    ops.ready.store(true, Ordering::Relaxed);
    tracing::info!(gateway = %cfg.gateway_id, "fieldgate running");

    wait_for_signal().await?;
    tracing::info!("shutting down: stopping ingest");
    ops.ready.store(false, Ordering::Relaxed);
    broker.stop();
    let _ = stop_tx.send(true);
    let _ = ingest_task.await;
    if let Some(t) = modbus_task {
        let _ = t.await;
    }
    if let Some(t) = opcua_task {
        let _ = t.await;
    }
    match reload_task.await {
        Ok(rules) => rules.shutdown().await,
        Err(e) => tracing::error!(error = %e, "rules reload task failed"),
    }
    // Every batch is processed: the journal records how far, for the next start.
    journal.close().await;
    tracing::info!("ingest stopped; delivering what is queued");
    for u in uplinks {
        let _ = u.await;
    }
    match Arc::try_unwrap(queues) {
        Ok(qs) => {
            for (name, q) in qs {
                let st = q.stats().clone();
                let file_bytes = q.file_bytes();
                q.close().await;
                tracing::info!(
                    sink = %name,
                    queued = st.entries.load(Ordering::Relaxed),
                    bytes = st.bytes.load(Ordering::Relaxed),
                    file_bytes,
                    dropped_oldest = st.dropped_oldest.load(Ordering::Relaxed),
                    rejected = st.rejected.load(Ordering::Relaxed),
                    expired = st.expired.load(Ordering::Relaxed),
                    "queue closed"
                );
            }
        }
        Err(_) => tracing::warn!("queues still in use at shutdown"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!(
        messages = ingest_counters.messages.load(Ordering::Relaxed),
        modbus_rows = modbus_counters.rows.load(Ordering::Relaxed),
        reloads = reload_counters.succeeded.load(Ordering::Relaxed),
        failed_reloads = reload_counters.failed.load(Ordering::Relaxed),
        "fieldgate stopped"
    );
    Ok(())
}

/// A queue allowed more than its disk can give is a warning: the disk reserve, not
/// `max_bytes`, will be the limit it meets.
fn warn_if_larger_than_disk(name: &str, dir: &std::path::Path, q: &Queue, opts: &QueueOptions) {
    let (Some(max), Some(free)) = (opts.limits.max_bytes, crate::queue::free_bytes(dir)) else {
        return;
    };
    let reserve = opts
        .min_free_bytes
        .unwrap_or_else(|| crate::queue::default_reserve(dir));
    if free < reserve {
        tracing::warn!(
            sink = %name,
            free_bytes = free,
            min_free_bytes = reserve,
            "the queue's disk is already below its reserve: the queue takes no more results \
             until space is freed (or `queue.min_free_bytes` is lowered)"
        );
        return;
    }
    let room = free.saturating_sub(reserve);
    let held = q.held_bytes().unwrap_or(0);
    if max > held + room {
        tracing::warn!(
            sink = %name,
            max_bytes = max,
            free_bytes = free,
            min_free_bytes = reserve,
            "the queue may hold more than its disk has free: it will stop growing at the disk \
             reserve (`queue.min_free_bytes`), and its on-full policy applies from there"
        );
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
