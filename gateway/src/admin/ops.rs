//! What the operations surface can see and do: shared handles to the running parts'
//! counters and state, filled in as the gateway starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use fieldgate_connectors::http::HttpCounters;
use fieldgate_connectors::modbus::DevicePoller;
use fieldgate_connectors::modbus::ModbusSinkCounters;
use fieldgate_connectors::nats::NatsCounters;
use fieldgate_connectors::opcua::{OpcuaServer, OpcuaSinkCounters};
use tokio::sync::{mpsc, oneshot};

use crate::broker::{BrokerCounters, BrokerHealth};
use crate::ingest::modbus::ModbusIngestCounters;
use crate::ingest::mqtt::IngestCounters;
use crate::ingest::opcua::OpcuaIngestCounters;
use crate::journal::{Journal, JournalStats};
use crate::live::view::{ReloadCounters, ReloadReport, RulesView};
use crate::queue::Queue;
use crate::uplink::UplinkCounters;

/// The operations surface's handle on the gateway.
#[derive(Debug, Default)]
pub struct Ops {
    /// Broker listening, rules loaded, queues open.
    pub ready: AtomicBool,
    /// Set once everything has started.
    pub running: OnceLock<Running>,
}

impl Ops {
    /// Whether the gateway can do its job: started, not stopping, and no problem.
    pub fn is_ready(&self) -> bool {
        self.problems().is_empty()
    }

    /// Why the gateway cannot do its job now; empty when it can.
    pub fn problems(&self) -> Vec<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return vec!["starting or stopping".into()];
        }
        let Some(r) = self.running.get() else {
            return vec!["starting".into()];
        };
        let mut out: Vec<String> = r.broker_health.problem().into_iter().collect();
        out.extend(r.journal_handle.problem());
        out.extend(r.sinks.iter().filter_map(|s| s.queue.problem()));
        out
    }
}

/// The started gateway's parts.
pub struct Running {
    /// The configured `gateway_id`.
    pub gateway_id: String,
    /// What the embedded broker counts: connections, refusals, access-file reloads.
    pub broker: Arc<BrokerCounters>,
    /// Whether the embedded broker still runs.
    pub broker_health: Arc<BrokerHealth>,
    /// The ingest journal's counters.
    pub journal: Arc<JournalStats>,
    /// The ingest journal, asked whether it can still write.
    pub journal_handle: Journal,
    /// What MQTT ingest counts: messages read from the journal, and those no stream reads.
    pub mqtt: Arc<IngestCounters>,
    /// What Modbus ingest counts: poll rows received, unrouted, not castable, republished.
    pub modbus: Arc<ModbusIngestCounters>,
    /// The Modbus device pollers, in configuration order.
    pub devices: Vec<Arc<DevicePoller>>,
    /// What OPC UA ingest counts: rows received, unrouted, not castable.
    pub opcua: Arc<OpcuaIngestCounters>,
    /// The OPC UA servers, in configuration order.
    pub opcua_servers: Vec<Arc<OpcuaServer>>,
    /// The sinks, in name order.
    pub sinks: Vec<SinkView>,
    /// The streams and rules running now.
    pub rules: Arc<RwLock<RulesView>>,
    /// Outcomes of rule reloads.
    pub reloads: Arc<ReloadCounters>,
    /// Asks the rules to reload now; the answer says what changed.
    pub reload: mpsc::Sender<oneshot::Sender<ReloadReport>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("gateway_id", &self.gateway_id)
            .field("sinks", &self.sinks.len())
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

/// One sink: its queue and what its uplink counts.
pub struct SinkView {
    /// The sink's name, as in `[sinks.NAME]`.
    pub name: String,
    /// `mqtt`, `http`, `file`, `republish`, `modbus` or `opcua`.
    pub kind: &'static str,
    /// The sink's durable queue.
    pub queue: Queue,
    /// What the sink's uplink worker delivered and retried.
    pub uplink: Arc<UplinkCounters>,
    /// The counters only this kind of sink has.
    pub extra: SinkExtra,
}

/// What some kinds of sink count besides the uplink.
pub enum SinkExtra {
    /// Nothing besides the uplink (`mqtt`, `file` and `republish` sinks).
    None,
    /// An HTTP sink's requests delivered, retries and dead-lettered results.
    Http(Arc<HttpCounters>),
    /// A Modbus sink's results written, refused and failed.
    Modbus(Arc<ModbusSinkCounters>),
    /// An OPC UA sink's results written, refused and failed.
    Opcua(Arc<OpcuaSinkCounters>),
    /// A NATS sink's duplicates the server reported and results too large to publish.
    Nats(Arc<NatsCounters>),
}
