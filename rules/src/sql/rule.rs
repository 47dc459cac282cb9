//! `CREATE RULE name INTO sink[, sink...] AS <query>`.

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectNamePart,
    Query, SetExpr, Spanned, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::Cursor;
use crate::error::{Pos, SqlError};
use crate::rule::RuleDef;
use crate::window::{WindowSpec, unit_millis};

/// Window functions accepted in GROUP BY, by eKuiper's spelling.
const WINDOW_FUNCTIONS: [&str; 5] = [
    "TUMBLINGWINDOW",
    "HOPPINGWINDOW",
    "SLIDINGWINDOW",
    "SESSIONWINDOW",
    "COUNTWINDOW",
];

pub(super) fn parse(c: &mut Cursor) -> Result<RuleDef, SqlError> {
    let (name, pos) = c.ident("a rule name")?;
    c.expect_keyword("INTO")?;
    let mut sinks = Vec::new();
    loop {
        let (sink, sink_pos) = c.ident("a sink name")?;
        if sinks.contains(&sink) {
            return Err(c.error_at(sink_pos, format!("sink `{sink}` is named twice")));
        }
        sinks.push(sink);
        if !c.eat_token(&Token::Comma) {
            break;
        }
    }
    c.expect_keyword("AS")?;
    let query_pos = c.pos();
    let file = c.file().to_path_buf();
    let tokens = c.rest();
    // Where the statement ends: errors about a missing part point there.
    let end_pos = tokens
        .iter()
        .rev()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .map_or(query_pos, |t| Pos {
            line: t.span.end.line,
            column: t.span.end.column,
        });
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut query = parser.parse_query().map_err(|e| {
        let fallback = if e.to_string().ends_with("found: EOF") {
            end_pos
        } else {
            query_pos
        };
        parser_error(&file, fallback, e)
    })?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        let p = Pos {
            line: next.span.start.line,
            column: next.span.start.column,
        };
        return Err(SqlError::new(
            &file,
            p,
            format!("unexpected `{}` after the rule's query", next.token),
        ));
    }
    let (stream, window) = inspect_select(&mut query)
        .map_err(|(p, m)| SqlError::new(&file, p.unwrap_or(query_pos), m))?;
    Ok(RuleDef {
        name,
        sinks,
        stream,
        query,
        window,
        file,
        pos,
        query_pos,
    })
}

type Located = (Option<Pos>, String);

fn span_pos(e: &impl Spanned) -> Option<Pos> {
    let s = e.span();
    (s.start.line > 0).then_some(Pos {
        line: s.start.line,
        column: s.start.column,
    })
}

/// Finds the stream in FROM and takes the window function out of GROUP BY.
fn inspect_select(query: &mut Query) -> Result<(String, Option<WindowSpec>), Located> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err((
            span_pos(&*query.body),
            "a rule's query must be a single SELECT".into(),
        ));
    };
    let [from] = select.from.as_slice() else {
        return Err((
            span_pos(&select.select_token.0),
            "a rule reads exactly one stream: SELECT ... FROM <stream>".into(),
        ));
    };
    if !from.joins.is_empty() {
        return Err((
            span_pos(&from.joins[0].relation),
            "joins are not supported in rules".into(),
        ));
    }
    let stream = match &from.relation {
        TableFactor::Table { name, .. } => match name.0.as_slice() {
            [ObjectNamePart::Identifier(id)] => id.value.clone(),
            _ => return Err((span_pos(name), format!("`{name}` is not a stream name"))),
        },
        other => return Err((span_pos(other), "FROM must name a stream".into())),
    };
    let mut window = None;
    if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
        let mut kept = Vec::with_capacity(exprs.len() + 2);
        for e in exprs.drain(..) {
            match window_call(&e)? {
                Some(spec) => {
                    if window.is_some() {
                        return Err((
                            span_pos(&e),
                            "only one window is allowed in GROUP BY".into(),
                        ));
                    }
                    window = Some(spec);
                }
                None => kept.push(e),
            }
        }
        if window.is_some() {
            kept.push(Expr::Identifier(Ident::new("window_start")));
            kept.push(Expr::Identifier(Ident::new("window_end")));
        }
        *exprs = kept;
    }
    Ok((stream, window))
}

/// Recognises `TUMBLINGWINDOW(unit, size)`; other window kinds are reported as unsupported.
fn window_call(e: &Expr) -> Result<Option<WindowSpec>, Located> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    let fname = f.name.to_string().to_ascii_uppercase();
    if !WINDOW_FUNCTIONS.contains(&fname.as_str()) {
        return Ok(None);
    }
    let pos = span_pos(e);
    if fname != "TUMBLINGWINDOW" {
        return Err((
            pos,
            format!("{fname} is not supported yet; use TUMBLINGWINDOW(unit, size)"),
        ));
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err((
            pos,
            "TUMBLINGWINDOW takes (unit, size), e.g. TUMBLINGWINDOW(ss, 10)".into(),
        ));
    };
    let args: Vec<&Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let [unit, size] = args.as_slice() else {
        return Err((
            pos,
            "TUMBLINGWINDOW takes (unit, size), e.g. TUMBLINGWINDOW(ss, 10)".into(),
        ));
    };
    let unit_ms = match unit {
        Expr::Identifier(id) => unit_millis(&id.value),
        _ => None,
    }
    .ok_or_else(|| {
        (
            span_pos(*unit),
            format!("unknown time unit `{unit}` (use ms, ss, mi, hh or dd)"),
        )
    })?;
    let size: i64 = match size {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| {
        (
            span_pos(*size),
            format!("window size `{size}` must be a positive integer"),
        )
    })?;
    let size_ms = size
        .checked_mul(unit_ms)
        .ok_or_else(|| (pos, "window size is too large".to_string()))?;
    Ok(Some(WindowSpec::Tumbling { size_ms }))
}

/// The SQL parser reports positions inside its message; keep the message and use the
/// position it names, falling back to the start of the query.
fn parser_error(file: &std::path::Path, fallback: Pos, e: ParserError) -> SqlError {
    let msg = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "query nests too deeply".to_string(),
    };
    let (pos, msg) = split_location(&msg).unwrap_or((fallback, msg.clone()));
    SqlError::new(file, pos, msg)
}

/// Splits `"<message> at Line: L, Column: C"` into its position and message.
fn split_location(msg: &str) -> Option<(Pos, String)> {
    let at = msg.rfind(" at Line: ")?;
    let rest = &msg[at + " at Line: ".len()..];
    let (line, col) = rest.split_once(", Column: ")?;
    let pos = Pos {
        line: line.trim().parse().ok()?,
        column: col.trim().parse().ok()?,
    };
    Some((pos, msg[..at].to_string()))
}
