//! Column types of stream declarations: scalars, structs and lists, nested freely.
//!
//! ```text
//! type   := scalar | STRUCT '(' fields ')' | STRUCT '<' fields '>'
//!         | ARRAY '(' type ')' | ARRAY '<' type '>' | type '[' ']'
//! fields := name type (',' name type)*
//! ```
//!
//! The parenthesised spelling is eKuiper's, the angle-bracket one SQL's (Spark, BigQuery,
//! DuckDB). Field names may be quoted.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::Cursor;
use crate::error::{Pos, SqlError};
use crate::stream_def::column_type;

/// How deeply types may nest; deeper declarations are refused rather than recursed into.
const MAX_DEPTH: usize = 32;

const KNOWN: &str = "use STRING, BIGINT, DOUBLE, BOOLEAN, TIMESTAMP, \
                     STRUCT(name TYPE, ...) or ARRAY(TYPE)";

/// What a type is declared for, named in errors: a column, a struct field or list elements.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Column(&'a str),
    Field(&'a str),
    Elements(&'a str),
}

impl Owner<'_> {
    fn describe(&self) -> String {
        match self {
            Owner::Column(c) => format!("column `{c}`"),
            Owner::Field(p) => format!("field `{p}`"),
            Owner::Elements(p) => format!("the elements of `{p}`"),
        }
    }

    fn path(&self) -> String {
        match self {
            Owner::Column(p) | Owner::Field(p) => p.to_string(),
            Owner::Elements(p) => format!("{p}[]"),
        }
    }
}

/// Parses the type of column `column`.
pub(super) fn column(c: &mut Cursor, column: &str) -> Result<DataType, SqlError> {
    parse(c, Owner::Column(column), 0)
}

fn parse(c: &mut Cursor, owner: Owner<'_>, depth: usize) -> Result<DataType, SqlError> {
    let pos = c.pos();
    if depth > MAX_DEPTH {
        return Err(c.error_at(
            pos,
            format!("column types nest at most {MAX_DEPTH} levels deep"),
        ));
    }
    let (name, _) = c.ident(&format!("a type for {}", owner.describe()))?;
    let mut dt = match name.to_ascii_uppercase().as_str() {
        "STRUCT" => parse_struct(c, owner, pos, depth)?,
        "ARRAY" => {
            let (close, open_pos) = open(c, "ARRAY", "e.g. ARRAY(BIGINT) or ARRAY<BIGINT>")?;
            if close.at(c) {
                return Err(c.error_here(format!(
                    "ARRAY needs an element type for {}",
                    owner.describe()
                )));
            }
            let path = owner.path();
            let item = parse(c, Owner::Elements(&path), depth + 1)?;
            close.expect(c, "ARRAY", open_pos)?;
            list_of(item)
        }
        _ => column_type(&name).ok_or_else(|| {
            c.error_at(
                pos,
                format!("unknown type `{name}` for {} ({KNOWN})", owner.describe()),
            )
        })?,
    };
    while c.eat_token(&Token::LBracket) {
        c.expect_token(&Token::RBracket, "`]` (a list type is written TYPE[])")?;
        dt = list_of(dt);
    }
    Ok(dt)
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

fn parse_struct(
    c: &mut Cursor,
    owner: Owner<'_>,
    struct_pos: Pos,
    depth: usize,
) -> Result<DataType, SqlError> {
    let empty = || {
        format!(
            "STRUCT for {} needs at least one field, e.g. STRUCT(name STRING)",
            owner.describe()
        )
    };
    if matches!(c.peek().map(|t| &t.token), Some(Token::Neq)) {
        // `STRUCT<>`, read by the tokenizer as the `<>` operator.
        return Err(c.error_here(empty()));
    }
    let (close, open_pos) = open(
        c,
        "STRUCT",
        "e.g. STRUCT(name STRING) or STRUCT<name STRING>",
    )?;
    if close.at(c) {
        let p = c.pos();
        return Err(c.error_at(p, empty()));
    }
    let prefix = owner.path();
    let mut fields: Vec<Field> = Vec::new();
    loop {
        let (name, name_pos) = c.ident(&format!("a field name in the STRUCT at {struct_pos}"))?;
        if fields.iter().any(|f| f.name().eq_ignore_ascii_case(&name)) {
            return Err(c.error_at(
                name_pos,
                format!("field `{name}` is declared twice in `{prefix}`"),
            ));
        }
        let path = format!("{prefix}.{name}");
        let dt = parse(c, Owner::Field(&path), depth + 1)?;
        fields.push(Field::new(name, dt, true));
        if c.eat_token(&Token::Comma) {
            continue;
        }
        close.expect(c, "STRUCT", open_pos)?;
        break;
    }
    Ok(DataType::Struct(fields.into()))
}

/// The bracket that closes a STRUCT or ARRAY: the one matching how it was opened.
#[derive(Clone, Copy)]
enum Close {
    Paren,
    Angle,
}

/// Consumes the `(` or `<` after STRUCT or ARRAY; returns how it must be closed and where
/// it was opened.
fn open(c: &mut Cursor, kw: &str, example: &str) -> Result<(Close, Pos), SqlError> {
    let pos = c.pos();
    if c.eat_token(&Token::LParen) {
        Ok((Close::Paren, pos))
    } else if c.eat_token(&Token::Lt) {
        Ok((Close::Angle, pos))
    } else {
        Err(c.error_here(format!("expected `(` or `<` after {kw}, {example}")))
    }
}

impl Close {
    /// Whether the next token is this closing bracket (not consumed).
    fn at(self, c: &mut Cursor) -> bool {
        match c.peek().map(|t| &t.token) {
            Some(Token::RParen) => matches!(self, Close::Paren),
            Some(Token::Gt | Token::ShiftRight) => matches!(self, Close::Angle),
            _ => false,
        }
    }

    /// Consumes the closing bracket, or names what was expected and where it opened.
    fn expect(self, c: &mut Cursor, kw: &str, open_pos: Pos) -> Result<(), SqlError> {
        let (closed, open, close) = match self {
            Close::Paren => (c.eat_token(&Token::RParen), "(", ")"),
            Close::Angle => (c.eat_close_angle(), "<", ">"),
        };
        if closed {
            return Ok(());
        }
        let comma = if kw == "STRUCT" { "`,` or " } else { "" };
        Err(c.error_here(format!(
            "expected {comma}`{close}` to close the {kw}{open} opened at {open_pos}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use datafusion::arrow::datatypes::Fields;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    use super::*;

    fn parse_type(text: &str) -> Result<DataType, String> {
        let tokens = Tokenizer::new(&GenericDialect {}, text)
            .tokenize_with_location()
            .unwrap();
        let tokens = tokens
            .into_iter()
            .filter(|t| t.token != Token::EOF)
            .collect();
        let mut c = Cursor::new(Path::new("f.sql"), tokens);
        let dt = column(&mut c, "col").map_err(|e| e.to_string())?;
        assert!(c.at_end(), "left over after {text:?}: {:?}", c.peek());
        Ok(dt)
    }

    fn list(item: DataType) -> DataType {
        DataType::List(Arc::new(Field::new("item", item, true)))
    }

    fn strukt(fields: Vec<(&str, DataType)>) -> DataType {
        DataType::Struct(Fields::from(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn scalars_keep_their_meaning() {
        assert_eq!(parse_type("bigint"), Ok(DataType::Int64));
        assert_eq!(parse_type("STRING"), Ok(DataType::Utf8));
        assert_eq!(parse_type("float"), Ok(DataType::Float64));
    }

    #[test]
    fn both_spellings_give_the_same_types() {
        let reading = strukt(vec![("site", DataType::Utf8), ("temp", DataType::Float64)]);
        assert_eq!(
            parse_type("STRUCT(site STRING, temp DOUBLE)"),
            Ok(reading.clone())
        );
        assert_eq!(
            parse_type("struct<site string, temp double>"),
            Ok(reading.clone())
        );
        let tags = list(DataType::Utf8);
        assert_eq!(parse_type("ARRAY(STRING)"), Ok(tags.clone()));
        assert_eq!(parse_type("array<string>"), Ok(tags.clone()));
        assert_eq!(parse_type("STRING[]"), Ok(tags));
    }

    #[test]
    fn types_nest() {
        assert_eq!(
            parse_type("ARRAY<ARRAY<BIGINT>>"),
            Ok(list(list(DataType::Int64)))
        );
        assert_eq!(
            parse_type("ARRAY<ARRAY<ARRAY<BOOLEAN>>>"),
            Ok(list(list(list(DataType::Boolean))))
        );
        assert_eq!(parse_type("DOUBLE[][]"), Ok(list(list(DataType::Float64))));
        let expected = strukt(vec![
            ("id", DataType::Int64),
            (
                "points",
                list(strukt(vec![
                    ("x", DataType::Float64),
                    ("tags", list(DataType::Utf8)),
                ])),
            ),
            ("meta", strukt(vec![("Unit Name", DataType::Utf8)])),
        ]);
        // eKuiper's spelling, SQL's, and a mix of them with quoted names.
        assert_eq!(
            parse_type(
                "STRUCT(id BIGINT, points ARRAY(STRUCT(x DOUBLE, tags ARRAY(STRING))), \
                 meta STRUCT(\"Unit Name\" STRING))"
            ),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_type(
                "STRUCT<id BIGINT, points ARRAY<STRUCT<x DOUBLE, tags ARRAY<STRING>>>, \
                 meta STRUCT<`Unit Name` STRING>>"
            ),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_type(
                "STRUCT<id BIGINT, points STRUCT(x DOUBLE, tags STRING[])[], \
                 meta STRUCT<\"Unit Name\" STRING>>"
            ),
            Ok(expected)
        );
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases = [
            // (type text, column of the error, words in the message)
            (
                "STRUCT(a BIGNT)",
                10,
                vec!["unknown type `BIGNT`", "`col.a`"],
            ),
            ("ARRAY<STRNG>", 7, vec!["unknown type", "elements of `col`"]),
            (
                "STRUCT(a BIGINT, b ARRAY(FOO))",
                26,
                vec!["elements of `col.b`"],
            ),
            ("STRUCT()", 8, vec!["at least one field"]),
            ("STRUCT<>", 7, vec!["at least one field"]),
            ("STRUCT< >", 9, vec!["at least one field"]),
            ("ARRAY()", 7, vec!["element type"]),
            (
                "STRUCT(a BIGINT, A STRING)",
                18,
                vec!["`A` is declared twice"],
            ),
            (
                "STRUCT(a STRUCT(x INT, y INT, x INT))",
                31,
                vec!["`x` is declared twice in `col.a`"],
            ),
            (
                "STRUCT<a BIGINT)",
                16,
                vec!["`,` or `>`", "STRUCT< opened at 1:7", "found `)`"],
            ),
            (
                "STRUCT(a BIGINT",
                16,
                vec!["`)`", "STRUCT( opened at 1:7", "end of the statement"],
            ),
            (
                "ARRAY(BIGINT, x)",
                13,
                vec!["`)` to close the ARRAY( opened at 1:6"],
            ),
            ("ARRAY<BIGINT)", 13, vec!["`>` to close the ARRAY<"]),
            ("ARRAY BIGINT", 7, vec!["`(` or `<` after ARRAY"]),
            ("STRUCT", 7, vec!["`(` or `<` after STRUCT"]),
            ("STRUCT(1 BIGINT)", 8, vec!["expected a field name"]),
            ("BIGINT[", 8, vec!["`]`"]),
        ];
        for (text, col, words) in cases {
            let err = parse_type(text).expect_err(text);
            let at = format!("f.sql:1:{col}: ");
            assert!(
                err.starts_with(&at),
                "{text:?}: {err:?} should start {at:?}"
            );
            for w in words {
                assert!(err.contains(w), "{text:?}: {err:?} should mention {w:?}");
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let text = format!("{}BIGINT{}", "ARRAY(".repeat(5000), ")".repeat(5000));
        let err = parse_type(&text).unwrap_err();
        assert!(err.contains("at most 32 levels"), "{err}");
        let ok = format!("{}BIGINT{}", "ARRAY(".repeat(32), ")".repeat(32));
        let mut dt = parse_type(&ok).unwrap();
        let mut levels = 0;
        while let DataType::List(f) = dt {
            dt = f.data_type().clone();
            levels += 1;
        }
        assert_eq!((levels, dt), (32, DataType::Int64));
    }
}
