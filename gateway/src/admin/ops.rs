//! What the operations surface can see and do: shared handles to the running parts'
//! counters and state, filled in as the gateway starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use fieldgate_connectors::sink::http::HttpCounters;
use fieldgate_connectors::sink::modbus::ModbusSinkCounters;
use fieldgate_connectors::source::modbus::DevicePoller;
use fieldgate_rules::RuleCounters;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{BrokerCounters, BrokerHealth};
use crate::ingest::modbus::ModbusIngestCounters;
use crate::ingest::mqtt::IngestCounters;
use crate::journal::{Journal, JournalStats};
use crate::pipeline::StreamCounters;
use crate::queue::Queue;
use crate::reload::ReloadCounters;
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
    pub gateway_id: String,
    pub broker: Arc<BrokerCounters>,
    pub broker_health: Arc<BrokerHealth>,
    pub journal: Arc<JournalStats>,
    pub journal_handle: Journal,
    pub mqtt: Arc<IngestCounters>,
    pub modbus: Arc<ModbusIngestCounters>,
    pub devices: Vec<Arc<DevicePoller>>,
    pub sinks: Vec<SinkView>,
    pub rules: Arc<RwLock<RulesView>>,
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
    pub name: String,
    /// `mqtt`, `http`, `file`, `republish` or `modbus`.
    pub kind: &'static str,
    pub queue: Queue,
    pub uplink: Arc<UplinkCounters>,
    pub extra: SinkExtra,
}

/// What some kinds of sink count besides the uplink.
pub enum SinkExtra {
    None,
    Http(Arc<HttpCounters>),
    Modbus(Arc<ModbusSinkCounters>),
}

/// The running streams and rules, as the last (re)load left them.
#[derive(Debug, Default)]
pub struct RulesView {
    pub streams: Vec<StreamView>,
    pub rules: Vec<RuleView>,
}

/// One running stream.
#[derive(Debug, Clone)]
pub struct StreamView {
    pub name: String,
    /// Where its rows come from, in words.
    pub source: String,
    pub counters: Arc<StreamCounters>,
}

/// One running rule.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub name: String,
    pub stream: String,
    pub sinks: Vec<String>,
    pub file: String,
    pub counters: Arc<RuleCounters>,
    /// Set by `POST /api/rules/{name}/stop`, cleared by `.../start`.
    pub paused: Arc<AtomicBool>,
}

impl RuleView {
    /// `running`, `stopped` (by the API) or `failed` (a panic stopped it for good).
    pub fn status(&self) -> &'static str {
        if self.counters.failure.get().is_some() {
            "failed"
        } else if self.paused.load(Ordering::Relaxed) {
            "stopped"
        } else {
            "running"
        }
    }
}

/// What a reload did, for whoever asked for it: the errors found in the rule files, and
/// the summary's lists of names side by side with them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Errors in rule files, as `file:line:col: message`.
    pub errors: Vec<String>,
    #[serde(flatten)]
    pub summary: fieldgate_rules::ReloadSummary,
}

impl RulesView {
    /// The rule of this name.
    pub fn rule(&self, name: &str) -> Option<&RuleView> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Rules by name, for carrying views over a reload.
    pub fn by_name(&self) -> HashMap<String, RuleView> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect()
    }
}
