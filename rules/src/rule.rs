//! Rule declarations: a SELECT over one stream, sending its results to named sinks.

use std::path::PathBuf;

use datafusion::sql::sqlparser::ast::Query;

use crate::error::Pos;
use crate::window::WindowSpec;

/// A declared rule: `CREATE RULE name INTO sink[, sink] AS SELECT ... FROM stream ...`.
#[derive(Debug, Clone)]
pub struct RuleDef {
    pub name: String,
    /// Names of the sinks (from the gateway config) that receive every result row.
    pub sinks: Vec<String>,
    /// The stream the rule reads.
    pub stream: String,
    /// The query with the window function taken out of GROUP BY and replaced by
    /// `window_start, window_end`.
    pub query: Box<Query>,
    /// The window in GROUP BY, if any.
    pub window: Option<WindowSpec>,
    pub file: PathBuf,
    pub pos: Pos,
    /// Where the SELECT starts, for errors found while planning.
    pub query_pos: Pos,
}
