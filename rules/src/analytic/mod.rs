//! The analytic stage: eKuiper's analytic functions (`lag`, `latest`, `changed_col`,
//! `had_changed`, `acc_*`) and the report-by-exception `deadband`, evaluated over every
//! row of a rule's stream in arrival order, before WHERE, as eKuiper does.
//!
//! Each call keeps its own state per partition key (`OVER (PARTITION BY ...)`), across
//! micro-batches and across reloads that keep the rule. `OVER (WHEN cond)` makes a row
//! count only when `cond` holds; other rows read the state without changing it.
//!
//! The parser ([`crate::sql`]) takes each call out of the query and leaves a column in
//! its place ([`column_name`]); the stage computes those columns and hands the stream's
//! rows with them appended to the rest of the rule. Arguments are evaluated by small
//! DataFusion projections, one per nesting level (a call may use another's result, as
//! in `lag(ts) OVER (WHEN had_changed(true, status))`).
//!
//! State is bounded: a key not seen for [`KEY_IDLE_MS`] is forgotten, and past
//! [`MAX_KEYS`] keys per call the least recently seen are; both are counted.

mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::{can_cast_types, cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::ast::{Expr, Ident, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::query::CompiledQuery;
use crate::row_errors::run_isolating;
use crate::stream_def::{EventTime, StreamDef};
use state::{Inputs, State};

/// A key (of one call) not seen for this long, by the clock, is forgotten: 24 hours.
pub const KEY_IDLE_MS: i64 = 24 * 3_600_000;
/// Keys one call keeps at most; past it the least recently seen tenth is forgotten.
pub const MAX_KEYS: usize = 100_000;
/// How often idle keys are looked for.
const SWEEP_EVERY_MS: i64 = 60_000;

/// The column holding the result of a rule's `i`th analytic call.
pub(crate) fn column_name(i: usize) -> String {
    format!("__fg_an{i}")
}

/// The call whose result a column holds, for a name made by [`column_name`].
pub(crate) fn column_index(name: &str) -> Option<usize> {
    name.strip_prefix("__fg_an")?.parse().ok()
}

/// What an `acc_*` function accumulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccKind {
    Sum,
    Min,
    Max,
    Count,
    Avg,
}

/// An analytic function with its constant arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum AnalyticFn {
    /// `lag(expr[, offset[, default[, ignore null]]])`: the value `offset` counted rows
    /// back; nulls are not counted unless `ignore null` is false.
    Lag { offset: usize, ignore_null: bool },
    /// `latest(expr[, default])`: the last non-null value.
    Latest,
    /// `changed_col(ignore null, expr)`: the value when it differs from the last one.
    ChangedCol { ignore_null: bool },
    /// `had_changed(ignore null, expr, ...)`: whether any value differs from its last.
    HadChanged { ignore_null: bool },
    /// `acc_sum(expr[, begin, reset])` and the like: accumulated over the rule's life,
    /// or from a row where `begin` holds up to one where `reset` does.
    Acc { kind: AccKind, conditional: bool },
    /// `deadband(value, band[, heartbeat])`: true when the value moved more than `band`
    /// (in percent of the last value passed, for `deadband_pct`) since the last row it
    /// was true for, or when `heartbeat` has elapsed since then.
    Deadband {
        band: f64,
        percent: bool,
        heartbeat_ms: Option<i64>,
    },
}

/// One analytic call taken out of a rule's query.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticCall {
    pub func: AnalyticFn,
    /// The function's name as written, lower case.
    pub name: String,
    /// The expressions evaluated per row: the value(s) first, then `lag`'s and
    /// `latest`'s default or `acc_*`'s begin and reset conditions.
    pub args: Vec<Expr>,
    /// `had_changed(true, *)`: every column of the stream is a value too.
    pub all_columns: bool,
    pub partition: Vec<Expr>,
    pub when: Option<Expr>,
    /// 0, or one more than the deepest call its expressions use.
    pub level: usize,
}

impl AnalyticCall {
    /// How many of `args` are values (the rest are defaults or conditions); with `*`,
    /// the stream's columns are values besides.
    fn values(&self) -> usize {
        match self.func {
            AnalyticFn::HadChanged { .. } => self.args.len(),
            _ => 1,
        }
    }
}

/// What [`AnalyticStage::apply`] gives back.
pub(crate) struct Applied {
    /// The rows that went through, with the result columns appended.
    pub batch: RecordBatch,
    /// Keys forgotten (idle, or past the limit).
    pub forgotten: u64,
    /// Rows of the input left out, with why.
    pub failed: Vec<(usize, String)>,
}

/// Evaluates a rule's analytic calls over each batch of its stream.
pub(crate) struct AnalyticStage {
    levels: Vec<Level>,
    calls: Vec<CallState>,
    /// The stream's columns, then one result column per call in evaluation order.
    schema: SchemaRef,
    event_time: Option<EventTime>,
    needs_time: bool,
    last_sweep: i64,
}

/// The calls of one nesting level and the projection evaluating their arguments.
struct Level {
    input: SchemaRef,
    query: CompiledQuery,
    calls: Vec<usize>,
}

/// A call's function, where its inputs are in its level's output, and its state.
struct CallState {
    func: AnalyticFn,
    start: usize,
    /// Columns of values, then of defaults or conditions, then of partition keys.
    values: usize,
    extra: usize,
    keys: usize,
    when: bool,
    out_type: DataType,
    null: ScalarValue,
    converter: Option<RowConverter>,
    entries: HashMap<Box<[u8]>, Entry>,
}

struct Entry {
    state: State,
    /// When (processing time, ms) the key was last seen.
    seen: i64,
}

fn plan_error(msg: String) -> DataFusionError {
    DataFusionError::Plan(msg)
}

impl AnalyticStage {
    /// Plans the argument projections of `calls` over `stream`.
    pub async fn compile(stream: &StreamDef, calls: &[AnalyticCall]) -> Result<Self> {
        let mut fields: Vec<Field> = stream
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut states: Vec<Option<CallState>> = (0..calls.len()).map(|_| None).collect();
        let mut levels = Vec::new();
        let depth = calls.iter().map(|c| c.level).max().unwrap_or(0);
        for level in 0..=depth {
            let input: SchemaRef = Arc::new(Schema::new(fields.clone()));
            let mut items = Vec::new();
            let mut members = Vec::new();
            let mut layout = Vec::new();
            for (i, call) in calls.iter().enumerate().filter(|(_, c)| c.level == level) {
                let start = items.len();
                let mut values: Vec<String> = call.args[..call.values()]
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                if call.all_columns {
                    values.extend(
                        stream
                            .schema
                            .fields()
                            .iter()
                            .map(|f| Ident::with_quote('"', f.name()).to_string()),
                    );
                }
                let extra: Vec<String> = call.args[call.values()..]
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                let keys: Vec<String> = call.partition.iter().map(|e| e.to_string()).collect();
                let when: Vec<String> = call.when.iter().map(|e| e.to_string()).collect();
                layout.push((
                    i,
                    start,
                    values.len(),
                    extra.len(),
                    keys.len(),
                    !when.is_empty(),
                ));
                for e in values.iter().chain(&extra).chain(&keys).chain(&when) {
                    items.push(format!("{e} AS \"__fg_arg{}\"", items.len()));
                }
                members.push(i);
            }
            let sql = format!("SELECT {} FROM {}", items.join(", "), stream.name);
            let statement = Parser::parse_sql(&GenericDialect {}, &sql)
                .map_err(|e| plan_error(format!("analytic arguments: {e}")))?
                .pop();
            let Some(Statement::Query(query)) = statement else {
                return Err(plan_error("analytic arguments: not a query".into()));
            };
            let compiled = CompiledQuery::compile(&stream.name, input.clone(), &query).await?;
            if compiled.aggregates {
                return Err(plan_error(
                    "an analytic function (lag, latest, changed_col, had_changed, acc_*, \
                     deadband) reads single rows: its arguments cannot be aggregates"
                        .into(),
                ));
            }
            let out = compiled.schema();
            for (i, start, values, extra, keys, when) in layout {
                let call = &calls[i];
                let types: Vec<&DataType> = out.fields()[start..]
                    .iter()
                    .map(|f| f.data_type())
                    .collect();
                let out_type = result_type(call, types[0])?;
                for (j, t) in types[values..values + extra].iter().enumerate() {
                    check_extra(call, j, t, &out_type)?;
                }
                if when
                    && !matches!(
                        types[values + extra + keys],
                        DataType::Boolean | DataType::Null
                    )
                {
                    return Err(plan_error(format!(
                        "{}: the condition after WHEN must be true or false, not {}",
                        call.name,
                        types[values + extra + keys]
                    )));
                }
                let converter = match keys {
                    0 => None,
                    _ => Some(RowConverter::new(
                        types[values + extra..values + extra + keys]
                            .iter()
                            .map(|t| SortField::new((*t).clone()))
                            .collect(),
                    )?),
                };
                fields.push(Field::new(column_name(i), out_type.clone(), true));
                states[i] = Some(CallState {
                    func: call.func.clone(),
                    start,
                    values,
                    extra,
                    keys,
                    when,
                    null: ScalarValue::try_from(&out_type)?,
                    out_type,
                    converter,
                    entries: HashMap::new(),
                });
            }
            levels.push(Level {
                input,
                query: compiled,
                calls: members,
            });
        }
        let calls: Vec<CallState> = states.into_iter().flatten().collect();
        let needs_time = calls.iter().any(|c| {
            matches!(
                c.func,
                AnalyticFn::Deadband {
                    heartbeat_ms: Some(_),
                    ..
                }
            )
        });
        Ok(Self {
            levels,
            calls,
            schema: Arc::new(Schema::new(fields)),
            event_time: stream.event_time.clone(),
            needs_time,
            last_sweep: i64::MIN,
        })
    }

    /// The stream's schema with the result columns appended.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Keys held, over all calls.
    pub fn keys(&self) -> usize {
        self.calls.iter().map(|c| c.entries.len()).sum()
    }

    /// Computes every call over `batch`, which arrived at `now`. A row whose arguments
    /// fail to evaluate (a CAST that cannot convert) is left out, before it changes the
    /// state of the calls of its level and those after it.
    pub async fn apply(&mut self, batch: &RecordBatch, now: i64) -> Result<Applied> {
        let mut times = match (&self.event_time, self.needs_time) {
            (_, false) => None,
            (Some(et), true) => Some(et.millis(batch.column(et.index))),
            (None, true) => Some(Int64Array::from_value(now, batch.num_rows())),
        };
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        // The row of `batch` each remaining row is.
        let mut rows: Vec<usize> = (0..batch.num_rows()).collect();
        let mut failed = Vec::new();
        for level in &self.levels {
            let input = RecordBatch::try_new(level.input.clone(), cols.clone())?;
            let run = run_isolating(&level.query, &input).await?;
            if !run.failed.is_empty() {
                let bad: HashSet<usize> = run.failed.iter().map(|(i, _)| *i).collect();
                failed.extend(run.failed.into_iter().map(|(i, e)| (rows[i], e)));
                let keep = UInt32Array::from_iter_values(
                    (0..rows.len())
                        .filter(|i| !bad.contains(i))
                        .map(|i| i as u32),
                );
                for c in &mut cols {
                    *c = take(c, &keep, None)?;
                }
                times = match times {
                    Some(t) => Some(take(&t, &keep, None)?.as_primitive().clone()),
                    None => None,
                };
                rows = keep.values().iter().map(|i| rows[*i as usize]).collect();
            }
            let out = concat_batches(&level.query.schema(), &run.out)?;
            for &c in &level.calls {
                cols.push(self.calls[c].eval(&out, times.as_ref(), now)?);
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        Ok(Applied {
            batch: RecordBatch::try_new(self.schema.clone(), cols)?,
            forgotten: self.expire(now),
            failed,
        })
    }

    /// Forgets keys idle for too long (looked for once a minute) and, past the limit,
    /// the least recently seen; returns how many.
    fn expire(&mut self, now: i64) -> u64 {
        let sweep = now.saturating_sub(self.last_sweep) >= SWEEP_EVERY_MS;
        let mut forgotten = 0;
        for c in &mut self.calls {
            let before = c.entries.len();
            if sweep {
                c.entries
                    .retain(|_, e| now.saturating_sub(e.seen) < KEY_IDLE_MS);
            }
            if c.entries.len() > MAX_KEYS {
                let keep = MAX_KEYS * 9 / 10;
                let mut seen: Vec<i64> = c.entries.values().map(|e| e.seen).collect();
                let cut = seen.len() - keep;
                let (_, oldest_kept, _) = seen.select_nth_unstable(cut);
                let oldest_kept = *oldest_kept;
                let mut over = c.entries.len() - keep;
                c.entries.retain(|_, e| {
                    if over > 0 && e.seen < oldest_kept {
                        over -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
            forgotten += (before - c.entries.len()) as u64;
        }
        if sweep {
            self.last_sweep = now;
        }
        forgotten
    }
}

/// The type of a call's result, checking its value's type.
fn result_type(call: &AnalyticCall, value: &DataType) -> Result<DataType> {
    let numeric = value.is_numeric() || *value == DataType::Null;
    Ok(match &call.func {
        AnalyticFn::Lag { .. } | AnalyticFn::Latest | AnalyticFn::ChangedCol { .. } => {
            value.clone()
        }
        AnalyticFn::HadChanged { .. } => DataType::Boolean,
        AnalyticFn::Acc {
            kind: AccKind::Count,
            ..
        } => DataType::Int64,
        AnalyticFn::Acc { .. } | AnalyticFn::Deadband { .. } if !numeric => {
            return Err(plan_error(format!(
                "{} takes a number, not {value}; CAST it, e.g. CAST(x AS DOUBLE)",
                call.name
            )));
        }
        AnalyticFn::Acc { .. } => DataType::Float64,
        AnalyticFn::Deadband { .. } => DataType::Boolean,
    })
}

/// Checks a default (`lag`, `latest`) or condition (`acc_*`) argument's type.
fn check_extra(call: &AnalyticCall, j: usize, t: &DataType, out_type: &DataType) -> Result<()> {
    match call.func {
        AnalyticFn::Acc { .. } if !matches!(t, DataType::Boolean | DataType::Null) => {
            Err(plan_error(format!(
                "{}'s {} condition must be true or false, not {t}",
                call.name,
                if j == 0 { "begin" } else { "reset" }
            )))
        }
        AnalyticFn::Lag { .. } | AnalyticFn::Latest if !can_cast_types(t, out_type) => {
            Err(plan_error(format!(
                "{}'s default is {t}, which cannot stand for a value of type {out_type}",
                call.name
            )))
        }
        _ => Ok(()),
    }
}

impl CallState {
    /// The call's results for the rows of its level's output `out`, in order.
    fn eval(
        &mut self,
        out: &RecordBatch,
        times: Option<&Int64Array>,
        now: i64,
    ) -> Result<ArrayRef> {
        let n = out.num_rows();
        if n == 0 {
            return Ok(new_empty_array(&self.out_type));
        }
        let cols = &out.columns()[self.start..];
        let mut extra: Vec<ArrayRef> = cols[self.values..self.values + self.extra].to_vec();
        if matches!(self.func, AnalyticFn::Lag { .. } | AnalyticFn::Latest) {
            for e in &mut extra {
                *e = cast(e, &self.out_type)?;
            }
        }
        let numbers = match self.func {
            AnalyticFn::Acc { .. } | AnalyticFn::Deadband { .. } => {
                Some(cast(&cols[0], &DataType::Float64)?)
            }
            _ => None,
        };
        let inputs = Inputs {
            values: &cols[..self.values],
            extra: &extra,
            numbers: numbers.as_ref().map(|a| a.as_primitive()),
            times,
            null: &self.null,
        };
        let keys = &cols[self.values + self.extra..self.values + self.extra + self.keys];
        let rows = match &self.converter {
            Some(c) => Some(c.convert_columns(keys)?),
            None => None,
        };
        let when = self
            .when
            .then(|| cols[self.values + self.extra + self.keys].clone());
        let when = when.as_ref().and_then(|w| w.as_boolean_opt());
        let mut results = Vec::with_capacity(n);
        for i in 0..n {
            let key: &[u8] = match &rows {
                Some(r) => r.row(i).data(),
                None => &[],
            };
            let valid = match (self.when, when) {
                (false, _) => true,
                (true, Some(w)) => w.is_valid(i) && w.value(i),
                // A WHEN that is always null.
                (true, None) => false,
            };
            if !self.entries.contains_key(key) {
                let state = State::new(&self.func, self.values);
                self.entries.insert(key.into(), Entry { state, seen: now });
            }
            let Some(entry) = self.entries.get_mut(key) else {
                return Err(DataFusionError::Internal("analytic key vanished".into()));
            };
            entry.seen = now;
            results.push(entry.state.step(&self.func, &inputs, i, valid)?);
        }
        ScalarValue::iter_to_array(results)
    }
}
