//! Errors of the rule engine, each carrying where in which file it was found.

use std::fmt;
use std::path::PathBuf;

/// A position in a rule file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error in a stream or rule declaration, reported as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{pos}: {message}", file.display())]
pub struct SqlError {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
}

impl SqlError {
    pub fn new(file: impl Into<PathBuf>, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            pos,
            message: message.into(),
        }
    }
}

/// Errors raised while running a rule over data.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("rule `{rule}`: {source}")]
    DataFusion {
        rule: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("rule `{rule}`: {source}")]
    Arrow {
        rule: String,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
    #[error(
        "rule `{rule}`: {rows} row(s) failed and were left out (the batch's other rows \
         went on): {first}"
    )]
    Rows {
        rule: String,
        rows: usize,
        first: String,
    },
    #[error("rule `{rule}` stopped after a panic: {message}")]
    Stopped { rule: String, message: String },
}
