//! Lookup tables: `CREATE TABLE name (col TYPE, ...) WITH (PATH = 'sites.csv')`, rows
//! read from a CSV (with a header line) or JSON-lines file beside the rule file, and
//! joined to a stream by rules (`FROM readings JOIN sites ON ...`).
//!
//! The file is read when the rule files are: a reload (any change in the rules
//! directory, SIGHUP) reads it again, and the rules joining a table whose rows changed
//! are planned afresh with the new rows.

use std::hash::{Hash, Hasher};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder as CsvReader;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder as JsonReader;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Pos;

/// Most bytes a table file may hold: tables are kept in memory and joined to every
/// micro-batch.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// How a table's file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Comma-separated, with a header line naming the columns.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// A declared lookup table with its rows.
#[derive(Debug, Clone)]
pub struct TableDef {
    /// The table's name, which rules `JOIN`.
    pub name: String,
    /// The declared columns; the file's rows are read into this schema.
    pub schema: SchemaRef,
    /// The file the rows come from.
    pub path: PathBuf,
    /// How the file is written (`FORMAT`, else its extension).
    pub format: TableFormat,
    /// The file's rows, kept in memory.
    pub rows: Arc<[RecordBatch]>,
    /// A hash of the file's bytes: equal for an unchanged file.
    pub fingerprint: u64,
    /// The rule file that declares the table.
    pub file: PathBuf,
    /// Where the table's name is written in `file`.
    pub pos: Pos,
}

impl TableDef {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.iter().map(|b| b.num_rows()).sum()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a table's rows; the error says what is wrong, naming the file.
pub(crate) fn load(
    path: &Path,
    format: TableFormat,
    schema: &SchemaRef,
) -> Result<(Arc<[RecordBatch]>, u64), String> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read table file {shown}: {e}"))?
        .len();
    if size > MAX_TABLE_BYTES {
        return Err(format!(
            "table file {shown} is {size} bytes; tables hold at most {MAX_TABLE_BYTES}"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read table file {shown}: {e}"))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let batches: Result<Vec<RecordBatch>, _> = match format {
        TableFormat::Csv => {
            check_header(&bytes, schema).map_err(|m| format!("{shown}:1: {m}"))?;
            CsvReader::new(schema.clone())
                .with_header(true)
                .build(Cursor::new(&bytes))
                .map_err(|e| format!("{shown}: {e}"))?
                .collect()
        }
        TableFormat::JsonLines => {
            let lines = json_lines(&bytes).map_err(|e| format!("{shown}: {e}"))?;
            JsonReader::new(schema.clone())
                .build(Cursor::new(lines.as_ref()))
                .map_err(|e| format!("{shown}: {e}"))?
                .collect()
        }
    };
    let batches = batches.map_err(|e| format!("{shown}: {e}"))?;
    Ok((batches.into(), hasher.finish()))
}

/// A JSON file's rows as JSON lines: the file as it is, or, when it holds one JSON
/// array of objects (as eKuiper's file tables do), its elements one per line.
fn json_lines(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, serde_json::Error> {
    if bytes.trim_ascii_start().first() != Some(&b'[') {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(bytes)?;
    let mut out = Vec::with_capacity(bytes.len());
    for row in rows {
        serde_json::to_writer(&mut out, &row)?;
        out.push(b'\n');
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// A CSV file's header must name the declared columns, in order: a reordered file
/// would otherwise put values in the wrong columns.
fn check_header(bytes: &[u8], schema: &SchemaRef) -> Result<(), String> {
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let header = String::from_utf8_lossy(first);
    let names: Vec<&str> = header
        .trim_end_matches('\r')
        .split(',')
        .map(|n| n.trim().trim_matches('"'))
        .collect();
    let declared: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if names != declared {
        return Err(format!(
            "the header line names the columns {} but the table declares {}",
            names.join(", "),
            declared.join(", ")
        ));
    }
    Ok(())
}
