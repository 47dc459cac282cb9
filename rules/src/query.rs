//! Planning a rule once and running the plan over many micro-batches.
//!
//! A rule's query is planned against a [`SlotTable`]: a table whose scan reads whatever
//! batches were put into its slot just before the plan is executed. The physical plan is
//! built once; each micro-batch only fills the slot and executes the same plan again.
//!
//! A windowed rule's plan can also be cut at its aggregate ([`CompiledQuery::split`]):
//! the part below it runs per micro-batch and feeds incremental aggregate state, the
//! part above it (HAVING, the SELECT list, ORDER BY) runs over the finished aggregates
//! of the windows that close.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, ScalarUDF, TableType};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{Query, Statement};

use crate::table_def::TableDef;

/// The batches the next execution of a plan will read.
type Slot = Arc<Mutex<Vec<RecordBatch>>>;

/// A rule's query, planned once, executable over any number of micro-batches.
pub(crate) struct CompiledQuery {
    plan: Reusable,
    slot: Slot,
    task_ctx: Arc<TaskContext>,
    /// Whether the logical plan aggregates (needs a window to be meaningful on a stream).
    pub aggregates: bool,
}

impl CompiledQuery {
    /// Plans `query` against a table named `table` with the given schema.
    pub async fn compile(table: &str, input: SchemaRef, query: &Query) -> Result<Self> {
        Self::compile_with(table, input, query, &[], &[]).await
    }

    /// [`CompiledQuery::compile`], with lookup tables the query may join and functions
    /// of the rule's own (which may hold its state).
    pub async fn compile_with(
        table: &str,
        input: SchemaRef,
        query: &Query,
        lookups: &[&TableDef],
        functions: &[ScalarUDF],
    ) -> Result<Self> {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192)
            // Dynamic filters carry state from one execution to the next; a plan that
            // is executed once per micro-batch must not have any.
            .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false)
            .set_bool(
                "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
                false,
            )
            .set_bool(
                "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
                false,
            )
            .set_bool(
                "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
                false,
            )
            .set_bool("datafusion.execution.collect_statistics", false);
        let ctx = SessionContext::new_with_config(config);
        crate::functions::register(&ctx);
        for f in functions {
            ctx.register_udf(f.clone());
        }
        let slot: Slot = Arc::default();
        ctx.register_table(
            table,
            Arc::new(SlotTable {
                schema: input,
                slot: slot.clone(),
            }),
        )?;
        for t in lookups {
            let rows = MemTable::try_new(t.schema.clone(), vec![t.rows.to_vec()])?;
            ctx.register_table(t.name.as_str(), Arc::new(rows))?;
        }
        let state = ctx.state();
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(Statement::Query(
            Box::new(query.clone()),
        )));
        let logical = state.statement_to_plan(statement).await?;
        let aggregates = logical.exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))?;
        let plan = state.create_physical_plan(&logical).await?;
        Ok(Self {
            plan: Reusable::new(plan),
            slot,
            task_ctx: state.task_ctx(),
            aggregates,
        })
    }

    /// The schema of the plan's output.
    pub fn schema(&self) -> SchemaRef {
        self.plan.plan.schema()
    }

    /// Runs the plan over `input` and returns its output batches.
    pub async fn run(&self, input: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.plan.run(&self.slot, &self.task_ctx, input).await
    }

    /// Cuts the plan at its aggregate, when it has exactly one plain GROUP BY aggregate
    /// (no grouping sets, no second aggregation level such as a rewritten DISTINCT).
    pub fn split(&self) -> Option<SplitQuery> {
        let mut aggs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        self.plan
            .plan
            .apply(|node| {
                if node.is::<AggregateExec>() {
                    aggs.push(node.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .ok()?;
        let top = aggs.first()?.clone();
        let top_exec = top.downcast_ref::<AggregateExec>()?;
        // The aggregate that reads raw rows: the top one in single mode, or the partial
        // one under a final one.
        let raw = match top_exec.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned if aggs.len() == 1 => top_exec,
            AggregateMode::Final | AggregateMode::FinalPartitioned if aggs.len() == 2 => {
                let lower = aggs[1].downcast_ref::<AggregateExec>()?;
                (*lower.mode() == AggregateMode::Partial).then_some(lower)?
            }
            _ => return None,
        };
        let group_by = raw.group_expr();
        if group_by.has_grouping_set() || !group_by.null_expr().is_empty() {
            return None;
        }
        let output_schema = top.schema();
        let output_slot: Slot = Arc::default();
        let reader: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
            output_slot.clone(),
            output_schema.clone(),
            None,
        ));
        let post = self
            .plan
            .plan
            .clone()
            .transform_down(|node| {
                Ok(if Arc::ptr_eq(&node, &top) {
                    Transformed::yes(reader.clone())
                } else {
                    Transformed::no(node)
                })
            })
            .ok()?
            .data;
        Some(SplitQuery {
            input: Reusable::new(raw.input().clone()),
            input_slot: self.slot.clone(),
            group_by: group_by.clone(),
            aggregates: raw.aggr_expr().to_vec(),
            filters: raw.filter_expr().to_vec(),
            output_schema,
            post: Reusable::new(post),
            output_slot,
            task_ctx: self.task_ctx.clone(),
        })
    }
}

/// A windowed rule's plan cut at its aggregate.
pub(crate) struct SplitQuery {
    /// The plan below the aggregate: reads the rule's input slot, yields the rows the
    /// aggregate consumes.
    input: Reusable,
    input_slot: Slot,
    /// GROUP BY expressions over `input`'s schema.
    pub group_by: PhysicalGroupBy,
    /// The aggregate functions, their arguments evaluated over `input`'s schema.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE ...)` of each aggregate.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// What the aggregate yields: the group columns, then one column per aggregate.
    pub output_schema: SchemaRef,
    /// The plan above the aggregate, reading finished aggregates from `output_slot`.
    post: Reusable,
    output_slot: Slot,
    task_ctx: Arc<TaskContext>,
}

impl SplitQuery {
    /// The schema of the rows the aggregate consumes.
    pub fn input_schema(&self) -> SchemaRef {
        self.input.plan.schema()
    }

    /// Runs the part below the aggregate over the rule's (window-tagged) rows.
    pub async fn run_input(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.input.run(&self.input_slot, &self.task_ctx, rows).await
    }

    /// Runs the part above the aggregate over finished aggregate rows.
    pub async fn run_output(&self, aggregated: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        self.post
            .run(&self.output_slot, &self.task_ctx, aggregated)
            .await
    }
}

/// Runs after which a [`Reusable`] plan is replaced by a fresh copy.
const RENEW_EVERY: u32 = 64;

/// A physical plan executed again and again, each time over what its slot holds.
///
/// DataFusion's operators register new metrics into their plan node at every
/// execution, so a node executed without end grows without end (about a kilobyte per
/// run for a filter and projection). What runs is therefore a copy of the plan as built,
/// replaced by a fresh one every [`RENEW_EVERY`] runs: memory stays bounded for a cost of
/// one tree copy per 64 micro-batches.
struct Reusable {
    /// The plan as built: never executed after its first copy replaces it.
    plan: Arc<dyn ExecutionPlan>,
    /// The copy that runs, and how many times it has.
    current: Mutex<(Arc<dyn ExecutionPlan>, u32)>,
    /// Whether executing the plan changes state inside it (a top-k sort's shared
    /// threshold), so that it must be renewed before every run.
    stateful: bool,
}

impl Reusable {
    fn new(plan: Arc<dyn ExecutionPlan>) -> Self {
        let mut stateful = false;
        let _ = plan.apply(|node| {
            // A top-k sort's threshold, a hash join's build side: kept by the node
            // from one execution to the next.
            stateful |= node.is::<SortExec>() || node.name().contains("Join");
            Ok(TreeNodeRecursion::Continue)
        });
        Self {
            current: Mutex::new((plan.clone(), 0)),
            plan,
            stateful,
        }
    }

    async fn run(
        &self,
        slot: &Slot,
        task_ctx: &Arc<TaskContext>,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let plan = {
            let mut current = self.current.lock().map_err(poisoned)?;
            if self.stateful || current.1 >= RENEW_EVERY {
                *current = (reset_plan_states(self.plan.clone())?, 0);
            }
            current.1 += 1;
            current.0.clone()
        };
        *slot.lock().map_err(poisoned)? = input;
        let out = collect(plan, task_ctx.clone()).await;
        // Never let a failed run leave its input for the next one.
        slot.lock().map_err(poisoned)?.clear();
        out
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> DataFusionError {
    DataFusionError::Internal("rule input slot poisoned by a panic".into())
}

/// A table whose rows are the batches put into its slot before each execution.
#[derive(Debug)]
struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(SlotExec::new(
            self.slot.clone(),
            schema,
            projection.cloned(),
        )))
    }
}

/// The scan of a [`SlotTable`]: takes the slot's batches when executed.
struct SlotExec {
    slot: Slot,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl SlotExec {
    /// A scan of `slot`, whose batches have `schema` after `projection`.
    fn new(slot: Slot, schema: SchemaRef, projection: Option<Vec<usize>>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            slot,
            projection,
            schema,
            properties,
        }
    }
}

impl fmt::Debug for SlotExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotExec")
            .field("projection", &self.projection)
            .finish()
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("SlotExec has no children".into()))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = std::mem::take(&mut *self.slot.lock().map_err(poisoned)?);
        let stream = MemoryStream::try_new(batches, self.schema.clone(), self.projection.clone())?;
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    /// Metrics registered in the running copy of the plan, over all its nodes.
    fn metrics_held(q: &CompiledQuery) -> usize {
        let current = q.plan.current.lock().unwrap().0.clone();
        let mut n = 0;
        let _ = current.apply(|node| {
            n += node.metrics().map_or(0, |m| m.iter().count());
            Ok(TreeNodeRecursion::Continue)
        });
        n
    }

    #[tokio::test]
    async fn a_plan_run_again_and_again_holds_bounded_metrics() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let sql = "SELECT a + 1 AS b FROM t WHERE a > 1";
        let Statement::Query(query) = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0)
        else {
            panic!("not a query")
        };
        let q = CompiledQuery::compile("t", schema.clone(), &query)
            .await
            .unwrap();
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let mut most = 0;
        for run in 0..RENEW_EVERY * 4 {
            let out = q.run(vec![batch.clone()]).await.unwrap();
            assert_eq!(
                out.iter().map(|b| b.num_rows()).sum::<usize>(),
                2,
                "run {run}"
            );
            most = most.max(metrics_held(&q));
        }
        let after_one_run = {
            let fresh = CompiledQuery::compile("t", batch.schema(), &query)
                .await
                .unwrap();
            fresh.run(vec![batch.clone()]).await.unwrap();
            metrics_held(&fresh)
        };
        assert!(
            after_one_run > 0,
            "the plan registers no metrics: the test shows nothing"
        );
        assert!(
            most <= after_one_run * RENEW_EVERY as usize,
            "{most} metrics held after {} runs ({after_one_run} per run)",
            RENEW_EVERY * 4
        );
    }
}
