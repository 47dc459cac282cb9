//! Reloading rule files under running pipelines: deciding which declarations changed,
//! which running rules keep their state, what must be planned anew, and applying that
//! to a running [`StreamPipeline`].
//!
//! "Unchanged" compares declarations, not files: a rule is unchanged when its name,
//! stream, sinks, late sink, window and query text are; a stream when its schema, source,
//! format, event time and idle timeout are. Moving a declaration to another file or
//! reformatting it does not restart it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::{RunningRule, StreamPipeline};
use crate::error::{Pos, SqlError};
use crate::rule_def::RuleDef;
use crate::ruleset::RuleSet;
use crate::stream_def::StreamDef;
use crate::table_def::TableDef;

/// Whether two stream declarations read and decode the same way.
pub fn same_stream(a: &StreamDef, b: &StreamDef) -> bool {
    a.name == b.name
        && a.schema == b.schema
        && a.source == b.source
        && a.format == b.format
        && a.event_time == b.event_time
        && a.idle_timeout == b.idle_timeout
}

/// Whether two rule declarations compute the same results for the same sinks.
pub fn same_rule(a: &RuleDef, b: &RuleDef) -> bool {
    a.name == b.name
        && a.stream == b.stream
        && a.sinks == b.sinks
        && a.late_sink == b.late_sink
        && a.error_sink == b.error_sink
        && a.window == b.window
        && a.analytic == b.analytic
        && a.dialect == b.dialect
        && a.tables == b.tables
        && a.keys == b.keys
        && a.query.to_string() == b.query.to_string()
        && a.prefilter.as_ref().map(|q| q.to_string())
            == b.prefilter.as_ref().map(|q| q.to_string())
}

/// Whether the tables `def` joins hold the same rows in both sets (a changed table file
/// plans the rules joining it afresh, with the new rows).
fn same_tables(running: &RuleSet, new: &RuleSet, def: &RuleDef) -> bool {
    let rows = |set: &RuleSet, name: &str| {
        set.tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| (t.fingerprint, t.schema.clone(), t.path.clone()))
    };
    def.tables
        .iter()
        .all(|name| rows(running, name).is_some_and(|r| Some(r) == rows(new, name)))
}

/// One rule of a running stream after a reload.
pub enum RuleSlot {
    /// Keep the running rule of this name with its windows and counters; the
    /// declaration (equal to the running one, perhaps from another file or position)
    /// replaces the rule's `def`.
    Keep(Arc<RuleDef>),
    /// A newly planned rule (new, or a changed version), starting with no windows.
    New(Box<RunningRule>),
}

impl RuleSlot {
    /// The rule's name.
    pub fn name(&self) -> &str {
        match self {
            RuleSlot::Keep(def) => &def.name,
            RuleSlot::New(rule) => &rule.def.name,
        }
    }
}

/// What a reload does to one stream.
pub enum StreamChange {
    /// The declaration is unchanged: the running pipeline (and its watermark) stays and
    /// gets this list of rules. `changed` is false when the list is what already runs.
    Update {
        /// The stream's name.
        stream: String,
        /// The rules the pipeline runs from now on, in declaration order.
        rules: Vec<RuleSlot>,
        /// Whether `rules` differs from what runs: a rule added, removed, planned anew
        /// or moved.
        changed: bool,
    },
    /// The stream is new (`replaces` false) or its declaration changed (`replaces` true):
    /// this fresh pipeline takes the place of any running one.
    Start {
        /// The new pipeline, with its rules planned and no windows or watermark yet.
        pipeline: StreamPipeline,
        /// Whether it replaces a running pipeline of the same stream.
        replaces: bool,
    },
}

/// Names of what a reload added, changed, removed or kept.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    /// Rules that did not run before.
    pub rules_added: Vec<String>,
    /// Rules planned anew, starting with no windows: their declaration, their stream or
    /// a table they join changed.
    pub rules_changed: Vec<String>,
    /// Rules that stop: no longer declared, or their new version failed and the
    /// previous one cannot stay.
    pub rules_removed: Vec<String>,
    /// Rules that run on with their windows and counters (previous versions kept
    /// included).
    pub rules_unchanged: Vec<String>,
    /// Streams that did not run before.
    pub streams_added: Vec<String>,
    /// Streams whose declaration changed: their pipelines start afresh.
    pub streams_changed: Vec<String>,
    /// Streams no longer declared: their pipelines stop.
    pub streams_removed: Vec<String>,
    /// Declarations whose new version failed (in a file with errors, or not plannable)
    /// and that keep running their previous version, as `stream name` or `rule name`.
    pub kept_previous: Vec<String>,
}

impl ReloadSummary {
    /// Whether the reload changes anything that runs.
    pub fn changes_anything(&self) -> bool {
        !(self.rules_added.is_empty()
            && self.rules_changed.is_empty()
            && self.rules_removed.is_empty()
            && self.streams_added.is_empty()
            && self.streams_changed.is_empty()
            && self.streams_removed.is_empty())
    }
}

/// Everything a reload does, computed before anything running is touched.
pub struct ReloadPlan {
    /// The declarations that run once the plan is applied (previous versions kept
    /// included); the base of the next reload.
    pub running: RuleSet,
    /// One entry per stream of `running`, in declaration order.
    pub streams: Vec<StreamChange>,
    /// Streams that run now and are no longer declared.
    pub removed_streams: Vec<String>,
    /// Errors in files and in rules that could not be planned, with file:line:col.
    pub errors: Vec<SqlError>,
    /// Names of what the plan adds, changes, removes and keeps.
    pub summary: ReloadSummary,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Unchanged,
    Changed,
    Added,
}

/// Plans the move from the declarations that run now (`running`) to the ones just
/// loaded (`loaded`, with the `load_errors` found reading them).
///
/// A declaration that was in a file that now has errors and is missing from what
/// parsed keeps running its previous version; so does a rule whose new version cannot
/// be planned, provided its stream did not change. Unchanged rules on unchanged streams
/// are kept as they run; everything else is planned fresh.
pub async fn plan(
    running: &RuleSet,
    loaded: RuleSet,
    load_errors: Vec<SqlError>,
    sink_exists: impl Fn(&str) -> bool,
) -> ReloadPlan {
    let mut summary = ReloadSummary::default();
    let mut errors = load_errors;
    let mut new = loaded;

    // A typo must not stop what runs: what a broken file no longer yields, it keeps.
    let bad_files: HashSet<PathBuf> = errors.iter().map(|e| e.file.clone()).collect();
    for old in &running.streams {
        if bad_files.contains(&old.file) && !new.streams.iter().any(|s| s.name == old.name) {
            summary.kept_previous.push(format!("stream {}", old.name));
            new.streams.push(old.clone());
        }
    }
    for old in &running.rules {
        if bad_files.contains(&old.file) && !new.rules.iter().any(|r| r.name == old.name) {
            summary.kept_previous.push(format!("rule {}", old.name));
            new.rules.push(old.clone());
        }
    }

    for old in &running.tables {
        if bad_files.contains(&old.file) && !new.tables.iter().any(|t| t.name == old.name) {
            summary.kept_previous.push(format!("table {}", old.name));
            new.tables.push(old.clone());
        }
    }

    let mut states: HashMap<String, StreamState> = HashMap::new();
    for s in &new.streams {
        let state = match running.streams.iter().find(|o| o.name == s.name) {
            Some(o) if same_stream(o, s) => StreamState::Unchanged,
            Some(_) => {
                summary.streams_changed.push(s.name.clone());
                StreamState::Changed
            }
            None => {
                summary.streams_added.push(s.name.clone());
                StreamState::Added
            }
        };
        states.insert(s.name.clone(), state);
    }
    let unchanged = |name: &str| states.get(name) == Some(&StreamState::Unchanged);

    let mut slots: HashMap<String, Vec<RuleSlot>> = HashMap::new();
    let mut running_rules = Vec::new();
    for def in &new.rules {
        let old = running.rules.iter().find(|o| o.name == def.name);
        if let Some(old) = old
            && unchanged(&def.stream)
            && same_rule(old, def)
            && same_tables(running, &new, def)
        {
            summary.rules_unchanged.push(def.name.clone());
            slots
                .entry(def.stream.clone())
                .or_default()
                .push(RuleSlot::Keep(Arc::new(def.clone())));
            running_rules.push(def.clone());
            continue;
        }
        let stream = new.streams.iter().find(|s| s.name == def.stream);
        match compile(def, stream, &new.tables, &new.broken_streams, &sink_exists).await {
            Ok(rule) => {
                match old {
                    Some(_) => summary.rules_changed.push(def.name.clone()),
                    None => summary.rules_added.push(def.name.clone()),
                }
                slots
                    .entry(def.stream.clone())
                    .or_default()
                    .push(RuleSlot::New(Box::new(rule)));
                running_rules.push(def.clone());
            }
            Err(e) => {
                errors.push(e);
                // The previous version still runs in its pipeline if that stays.
                if let Some(old) = old
                    && unchanged(&old.stream)
                {
                    summary.kept_previous.push(format!("rule {}", old.name));
                    summary.rules_unchanged.push(old.name.clone());
                    slots
                        .entry(old.stream.clone())
                        .or_default()
                        .push(RuleSlot::Keep(Arc::new(old.clone())));
                    running_rules.push(old.clone());
                } else if old.is_some() {
                    summary.rules_removed.push(def.name.clone());
                }
            }
        }
    }
    for old in &running.rules {
        if !running_rules.iter().any(|r| r.name == old.name)
            && !summary.rules_removed.contains(&old.name)
        {
            summary.rules_removed.push(old.name.clone());
        }
    }

    let mut streams = Vec::new();
    for s in &new.streams {
        let rules = slots.remove(&s.name).unwrap_or_default();
        match states.get(&s.name) {
            Some(StreamState::Unchanged) => {
                let before: Vec<&str> = running
                    .rules
                    .iter()
                    .filter(|r| r.stream == s.name)
                    .map(|r| r.name.as_str())
                    .collect();
                let changed = rules.len() != before.len()
                    || rules.iter().zip(&before).any(|(slot, name)| {
                        matches!(slot, RuleSlot::New(_)) || slot.name() != *name
                    });
                streams.push(StreamChange::Update {
                    stream: s.name.clone(),
                    rules,
                    changed,
                });
            }
            state => {
                let rules = rules
                    .into_iter()
                    .filter_map(|slot| match slot {
                        RuleSlot::New(rule) => Some(*rule),
                        // Only unchanged streams keep rules; never reached.
                        RuleSlot::Keep(_) => None,
                    })
                    .collect();
                streams.push(StreamChange::Start {
                    pipeline: StreamPipeline::new(Arc::new(s.clone()), rules),
                    replaces: state == Some(&StreamState::Changed),
                });
            }
        }
    }
    let removed_streams: Vec<String> = running
        .streams
        .iter()
        .filter(|o| !new.streams.iter().any(|s| s.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    summary.streams_removed = removed_streams.clone();

    ReloadPlan {
        running: RuleSet {
            streams: new.streams,
            rules: running_rules,
            tables: new.tables,
            broken_streams: new.broken_streams,
        },
        streams,
        removed_streams,
        errors,
        summary,
    }
}

/// Plans one rule against its stream, with the same checks as [`RuleSet::build`].
async fn compile(
    def: &RuleDef,
    stream: Option<&StreamDef>,
    tables: &[TableDef],
    broken_streams: &[String],
    sink_exists: &impl Fn(&str) -> bool,
) -> Result<RunningRule, SqlError> {
    let set = RuleSet {
        streams: stream.into_iter().cloned().collect(),
        rules: vec![def.clone()],
        tables: tables.to_vec(),
        broken_streams: broken_streams.to_vec(),
    };
    let (pipelines, mut errors) = set.build(sink_exists).await;
    if let Some(e) = errors.pop() {
        return Err(e);
    }
    pipelines
        .into_iter()
        .flat_map(|p| p.rules)
        .next()
        .ok_or_else(|| {
            SqlError::new(
                &def.file,
                Pos::default(),
                format!("rule `{}` was not planned", def.name),
            )
        })
}

/// What [`apply`] took out of a pipeline.
#[derive(Debug, Default)]
pub struct Applied {
    /// Rules that left the pipeline (removed or replaced by a new version), with the
    /// number of windows they held open, whose results are not emitted.
    pub retired: Vec<(String, usize)>,
    /// Rules the plan meant to keep that the pipeline did not run.
    pub missing: Vec<String>,
}

/// Gives a running pipeline its new list of rules. Kept rules move over with their
/// state; the pipeline's watermark is not touched.
pub fn apply(pipeline: &mut StreamPipeline, rules: Vec<RuleSlot>) -> Applied {
    let mut applied = Applied::default();
    let mut old: HashMap<String, RunningRule> = pipeline
        .rules
        .drain(..)
        .map(|r| (r.def.name.clone(), r))
        .collect();
    for slot in rules {
        match slot {
            RuleSlot::Keep(def) => match old.remove(&def.name) {
                Some(mut rule) => {
                    rule.def = def;
                    pipeline.rules.push(rule);
                }
                None => applied.missing.push(def.name.clone()),
            },
            RuleSlot::New(rule) => pipeline.rules.push(*rule),
        }
    }
    let mut retired: Vec<(String, usize)> = old
        .into_iter()
        .map(|(name, rule)| (name, rule.open_windows()))
        .collect();
    retired.sort();
    applied.retired = retired;
    applied
}

#[cfg(test)]
mod tests;
