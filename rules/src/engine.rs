//! Running rules over a stream's micro-batches. A stateless rule runs its plan on each
//! batch; a windowed rule filters (and keys) rows, hands them to its window state, and
//! runs its aggregate plan over every window the watermark (or the row count) completes.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaBuilder, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::sql::sqlparser::ast::SetExpr;
use futures::FutureExt;

use crate::analytic::AnalyticStage;
pub use crate::counters::RuleCounters;
use crate::error::{ExecError, SqlError};
use crate::hits::{RowHits, WindowHits, window_end};
use crate::query::CompiledQuery;
use crate::row_errors::run_isolating;
use crate::rule_def::RuleDef;
use crate::stream_def::{EventTime, StreamDef};
use crate::table_def::TableDef;
use crate::watermark::Watermark;
use crate::window::{IncrementalWindows, Input, WindowSpec, WindowState};

/// Column names a windowed rule can select.
pub const WINDOW_START: &str = "window_start";
/// The end of a row's window, in epoch ms (the start is [`WINDOW_START`]).
pub const WINDOW_END: &str = "window_end";
/// Column added to rows sent to a rule's `LATE INTO` sink.
pub const LATE_REASON: &str = "late_reason";

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// Result rows of one rule, to be sent to its sinks.
#[derive(Debug, Clone)]
pub struct RuleOutput {
    /// Name of the rule that produced the rows.
    pub rule: Arc<str>,
    /// The sinks that receive the rows: the rule's `INTO` sinks, or its `LATE INTO` or
    /// `ERRORS INTO` sink for rows set aside.
    pub sinks: Arc<[String]>,
    /// The rows, in the order produced.
    pub batches: Vec<RecordBatch>,
    /// How the rows' null fields are encoded.
    pub null_fields: NullFields,
}

/// Whether a result's null fields are written (`"f": null`) or left out of it, as
/// eKuiper does (rules in its dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NullFields {
    /// `"f": null`.
    #[default]
    Written,
    /// No `f` in the result.
    LeftOut,
}

impl From<crate::sql::Dialect> for NullFields {
    fn from(d: crate::sql::Dialect) -> Self {
        match d {
            crate::sql::Dialect::Fieldgate => NullFields::Written,
            crate::sql::Dialect::Ekuiper => NullFields::LeftOut,
        }
    }
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn df_err(counters: &RuleCounters, rule: &str, e: datafusion::error::DataFusionError) -> ExecError {
    counters.errors.fetch_add(1, Ordering::Relaxed);
    ExecError::DataFusion {
        rule: rule.to_string(),
        source: e,
    }
}

fn arrow_err(
    counters: &RuleCounters,
    rule: &str,
    e: datafusion::arrow::error::ArrowError,
) -> ExecError {
    counters.errors.fetch_add(1, Ordering::Relaxed);
    ExecError::Arrow {
        rule: rule.to_string(),
        source: e,
    }
}

/// A message a person understands for a DataFusion planning error that would mislead
/// (an "internal error" asking for a bug report, a wildcard the rule does not have, a
/// look-alike function suggested); `None` to keep DataFusion's.
fn explain_plan_error(msg: &str) -> Option<String> {
    if let Some((_, rest)) =
        msg.split_once("No function matches the given name and argument types '")
    {
        // `sum(Utf8)` and the signatures it has.
        let call = rest.split('\'').next()?;
        let (name, args) = call.split_once('(')?;
        let args = args.trim_end_matches(')');
        let candidates: Vec<&str> = msg
            .split_once("Candidate functions:")
            .map(|(_, c)| c.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default();
        return Some(format!(
            "function '{name}' does not take ({args}); it takes {}. CAST an argument to the \
             type wanted, e.g. CAST(x AS DOUBLE)",
            if candidates.is_empty() {
                "other types".to_string()
            } else {
                candidates.join(", ")
            }
        ));
    }
    if msg.contains("must appear in the GROUP BY clause")
        && let Some((_, rest)) = msg.split_once("column \"")
    {
        let column = rest.split('"').next()?;
        let column = column.rsplit('.').next().unwrap_or(column);
        return Some(format!(
            "column '{column}' is neither in GROUP BY nor inside an aggregate: a grouped rule \
             emits one row per group, so add it to GROUP BY or aggregate it (e.g. \
             avg({column}), last_value({column}))"
        ));
    }
    if msg.contains("Slice subscript requires an upper bound") {
        return Some(
            "a slice needs both bounds here: write tags[2:cardinality(tags)], or use \
             SET DIALECT = ekuiper; where tags[1:] works"
                .into(),
        );
    }
    if let Some(unknown) = explain_unknown_function(msg) {
        return Some(unknown);
    }
    // DataFusion's own wording asks for a bug report, which is not what a rule author
    // can act on: say what it means for the rule, and keep the detail.
    for (marker, what) in [
        ("Internal error: ", "the engine could not plan this rule"),
        (
            "This feature is not implemented: ",
            "the rule uses SQL the engine does not support",
        ),
    ] {
        if let Some((_, detail)) = msg.split_once(marker) {
            let detail = detail
                .split(". This issue was likely caused by a bug")
                .next()
                .unwrap_or(detail)
                .trim();
            return Some(format!(
                "{what} ({detail}); rewrite the expression it is about, or split the rule \
                 in two"
            ));
        }
    }
    None
}

/// A clearer message for an unknown function the rule language knows of elsewhere: a
/// window used outside GROUP BY, or one of eKuiper's functions not translated (DataFusion
/// would suggest a function of a similar name instead).
fn explain_unknown_function(msg: &str) -> Option<String> {
    let (_, rest) = msg.split_once("Invalid function '")?;
    let name = rest.split('\'').next()?.to_ascii_lowercase();
    const EKUIPER_ONLY: [&str; 13] = [
        "array_map",
        "array_shuffle",
        "compress",
        "convert_tz",
        "decompress",
        "delay",
        "get_keyed_state",
        "items",
        "meta",
        "mqtt",
        "parse_json",
        "rule_start",
        "zip",
    ];
    if crate::sql::WINDOW_FUNCTIONS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(&name))
    {
        Some(format!(
            "Invalid function '{name}': a window belongs in GROUP BY, e.g. \
             GROUP BY device, {}(ss, 10)",
            name.to_uppercase()
        ))
    } else if EKUIPER_ONLY.contains(&name.as_str()) {
        Some(format!(
            "Invalid function '{name}': eKuiper's function `{name}` is not supported yet"
        ))
    } else {
        None
    }
}

/// Where in the rule a planning error is about: the word an unknown column or function
/// names, else the start of the query.
fn blame(def: &RuleDef, msg: &str) -> crate::error::Pos {
    let named = [
        "No field named ",
        "Invalid function '",
        "function '",
        "column '",
        "Field ",
    ]
    .iter()
    .find_map(|p| msg.split_once(p).map(|(_, rest)| rest));
    let Some(rest) = named else {
        return def.query_pos;
    };
    let name: String = rest
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.'))
        .collect();
    let name = name.trim_end_matches('.');
    let name = name.rsplit('.').next().unwrap_or(name);
    def.words
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(name))
        .map_or(def.query_pos, |(_, p)| *p)
}

/// A planned rule with its window state.
pub struct RunningRule {
    /// The rule's declaration.
    pub def: Arc<RuleDef>,
    /// What the rule counts while it runs, shared with whoever reports it.
    pub counters: Arc<RuleCounters>,
    name: Arc<str>,
    sinks: Arc<[String]>,
    query: CompiledQuery,
    /// Computes the rule's analytic calls before anything else runs.
    analytic: Option<AnalyticStage>,
    /// Computes `last_hit_count()`, `last_hit_time()` and `event_time()` (rules without
    /// a window).
    row_hits: Option<RowHits>,
    /// What `last_agg_hit_count()` and `last_agg_hit_time()` read (windowed rules).
    window_hits: Option<Arc<WindowHits>>,
    failures: FailedRows,
    windowed: Option<Windowed>,
    /// Set when a panic stopped the rule.
    stopped: Option<String>,
    /// While set, the rule is offered no rows and closes no windows; its state waits.
    pub paused: Arc<AtomicBool>,
}

/// The stream's declared columns and a text column saying why a row was set aside: the
/// rows sent to a `LATE INTO` or `ERRORS INTO` sink.
fn with_reason(stream: &Schema, column: &str) -> SchemaRef {
    let mut fields = SchemaBuilder::from(stream.fields());
    fields.push(Field::new(column, DataType::Utf8, false));
    Arc::new(fields.finish())
}

/// Where the rows a rule fails on go: counted always, and sent to the rule's
/// `ERRORS INTO` sink as the stream's columns plus `error`.
struct FailedRows {
    sinks: Option<Arc<[String]>>,
    schema: SchemaRef,
    /// The stream's declared columns (analytic results come after them).
    cols: usize,
    null_fields: NullFields,
}

/// Column added to rows sent to a rule's `ERRORS INTO` sink.
pub const ERROR_COLUMN: &str = "error";

impl FailedRows {
    /// Counts the rows of `rows` that failed, sends them on, and reports them in `errors`.
    fn report(
        &self,
        counters: &RuleCounters,
        rule: &Arc<str>,
        rows: &RecordBatch,
        failed: Vec<(usize, String)>,
        outputs: &mut Vec<RuleOutput>,
        errors: &mut Vec<ExecError>,
    ) -> Result<(), ExecError> {
        let Some((_, first)) = failed.first() else {
            return Ok(());
        };
        add(&counters.errors, failed.len());
        add(&counters.failed_rows, failed.len());
        errors.push(ExecError::Rows {
            rule: rule.to_string(),
            rows: failed.len(),
            first: first.clone(),
        });
        let Some(sinks) = &self.sinks else {
            return Ok(());
        };
        let indices = UInt32Array::from_iter_values(failed.iter().map(|(i, _)| *i as u32));
        let taken = take_record_batch(rows, &indices).map_err(|e| arrow_err(counters, rule, e))?;
        let mut cols: Vec<ArrayRef> = taken.columns()[..self.cols].to_vec();
        cols.push(Arc::new(StringArray::from_iter_values(
            failed.iter().map(|(_, e)| e.as_str()),
        )));
        let batch = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| arrow_err(counters, rule, e))?;
        outputs.push(RuleOutput {
            rule: rule.clone(),
            sinks: sinks.clone(),
            batches: vec![batch],
            null_fields: self.null_fields,
        });
        Ok(())
    }
}

/// How a windowed rule holds its open windows.
enum Windows {
    /// Partial aggregate state per pane and key (tumbling and hopping windows).
    Incremental(Box<IncrementalWindows>),
    /// The rows of every open window, aggregated by the rule's plan when it closes.
    Buffered(WindowState),
}

/// What a windowed rule keeps besides its aggregate plan.
struct Windowed {
    state: Windows,
    prefilter: Option<CompiledQuery>,
    /// Columns of the stream (the prefilter may append key columns after them).
    stream_cols: usize,
    /// Columns of the stream as declared (without analytic results), for late rows.
    late_cols: usize,
    /// Key columns the prefilter appends after the stream's (the window's conditions,
    /// if any, come after them).
    key_cols: usize,
    event_time: Option<EventTime>,
    keys: Option<KeyIds>,
    late_sinks: Option<Arc<[String]>>,
    late_schema: SchemaRef,
}

/// Gives each distinct group key a small number, for per-key windows.
struct KeyIds {
    converter: RowConverter,
    /// Keys in the row format's bytes, so a key already seen is found without a copy.
    ids: HashMap<Box<[u8]>, u64>,
}

impl KeyIds {
    fn ids(&mut self, cols: &[ArrayRef]) -> Result<Vec<u64>, datafusion::arrow::error::ArrowError> {
        let rows = self.converter.convert_columns(cols)?;
        let mut out = Vec::with_capacity(rows.num_rows());
        for r in rows.iter() {
            let key: &[u8] = r.as_ref();
            let id = match self.ids.get(key) {
                Some(id) => *id,
                None => {
                    let next = self.ids.len() as u64;
                    self.ids.insert(key.into(), next);
                    next
                }
            };
            out.push(id);
        }
        Ok(out)
    }
}

impl RunningRule {
    /// Plans a rule over its stream. Errors point at the rule in its file.
    pub async fn compile(
        mut def: RuleDef,
        stream: &StreamDef,
        tables: &[&TableDef],
    ) -> Result<RunningRule, SqlError> {
        crate::sql::row_aggregates(&mut def.query, &stream.schema).map_err(|m| {
            SqlError::new(
                &def.file,
                def.query_pos,
                format!("rule `{}`: {m}", def.name),
            )
        })?;
        if def.dialect == crate::sql::Dialect::Ekuiper {
            // eKuiper matches column names whatever their case.
            crate::sql::match_columns(&mut def.query, &stream.schema);
            if let Some(p) = def.prefilter.as_mut() {
                crate::sql::match_columns(p, &stream.schema);
            }
            for call in &mut def.analytic {
                for e in call
                    .args
                    .iter_mut()
                    .chain(&mut call.partition)
                    .chain(&mut call.when)
                {
                    crate::sql::match_columns(e, &stream.schema);
                }
            }
        }
        let err = |msg: String| SqlError::new(&def.file, def.query_pos, msg);
        let plan_err = |e: datafusion::error::DataFusionError| {
            let msg = e.strip_backtrace();
            let msg = explain_plan_error(&msg).unwrap_or(msg);
            SqlError::new(
                &def.file,
                blame(&def, &msg),
                format!("rule `{}`: {msg}", def.name),
            )
        };
        // Analytic calls are computed first, as columns appended to the stream's rows:
        // the rest of the rule reads those rows as its stream.
        let analytic = match def.analytic.is_empty() {
            true => None,
            false => Some(
                AnalyticStage::compile(stream, &def.analytic)
                    .await
                    .map_err(plan_err)?,
            ),
        };
        let original = stream.schema.clone();
        // The rest of the rule reads the stream's rows with the analytic results and
        // the hit columns appended.
        let mut schema = analytic.as_ref().map_or(original.clone(), |a| a.schema());
        let hits = def.hits;
        if hits.rows || hits.event_time {
            schema = crate::hits::with_hit_columns(&schema);
        }
        let augmented = StreamDef {
            schema,
            ..stream.clone()
        };
        let stream = &augmented;
        let row_hits = match hits.rows || hits.event_time {
            false => None,
            true => {
                let filter = match def.query.body.as_ref() {
                    SetExpr::Select(s) if hits.rows => s.selection.as_ref(),
                    _ => None,
                };
                if !def.tables.is_empty() && filter.is_some() {
                    return Err(err(format!(
                        "rule `{}`: last_hit_count() and last_hit_time() count the rows \
                         that pass WHERE, which cannot read a joined table yet",
                        def.name
                    )));
                }
                Some(
                    RowHits::compile(
                        &stream.name,
                        stream.schema.clone(),
                        filter,
                        stream.event_time.clone(),
                    )
                    .await
                    .map_err(plan_err)?,
                )
            }
        };
        let window_hits = def.hits.windows.then(|| Arc::new(WindowHits::default()));
        let functions = window_hits
            .as_ref()
            .map(|h| h.functions())
            .unwrap_or_default();
        let mut input = stream.schema.clone();
        let mut windowed = match def.window {
            None => None,
            Some(spec) => {
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
                let tagged = Arc::new(Schema::new(fields));
                input = tagged.clone();
                let prefilter = match &def.prefilter {
                    Some(q) => Some(
                        CompiledQuery::compile(&stream.name, stream.schema.clone(), q)
                            .await
                            .map_err(|e| {
                                let mut e = plan_err(e);
                                if !def.tables.is_empty() && e.message.contains("No field named") {
                                    e.message.push_str(
                                        " (in a windowed rule, WHERE runs on the stream's rows \
                                         before the table is joined to a window's rows: use \
                                         the table's columns in SELECT, GROUP BY or HAVING)",
                                    );
                                }
                                e
                            })?,
                    ),
                    None => None,
                };
                let keys = match (&prefilter, def.keys) {
                    (Some(p), n) if spec.per_key() && n > 0 => {
                        let out = p.schema();
                        let tagged_cols = stream.schema.fields().len();
                        let sort_fields = out.fields()[tagged_cols..tagged_cols + n]
                            .iter()
                            .map(|f| SortField::new(f.data_type().clone()))
                            .collect();
                        let converter =
                            RowConverter::new(sort_fields).map_err(|e| err(e.to_string()))?;
                        Some(KeyIds {
                            converter,
                            ids: HashMap::new(),
                        })
                    }
                    _ => None,
                };
                Some(Windowed {
                    state: Windows::Buffered(WindowState::new(spec, tagged)),
                    prefilter,
                    stream_cols: stream.schema.fields().len(),
                    late_cols: original.fields().len(),
                    key_cols: def.keys,
                    event_time: stream.event_time.clone(),
                    keys,
                    late_sinks: def.late_sink.clone().map(|s| Arc::from(vec![s])),
                    late_schema: with_reason(&original, LATE_REASON),
                })
            }
        };
        let query = CompiledQuery::compile_with(
            &stream.name,
            input.clone(),
            &def.query,
            tables,
            &functions,
        )
        .await
        .map_err(plan_err)?;
        if let Some(w) = windowed.as_mut() {
            let (size, slide) = match def.window {
                Some(WindowSpec::Tumbling { size_ms }) => (size_ms, size_ms),
                Some(WindowSpec::Hopping { size_ms, slide_ms }) => (size_ms, slide_ms),
                _ => (0, 0),
            };
            if size > 0
                && let Some(split) = query.split()
                && let Some(panes) =
                    IncrementalWindows::new(size, slide, split, input).map_err(plan_err)?
            {
                w.state = Windows::Incremental(Box::new(panes));
            }
        }
        if query.aggregates && windowed.is_none() {
            return Err(err(format!(
                "rule `{}` aggregates without a window; add one to GROUP BY, \
                 e.g. GROUP BY TUMBLINGWINDOW(ss, 10)",
                def.name
            )));
        }
        let failures = FailedRows {
            sinks: def.error_sink.clone().map(|s| Arc::from(vec![s])),
            schema: with_reason(&original, ERROR_COLUMN),
            cols: original.fields().len(),
            null_fields: def.dialect.into(),
        };
        Ok(RunningRule {
            failures,
            name: Arc::from(def.name.as_str()),
            sinks: Arc::from(def.sinks.clone()),
            def: Arc::new(def),
            counters: Arc::default(),
            query,
            analytic,
            row_hits,
            window_hits,
            windowed,
            stopped: None,
            paused: Arc::default(),
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn output(&self, batches: Vec<RecordBatch>) -> RuleOutput {
        add(
            &self.counters.records_out,
            batches.iter().map(|b| b.num_rows()).sum(),
        );
        RuleOutput {
            rule: self.name.clone(),
            sinks: self.sinks.clone(),
            batches,
            null_fields: self.def.dialect.into(),
        }
    }

    fn df_err(&self, e: datafusion::error::DataFusionError) -> ExecError {
        df_err(&self.counters, &self.name, e)
    }

    /// Offers a batch of the stream to the rule; `watermark` is the stream's watermark
    /// before this batch and `now` the arrival time (processing-time streams).
    async fn push(
        &mut self,
        batch: &RecordBatch,
        watermark: &Watermark,
        now: i64,
        errors: &mut Vec<ExecError>,
    ) -> Result<Vec<RuleOutput>, ExecError> {
        add(&self.counters.records_in, batch.num_rows());
        let mut outputs = Vec::new();
        let analysed;
        let batch = match self.analytic.as_mut() {
            None => batch,
            Some(a) => {
                let applied = a
                    .apply(batch, now)
                    .await
                    .map_err(|e| df_err(&self.counters, &self.name, e))?;
                add(&self.counters.keys_forgotten, applied.forgotten as usize);
                self.counters
                    .analytic_keys
                    .store(a.keys() as u64, Ordering::Relaxed);
                self.failures.report(
                    &self.counters,
                    &self.name,
                    batch,
                    applied.failed,
                    &mut outputs,
                    errors,
                )?;
                analysed = applied.batch;
                &analysed
            }
        };
        let Some(w) = self.windowed.as_mut() else {
            let counted;
            let batch = match self.row_hits.as_mut() {
                None => batch,
                Some(h) => {
                    counted = h
                        .apply(batch, now)
                        .await
                        .map_err(|e| df_err(&self.counters, &self.name, e))?;
                    &counted
                }
            };
            let run = run_isolating(&self.query, batch)
                .await
                .map_err(|e| self.df_err(e))?;
            self.failures.report(
                &self.counters,
                &self.name,
                batch,
                run.failed,
                &mut outputs,
                errors,
            )?;
            outputs.insert(0, self.output(run.out));
            return Ok(outputs);
        };
        let (counters, name) = (self.counters.clone(), self.name.clone());
        let aerr = |e| arrow_err(&counters, &name, e);
        // Filter (and key) the rows first.
        let rows = match &w.prefilter {
            None => batch.clone(),
            Some(p) => {
                let run = run_isolating(p, batch)
                    .await
                    .map_err(|e| df_err(&counters, &name, e))?;
                self.failures
                    .report(&counters, &name, batch, run.failed, &mut outputs, errors)?;
                concat_batches(&p.schema(), &run.out).map_err(aerr)?
            }
        };
        let times = match &w.event_time {
            Some(et) => et.millis(rows.column(et.index)),
            None => Int64Array::from_value(now, rows.num_rows()),
        };
        let missing = times.null_count();
        let keys = match &mut w.keys {
            Some(k) => {
                let cols = rows.columns()[w.stream_cols..w.stream_cols + w.key_cols].to_vec();
                Some(k.ids(&cols).map_err(aerr)?)
            }
            None => None,
        };
        let (late, done) = match &mut w.state {
            Windows::Buffered(state) => state
                .push(
                    Input {
                        rows: &rows,
                        times: &times,
                        keys: keys.as_deref(),
                        conditions: &rows.columns()[w.stream_cols + w.key_cols..],
                    },
                    watermark,
                )
                .map_err(aerr)?,
            Windows::Incremental(panes) => {
                let late = panes
                    .push(&rows, &times, watermark)
                    .await
                    .map_err(|e| df_err(&counters, &name, e))?;
                (late, Vec::new())
            }
        };
        add(&self.counters.errors, missing);
        add(&self.counters.late, late.len());
        if let (Some(sinks), false) = (&w.late_sinks, late.is_empty()) {
            let reason = format!(
                "arrived after its window was complete (watermark {})",
                watermark.current().unwrap_or(i64::MIN)
            );
            let taken = take_record_batch(&rows, &UInt32Array::from(late.clone())).map_err(aerr)?;
            let mut cols: Vec<ArrayRef> = taken.columns()[..w.late_cols].to_vec();
            cols.push(Arc::new(StringArray::from(vec![
                reason.as_str();
                late.len()
            ])));
            let b = RecordBatch::try_new(w.late_schema.clone(), cols).map_err(aerr)?;
            outputs.push(RuleOutput {
                rule: self.name.clone(),
                sinks: sinks.clone(),
                batches: vec![b],
                null_fields: self.def.dialect.into(),
            });
        }
        // Count windows complete on arrival. Each runs alone: two of them may share
        // their time bounds, and the plan groups by those.
        let mut results = Vec::new();
        for window in done {
            let end = window_end(&window);
            let out = self
                .query
                .run(vec![window])
                .await
                .map_err(|e| self.df_err(e))?;
            if let (Some(h), Some(end)) = (&self.window_hits, end) {
                h.window_done(end, out.iter().map(|b| b.num_rows()).sum());
            }
            results.extend(out);
        }
        if !results.is_empty() {
            outputs.push(self.output(results));
        }
        Ok(outputs)
    }

    /// Emits every window the watermark completed; with `None`, every open window
    /// (the end of a finite input).
    async fn close(
        &mut self,
        watermark: Option<&Watermark>,
    ) -> Result<Option<RuleOutput>, ExecError> {
        let Some(w) = self.windowed.as_mut() else {
            return Ok(None);
        };
        let out = match &mut w.state {
            Windows::Buffered(state) => {
                let closing = state
                    .close(watermark)
                    .map_err(|e| arrow_err(&self.counters, &self.name, e))?;
                if closing.is_empty() {
                    return Ok(None);
                }
                match &self.window_hits {
                    None => self.query.run(closing).await,
                    // Each window reads the count the ones before it left.
                    Some(hits) => {
                        let mut out = Vec::new();
                        for window in closing {
                            let end = window_end(&window);
                            let rows = self.query.run(vec![window]).await;
                            let rows = rows.map_err(|e| self.df_err(e))?;
                            if let Some(end) = end {
                                hits.window_done(end, rows.iter().map(|b| b.num_rows()).sum());
                            }
                            out.extend(rows);
                        }
                        Ok(out)
                    }
                }
            }
            Windows::Incremental(panes) => {
                let aggregated = panes
                    .close(watermark)
                    .map_err(|e| df_err(&self.counters, &self.name, e))?;
                if aggregated.is_empty() {
                    return Ok(None);
                }
                match &self.window_hits {
                    None => {
                        panes
                            .results(aggregated.into_iter().map(|(_, b)| b).collect())
                            .await
                    }
                    Some(hits) => {
                        let mut out = Vec::new();
                        for (end, window) in aggregated {
                            let rows = panes.results(vec![window]).await;
                            let rows = rows.map_err(|e| df_err(&self.counters, &self.name, e))?;
                            hits.window_done(end, rows.iter().map(|b| b.num_rows()).sum());
                            out.extend(rows);
                        }
                        Ok(out)
                    }
                }
            }
        };
        let out = out.map_err(|e| self.df_err(e))?;
        Ok(Some(self.output(out)))
    }

    /// Bytes of partial aggregate state held by an incrementally aggregated rule's open
    /// windows (0 for other rules).
    pub fn state_bytes(&self) -> usize {
        match self.windowed.as_ref().map(|w| &w.state) {
            Some(Windows::Incremental(panes)) => panes.state_bytes(),
            _ => 0,
        }
    }

    /// Partition keys the rule's analytic calls hold state for.
    pub fn analytic_keys(&self) -> usize {
        self.analytic.as_ref().map_or(0, |a| a.keys())
    }

    /// Whether the rule keeps partial aggregate state rather than rows.
    pub fn is_incremental(&self) -> bool {
        matches!(
            self.windowed.as_ref().map(|w| &w.state),
            Some(Windows::Incremental(_))
        )
    }

    /// Stops the rule after a panic in its execution (a bug in the engine or in a
    /// function it calls): it takes no more rows, the stream's other rules run on.
    fn stop(&mut self, panic: Box<dyn std::any::Any + Send>) -> ExecError {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let _ = self.counters.failure.set(message.clone());
        self.stopped = Some(message.clone());
        ExecError::Stopped {
            rule: self.name.to_string(),
            message,
        }
    }

    /// Whether the rule is paused (see [`RunningRule::paused`]).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Why the rule stopped, if a panic stopped it.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Number of windows (sessions; rows for count windows) held open.
    pub fn open_windows(&self) -> usize {
        self.windowed.as_ref().map_or(0, |w| match &w.state {
            Windows::Buffered(state) => state.open(),
            Windows::Incremental(panes) => panes.open(),
        })
    }
}

/// Closes a rule's complete windows; a panic stops the rule (see [`RunningRule::stop`]).
async fn close_guarded(
    rule: &mut RunningRule,
    watermark: Option<&Watermark>,
    outputs: &mut Vec<RuleOutput>,
    errors: &mut Vec<ExecError>,
) {
    if rule.stopped.is_some() || rule.is_paused() {
        return;
    }
    match AssertUnwindSafe(rule.close(watermark)).catch_unwind().await {
        Ok(Ok(Some(o))) => outputs.push(o),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => errors.push(e),
        Err(panic) => errors.push(rule.stop(panic)),
    }
}

/// All rules reading one stream, with the stream's watermark. One decoded batch serves
/// every rule.
pub struct StreamPipeline {
    /// The stream the pipeline reads.
    pub stream: Arc<StreamDef>,
    /// The rules reading the stream, each offered every batch.
    pub rules: Vec<RunningRule>,
    watermark: Watermark,
    /// Wall-clock time (ms) of the last batch, and the largest event time seen then.
    last_arrival: Option<(i64, i64)>,
}

impl StreamPipeline {
    /// A pipeline running `rules` over `stream`, its watermark trailing the largest
    /// event time by the stream's `LATENESS` (0 without event time).
    pub fn new(stream: Arc<StreamDef>, rules: Vec<RunningRule>) -> Self {
        let lateness = stream.event_time.as_ref().map_or(0, |e| {
            i64::try_from(e.lateness.as_millis()).unwrap_or(i64::MAX)
        });
        Self {
            stream,
            rules,
            watermark: Watermark::new(lateness),
            last_arrival: None,
        }
    }

    /// The stream's current watermark (epoch ms).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark.current()
    }

    /// Runs every rule over a batch of the stream's rows, arriving now.
    pub async fn push(&mut self, batch: &RecordBatch) -> (Vec<RuleOutput>, Vec<ExecError>) {
        self.push_at(batch, now_millis()).await
    }

    /// Runs every rule over a batch that arrived at `now` (epoch ms); returns the results
    /// that are ready and the errors of rules that failed (the others are not affected).
    pub async fn push_at(
        &mut self,
        batch: &RecordBatch,
        now: i64,
    ) -> (Vec<RuleOutput>, Vec<ExecError>) {
        let max_event = match &self.stream.event_time {
            Some(et) => datafusion::arrow::compute::max(&et.millis(batch.column(et.index))),
            None => Some(now),
        };
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        for rule in &mut self.rules {
            let started = Instant::now();
            if rule.stopped.is_some() || rule.is_paused() {
                continue;
            }
            match AssertUnwindSafe(rule.push(batch, &self.watermark, now, &mut errors))
                .catch_unwind()
                .await
            {
                Ok(Ok(o)) => outputs.extend(o),
                Ok(Err(e)) => errors.push(e),
                Err(panic) => errors.push(rule.stop(panic)),
            }
            rule.counters.batches.fetch_add(1, Ordering::Relaxed);
            rule.counters.latency.record(started.elapsed());
        }
        if let Some(max) = max_event {
            self.watermark.observe(max);
            let seen = self.last_arrival.map_or(max, |(_, m)| m.max(max));
            self.last_arrival = Some((now, seen));
            self.close(&mut outputs, &mut errors).await;
        }
        (outputs, errors)
    }

    /// Lets time pass without rows: a processing-time stream's watermark follows the
    /// clock; an event-time stream idle for longer than its `IDLE_TIMEOUT` has its
    /// watermark advanced by the time it has been idle.
    pub async fn tick(&mut self, now: i64) -> (Vec<RuleOutput>, Vec<ExecError>) {
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        let advance_to = match (
            &self.stream.event_time,
            self.stream.idle_timeout,
            self.last_arrival,
        ) {
            (None, _, _) => Some(now),
            (Some(_), Some(idle), Some((at, seen))) => {
                let idle_ms = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
                (now - at >= idle_ms).then(|| seen.saturating_add(now - at))
            }
            _ => None,
        };
        if let Some(t) = advance_to {
            self.watermark.observe(t);
            self.close(&mut outputs, &mut errors).await;
        }
        (outputs, errors)
    }

    async fn close(&mut self, outputs: &mut Vec<RuleOutput>, errors: &mut Vec<ExecError>) {
        for rule in &mut self.rules {
            close_guarded(rule, Some(&self.watermark), outputs, errors).await;
        }
    }

    /// Closes every open window, as at the end of a finite input.
    pub async fn finish(&mut self) -> (Vec<RuleOutput>, Vec<ExecError>) {
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        for rule in &mut self.rules {
            close_guarded(rule, None, &mut outputs, &mut errors).await;
        }
        (outputs, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::explain_plan_error;

    #[test]
    fn datafusion_internal_errors_are_said_in_the_rules_terms() {
        let msg = "Internal error: Physical input schema should be the same as the one \
                   converted from logical input schema. This issue was likely caused by a \
                   bug in DataFusion's code. Please help us to resolve this by filing a bug \
                   report in our issue tracker: https://github.com/apache/datafusion/issues";
        let got = explain_plan_error(msg).unwrap();
        assert!(
            got.starts_with("the engine could not plan this rule (Physical input schema"),
            "{got}"
        );
        assert!(
            !got.contains("bug report") && !got.contains("issue tracker"),
            "{got}"
        );
        let got = explain_plan_error("This feature is not implemented: Unsupported ast node Foo")
            .unwrap();
        assert!(
            got.starts_with(
                "the rule uses SQL the engine does not support (Unsupported ast node Foo)"
            ),
            "{got}"
        );
        assert_eq!(explain_plan_error("Schema error: No field named x"), None);
    }
}
