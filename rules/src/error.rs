//! Errors of the rule engine, each carrying where in which file it was found.

use std::fmt;
use std::path::PathBuf;

/// A position in a rule file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, counted from 1; 0 when the error has no place in the file (a file that
    /// cannot be read, say).
    pub line: u64,
    /// Column, counted from 1; 0 when `line` is.
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
    /// The rule file the error is in.
    pub file: PathBuf,
    /// Where in `file` the error is.
    pub pos: Pos,
    /// What is wrong, without the location.
    pub message: String,
}

impl SqlError {
    /// An error at `pos` in `file`.
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
    /// DataFusion failed while running the rule.
    #[error("rule `{rule}`: {source}")]
    DataFusion {
        /// The rule's name.
        rule: String,
        /// The error DataFusion returned.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Building or reshaping the Arrow batches of the rule's rows failed.
    #[error("rule `{rule}`: {source}")]
    Arrow {
        /// The rule's name.
        rule: String,
        /// The error Arrow returned.
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
    /// Some rows of a batch failed (a CAST that cannot convert, say) and were left out;
    /// the batch's other rows went on.
    #[error(
        "rule `{rule}`: {rows} row(s) failed and were left out (the batch's other rows \
         went on): {first}"
    )]
    Rows {
        /// The rule's name.
        rule: String,
        /// Number of rows left out.
        rows: usize,
        /// The error of the first row left out.
        first: String,
    },
    /// A panic in the rule's execution stopped it for good: it takes no more rows, and
    /// the stream's other rules run on.
    #[error("rule `{rule}` stopped after a panic: {message}")]
    Stopped {
        /// The rule's name.
        rule: String,
        /// The panic's message.
        message: String,
    },
}
