//! eKuiper's hit functions: how many times a rule gave a result before, and the event
//! time it last did. State is per rule, kept across micro-batches and across reloads
//! that keep the rule.
//!
//! - `last_hit_count()` and `last_hit_time()` (rules without a window): for each row,
//!   the number of earlier rows that passed WHERE and the event time of the last of
//!   them, 0 before any. [`RowHits`] computes them as two columns appended to the rows
//!   before the query runs. When WHERE reads them itself (`WHERE last_hit_count() < 3`),
//!   each row is decided with the values the rows before it left, which costs one
//!   evaluation of the WHERE per row that passes.
//! - `event_time()` in a rule without a window is the row's event time (its arrival
//!   time without `TIMESTAMP`), a third column beside them; in a windowed rule it is the
//!   window's end.
//! - `last_agg_hit_count()` and `last_agg_hit_time()` (windowed rules): the number of
//!   earlier windows that gave a result (passed HAVING) and the end of the last one.
//!   [`WindowHits`] holds them and gives the functions the rule's plan calls; the rule
//!   runs its windows one at a time and tells it which of them gave rows.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{Expr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::query::CompiledQuery;
use crate::row_errors::run_isolating;
use crate::stream_def::EventTime;

/// The column `last_hit_count()` becomes.
pub(crate) const HIT_COUNT: &str = "__fg_hit_count";
/// The column `last_hit_time()` becomes.
pub(crate) const HIT_TIME: &str = "__fg_hit_time";
/// The column `event_time()` becomes in a rule without a window.
pub(crate) const EVENT_TIME: &str = "__fg_event_time";
/// The function `last_agg_hit_count()` becomes.
pub(crate) const AGG_HIT_COUNT: &str = "__fg_agg_hit_count";
/// The function `last_agg_hit_time()` becomes.
pub(crate) const AGG_HIT_TIME: &str = "__fg_agg_hit_time";

/// Which hit functions a rule's query uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitFunctions {
    /// `last_hit_count()` or `last_hit_time()`.
    pub rows: bool,
    /// `last_agg_hit_count()` or `last_agg_hit_time()`.
    pub windows: bool,
    /// `event_time()` in a rule without a window (in a windowed rule it is
    /// `window_end`).
    pub event_time: bool,
}

/// `schema` with the hit columns and the event time appended.
pub(crate) fn with_hit_columns(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in [HIT_COUNT, HIT_TIME, EVENT_TIME] {
        fields.push(Field::new(name, DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

/// Computes `last_hit_count()`, `last_hit_time()` and `event_time()` for the rows of a
/// rule without a window.
pub(crate) struct RowHits {
    count: i64,
    time: i64,
    /// `SELECT (WHERE) IS TRUE FROM stream`, when the rule has a WHERE and counts hits.
    passes: Option<CompiledQuery>,
    /// Whether the WHERE reads the hit columns (then rows are decided one pass at a time).
    reads_hits: bool,
    event_time: Option<EventTime>,
    schema: SchemaRef,
}

impl RowHits {
    /// Plans the rule's `filter` (its WHERE, `None` when it counts no hits) over
    /// `schema`: the stream's rows with the hit columns appended.
    pub async fn compile(
        stream: &str,
        schema: SchemaRef,
        filter: Option<&Expr>,
        event_time: Option<EventTime>,
    ) -> Result<Self> {
        let passes = match filter {
            None => None,
            Some(f) => {
                let sql = format!("SELECT ({f}) IS TRUE AS passes FROM {stream}");
                let statement = Parser::parse_sql(&GenericDialect {}, &sql)
                    .map_err(|e| DataFusionError::Plan(format!("WHERE of last_hit_*: {e}")))?
                    .pop();
                let Some(Statement::Query(query)) = statement else {
                    return Err(DataFusionError::Plan(
                        "WHERE of last_hit_*: not a query".into(),
                    ));
                };
                Some(CompiledQuery::compile(stream, schema.clone(), &query).await?)
            }
        };
        let reads_hits = filter.is_some_and(|f| {
            let text = f.to_string();
            text.contains(HIT_COUNT) || text.contains(HIT_TIME)
        });
        Ok(Self {
            count: 0,
            time: 0,
            passes,
            reads_hits,
            event_time,
            schema,
        })
    }

    /// `batch` (the stream's rows, arrived at `now`) with the hit columns appended; the
    /// rows that pass WHERE count for the rows after them.
    pub async fn apply(&mut self, batch: &RecordBatch, now: i64) -> Result<RecordBatch> {
        let n = batch.num_rows();
        // A row without an event time has its arrival time.
        let times: Int64Array = match &self.event_time {
            Some(et) => et
                .millis(batch.column(et.index))
                .iter()
                .map(|t| t.unwrap_or(now))
                .collect(),
            None => Int64Array::from_value(now, n),
        };
        let mut counts = Vec::with_capacity(n);
        let mut hit_times = Vec::with_capacity(n);
        let mut k = 0;
        while k < n {
            let passed = self
                .passes(&batch.slice(k, n - k), times.slice(k, n - k))
                .await?;
            // Without the hit columns in WHERE, one evaluation decides every row.
            let decided = match (self.reads_hits, passed.iter().position(|p| *p)) {
                (false, _) => n - k,
                (true, Some(first)) => first + 1,
                (true, None) => n - k,
            };
            for (i, p) in passed.iter().take(decided).enumerate() {
                counts.push(self.count);
                hit_times.push(self.time);
                if *p {
                    self.count += 1;
                    self.time = times.value(k + i);
                }
            }
            k += decided;
        }
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        cols.push(Arc::new(Int64Array::from(counts)));
        cols.push(Arc::new(Int64Array::from(hit_times)));
        cols.push(Arc::new(times));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// Whether each row of `rows` passes WHERE, read with the hit values as they stand.
    /// A row WHERE fails on does not pass (the rule's query reports it).
    async fn passes(&self, rows: &RecordBatch, times: Int64Array) -> Result<Vec<bool>> {
        let n = rows.num_rows();
        let Some(q) = &self.passes else {
            return Ok(vec![true; n]);
        };
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        cols.push(Arc::new(Int64Array::from_value(self.count, n)));
        cols.push(Arc::new(Int64Array::from_value(self.time, n)));
        cols.push(Arc::new(times));
        let input = RecordBatch::try_new(self.schema.clone(), cols)?;
        let run = run_isolating(q, &input).await?;
        let mut failed = run.failed.iter().map(|(i, _)| *i).peekable();
        let mut values = run
            .out
            .iter()
            .flat_map(|b| b.column(0).as_boolean().iter().collect::<Vec<_>>());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if failed.peek() == Some(&i) {
                failed.next();
                out.push(false);
            } else {
                out.push(values.next().flatten().unwrap_or(false));
            }
        }
        Ok(out)
    }
}

/// A windowed rule's count of windows that gave a result, and the end of the last one.
#[derive(Debug, Default)]
pub(crate) struct WindowHits {
    count: AtomicI64,
    time: AtomicI64,
}

impl WindowHits {
    /// The functions the rule's plan calls in place of `last_agg_hit_count()` and
    /// `last_agg_hit_time()`.
    pub fn functions(self: &Arc<Self>) -> Vec<ScalarUDF> {
        [
            (AGG_HIT_COUNT, Reading::Count),
            (AGG_HIT_TIME, Reading::Time),
        ]
        .into_iter()
        .map(|(name, reading)| {
            ScalarUDF::new_from_impl(HitFunction {
                name,
                reading,
                hits: self.clone(),
                // Its one argument ties it to the aggregate; it is not read.
                signature: Signature::any(1, Volatility::Volatile),
            })
        })
        .collect()
    }

    /// Records that the window ending at `end` gave `rows` result rows.
    pub fn window_done(&self, end: i64, rows: usize) {
        if rows > 0 {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.time.store(end, Ordering::Relaxed);
        }
    }
}

/// The end of the window whose rows `batch` holds (its last column is `window_end`).
pub(crate) fn window_end(batch: &RecordBatch) -> Option<i64> {
    let col = batch.columns().last()?;
    let ends = col.as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()?;
    (!ends.is_empty() && ends.is_valid(0)).then(|| ends.value(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reading {
    Count,
    Time,
}

#[derive(Debug)]
struct HitFunction {
    name: &'static str,
    reading: Reading,
    hits: Arc<WindowHits>,
    signature: Signature,
}

impl PartialEq for HitFunction {
    fn eq(&self, other: &Self) -> bool {
        self.reading == other.reading && Arc::ptr_eq(&self.hits, &other.hits)
    }
}

impl Eq for HitFunction {}

impl Hash for HitFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.reading.hash(state);
        Arc::as_ptr(&self.hits).hash(state);
    }
}

impl ScalarUDFImpl for HitFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let value = match self.reading {
            Reading::Count => self.hits.count.load(Ordering::Relaxed),
            Reading::Time => self.hits.time.load(Ordering::Relaxed),
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(value))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_without_rows_does_not_count() {
        let hits = WindowHits::default();
        hits.window_done(10, 0);
        hits.window_done(20, 2);
        hits.window_done(30, 0);
        assert_eq!(hits.count.load(Ordering::Relaxed), 1);
        assert_eq!(hits.time.load(Ordering::Relaxed), 20);
    }
}
