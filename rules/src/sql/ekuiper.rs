//! The eKuiper dialect: a rule file that begins with `SET DIALECT = ekuiper;` means what
//! eKuiper means by the same text. It is translated once, when the file is parsed (and
//! column names when the rule is planned), never per row:
//!
//! - `"text"` is a string, as `'text'` is; names that need quoting take backticks, and
//!   a backslash escapes a quote inside a string;
//! - indexes count from 0 (`tags[0]` is the first element) and slices `[start:end]`
//!   leave out `end`, either bound may be missing (`[:2]`);
//! - `a->b` is the field `b` of the struct `a`;
//! - column names match the stream's declared columns whatever their case;
//! - `substring`, `array_position`, `array_remove`, `lpad` and `rpad` follow eKuiper.
//!
//! Everything else means the same in both dialects.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, CaseWhen, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, Query, Spanned, Subscript, Value,
    ValueWithSpan, VisitMut, visit_expressions_mut,
};
use datafusion::sql::sqlparser::tokenizer::{Span, Token, TokenWithSpan};

use super::int_literal;
use super::rule::Located;
use crate::error::Pos;

/// The SQL a rule file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// fieldgate's own: SQL as DataFusion reads it, plus the rule language's additions.
    #[default]
    Fieldgate,
    /// eKuiper's meanings (see the module documentation).
    Ekuiper,
}

/// Reads `SET DIALECT = name` from a statement's tokens: `None` when the statement is not
/// one, else the dialect or what is wrong with the name.
pub(super) fn dialect_statement(tokens: &[TokenWithSpan]) -> Option<Result<Dialect, String>> {
    let mut significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .map(|t| &t.token);
    let word = |t: Option<&Token>, w: &str| matches!(t, Some(Token::Word(x)) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    if !word(significant.next(), "SET") || !word(significant.next(), "DIALECT") {
        return None;
    }
    if significant.next() != Some(&Token::Eq) {
        return Some(Err("write SET DIALECT = ekuiper (or fieldgate)".into()));
    }
    let name = match significant.next() {
        Some(Token::Word(w)) => w.value.clone(),
        Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => s.clone(),
        _ => return Some(Err("SET DIALECT needs a name: ekuiper or fieldgate".into())),
    };
    if significant.next().is_some() {
        return Some(Err("nothing may follow the dialect's name".into()));
    }
    Some(match name.to_ascii_lowercase().as_str() {
        "ekuiper" => Ok(Dialect::Ekuiper),
        "fieldgate" => Ok(Dialect::Fieldgate),
        _ => Err(format!(
            "unknown dialect `{name}`: the dialects are ekuiper and fieldgate"
        )),
    })
}

fn number(n: i64) -> Expr {
    Expr::Value(ValueWithSpan {
        value: Value::Number(n.to_string(), false),
        span: Span::empty(),
    })
}

fn plus(e: Expr, n: i64) -> Expr {
    match int_literal(&e) {
        Some(v) => number(v + n),
        None => Expr::Nested(Box::new(Expr::BinaryOp {
            left: Box::new(e),
            op: if n >= 0 {
                BinaryOperator::Plus
            } else {
                BinaryOperator::Minus
            },
            right: Box::new(number(n.abs())),
        })),
    }
}

/// `CASE WHEN e >= 0 THEN <nonneg> ELSE <neg> END`, or the one that applies to a literal.
fn by_sign(e: Expr, nonneg: i64, neg: i64) -> Expr {
    match int_literal(&e) {
        Some(v) if v >= 0 => number(v + nonneg),
        Some(v) => number(v + neg),
        None => Expr::Case {
            case_token: AttachedToken::empty(),
            end_token: AttachedToken::empty(),
            operand: None,
            conditions: vec![CaseWhen {
                condition: Expr::BinaryOp {
                    left: Box::new(e.clone()),
                    op: BinaryOperator::GtEq,
                    right: Box::new(number(0)),
                },
                result: plus(e.clone(), nonneg),
            }],
            else_result: Some(Box::new(plus(e, neg))),
        },
    }
}

/// eKuiper's index (0-based; negative from the end) as DataFusion's (1-based).
fn index(e: Expr) -> Expr {
    // A string index names a struct field: unchanged.
    if matches!(&e, Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_) | Value::DoubleQuotedString(_)))
    {
        return e;
    }
    by_sign(e, 1, 0)
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn plain_args(f: &Function) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// eKuiper's function of this name and arguments, in DataFusion's terms; `None` for a
/// function that means the same in both.
fn function(f: &Function) -> Option<Expr> {
    if f.over.is_some() {
        return None;
    }
    let name = f.name.to_string().to_ascii_lowercase();
    let args = plain_args(f)?;
    Some(match (name.as_str(), args.as_slice()) {
        // array_position(a, v): 0-based, -1 when absent.
        ("array_position", [a, v]) => call(
            "coalesce",
            vec![
                plus(call("array_position", vec![a.clone(), v.clone()]), -1),
                number(-1),
            ],
        ),
        // array_remove(a, v): every element equal to v.
        ("array_remove", [a, v]) => call("array_remove_all", vec![a.clone(), v.clone()]),
        // lpad(s, n) and rpad(s, n): n spaces added, whatever the length of s.
        ("lpad", [s, n]) => call(
            "concat",
            vec![call("repeat", vec![string(" "), n.clone()]), s.clone()],
        ),
        ("rpad", [s, n]) => call(
            "concat",
            vec![s.clone(), call("repeat", vec![string(" "), n.clone()])],
        ),
        _ => return None,
    })
}

fn string(s: &str) -> Expr {
    Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(s.into()),
        span: Span::empty(),
    })
}

/// Rewrites `a->b` into `a['b']` at the token level, where `->` would otherwise bind
/// more loosely than a comparison (`info->level > 1`).
pub(super) fn field_arrows(
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<TokenWithSpan>, (Pos, String)> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut pending: Option<TokenWithSpan> = None;
    for t in tokens {
        if let Some(arrow) = &pending {
            match &t.token {
                Token::Whitespace(_) => continue,
                Token::Word(w) => {
                    let span = arrow.span;
                    out.push(TokenWithSpan::new(Token::LBracket, span));
                    out.push(TokenWithSpan::new(
                        Token::SingleQuotedString(w.value.clone()),
                        t.span,
                    ));
                    out.push(TokenWithSpan::new(Token::RBracket, t.span));
                    pending = None;
                    continue;
                }
                other => {
                    return Err((
                        Pos {
                            line: t.span.start.line,
                            column: t.span.start.column,
                        },
                        format!("`->` takes a field name on its right, not `{other}`"),
                    ));
                }
            }
        }
        if t.token == Token::Arrow {
            pending = Some(t);
        } else {
            out.push(t);
        }
    }
    if let Some(arrow) = pending {
        return Err((
            Pos {
                line: arrow.span.start.line,
                column: arrow.span.start.column,
            },
            "`->` takes a field name on its right".into(),
        ));
    }
    Ok(out)
}

/// Rewrites a query written in eKuiper's dialect into the engine's terms.
pub(super) fn translate(query: &mut Query) -> Result<(), Located> {
    let flow = visit_expressions_mut(query, |e| {
        match e {
            Expr::Substring {
                substring_from,
                substring_for,
                ..
            } => {
                // substring(s, start[, end]): 0-based, `end` left out.
                if let Some(start) = substring_from.as_deref().cloned() {
                    if let Some(end) = substring_for.as_deref().cloned() {
                        *substring_for = Some(Box::new(Expr::Nested(Box::new(Expr::BinaryOp {
                            left: Box::new(end),
                            op: BinaryOperator::Minus,
                            right: Box::new(start.clone()),
                        }))));
                    }
                    *substring_from = Some(Box::new(plus(start, 1)));
                }
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for a in access_chain.iter_mut() {
                    let AccessExpr::Subscript(s) = a else {
                        continue;
                    };
                    *s = match std::mem::replace(s, Subscript::Index { index: number(0) }) {
                        Subscript::Index { index: i } => Subscript::Index { index: index(i) },
                        Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride,
                        } => Subscript::Slice {
                            // Inclusive in both dialects once 1-based.
                            lower_bound: Some(lower_bound.map_or(number(1), |l| by_sign(l, 1, 0))),
                            // eKuiper's end is left out: DataFusion's is kept.
                            upper_bound: Some(
                                upper_bound.map_or(number(-1), |u| by_sign(u, 0, -1)),
                            ),
                            stride,
                        },
                    };
                }
            }
            Expr::Function(f) => {
                if let Some(x) = function(f) {
                    *e = x;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Writes every unquoted column name as the stream declares it (`ID` for `id`), quoted,
/// so that it matches whatever its case.
pub(crate) fn match_columns<V: VisitMut>(node: &mut V, schema: &Schema) {
    let declared = |name: &str| -> Option<String> {
        schema
            .fields()
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
            .map(|f| f.name().clone())
    };
    let _ = visit_expressions_mut(node, |e| {
        match e {
            Expr::Identifier(id) if id.quote_style.is_none() => {
                if let Some(name) = declared(&id.value) {
                    *id = Ident::with_quote('"', name);
                }
            }
            Expr::CompoundIdentifier(ids) => {
                if let Some(first) = ids.first_mut()
                    && first.quote_style.is_none()
                    && let Some(name) = declared(&first.value)
                {
                    *first = Ident::with_quote('"', name);
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Constructs of a query in the default dialect that eKuiper reads differently, each
/// with where it stands and what differs: `rules check` warns of them, so that a rule
/// copied from eKuiper does not silently mean something else.
pub(super) fn differences(query: &Query, tokens: &[TokenWithSpan]) -> Vec<(Pos, String)> {
    let mut found = Vec::new();
    let at = |t: &TokenWithSpan| Pos {
        line: t.span.start.line,
        column: t.span.start.column,
    };
    for t in tokens {
        if let Token::Word(w) = &t.token
            && w.quote_style == Some('"')
        {
            found.push((
                at(t),
                format!(
                    "\"{0}\" is a name here; eKuiper reads it as the string '{0}' (write \
                     '{0}' for a string, or put SET DIALECT = ekuiper; first in the file)",
                    w.value
                ),
            ));
        }
    }
    let mut note = |e: &Expr, message: String| {
        let s = e.span();
        found.push((
            Pos {
                line: s.start.line,
                column: s.start.column,
            },
            message,
        ));
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(query, |e| {
        match e {
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for a in access_chain {
                    if let AccessExpr::Subscript(Subscript::Index { index }) = a
                        && int_literal(index).is_some_and(|i| i >= 0)
                    {
                        note(
                            e,
                            format!(
                                "`{e}`: indexes count from 1 here ([0] is null); in eKuiper \
                                 they count from 0"
                            ),
                        );
                    }
                    if let AccessExpr::Subscript(Subscript::Slice { .. }) = a {
                        note(
                            e,
                            format!(
                                "`{e}`: a slice here counts from 1 and keeps its end; \
                                 eKuiper's counts from 0 and leaves the end out"
                            ),
                        );
                    }
                }
            }
            Expr::Substring { .. } => note(
                e,
                format!(
                    "`{e}`: SQL's substring(s, from, length) counts from 1; eKuiper's \
                     substring(s, start, end) counts from 0 and leaves `end` out"
                ),
            ),
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                let differs = match name.as_str() {
                    "array_position" => {
                        "is 1-based and null when absent here; 0-based and -1 in eKuiper"
                    }
                    "array_remove" => "removes the first match here; every match in eKuiper",
                    "lpad" | "rpad" => "pads to a length here; adds that many spaces in eKuiper",
                    _ => return ControlFlow::<()>::Continue(()),
                };
                note(e, format!("`{name}` {differs}"));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    found.sort_by_key(|(p, _)| (p.line, p.column));
    found
}

/// eKuiper's `collect(col)` and `collect(*)`, in either dialect (DataFusion has no
/// function of that name): `array_agg(col)`, and for `*` an array of every row of the
/// group as an object of the stream's columns.
pub(crate) fn collect_calls(query: &mut Query, schema: &Schema) {
    let _ = visit_expressions_mut(query, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::<()>::Continue(());
        };
        if !f.name.to_string().eq_ignore_ascii_case("collect") {
            return ControlFlow::Continue(());
        }
        f.name = ObjectName::from(vec![Ident::new("array_agg")]);
        if let FunctionArguments::List(list) = &mut f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] = list.args.as_slice()
        {
            let fields = schema
                .fields()
                .iter()
                .filter(|f| !f.name().starts_with("__fg_"))
                .flat_map(|f| {
                    [
                        string(f.name()),
                        Expr::Identifier(Ident::with_quote('"', f.name())),
                    ]
                })
                .collect();
            list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(call(
                "named_struct",
                fields,
            )))];
        }
        ControlFlow::Continue(())
    });
}
