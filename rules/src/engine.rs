//! Running rules over a stream's micro-batches: stateless rules run their plan on each
//! batch; windowed rules keep each open window's rows and run their plan when the
//! watermark closes the window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{ArrayRef, Int64Array, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{ExecError, SqlError};
use crate::plan::CompiledQuery;
use crate::rule::RuleDef;
use crate::stream::StreamDef;
use crate::watermark::Watermark;
use crate::window::WindowSpec;

/// Column names a windowed rule can select.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// Per-rule counters, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Rows the rule was offered.
    pub records_in: AtomicU64,
    /// Result rows the rule produced.
    pub records_out: AtomicU64,
    /// Rows that arrived after their window was closed by the watermark.
    pub late: AtomicU64,
    /// Rows dropped for lack of an event time, and failed executions.
    pub errors: AtomicU64,
}

impl RuleCounters {
    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Result rows of one rule, to be sent to its sinks.
#[derive(Debug, Clone)]
pub struct RuleOutput {
    pub rule: Arc<str>,
    pub sinks: Arc<[String]>,
    pub batches: Vec<RecordBatch>,
}

/// A planned rule with its window state.
pub struct Rule {
    pub def: Arc<RuleDef>,
    pub counters: Arc<RuleCounters>,
    name: Arc<str>,
    sinks: Arc<[String]>,
    query: CompiledQuery,
    window: Option<OpenWindows>,
}

/// The rows of every open window of a windowed rule, keyed by window start.
struct OpenWindows {
    spec: WindowSpec,
    /// Stream schema plus `window_start` and `window_end`.
    schema: SchemaRef,
    open: BTreeMap<i64, Vec<RecordBatch>>,
}

impl Rule {
    /// Plans a rule over its stream. Errors point at the rule in its file.
    pub async fn compile(def: RuleDef, stream: &StreamDef) -> Result<Rule, SqlError> {
        let err = |msg: String| SqlError::new(&def.file, def.query_pos, msg);
        let window = match def.window {
            None => None,
            Some(spec) => {
                if stream.event_time.is_none() {
                    return Err(err(format!(
                        "rule `{}` uses a window but stream `{}` declares no TIMESTAMP column",
                        def.name, stream.name
                    )));
                }
                let mut fields: Vec<Field> = stream
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                for name in [WINDOW_START, WINDOW_END] {
                    if stream.schema.field_with_name(name).is_ok() {
                        return Err(err(format!(
                            "stream `{}` has a column `{name}`, which windowed rules reserve",
                            stream.name
                        )));
                    }
                    fields.push(Field::new(name, DataType::Int64, false));
                }
                Some(OpenWindows {
                    spec,
                    schema: Arc::new(Schema::new(fields)),
                    open: BTreeMap::new(),
                })
            }
        };
        let input = window
            .as_ref()
            .map_or_else(|| stream.schema.clone(), |w| w.schema.clone());
        let query = CompiledQuery::compile(&stream.name, input, &def.query)
            .await
            .map_err(|e| err(format!("rule `{}`: {}", def.name, e.strip_backtrace())))?;
        if query.aggregates && window.is_none() {
            return Err(err(format!(
                "rule `{}` aggregates without a window; add one to GROUP BY, \
                 e.g. GROUP BY TUMBLINGWINDOW(ss, 10)",
                def.name
            )));
        }
        Ok(Rule {
            name: Arc::from(def.name.as_str()),
            sinks: Arc::from(def.sinks.clone()),
            def: Arc::new(def),
            counters: Arc::default(),
            query,
            window,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn output(&self, batches: Vec<RecordBatch>) -> RuleOutput {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        RuleCounters::add(&self.counters.records_out, rows);
        RuleOutput {
            rule: self.name.clone(),
            sinks: self.sinks.clone(),
            batches,
        }
    }

    fn exec_err(&self, e: datafusion::error::DataFusionError) -> ExecError {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        ExecError::DataFusion {
            rule: self.name.to_string(),
            source: e,
        }
    }

    /// Offers a batch to the rule. `times` are the rows' event times (ms) and
    /// `watermark` the stream's watermark before this batch.
    async fn push(
        &mut self,
        batch: &RecordBatch,
        times: Option<&Int64Array>,
        watermark: &Watermark,
    ) -> Result<Option<RuleOutput>, ExecError> {
        RuleCounters::add(&self.counters.records_in, batch.num_rows());
        let Some(w) = self.window.as_mut() else {
            let out = self
                .query
                .run(vec![batch.clone()])
                .await
                .map_err(|e| self.exec_err(e))?;
            return Ok(Some(self.output(out)));
        };
        let Some(times) = times else {
            return Ok(None);
        };
        let mut by_window: HashMap<i64, Vec<u32>> = HashMap::new();
        let (mut late, mut missing) = (0, 0);
        for (i, ts) in times.iter().enumerate() {
            let Some(ts) = ts else {
                missing += 1;
                continue;
            };
            let start = w.spec.window_start(ts);
            if watermark.closes(w.spec.window_end(start)) {
                late += 1;
                continue;
            }
            by_window.entry(start).or_default().push(i as u32);
        }
        RuleCounters::add(&self.counters.late, late);
        RuleCounters::add(&self.counters.errors, missing);
        for (start, rows) in by_window {
            let rows = take_record_batch(batch, &UInt32Array::from(rows)).map_err(|source| {
                ExecError::Arrow {
                    rule: self.name.to_string(),
                    source,
                }
            })?;
            let n = rows.num_rows();
            let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
            columns.push(Arc::new(Int64Array::from_value(start, n)));
            columns.push(Arc::new(Int64Array::from_value(
                w.spec.window_end(start),
                n,
            )));
            let rows = RecordBatch::try_new(w.schema.clone(), columns).map_err(|source| {
                ExecError::Arrow {
                    rule: self.name.to_string(),
                    source,
                }
            })?;
            w.open.entry(start).or_default().push(rows);
        }
        Ok(None)
    }

    /// Emits every window the watermark has closed; with `None`, every open window
    /// (the end of a finite input).
    async fn close(
        &mut self,
        watermark: Option<&Watermark>,
    ) -> Result<Option<RuleOutput>, ExecError> {
        let Some(w) = self.window.as_mut() else {
            return Ok(None);
        };
        let closing = match watermark {
            None => std::mem::take(&mut w.open),
            Some(wm) => {
                let Some(first_open) = w
                    .open
                    .keys()
                    .copied()
                    .find(|s| !wm.closes(w.spec.window_end(*s)))
                else {
                    let all = std::mem::take(&mut w.open);
                    return self.run_windows(all).await;
                };
                let rest = w.open.split_off(&first_open);
                std::mem::replace(&mut w.open, rest)
            }
        };
        self.run_windows(closing).await
    }

    async fn run_windows(
        &mut self,
        closing: BTreeMap<i64, Vec<RecordBatch>>,
    ) -> Result<Option<RuleOutput>, ExecError> {
        if closing.is_empty() {
            return Ok(None);
        }
        let input: Vec<RecordBatch> = closing.into_values().flatten().collect();
        let out = self.query.run(input).await.map_err(|e| self.exec_err(e))?;
        Ok(Some(self.output(out)))
    }

    /// Number of windows holding rows.
    pub fn open_windows(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.open.len())
    }
}

/// All rules reading one stream, with the stream's watermark. One decoded batch serves
/// every rule.
pub struct StreamPipeline {
    pub stream: Arc<StreamDef>,
    pub rules: Vec<Rule>,
    watermark: Watermark,
}

impl StreamPipeline {
    pub fn new(stream: Arc<StreamDef>, rules: Vec<Rule>) -> Self {
        let lateness = stream.event_time.as_ref().map_or(0, |e| {
            i64::try_from(e.lateness.as_millis()).unwrap_or(i64::MAX)
        });
        Self {
            stream,
            rules,
            watermark: Watermark::new(lateness),
        }
    }

    /// The stream's current watermark (epoch ms).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark.current()
    }

    /// Runs every rule over a batch of the stream's rows; returns the results that are
    /// ready and the errors of rules that failed (the other rules are not affected).
    pub async fn push(&mut self, batch: &RecordBatch) -> (Vec<RuleOutput>, Vec<ExecError>) {
        let times = self
            .stream
            .event_time
            .as_ref()
            .map(|et| et.millis(batch.column(et.index)));
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        for rule in &mut self.rules {
            match rule.push(batch, times.as_ref(), &self.watermark).await {
                Ok(Some(o)) => outputs.push(o),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if let Some(max) = times.as_ref().and_then(datafusion::arrow::compute::max) {
            self.watermark.observe(max);
            for rule in &mut self.rules {
                match rule.close(Some(&self.watermark)).await {
                    Ok(Some(o)) => outputs.push(o),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        (outputs, errors)
    }

    /// Closes every open window, as at the end of a finite input.
    pub async fn finish(&mut self) -> (Vec<RuleOutput>, Vec<ExecError>) {
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        for rule in &mut self.rules {
            match rule.close(None).await {
                Ok(Some(o)) => outputs.push(o),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (outputs, errors)
    }
}
