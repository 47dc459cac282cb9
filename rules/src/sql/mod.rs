//! The text of rule files: splitting a file into statements and parsing the two
//! statement kinds, `CREATE STREAM` and `CREATE RULE`.
//!
//! The file is tokenized once with the SQL tokenizer so every token keeps its line and
//! column; positions in errors therefore point into the file, not into a statement.

mod analytic;
mod cursor;
mod rule;
mod stream;
mod types;

use std::path::Path;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{Pos, SqlError};
use crate::rule::RuleDef;
use crate::stream::StreamDef;

pub(crate) use cursor::Cursor;
pub(crate) use rule::WINDOW_FUNCTIONS;

/// One parsed statement of a rule file.
#[derive(Debug, Clone)]
pub enum Statement {
    Stream(StreamDef),
    Rule(RuleDef),
    /// A `CREATE STREAM` with an error, by the name it declares (its error is reported
    /// besides): rules reading it are told the stream is broken, not unknown.
    BrokenStream(String),
}

/// Parses every statement of one file's text. Errors in one statement do not stop the
/// others from being parsed; all errors are returned.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Statement>, Vec<SqlError>) {
    let dialect = GenericDialect {};
    let tokens = match Tokenizer::new(&dialect, text).tokenize_with_location() {
        Ok(t) => t,
        Err(e) => {
            if let Some(pos) = unclosed_comment(text) {
                let message = "this comment is never closed: `/*` needs its `*/`";
                return (vec![], vec![SqlError::new(file, pos, message)]);
            }
            let pos = Pos {
                line: e.location.line,
                column: e.location.column,
            };
            return (vec![], vec![SqlError::new(file, pos, e.message)]);
        }
    };
    let mut statements = Vec::new();
    let mut errors = Vec::new();
    for chunk in split_statements(tokens) {
        let name = declared_stream(&chunk);
        let mut cursor = Cursor::new(file, chunk);
        match parse_statement(&mut cursor) {
            Ok(s) => statements.push(s),
            Err(e) => {
                errors.push(e);
                statements.extend(name.map(Statement::BrokenStream));
            }
        }
    }
    (statements, errors)
}

fn parse_statement(c: &mut Cursor) -> Result<Statement, SqlError> {
    c.expect_keyword("CREATE")?;
    let kind = c.peek_word_upper();
    match kind.as_deref() {
        Some("STREAM") => {
            c.next();
            stream::parse(c).map(Statement::Stream)
        }
        Some("RULE") => {
            c.next();
            rule::parse(c).map(Statement::Rule)
        }
        _ => Err(c.error_here("expected STREAM or RULE after CREATE")),
    }
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
    (create.value.eq_ignore_ascii_case("CREATE") && stream.value.eq_ignore_ascii_case("STREAM"))
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
