//! Rule declarations: a SELECT over one stream, sending its results to named sinks.

use std::path::PathBuf;

use datafusion::sql::sqlparser::ast::Query;

use crate::analytic::AnalyticCall;
use crate::error::{Pos, SqlError};
use crate::hits::HitFunctions;
use crate::sql::Dialect;
use crate::window::WindowSpec;

/// A declared rule: `CREATE RULE name INTO sink[, sink] [LATE INTO sink] [ERRORS INTO sink]
/// AS SELECT ... FROM stream ...`.
#[derive(Debug, Clone)]
pub struct RuleDef {
    /// The rule's name, unique across the rule files.
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
    /// For windowed rules: `SELECT *, <group keys> FROM stream WHERE ...`, run before
    /// rows enter windows (the WHERE is then taken out of `query`). `None` when the rule
    /// has neither a WHERE nor a per-key window.
    pub prefilter: Option<Box<Query>>,
    /// Number of group-key columns `prefilter` appends.
    pub keys: usize,
    /// Optional sink for rows that arrived too late for their window.
    pub late_sink: Option<String>,
    /// Optional sink for rows the rule fails on (a CAST that cannot convert, say), each
    /// with the error; the batch's other rows go on either way.
    pub error_sink: Option<String>,
    /// The analytic calls taken out of `query`, each now a column of its rows
    /// (see [`crate::analytic`]).
    pub analytic: Vec<AnalyticCall>,
    /// Which of eKuiper's hit functions the query uses (see [`crate::hits`]).
    pub hits: HitFunctions,
    /// The dialect of the rule's file.
    pub dialect: Dialect,
    /// The lookup tables the rule joins to its stream.
    pub tables: Vec<String>,
    /// Constructs eKuiper reads differently (default dialect only), for `rules check`.
    pub warnings: Vec<SqlError>,
    /// The rule file that declares the rule.
    pub file: PathBuf,
    /// Where the rule's name is written in `file`.
    pub pos: Pos,
    /// Where the SELECT starts, for errors found while planning.
    pub query_pos: Pos,
    /// Every word of the query with its position, to point planning errors (an unknown
    /// column, say) at the word they are about.
    pub words: Vec<(String, Pos)>,
}
