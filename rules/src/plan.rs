//! Planning a rule once and running the plan over many micro-batches.
//!
//! A rule's query is planned against a [`SlotTable`]: a table whose scan reads whatever
//! batches were put into its slot just before the plan is executed. The physical plan is
//! built once; each micro-batch only fills the slot and executes the same plan again.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{Query, Statement};

/// The batches the next execution of a plan will read.
type Slot = Arc<Mutex<Vec<RecordBatch>>>;

/// A rule's query, planned once, executable over any number of micro-batches.
pub(crate) struct CompiledQuery {
    plan: Arc<dyn ExecutionPlan>,
    slot: Slot,
    task_ctx: Arc<TaskContext>,
    /// Whether the logical plan aggregates (needs a window to be meaningful on a stream).
    pub aggregates: bool,
}

impl CompiledQuery {
    /// Plans `query` against a table named `table` with the given schema.
    pub async fn compile(table: &str, input: SchemaRef, query: &Query) -> Result<Self> {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(8192)
            .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false)
            .set_bool("datafusion.execution.collect_statistics", false);
        let ctx = SessionContext::new_with_config(config);
        let slot: Slot = Arc::default();
        ctx.register_table(
            table,
            Arc::new(SlotTable {
                schema: input,
                slot: slot.clone(),
            }),
        )?;
        let state = ctx.state();
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(Statement::Query(
            Box::new(query.clone()),
        )));
        let logical = state.statement_to_plan(statement).await?;
        let aggregates = logical.exists(|p| Ok(matches!(p, LogicalPlan::Aggregate(_))))?;
        let plan = state.create_physical_plan(&logical).await?;
        Ok(Self {
            plan,
            slot,
            task_ctx: state.task_ctx(),
            aggregates,
        })
    }

    /// The schema of the plan's output.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Runs the plan over `input` and returns its output batches.
    pub async fn run(&self, input: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        *self.slot.lock().map_err(poisoned)? = input;
        let out = collect(self.plan.clone(), self.task_ctx.clone()).await;
        // Never let a failed run leave its input for the next one.
        self.slot.lock().map_err(poisoned)?.clear();
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
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(SlotExec {
            slot: self.slot.clone(),
            projection: projection.cloned(),
            schema,
            properties,
        }))
    }
}

/// The scan of a [`SlotTable`]: takes the slot's batches when executed.
struct SlotExec {
    slot: Slot,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
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
