//! What runs, as the operations surface sees it: the streams and rules the last (re)load
//! left running, with handles on their counters, and what each reload did. The live
//! rules write it; the admin endpoints only read it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fieldgate_rules::RuleCounters;

use super::stream_task::StreamCounters;

/// Reload counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Reloads that found no error.
    pub succeeded: AtomicU64,
    /// Reloads that found at least one error (what was valid was still applied).
    pub failed: AtomicU64,
    /// Errors found in rule files and rules over all reloads.
    pub errors: AtomicU64,
}

/// The running streams and rules, as the last (re)load left them.
#[derive(Debug, Default)]
pub struct RulesView {
    /// The running streams.
    pub streams: Vec<StreamView>,
    /// The running rules, stopped and failed ones included.
    pub rules: Vec<RuleView>,
}

/// One running stream.
#[derive(Debug, Clone)]
pub struct StreamView {
    /// The stream's name.
    pub name: String,
    /// Where its rows come from, in words.
    pub source: String,
    /// What the stream's task counts.
    pub counters: Arc<StreamCounters>,
}

/// One running rule.
#[derive(Debug, Clone)]
pub struct RuleView {
    /// The rule's name.
    pub name: String,
    /// The stream it reads.
    pub stream: String,
    /// The sinks it sends its results to.
    pub sinks: Vec<String>,
    /// The rule file that declares it.
    pub file: String,
    /// What the rule counts.
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
    /// What the reload added, changed, removed or kept, by name.
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
