//! `CREATE TABLE name (col TYPE, ...) WITH (PATH = 'file'[, FORMAT = 'csv' | 'jsonl'])`;
//! eKuiper's `DATASOURCE = 'file', TYPE = 'file'` is the same.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;

use super::Cursor;
use super::create_stream::{self, Opt, options};
use crate::error::SqlError;
use crate::table_def::{TableDef, TableFormat, load};

pub(super) fn parse(c: &mut Cursor) -> Result<TableDef, SqlError> {
    let (name, pos) = c.ident("a table name")?;
    let fields = create_stream::columns(c, "table")?;
    let schema = Arc::new(Schema::new(fields));
    let mut path = None;
    let mut format = None;
    options(c, "table", |c, o| {
        let Opt {
            key,
            key_pos,
            value,
            value_pos,
        } = o;
        match key.to_ascii_uppercase().as_str() {
            "PATH" | "DATASOURCE" => path = Some((value, value_pos)),
            // eKuiper's spelling of a file table.
            "TYPE" if value.eq_ignore_ascii_case("file") => {}
            "TYPE" => {
                return Err(c.error_at(
                    value_pos,
                    format!("table TYPE `{value}`: only file tables are supported (TYPE = 'file')"),
                ));
            }
            "FORMAT" => {
                let f = match value.to_ascii_lowercase().as_str() {
                    "csv" => TableFormat::Csv,
                    "jsonl" | "json" | "ndjson" => TableFormat::JsonLines,
                    _ => {
                        return Err(c.error_at(
                            value_pos,
                            format!("unknown table FORMAT `{value}` (use csv or jsonl)"),
                        ));
                    }
                };
                format = Some(f);
            }
            _ => {
                return Err(c.error_at(
                    key_pos,
                    format!(
                        "unknown table option `{key}` (known: PATH or DATASOURCE, FORMAT, TYPE)"
                    ),
                ));
            }
        }
        Ok(())
    })?;
    let (value, value_pos) =
        path.ok_or_else(|| c.error_at(pos, format!("table `{name}` needs PATH = 'file.csv'")))?;
    // Relative to the rule file's directory.
    let base = c.file().parent().unwrap_or(std::path::Path::new("."));
    let file = base.join(&value);
    let format = match format {
        Some(f) => f,
        None if value.ends_with(".csv") => TableFormat::Csv,
        None if value.ends_with(".jsonl") || value.ends_with(".json") => TableFormat::JsonLines,
        None => {
            return Err(c.error_at(
                value_pos,
                "say the table file's FORMAT ('csv' or 'jsonl'), or name it .csv or .jsonl",
            ));
        }
    };
    let (rows, fingerprint) = load(&file, format, &schema).map_err(|m| c.error_at(value_pos, m))?;
    Ok(TableDef {
        name,
        schema,
        path: file,
        format,
        rows,
        fingerprint,
        file: c.file().to_path_buf(),
        pos,
    })
}
