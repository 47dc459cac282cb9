//! Rows: a node group's columns, and the values its nodes report turned into Arrow rows.
//!
//! Every row has `server`, `group` and `timestamp` (when the gateway received it, epoch
//! milliseconds), then per node its value and `<node>_quality` (`good`, `uncertain`,
//! `bad`), `<node>_status` (the StatusCode's name, e.g. `Good`, `BadNodeIdUnknown`),
//! `<node>_source_time` and `<node>_server_time` (epoch milliseconds, null when the
//! server sent none).
//!
//! One change set (one publish of a subscription, one read of a poll) becomes one row,
//! each node holding its latest value; when a node changed more than once in the set,
//! its further values start further rows, so no reported value is lost.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use opcua::types::{DataValue, StatusCode, Variant};

use super::config::GroupConfig;
use super::values::{ColumnBuilder, NodeType, epoch_ms, variant_type_name};

/// One node's latest report.
#[derive(Debug, Clone)]
struct Cell {
    value: Variant,
    status: StatusCode,
    source_time: Option<i64>,
    server_time: Option<i64>,
}

impl Default for Cell {
    fn default() -> Self {
        Cell {
            value: Variant::Empty,
            status: StatusCode::BadWaitingForInitialData,
            source_time: None,
            server_time: None,
        }
    }
}

/// The quality class of a status code, as the `<node>_quality` columns spell it.
pub fn quality(s: StatusCode) -> &'static str {
    if s.is_good() {
        "good"
    } else if s.is_uncertain() {
        "uncertain"
    } else {
        "bad"
    }
}

/// A value that is not of its node's configured type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMismatch {
    /// The node's column name.
    pub node: String,
    /// The node's configured type.
    pub expected: NodeType,
    /// The type the server sent.
    pub got: String,
}

/// A group's columns and the rows of its current change set.
#[derive(Debug)]
pub struct GroupRows {
    server: Arc<str>,
    group: Arc<str>,
    schema: SchemaRef,
    names: Vec<String>,
    types: Vec<NodeType>,
    /// Each node's latest report, carried into the rows where it did not change.
    last: Vec<Cell>,
    /// Rows of the current change set; the last one is still open.
    rows: Vec<Vec<Cell>>,
    /// Per node: whether it changed in the open row.
    changed: Vec<bool>,
}

impl GroupRows {
    /// The rows of `group` on server `server`.
    pub fn new(server: &str, group: &GroupConfig) -> Self {
        let n = group.nodes.len();
        GroupRows {
            server: server.into(),
            group: group.name.as_str().into(),
            schema: schema(group),
            names: group.nodes.iter().map(|n| n.name.clone()).collect(),
            types: group.nodes.iter().map(|n| n.node_type).collect(),
            last: vec![Cell::default(); n],
            rows: Vec::new(),
            changed: vec![false; n],
        }
    }

    /// The group's columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Records node `i`'s report in the current change set.
    pub fn record(&mut self, i: usize, dv: DataValue) {
        if i >= self.last.len() {
            return;
        }
        let cell = Cell {
            value: dv.value.unwrap_or(Variant::Empty),
            status: dv.status.unwrap_or(StatusCode::Good),
            source_time: dv.source_timestamp.as_ref().and_then(epoch_ms),
            server_time: dv.server_timestamp.as_ref().and_then(epoch_ms),
        };
        if self.rows.is_empty() || self.changed[i] {
            self.rows.push(self.last.clone());
            self.changed.iter_mut().for_each(|c| *c = false);
        }
        self.changed[i] = true;
        if let Some(row) = self.rows.last_mut() {
            row[i] = cell.clone();
        }
        self.last[i] = cell;
    }

    /// Records a status for node `i` without a value (a failed read, an unknown node).
    pub fn record_status(&mut self, i: usize, status: StatusCode) {
        self.record(
            i,
            DataValue {
                status: Some(status),
                ..DataValue::null()
            },
        );
    }

    /// Whether the change set has rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Ends the change set: its rows as one batch received at `now_ms`, and the values
    /// that were not of their node's type (their cells are null, status
    /// `BadTypeMismatch`).
    pub fn finish(&mut self, now_ms: i64) -> Result<(RecordBatch, Vec<TypeMismatch>), ArrowError> {
        let rows = std::mem::take(&mut self.rows);
        self.changed.iter_mut().for_each(|c| *c = false);
        let n = rows.len();
        let mut mismatches = Vec::new();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(3 + self.types.len() * 5);
        cols.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(&*self.server, n),
        )));
        cols.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(&*self.group, n),
        )));
        cols.push(Arc::new(Int64Array::from_value(now_ms, n)));
        for (i, t) in self.types.iter().enumerate() {
            let mut values = ColumnBuilder::new(*t, n);
            let mut statuses = Vec::with_capacity(n);
            for row in &rows {
                let c = &row[i];
                let mut status = c.status;
                if values.append(&c.value).is_err() {
                    status = StatusCode::BadTypeMismatch;
                    let got = variant_type_name(&c.value);
                    if !mismatches
                        .iter()
                        .any(|m: &TypeMismatch| m.node == self.names[i] && m.got == got)
                    {
                        mismatches.push(TypeMismatch {
                            node: self.names[i].clone(),
                            expected: *t,
                            got,
                        });
                    }
                }
                statuses.push(status);
            }
            cols.push(values.finish());
            cols.push(Arc::new(StringArray::from_iter_values(
                statuses.iter().map(|s| quality(*s)),
            )));
            cols.push(Arc::new(StringArray::from_iter_values(
                statuses.iter().map(|s| s.sub_code().name()),
            )));
            cols.push(Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| r[i].source_time),
            )));
            cols.push(Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| r[i].server_time),
            )));
        }
        Ok((RecordBatch::try_new(self.schema.clone(), cols)?, mismatches))
    }
}

/// The columns of a group's rows.
pub fn schema(group: &GroupConfig) -> SchemaRef {
    let mut fields = vec![
        Field::new("server", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("timestamp", DataType::Int64, false),
    ];
    for n in &group.nodes {
        fields.push(Field::new(&n.name, n.node_type.data_type(), true));
        fields.push(Field::new(
            format!("{}_quality", n.name),
            DataType::Utf8,
            false,
        ));
        fields.push(Field::new(
            format!("{}_status", n.name),
            DataType::Utf8,
            false,
        ));
        fields.push(Field::new(
            format!("{}_source_time", n.name),
            DataType::Int64,
            true,
        ));
        fields.push(Field::new(
            format!("{}_server_time", n.name),
            DataType::Int64,
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    use opcua::types::DateTime;

    fn group() -> GroupConfig {
        toml::from_str(
            "name = 'g'\nnodes = [\n{ name = 'a', node_id = 'ns=2;s=A', type = 'double' },\n\
             { name = 'b', node_id = 'ns=2;s=B', type = 'string' }]",
        )
        .unwrap()
    }

    fn dv(v: Variant) -> DataValue {
        DataValue {
            value: Some(v),
            status: Some(StatusCode::Good),
            source_timestamp: Some(DateTime::from(
                1_700_000_000_000_i64 * 10_000 + 116_444_736_000_000_000,
            )),
            ..DataValue::null()
        }
    }

    #[test]
    fn a_node_changing_twice_starts_a_second_row_that_keeps_the_others() {
        let mut g = GroupRows::new("plc", &group());
        g.record(0, dv(Variant::Double(1.0)));
        g.record(1, dv(Variant::from("x")));
        g.record(0, dv(Variant::Double(2.0)));
        let (b, mismatches) = g.finish(5).unwrap();
        assert!(mismatches.is_empty());
        assert_eq!(b.num_rows(), 2);
        let a = b.column_by_name("a").unwrap().as_primitive::<Float64Type>();
        assert_eq!((a.value(0), a.value(1)), (1.0, 2.0));
        let s = b.column_by_name("b").unwrap().as_string::<i32>();
        assert_eq!((s.value(0), s.value(1)), ("x", "x"));
        let t = b
            .column_by_name("a_source_time")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(t.value(0), 1_700_000_000_000);
        assert!(g.is_empty());
    }

    #[test]
    fn nodes_not_heard_from_and_wrong_types_are_bad_with_their_status() {
        let mut g = GroupRows::new("plc", &group());
        g.record(0, dv(Variant::Boolean(true)));
        let (b, mismatches) = g.finish(5).unwrap();
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].node, "a");
        assert_eq!(mismatches[0].got, "Boolean");
        assert!(b.column_by_name("a").unwrap().is_null(0));
        let st = |c: &str| {
            b.column_by_name(c)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_string()
        };
        assert_eq!(st("a_status"), "BadTypeMismatch");
        assert_eq!(st("a_quality"), "bad");
        assert_eq!(st("b_status"), "BadWaitingForInitialData");
        assert!(b.column_by_name("b_source_time").unwrap().is_null(0));
    }
}
