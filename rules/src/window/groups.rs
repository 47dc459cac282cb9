//! Partial aggregate state of one pane (or window): the distinct group keys seen and,
//! per aggregate function, one accumulator holding every group's state.
//!
//! This is what lets a windowed rule keep a few bytes per key and pane instead of every
//! row: rows are folded into the accumulators as they arrive, and a window's result is
//! evaluated (or its panes' states merged) when it closes.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateMode, aggregate_expressions, evaluate_many};

/// How a rule's rows are aggregated: what identifies a group, and what is computed.
pub(crate) struct AggregateSpec {
    /// Group-key expressions (the rule's GROUP BY without the window), over the
    /// aggregate's input rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the evaluated keys.
    pub key_schema: SchemaRef,
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Arguments of each aggregate (ordering expressions appended for order-sensitive
    /// ones), over the aggregate's input rows.
    args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// `FILTER (WHERE ...)` of each aggregate.
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

impl AggregateSpec {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_schema: SchemaRef,
        aggregates: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    ) -> Result<Self> {
        let args = aggregate_expressions(&aggregates, &AggregateMode::Single, 0)?;
        Ok(Self {
            keys,
            key_schema,
            aggregates,
            args,
            filters,
        })
    }

    fn accumulator(agg: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>> {
        if agg.groups_accumulator_supported() {
            agg.create_groups_accumulator()
        } else {
            let agg = agg.clone();
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                agg.create_accumulator()
            })))
        }
    }
}

/// The keys of the groups of a [`GroupState`], and their accumulated state.
pub(crate) struct Snapshot {
    pub keys: Vec<ArrayRef>,
    /// Per aggregate, its state columns, one row per group.
    pub states: Vec<Vec<ArrayRef>>,
    pub groups: usize,
}

/// Distinct groups and their accumulators.
pub(crate) struct GroupState {
    /// `None` when the rule has no keys besides the window: one group.
    keys: Option<Box<dyn GroupValues>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    groups: usize,
    /// Scratch space for group indices.
    indices: Vec<usize>,
}

impl GroupState {
    pub fn new(spec: &AggregateSpec) -> Result<Self> {
        let keys = if spec.keys.is_empty() {
            None
        } else {
            Some(new_group_values(
                spec.key_schema.clone(),
                &GroupOrdering::None,
            )?)
        };
        let accumulators = spec
            .aggregates
            .iter()
            .map(AggregateSpec::accumulator)
            .collect::<Result<_>>()?;
        Ok(Self {
            keys,
            accumulators,
            groups: 0,
            indices: Vec::new(),
        })
    }

    /// Bytes of memory held.
    pub fn size(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.size())
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + self.indices.capacity() * std::mem::size_of::<usize>()
    }

    /// Assigns each row of `keys` its group index (in `self.indices`).
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<()> {
        self.indices.clear();
        match &mut self.keys {
            Some(values) => {
                values.intern(keys, &mut self.indices)?;
                self.groups = values.len();
            }
            None => {
                self.indices.resize(rows, 0);
                if rows > 0 {
                    self.groups = 1;
                }
            }
        }
        Ok(())
    }

    /// Folds aggregate input rows into the state.
    pub fn update(&mut self, spec: &AggregateSpec, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = spec
            .keys
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<Vec<_>>>()?;
        self.intern(&keys, batch.num_rows())?;
        let args = evaluate_many(&spec.args, batch)?;
        for ((acc, values), filter) in self.accumulators.iter_mut().zip(&args).zip(&spec.filters) {
            let filter: Option<BooleanArray> = match filter {
                Some(f) => Some(
                    f.evaluate(batch)?
                        .into_array(batch.num_rows())?
                        .as_boolean()
                        .clone(),
                ),
                None => None,
            };
            acc.update_batch(values, &self.indices, filter.as_ref(), self.groups)?;
        }
        Ok(())
    }

    /// Folds the state of other groups (from [`GroupState::take`]) into this one.
    pub fn merge(&mut self, other: &Snapshot) -> Result<()> {
        if other.groups == 0 {
            return Ok(());
        }
        self.intern(&other.keys, other.groups)?;
        for (acc, state) in self.accumulators.iter_mut().zip(&other.states) {
            acc.merge_batch(state, &self.indices, self.groups)?;
        }
        Ok(())
    }

    /// Takes every group's keys and state out, leaving the state empty.
    pub fn take(&mut self) -> Result<Snapshot> {
        let groups = std::mem::take(&mut self.groups);
        let keys = match &mut self.keys {
            Some(values) if groups > 0 => values.emit(EmitTo::All)?,
            _ => Vec::new(),
        };
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            keys,
            states,
            groups,
        })
    }

    /// Every group's keys and final aggregate values; leaves the state empty.
    pub fn finish(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, usize)> {
        let groups = std::mem::take(&mut self.groups);
        let keys = match &mut self.keys {
            Some(values) if groups > 0 => values.emit(EmitTo::All)?,
            _ => Vec::new(),
        };
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<Result<_>>()?;
        Ok((keys, values, groups))
    }
}
