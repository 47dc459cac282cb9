//! The text of rule files: splitting a file into statements and parsing the two
//! statement kinds, `CREATE STREAM` and `CREATE RULE`.
//!
//! The file is tokenized once with the SQL tokenizer so every token keeps its line and
//! column; positions in errors therefore point into the file, not into a statement.

mod analytic;
mod create_rule;
mod create_stream;
mod create_table;
mod cursor;
mod ekuiper;
mod hits;
mod types;

use std::path::Path;

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, ObjectName, UnaryOperator, Value, visit_expressions};
use datafusion::sql::sqlparser::dialect::{GenericDialect, MySqlDialect};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{Pos, SqlError};
use crate::rule_def::RuleDef;
use crate::stream_def::StreamDef;
use crate::table_def::TableDef;

pub(crate) use create_rule::WINDOW_FUNCTIONS;
pub(crate) use cursor::Cursor;
pub use ekuiper::Dialect;
pub(crate) use ekuiper::{match_columns, row_aggregates};

/// One parsed statement of a rule file.
#[derive(Debug, Clone)]
pub enum Statement {
    Stream(StreamDef),
    Rule(RuleDef),
    Table(TableDef),
    /// A `CREATE STREAM` with an error, by the name it declares (its error is reported
    /// besides): rules reading it are told the stream is broken, not unknown.
    BrokenStream(String),
}

/// Parses every statement of one file's text. Errors in one statement do not stop the
/// others from being parsed; all errors are returned.
///
/// A file whose first statement is `SET DIALECT = ekuiper` is read in eKuiper's dialect
/// (see [`Dialect`]): tokenized again with double quotes for strings and backslash
/// escapes, and its queries translated.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Statement>, Vec<SqlError>) {
    let (chunks, mut errors) = match tokenize(file, text, Dialect::Fieldgate) {
        Ok(tokens) => (split_statements(tokens), vec![]),
        Err(e) => return (vec![], vec![e]),
    };
    let mut dialect = Dialect::Fieldgate;
    let mut chunks = chunks.into_iter().peekable();
    if let Some(first) = chunks.peek()
        && let Some(declared) = ekuiper::dialect_statement(first)
    {
        let at = first_pos(first);
        chunks.next();
        match declared {
            Ok(Dialect::Ekuiper) => {
                dialect = Dialect::Ekuiper;
                match tokenize(file, text, Dialect::Ekuiper) {
                    // The same statements, the first being the SET DIALECT.
                    Ok(tokens) => {
                        chunks = split_statements(tokens)
                            .into_iter()
                            .skip(1)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .peekable()
                    }
                    Err(e) => return (vec![], vec![e]),
                }
            }
            Ok(Dialect::Fieldgate) => {}
            Err(message) => errors.push(SqlError::new(file, at, message)),
        }
    }
    let mut statements = Vec::new();
    for chunk in chunks {
        if ekuiper::dialect_statement(&chunk).is_some() {
            errors.push(SqlError::new(
                file,
                first_pos(&chunk),
                "SET DIALECT must be the first statement of its file: a file is written \
                 in one dialect",
            ));
            continue;
        }
        let name = declared_stream(&chunk);
        let mut cursor = Cursor::new(file, chunk);
        match parse_statement(&mut cursor, dialect) {
            Ok(s) => statements.push(s),
            Err(e) => {
                errors.push(e);
                statements.extend(name.map(Statement::BrokenStream));
            }
        }
    }
    (statements, errors)
}

fn first_pos(tokens: &[TokenWithSpan]) -> Pos {
    tokens
        .iter()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .map_or(Pos::default(), |t| Pos {
            line: t.span.start.line,
            column: t.span.start.column,
        })
}

/// The tokens of a file in a dialect: eKuiper's reads `"..."` as a string (MySQL's
/// tokenizer does the same, with backslash escapes and backticks for names).
fn tokenize(file: &Path, text: &str, dialect: Dialect) -> Result<Vec<TokenWithSpan>, SqlError> {
    let tokens = match dialect {
        Dialect::Fieldgate => Tokenizer::new(&GenericDialect {}, text).tokenize_with_location(),
        Dialect::Ekuiper => Tokenizer::new(&MySqlDialect {}, text).tokenize_with_location(),
    };
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => {
            if let Some(pos) = unclosed_comment(text) {
                let message = "this comment is never closed: `/*` needs its `*/`";
                return Err(SqlError::new(file, pos, message));
            }
            let pos = Pos {
                line: e.location.line,
                column: e.location.column,
            };
            return Err(SqlError::new(file, pos, e.message));
        }
    };
    Ok(tokens)
}

fn parse_statement(c: &mut Cursor, dialect: Dialect) -> Result<Statement, SqlError> {
    c.expect_keyword("CREATE")?;
    let kind = c.peek_word_upper();
    match kind.as_deref() {
        Some("STREAM") => {
            c.next();
            create_stream::parse(c).map(Statement::Stream)
        }
        Some("RULE") => {
            c.next();
            create_rule::parse(c, dialect).map(Statement::Rule)
        }
        Some("TABLE") => {
            c.next();
            create_table::parse(c).map(Statement::Table)
        }
        _ => Err(c.error_here("expected STREAM, TABLE or RULE after CREATE")),
    }
}

/// The number a literal (`3`, `-1.5`) stands for, as written.
fn signed_number(e: &Expr) -> Option<(bool, &str)> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some((false, n.as_str())),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => signed_number(expr).map(|(neg, n)| (!neg, n)),
        _ => None,
    }
}

/// An integer literal's value.
pub(crate) fn int_literal(e: &Expr) -> Option<i64> {
    let (neg, n) = signed_number(e)?;
    let v: i64 = n.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// A numeric literal's value.
pub(crate) fn number_literal(e: &Expr) -> Option<f64> {
    let (neg, n) = signed_number(e)?;
    let v: f64 = n.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Where a `/* ...` comment that is never closed starts, outside strings and quoted names
/// and line comments; `None` when every comment is closed.
fn unclosed_comment(text: &str) -> Option<Pos> {
    let (mut line, mut column) = (1u64, 1u64);
    let mut open: Option<Pos> = None;
    let mut quote: Option<char> = None;
    let mut line_comment = false;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        let here = Pos { line, column };
        let next = chars.peek().copied();
        let mut width = 1;
        if open.is_some() {
            if ch == '*' && next == Some('/') {
                open = None;
                width = 2;
            }
        } else if line_comment {
            line_comment = ch != '\n';
        } else if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
        } else if ch == '/' && next == Some('*') {
            open = Some(here);
            width = 2;
        } else if ch == '-' && next == Some('-') {
            line_comment = true;
        } else if ch == '\'' || ch == '"' || ch == '`' {
            quote = Some(ch);
        }
        for _ in 1..width {
            chars.next();
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += width;
        }
    }
    open
}

/// The name a statement's tokens declare a stream by (`CREATE STREAM name ...`).
fn declared_stream(tokens: &[TokenWithSpan]) -> Option<String> {
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| match &t.token {
            Token::Word(w) => Some(w),
            _ => None,
        });
    let create = words.next()??;
    let stream = words.next()??;
    let name = words.next()??;
    (create.value.eq_ignore_ascii_case("CREATE")
        && (stream.value.eq_ignore_ascii_case("STREAM")
            || stream.value.eq_ignore_ascii_case("TABLE")))
    .then(|| name.value.clone())
}

/// Splits a token list at top-level semicolons, dropping statements that hold nothing
/// but whitespace and comments.
fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for t in tokens {
        match t.token {
            Token::SemiColon => out.push(std::mem::take(&mut cur)),
            Token::EOF => {}
            _ => cur.push(t),
        }
    }
    out.push(cur);
    out.retain(|s| s.iter().any(|t| !matches!(t.token, Token::Whitespace(_))));
    out
}

/// A function's name as the rule language compares it: lower case.
pub(super) fn function_name(name: &ObjectName) -> String {
    name.to_string().to_ascii_lowercase()
}

/// The aggregate functions by name (DataFusion's and eKuiper's): a windowed query
/// that calls none of them emits the window's rows.
pub(crate) const AGGREGATES: &[&str] = &[
    "avg",
    "count",
    "max",
    "min",
    "sum",
    "collect",
    "array_agg",
    "median",
    "stddev",
    "stddevs",
    "var",
    "vars",
    "stddev_pop",
    "stddev_samp",
    "var_pop",
    "var_samp",
    "percentile",
    "percentile_cont",
    "percentile_disc",
    "last_value",
    "first_value",
    "merge_agg",
    "deduplicate",
    "bool_and",
    "bool_or",
    "string_agg",
    "approx_distinct",
    "approx_median",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar",
    "covar_pop",
    "covar_samp",
    "nth_value",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "grouping",
    "__fg_dedup_all",
    "__fg_dedup_last",
    "last_agg_hit_count",
    "last_agg_hit_time",
    "__fg_agg_hit_count",
    "__fg_agg_hit_time",
];

/// Whether `e` calls any of the functions `names` (lower case), at any depth.
pub(super) fn calls_any(e: &Expr, names: &[&str]) -> bool {
    let mut found = false;
    let _ = visit_expressions(e, |x| {
        if let Expr::Function(f) = x
            && names.contains(&function_name(&f.name).as_str())
        {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}
