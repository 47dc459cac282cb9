//! Tumbling and hopping windows aggregated incrementally, in panes.
//!
//! Event time is cut into panes of `gcd(size, slide)`; every window is a run of whole
//! panes. Each pane keeps partial aggregate state per group key ([`GroupState`]), fed
//! as rows arrive; the rows themselves are not kept. When the watermark passes a
//! window's end, its panes' states are merged (a tumbling window is a single pane and
//! needs no merge) and the aggregates evaluated. Memory is bounded by the number of
//! open panes times the number of keys, whatever the row rate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{Field, Int64Type, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;

use super::groups::{AggregateSpec, GroupState};
use crate::engine::{WINDOW_END, WINDOW_START};
use crate::query::SplitQuery;
use crate::watermark::Watermark;

/// Where each group column of the aggregate's output comes from.
#[derive(Debug, Clone, Copy)]
enum GroupColumn {
    /// The n-th group key.
    Key,
    Start,
    End,
}

/// The state of the pane starting at `start`, created when missing.
fn pane_state<'a>(
    panes: &'a mut BTreeMap<i64, GroupState>,
    spec: &AggregateSpec,
    start: i64,
) -> Result<&'a mut GroupState> {
    use std::collections::btree_map::Entry;
    Ok(match panes.entry(start) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(GroupState::new(spec)?),
    })
}

/// Incremental tumbling (`slide == size`) and hopping windows of one rule.
pub(crate) struct IncrementalWindows {
    size: i64,
    slide: i64,
    pane: i64,
    query: SplitQuery,
    spec: AggregateSpec,
    /// `window_start` over the aggregate's input: the pane each input row belongs to.
    start: Arc<dyn PhysicalExpr>,
    layout: Vec<GroupColumn>,
    /// Stream columns plus `window_start`, `window_end`: what the query reads.
    tagged: SchemaRef,
    panes: BTreeMap<i64, GroupState>,
    /// The watermark at the last close: every window ending at or before it is
    /// complete, emitted or (when it held no rows then) never to be emitted.
    closed_to: Option<i64>,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn is_column(e: &Arc<dyn PhysicalExpr>, name: &str) -> bool {
    e.downcast_ref::<Column>().is_some_and(|c| c.name() == name)
}

impl IncrementalWindows {
    /// Builds the state for windows of `size` every `slide` (ms); `None` when the
    /// query's GROUP BY uses the window bounds in a way panes cannot serve.
    pub fn new(
        size: i64,
        slide: i64,
        query: SplitQuery,
        tagged: SchemaRef,
    ) -> Result<Option<Self>> {
        if size <= 0 || slide <= 0 {
            return Ok(None);
        }
        let input_schema = query.input_schema();
        let mut layout = Vec::new();
        let mut keys = Vec::new();
        let mut start = None;
        let mut has_end = false;
        let mut key_fields = Vec::new();
        for (expr, name) in query.group_by.expr() {
            if is_column(expr, WINDOW_START) {
                start = Some(expr.clone());
                layout.push(GroupColumn::Start);
            } else if is_column(expr, WINDOW_END) {
                has_end = true;
                layout.push(GroupColumn::End);
            } else {
                // A key computed from the window bounds would differ per pane.
                if collect_columns(expr)
                    .iter()
                    .any(|c| c.name() == WINDOW_START || c.name() == WINDOW_END)
                {
                    return Ok(None);
                }
                key_fields.push(Field::new(
                    name,
                    expr.data_type(&input_schema)?,
                    expr.nullable(&input_schema)?,
                ));
                keys.push(expr.clone());
                layout.push(GroupColumn::Key);
            }
        }
        let Some(start) = start else { return Ok(None) };
        if !has_end {
            return Ok(None);
        }
        let key_schema = Arc::new(Schema::new(key_fields));
        let spec = AggregateSpec::new(
            keys,
            key_schema,
            query.aggregates.clone(),
            query.filters.clone(),
        )?;
        Ok(Some(Self {
            size,
            slide,
            pane: gcd(size, slide),
            query,
            spec,
            start,
            layout,
            tagged,
            panes: BTreeMap::new(),
            closed_to: None,
        }))
    }

    /// End of the last window holding event time `ts`.
    fn last_end(&self, ts: i64) -> i64 {
        ts.div_euclid(self.slide) * self.slide + self.size
    }

    /// Takes a batch of the rule's (filtered) rows with their event times; returns the
    /// indices of rows too late for every window that holds them.
    pub async fn push(
        &mut self,
        rows: &RecordBatch,
        times: &Int64Array,
        wm: &Watermark,
    ) -> Result<Vec<u32>> {
        let mut late = Vec::new();
        let mut keep = Vec::with_capacity(rows.num_rows());
        let mut starts = Vec::with_capacity(rows.num_rows());
        for (i, ts) in times.iter().enumerate() {
            let Some(ts) = ts else { continue };
            if wm.closes(self.last_end(ts)) {
                late.push(i as u32);
            } else {
                keep.push(i as u32);
                starts.push(ts.div_euclid(self.pane) * self.pane);
            }
        }
        if keep.is_empty() {
            return Ok(late);
        }
        let taken;
        let rows = if keep.len() == rows.num_rows() {
            rows
        } else {
            taken = take_record_batch(rows, &UInt32Array::from(keep))?;
            &taken
        };
        let stream_cols = self.tagged.fields().len() - 2;
        let mut columns: Vec<ArrayRef> = rows.columns()[..stream_cols].to_vec();
        let ends: Int64Array = starts.iter().map(|s| Some(s + self.pane)).collect();
        columns.push(Arc::new(Int64Array::from(starts)));
        columns.push(Arc::new(ends));
        let tagged = RecordBatch::try_new(self.tagged.clone(), columns)?;
        for input in self.query.run_input(vec![tagged]).await? {
            self.fold(&input)?;
        }
        Ok(late)
    }

    /// Folds aggregate input rows into their panes' state.
    fn fold(&mut self, input: &RecordBatch) -> Result<()> {
        if input.num_rows() == 0 {
            return Ok(());
        }
        let starts = self.start.evaluate(input)?.into_array(input.num_rows())?;
        let starts = starts
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| DataFusionError::Internal("window_start is not Int64".into()))?;
        let first = starts.value(0);
        if starts.null_count() == 0 && starts.values().iter().all(|s| *s == first) {
            let spec = &self.spec;
            return pane_state(&mut self.panes, spec, first)?.update(spec, input);
        }
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, s) in starts.iter().enumerate() {
            if let Some(s) = s {
                by_pane.entry(s).or_default().push(i as u32);
            }
        }
        for (start, idx) in by_pane {
            let part = take_record_batch(input, &UInt32Array::from(idx))?;
            pane_state(&mut self.panes, &self.spec, start)?.update(&self.spec, &part)?;
        }
        Ok(())
    }

    /// Aggregates of every window the watermark completed (with `None`: of every
    /// window, as at the end of a finite input), in the aggregate's output schema, each
    /// with its window's end.
    pub fn close(&mut self, wm: Option<&Watermark>) -> Result<Vec<(i64, RecordBatch)>> {
        let limit = match wm {
            None => i64::MAX,
            Some(w) => match w.current() {
                Some(c) => c,
                None => return Ok(vec![]),
            },
        };
        // Windows holding a pane that completed since the last close.
        let mut windows = BTreeSet::new();
        for &p in self.panes.keys() {
            let mut s = p.div_euclid(self.slide) * self.slide;
            while s.saturating_add(self.size) >= p + self.pane {
                let end = s.saturating_add(self.size);
                if end > limit {
                    s -= self.slide;
                    continue;
                }
                if self.closed_to.is_some_and(|c| end <= c) {
                    break;
                }
                windows.insert(s);
                s -= self.slide;
            }
        }
        let mut out = Vec::new();
        for s in windows {
            let end = s.saturating_add(self.size);
            let mut state = if self.pane == self.size {
                match self.panes.remove(&s) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                let mut window = GroupState::new(&self.spec)?;
                let starts: Vec<i64> = self.panes.range(s..end).map(|(p, _)| *p).collect();
                for p in starts {
                    let last = self.last_end(p) <= end;
                    let Some(pane) = self.panes.get_mut(&p) else {
                        continue;
                    };
                    let snap = pane.take()?;
                    window.merge(&snap)?;
                    if last {
                        self.panes.remove(&p);
                    } else {
                        pane.merge(&snap)?;
                    }
                }
                window
            };
            let (keys, values, groups) = state.finish()?;
            if groups > 0 {
                out.push((end, self.output(s, end, keys, values, groups)?));
            }
        }
        if wm.is_none() {
            self.panes.clear();
        } else {
            self.closed_to = Some(self.closed_to.map_or(limit, |c| c.max(limit)));
            let (slide, size) = (self.slide, self.size);
            self.panes
                .retain(|p, _| p.div_euclid(slide) * slide + size > limit);
        }
        Ok(out)
    }

    /// One window's result rows in the aggregate's output schema.
    fn output(
        &self,
        start: i64,
        end: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        groups: usize,
    ) -> Result<RecordBatch> {
        let mut keys = keys.into_iter();
        let mut columns = Vec::with_capacity(self.layout.len() + values.len());
        for c in &self.layout {
            columns.push(match c {
                GroupColumn::Key => keys
                    .next()
                    .ok_or_else(|| DataFusionError::Internal("group key missing".into()))?,
                GroupColumn::Start => Arc::new(Int64Array::from_value(start, groups)) as ArrayRef,
                GroupColumn::End => Arc::new(Int64Array::from_value(end, groups)) as ArrayRef,
            });
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(
            self.query.output_schema.clone(),
            columns,
        )?)
    }

    /// Runs the rule's query above its aggregate (HAVING, SELECT list, ORDER BY) over
    /// finished window aggregates.
    pub async fn results(&mut self, aggregated: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.query.run_output(aggregated).await
    }

    /// Number of open panes.
    pub fn open(&self) -> usize {
        self.panes.len()
    }

    /// Bytes held by the open panes' state.
    pub fn state_bytes(&self) -> usize {
        self.panes.values().map(GroupState::size).sum()
    }
}
