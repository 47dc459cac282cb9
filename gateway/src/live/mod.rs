//! Live rules: owns the running stream tasks and the ingest routes, loads the rule
//! files at start, and applies each reload that [`Triggers`] asks for.
//!
//! A reload plans the change first (`fieldgate_rules::plan_reload`) and then applies
//! it: unchanged rules keep running in their stream task with their windows; changed
//! and new rules are handed to the task; a changed stream gets a new task and route
//! (the old task processes what it was sent, then stops); a removed stream's task stops.
//! The broker, the queues and the uplinks are never touched.
//!
//! - [`stream_task`]: one stream's task, from its input to its rules' results queued;
//! - [`triggers`]: file watch, SIGHUP and admin requests;
//! - [`view`]: what runs, as the operations surface reads it.

pub mod stream_task;
mod triggers;
pub mod view;

pub use triggers::Triggers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use fieldgate_rules::{
    ReloadPlan, RuleCounters, RuleSet, RuleSlot, RunningRule, StreamChange, StreamPipeline,
    plan_reload, rule_files,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::stream_task::{Control, StreamContext, StreamCounters};
use self::view::{ReloadCounters, ReloadReport, RuleView, RulesView, StreamView};
use crate::ingest::{Input, Route, SourceGroups};

/// Micro-batches waiting per stream before ingest waits for the stream task.
const STREAM_CHANNEL_BATCHES: usize = 64;

/// One running stream task.
struct StreamTask {
    counters: Arc<StreamCounters>,
    tx: mpsc::Sender<Input>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

/// The running rules: the declarations, their stream tasks and the ingest routes.
pub struct LiveRules {
    dir: PathBuf,
    sinks: HashSet<String>,
    /// The Modbus and OPC UA groups streams may read.
    groups: SourceGroups,
    /// What every stream task is started with.
    ctx: StreamContext,
    running: RuleSet,
    streams: HashMap<String, StreamTask>,
    /// Tasks of replaced or removed streams, finishing what they were sent.
    retired: Vec<JoinHandle<()>>,
    routes: watch::Sender<Vec<Route>>,
    /// Outcomes of reloads (the load at start not included).
    pub counters: Arc<ReloadCounters>,
    /// What runs, for the operations surface.
    pub view: Arc<RwLock<RulesView>>,
}

impl LiveRules {
    /// Loads the rule files of `dir` and starts a task per stream. A broken rule is
    /// reported and left out; the others run.
    pub async fn start(
        dir: &Path,
        sinks: HashSet<String>,
        groups: SourceGroups,
        ctx: StreamContext,
    ) -> anyhow::Result<LiveRules> {
        rule_files(&[dir.to_path_buf()]).context("cannot list the rules directory")?;
        let (routes, _) = watch::channel(Vec::new());
        let mut live = LiveRules {
            dir: dir.to_path_buf(),
            sinks,
            groups,
            ctx,
            running: RuleSet::default(),
            streams: HashMap::new(),
            retired: Vec::new(),
            routes,
            counters: Arc::default(),
            view: Arc::default(),
        };
        let plan = live.plan().await;
        for e in &plan.errors {
            tracing::error!(error = %e, "rule file error");
        }
        live.apply(plan).await;
        let rules = live.running.rules.len();
        tracing::info!(streams = live.streams.len(), rules, "rules loaded");
        Ok(live)
    }

    /// The ingest routes, current and future.
    pub fn routes(&self) -> watch::Receiver<Vec<Route>> {
        self.routes.subscribe()
    }

    async fn plan(&self) -> ReloadPlan {
        let (mut loaded, mut errors) = RuleSet::load(std::slice::from_ref(&self.dir));
        // A stream on a group that is not configured is an error in its file.
        self.groups.retain_known(&mut loaded, &mut errors);
        plan_reload(&self.running, loaded, errors, |s| self.sinks.contains(s)).await
    }

    /// Reads the rule files again and applies what changed; returns what it did.
    pub async fn reload(&mut self, trigger: &str) -> ReloadReport {
        // Without a listing nothing can be compared; everything keeps running.
        if let Err(e) = rule_files(std::slice::from_ref(&self.dir)) {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%trigger, error = %e, "rules not reloaded; the running rules stay");
            return ReloadReport {
                errors: vec![e.to_string()],
                summary: Default::default(),
            };
        }
        let plan = self.plan().await;
        for e in &plan.errors {
            tracing::error!(error = %e, "rule file error");
        }
        let report = ReloadReport {
            errors: plan.errors.iter().map(|e| e.to_string()).collect(),
            summary: plan.summary.clone(),
        };
        let s = &report.summary;
        let errors = plan.errors.len();
        let changed = s.changes_anything();
        self.apply(plan).await;
        if errors > 0 {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.counters
                .errors
                .fetch_add(errors as u64, Ordering::Relaxed);
        } else {
            self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        let reloads = self.counters.succeeded.load(Ordering::Relaxed)
            + self.counters.failed.load(Ordering::Relaxed);
        if !s.kept_previous.is_empty() {
            tracing::warn!(kept = ?s.kept_previous, "new versions failed; previous versions keep running");
        }
        // One summary line, at warn when the files had errors.
        macro_rules! summary {
            ($log:ident, $message:literal) => {
                tracing::$log!(
                    %trigger,
                    reload = reloads,
                    errors,
                    rules_added = ?s.rules_added,
                    rules_changed = ?s.rules_changed,
                    rules_removed = ?s.rules_removed,
                    rules_unchanged = s.rules_unchanged.len(),
                    streams_added = ?s.streams_added,
                    streams_changed = ?s.streams_changed,
                    streams_removed = ?s.streams_removed,
                    $message
                )
            };
        }
        if errors > 0 {
            summary!(
                warn,
                "rules reloaded with errors; what was valid took effect"
            );
        } else if changed {
            summary!(info, "rules reloaded");
        } else {
            tracing::info!(%trigger, reload = reloads, "rules reloaded; nothing changed");
        }
        report
    }

    async fn apply(&mut self, plan: ReloadPlan) {
        self.retired.retain(|t| !t.is_finished());
        // Handles of newly planned rules, taken before the rules move into their tasks.
        let mut fresh: HashMap<String, (Arc<RuleCounters>, Arc<AtomicBool>)> = HashMap::new();
        for change in &plan.streams {
            let new_rules: Vec<&RunningRule> = match change {
                StreamChange::Update { rules, .. } => rules
                    .iter()
                    .filter_map(|slot| match slot {
                        RuleSlot::New(rule) => Some(&**rule),
                        RuleSlot::Keep(_) => None,
                    })
                    .collect(),
                StreamChange::Start { pipeline, .. } => pipeline.rules.iter().collect(),
            };
            for rule in new_rules {
                fresh.insert(
                    rule.name().to_string(),
                    (rule.counters.clone(), rule.paused.clone()),
                );
            }
        }
        for name in &plan.removed_streams {
            if let Some(old) = self.streams.remove(name) {
                tracing::info!(stream = %name, "stream removed; its task stops after what it was sent");
                self.retired.push(old.task);
            }
        }
        for change in plan.streams {
            match change {
                StreamChange::Update {
                    stream,
                    rules,
                    changed,
                } => {
                    if !changed {
                        continue;
                    }
                    let Some(task) = self.streams.get(&stream) else {
                        tracing::error!(%stream, "stream to update is not running");
                        continue;
                    };
                    if task.control.send(Control::SetRules(rules)).await.is_err() {
                        tracing::error!(%stream, "stream task is gone; its rules were not updated");
                    }
                }
                StreamChange::Start { pipeline, replaces } => {
                    let name = pipeline.stream.name.clone();
                    if let Some(old) = self.streams.remove(&name) {
                        tracing::info!(stream = %name, "stream declaration changed; its rules restart with empty windows");
                        self.retired.push(old.task);
                    } else if replaces {
                        tracing::warn!(stream = %name, "changed stream was not running");
                    }
                    let task = self.spawn(pipeline);
                    self.streams.insert(name, task);
                }
            }
        }
        self.running = plan.running;
        self.update_view(fresh);
        let routes = self
            .running
            .streams
            .iter()
            .filter_map(|s| {
                self.streams.get(&s.name).map(|t| Route {
                    stream: s.name.clone(),
                    source: s.source.clone(),
                    schema: s.schema.clone(),
                    tx: t.tx.clone(),
                })
            })
            .collect();
        self.routes.send_replace(routes);
    }

    /// Rebuilds the view of what runs: kept rules keep their handles.
    fn update_view(&self, mut fresh: HashMap<String, (Arc<RuleCounters>, Arc<AtomicBool>)>) {
        let Ok(mut view) = self.view.write() else {
            return;
        };
        let old = view.by_name();
        view.rules = self
            .running
            .rules
            .iter()
            .filter_map(|def| {
                let (counters, paused) = fresh.remove(&def.name).or_else(|| {
                    old.get(&def.name)
                        .map(|r| (r.counters.clone(), r.paused.clone()))
                })?;
                Some(RuleView {
                    name: def.name.clone(),
                    stream: def.stream.clone(),
                    sinks: def.sinks.clone(),
                    file: def.file.display().to_string(),
                    counters,
                    paused,
                })
            })
            .collect();
        view.streams = self
            .running
            .streams
            .iter()
            .filter_map(|s| {
                self.streams.get(&s.name).map(|t| StreamView {
                    name: s.name.clone(),
                    source: s.source.to_string(),
                    counters: t.counters.clone(),
                })
            })
            .collect();
    }

    fn spawn(&self, p: StreamPipeline) -> StreamTask {
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL_BATCHES);
        let (control, control_rx) = mpsc::channel(4);
        let counters = Arc::new(StreamCounters::default());
        let task = tokio::spawn(stream_task::run_stream(
            p,
            rx,
            control_rx,
            self.ctx.clone(),
            counters.clone(),
        ));
        StreamTask {
            counters,
            tx,
            control,
            task,
        }
    }

    /// Stops every stream task once ingest has stopped: each processes what it was sent
    /// and ends; returns when all have.
    pub async fn shutdown(self) {
        let LiveRules {
            streams,
            retired,
            routes,
            ..
        } = self;
        drop(routes);
        let mut tasks = retired;
        for (_, s) in streams {
            drop(s.tx);
            drop(s.control);
            tasks.push(s.task);
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
