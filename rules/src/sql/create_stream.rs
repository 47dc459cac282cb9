//! `CREATE STREAM name (col TYPE, ...) WITH (KEY = 'value', ...)`.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{Cursor, types};
use crate::error::{Pos, SqlError};
use crate::stream_def::{EventTime, PayloadFormat, Source, StreamDef, TimeEncoding};

/// The source types `TYPE` names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SourceType {
    Mqtt,
    Modbus,
    Opcua,
}

pub(super) fn parse(c: &mut Cursor) -> Result<StreamDef, SqlError> {
    let (name, pos) = c.ident("a stream name")?;
    let fields = columns(c, "stream")?;
    let mut datasource: Option<(String, crate::Pos)> = None;
    let mut source_type = (SourceType::Mqtt, None);
    let mut format = (PayloadFormat::Json, None);
    let mut ts_col = None;
    let mut ts_format = None;
    let mut lateness = Duration::ZERO;
    let mut idle_timeout = None;
    options(c, "stream", |c, o| {
        let Opt {
            key,
            key_pos,
            value,
            value_pos,
        } = o;
        match key.to_ascii_uppercase().as_str() {
            "DATASOURCE" | "TOPIC" => datasource = Some((value, value_pos)),
            "TYPE" => {
                let t = match value.to_ascii_lowercase().as_str() {
                    "mqtt" => SourceType::Mqtt,
                    "modbus" => SourceType::Modbus,
                    "opcua" => SourceType::Opcua,
                    _ => {
                        return Err(c.error_at(
                            value_pos,
                            format!("unknown source TYPE `{value}` (use mqtt, modbus or opcua)"),
                        ));
                    }
                };
                source_type = (t, Some(value_pos));
            }
            "FORMAT" => {
                if !value.eq_ignore_ascii_case("json") {
                    return Err(c.error_at(
                        value_pos,
                        format!("unsupported FORMAT `{value}` (supported: json)"),
                    ));
                }
                format = (PayloadFormat::Json, Some(value_pos));
            }
            "TIMESTAMP" => ts_col = Some((value, value_pos)),
            "TIMESTAMP_FORMAT" => {
                let enc = TimeEncoding::parse(&value).ok_or_else(|| {
                    c.error_at(
                        value_pos,
                        format!(
                            "unknown TIMESTAMP_FORMAT `{value}` (use epoch_ms, epoch_s or rfc3339)"
                        ),
                    )
                })?;
                ts_format = Some((enc, value_pos));
            }
            "LATENESS" => {
                lateness = humantime::parse_duration(&value).map_err(|e| {
                    c.error_at(
                        value_pos,
                        format!("LATENESS `{value}` is not a duration: {e}"),
                    )
                })?;
            }
            "IDLE_TIMEOUT" => {
                let d = humantime::parse_duration(&value).map_err(|e| {
                    c.error_at(
                        value_pos,
                        format!("IDLE_TIMEOUT `{value}` is not a duration: {e}"),
                    )
                })?;
                idle_timeout = Some(d);
            }
            _ => {
                return Err(c.error_at(
                    key_pos,
                    format!(
                        "unknown stream option `{key}` (known: DATASOURCE, TYPE, FORMAT, \
                             TIMESTAMP, TIMESTAMP_FORMAT, LATENESS, IDLE_TIMEOUT)"
                    ),
                ));
            }
        }
        Ok(())
    })?;
    let (datasource, source_pos) = datasource.ok_or_else(|| {
        let want = match source_type.0 {
            SourceType::Mqtt => "DATASOURCE = 'topic/filter'",
            SourceType::Modbus => "DATASOURCE = 'device/group'",
            SourceType::Opcua => "DATASOURCE = 'server/group'",
        };
        c.error_at(pos, format!("stream `{name}` needs {want}"))
    })?;
    let source = match source_type.0 {
        SourceType::Mqtt => {
            validate_filter(&datasource).map_err(|m| c.error_at(source_pos, m))?;
            Source::Mqtt { filter: datasource }
        }
        SourceType::Modbus => {
            if let (_, Some(p)) = format {
                return Err(c.error_at(
                    p,
                    "FORMAT applies to MQTT payloads; a Modbus stream's rows come decoded",
                ));
            }
            modbus_group(&datasource).map_err(|m| c.error_at(source_pos, m))?
        }
        SourceType::Opcua => {
            if let (_, Some(p)) = format {
                return Err(c.error_at(
                    p,
                    "FORMAT applies to MQTT payloads; an OPC UA stream's rows come decoded",
                ));
            }
            let (server, group) = group_path(&datasource).ok_or_else(|| {
                c.error_at(
                    source_pos,
                    format!(
                        "an OPC UA DATASOURCE is `server/group` (the names in the gateway's \
                         [[opcua.servers]] config), not `{datasource}`"
                    ),
                )
            })?;
            Source::Opcua { server, group }
        }
    };
    let event_time = match ts_col {
        None => {
            if let Some((_, p)) = ts_format {
                return Err(c.error_at(p, "TIMESTAMP_FORMAT needs TIMESTAMP = 'column'"));
            }
            None
        }
        Some((col, col_pos)) => {
            let index = fields
                .iter()
                .position(|f| f.name() == &col)
                .ok_or_else(|| c.error_at(col_pos, undeclared_time_column(&fields, &col)))?;
            let dt = fields[index].data_type().clone();
            if dt.is_nested() {
                return Err(c.error_at(
                    col_pos,
                    format!(
                        "event-time column `{col}` is a {}; event time must be a top-level \
                         BIGINT, DOUBLE or TIMESTAMP column, not a struct or list",
                        if matches!(dt, DataType::Struct(_)) {
                            "STRUCT"
                        } else {
                            "ARRAY"
                        }
                    ),
                ));
            }
            let (encoding, enc_pos) = match ts_format {
                Some(f) => f,
                None if TimeEncoding::Rfc3339.fits(&dt) => (TimeEncoding::Rfc3339, col_pos),
                None => (TimeEncoding::EpochMillis, col_pos),
            };
            if !encoding.fits(&dt) {
                return Err(c.error_at(
                    enc_pos,
                    format!(
                        "event-time column `{col}` has type {dt}, which cannot hold {encoding:?} \
                         (epoch_ms needs BIGINT, epoch_s BIGINT or DOUBLE, rfc3339 TIMESTAMP)"
                    ),
                ));
            }
            Some(EventTime {
                column: col,
                index,
                encoding,
                lateness,
            })
        }
    };
    Ok(StreamDef {
        name,
        schema: Arc::new(Schema::new(fields)),
        source,
        source_pos,
        format: format.0,
        event_time,
        idle_timeout,
        file: c.file().to_path_buf(),
        pos,
    })
}

/// Why `TIMESTAMP = 'col'` names no column: a path into a nested column gets its own
/// explanation, since event time must be a top-level column.
fn undeclared_time_column(fields: &[Field], col: &str) -> String {
    let head = col
        .split(['.', '['])
        .next()
        .unwrap_or(col)
        .trim_matches(['"', '`']);
    let nested = head.len() < col.len()
        && fields
            .iter()
            .any(|f| f.name() == head && f.data_type().is_nested());
    if nested {
        format!(
            "TIMESTAMP `{col}` points inside the nested column `{head}`; event time must be \
             a top-level column: declare the time as its own column of the stream"
        )
    } else {
        format!("TIMESTAMP column `{col}` is not declared")
    }
}

/// A Modbus stream's `DATASOURCE`: `device/group`, as named in the gateway's config.
fn modbus_group(datasource: &str) -> Result<Source, String> {
    match group_path(datasource) {
        Some((device, group)) => Ok(Source::Modbus { device, group }),
        None => Err(format!(
            "a Modbus DATASOURCE is `device/group` (the names in the gateway's [modbus] \
             config; `+/group` for that group of every device), not `{datasource}`"
        )),
    }
}

/// `owner/group`: two non-empty names.
fn group_path(datasource: &str) -> Option<(String, String)> {
    match datasource.split_once('/') {
        Some((owner, group)) if !owner.is_empty() && !group.is_empty() && !group.contains('/') => {
            Some((owner.into(), group.into()))
        }
        _ => None,
    }
}

/// Checks an MQTT topic filter: non-empty, `#` only as the last level, `+` alone in a level.
/// One option of a `WITH (...)` list, with where its name and value stand.
pub(super) struct Opt {
    pub key: String,
    pub key_pos: Pos,
    pub value: String,
    pub value_pos: Pos,
}

/// `WITH (KEY = 'value', ...)` ending the declaration of a `what` (stream, table):
/// hands each option to `each` as it is read, then checks that the statement ends.
pub(super) fn options(
    c: &mut Cursor,
    what: &str,
    mut each: impl FnMut(&mut Cursor, Opt) -> Result<(), SqlError>,
) -> Result<(), SqlError> {
    c.expect_keyword("WITH")?;
    c.expect_token(&Token::LParen, &format!("`(` and the {what}'s options"))?;
    loop {
        let key_pos = c.pos();
        let (key, _) = c.ident("an option name")?;
        c.expect_token(&Token::Eq, "`=`")?;
        let (value, value_pos) = c.string_value(&format!("the value of {key}"))?;
        each(
            c,
            Opt {
                key,
                key_pos,
                value,
                value_pos,
            },
        )?;
        if c.eat_token(&Token::Comma) {
            // A comma may end the list, as eKuiper allows.
            if c.eat_token(&Token::RParen) {
                break;
            }
            continue;
        }
        c.expect_token(&Token::RParen, "`,` or `)`")?;
        break;
    }
    if !c.at_end() {
        return Err(c.error_here(format!("expected `;` after the {what} declaration")));
    }
    Ok(())
}

/// `(col TYPE, ...)`: the columns of a stream or table.
pub(super) fn columns(c: &mut Cursor, of: &str) -> Result<Vec<Field>, SqlError> {
    c.expect_token(&Token::LParen, &format!("`(` and the {of}'s columns"))?;
    let mut fields: Vec<Field> = Vec::new();
    loop {
        let (col, col_pos) = c.ident("a column name")?;
        if fields.iter().any(|f| f.name().eq_ignore_ascii_case(&col)) {
            return Err(c.error_at(col_pos, format!("column `{col}` is declared twice")));
        }
        let dt = types::column(c, &col)?;
        fields.push(Field::new(col, dt, true));
        if c.eat_token(&Token::Comma) {
            // A comma may end the list, as eKuiper allows.
            if c.eat_token(&Token::RParen) {
                break;
            }
            continue;
        }
        c.expect_token(&Token::RParen, "`,` or `)`")?;
        break;
    }
    Ok(fields)
}

fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("DATASOURCE topic filter is empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!(
                "`#` must be a whole last level in topic filter `{filter}`"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "`+` must be a whole level in topic filter `{filter}`"
            ));
        }
    }
    Ok(())
}
