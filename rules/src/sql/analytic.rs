//! Finding eKuiper's analytic functions (`lag`, `latest`, `changed_col`, `had_changed`,
//! `acc_*`) and the report-by-exception `deadband` in a rule's query, and taking them out
//! of it: each call becomes a column the analytic stage computes before the query runs
//! (see [`crate::analytic`]).
//!
//! eKuiper writes `OVER (PARTITION BY key WHEN condition)`; SQL has no WHEN there, so the
//! tokens are rewritten before parsing: `WHEN` becomes `ORDER BY __fg_when, condition`,
//! which the parser accepts and [`extract`] reads back.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    ExcludeSelectItem, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, Query, SelectItem, SetExpr, Value, WindowType, visit_expressions,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

use super::create_rule::{Located, interval_millis, span_pos};
use super::{calls_any, function_name, int_literal, number_literal};
use crate::analytic::{AccKind, AnalyticCall, AnalyticFn, column_name};

/// The marker that stands for eKuiper's `WHEN` inside `OVER (...)`.
const WHEN_MARKER: &str = "__fg_when";

/// Names of the functions this module takes out of queries.
pub(crate) const ANALYTIC_FUNCTIONS: [&str; 11] = [
    "lag",
    "latest",
    "changed_col",
    "had_changed",
    "acc_sum",
    "acc_min",
    "acc_max",
    "acc_count",
    "acc_avg",
    "deadband",
    "deadband_pct",
];

/// Rewrites `OVER (... WHEN cond)` into `OVER (... ORDER BY __fg_when, cond)`, for the
/// parser; a `WHEN` of a `CASE` inside the parentheses is left alone.
pub(super) fn mark_when(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out = Vec::with_capacity(tokens.len());
    // Per open parenthesis: whether it is an OVER's, and the CASE depth inside it.
    let mut parens: Vec<(bool, usize)> = Vec::new();
    let mut after_over = false;
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) => {
                out.push(t);
                continue;
            }
            Token::LParen => parens.push((after_over, 0)),
            Token::RParen => {
                parens.pop();
            }
            Token::Word(w) if w.quote_style.is_none() => {
                let inside_over = parens.last().is_some_and(|p| p.0);
                match w.keyword {
                    Keyword::CASE => {
                        if let Some(p) = parens.last_mut() {
                            p.1 += 1;
                        }
                    }
                    Keyword::END => {
                        if let Some(p) = parens.last_mut() {
                            p.1 = p.1.saturating_sub(1);
                        }
                    }
                    Keyword::WHEN if inside_over && parens.last().is_some_and(|p| p.1 == 0) => {
                        let span = t.span;
                        for token in [
                            Token::make_keyword("ORDER"),
                            Token::make_keyword("BY"),
                            Token::make_word(WHEN_MARKER, None),
                            Token::Comma,
                        ] {
                            out.push(TokenWithSpan::new(token, span));
                            out.push(TokenWithSpan::new(
                                Token::Whitespace(Whitespace::Space),
                                span,
                            ));
                        }
                        after_over = false;
                        continue;
                    }
                    _ => {}
                }
                after_over = w.keyword == Keyword::OVER;
                out.push(t);
                continue;
            }
            _ => {}
        }
        after_over = false;
        out.push(t);
    }
    out
}

/// What [`extract`] found besides the calls: where a window function of SQL's own
/// (`row_number() OVER (...)`) stands, if one does.
pub(super) struct Extracted {
    pub calls: Vec<AnalyticCall>,
    pub sql_window_at: Option<Located>,
}

/// Takes every analytic call out of `query`, replacing it by the column that will hold
/// its result; calls nested in another's arguments come first.
pub(super) fn extract(query: &mut Query) -> Result<Extracted, Located> {
    expand_changed_cols(query)?;
    name_unnamed_items(query);
    let mut calls: Vec<AnalyticCall> = Vec::new();
    let mut sql_window_at = None;
    let flow = visit_expressions_mut(query, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let name = function_name(&f.name);
        if !ANALYTIC_FUNCTIONS.contains(&name.as_str()) {
            if f.over.is_some() && sql_window_at.is_none() {
                if let Some(WindowType::WindowSpec(spec)) = &f.over
                    && has_marker(&spec.order_by)
                {
                    return ControlFlow::Break((
                        span_pos(&f.name),
                        format!(
                            "WHEN in OVER (...) is for eKuiper's analytic functions ({}), \
                             not `{name}`",
                            ANALYTIC_FUNCTIONS.join(", ")
                        ),
                    ));
                }
                sql_window_at = Some((span_pos(&f.name), name));
            }
            return ControlFlow::Continue(());
        }
        match analytic_call(f, &name, &calls) {
            Ok(call) => {
                *e = Expr::Identifier(Ident::with_quote('"', column_name(calls.len())));
                calls.push(call);
                ControlFlow::Continue(())
            }
            Err(err) => ControlFlow::Break(err),
        }
    });
    if let ControlFlow::Break(err) = flow {
        return Err(err);
    }
    if !calls.is_empty() {
        let hidden: Vec<String> = (0..calls.len()).map(column_name).collect();
        hide_from_wildcards(query, &hidden);
    }
    Ok(Extracted {
        calls,
        sql_window_at,
    })
}

fn is_analytic(e: &Expr) -> bool {
    calls_any(e, &ANALYTIC_FUNCTIONS)
}

/// eKuiper's `changed_cols(prefix, ignore_null, expr, ...)` in the SELECT list: one
/// `changed_col(ignore_null, expr) AS <prefix><name>` column per expression, named by
/// the column (or function) it reads.
fn expand_changed_cols(query: &mut Query) -> Result<(), Located> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(());
    };
    let mut projection = Vec::with_capacity(select.projection.len());
    for item in select.projection.drain(..) {
        let f = match &item {
            SelectItem::UnnamedExpr(Expr::Function(f))
                if function_name(&f.name) == "changed_cols" =>
            {
                f.clone()
            }
            SelectItem::ExprWithAlias {
                expr: Expr::Function(f),
                ..
            } if function_name(&f.name) == "changed_cols" => {
                return Err((
                    span_pos(&f.name),
                    "changed_cols names its columns by its prefix: it takes no AS".into(),
                ));
            }
            _ => {
                projection.push(item);
                continue;
            }
        };
        let pos = span_pos(&f.name);
        let usage = || {
            (
                pos,
                "changed_cols takes (prefix, ignore null, expr, ...), e.g. \
                 changed_cols('c_', true, temp, humidity); `*` is not supported"
                    .to_string(),
            )
        };
        let (args, all) = call_args(&f, "changed_cols").map_err(|_| usage())?;
        if all || args.len() < 3 {
            return Err(usage());
        }
        let prefix = match &args[0] {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        };
        for e in &args[2..] {
            let name = match e {
                Expr::Identifier(id) => id.value.clone(),
                Expr::CompoundIdentifier(ids) => {
                    ids.last().map(|i| i.value.clone()).unwrap_or_default()
                }
                Expr::Function(g) => function_name(&g.name),
                other => other.to_string(),
            };
            let mut one = f.clone();
            one.name = ObjectName::from(vec![Ident::new("changed_col")]);
            if let FunctionArguments::List(list) = &mut one.args {
                list.args = [args[1].clone(), e.clone()]
                    .into_iter()
                    .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                    .collect();
            }
            projection.push(SelectItem::ExprWithAlias {
                expr: Expr::Function(one),
                alias: Ident::with_quote('"', format!("{prefix}{name}")),
            });
        }
    }
    select.projection = projection;
    Ok(())
}

/// Gives each SELECT item holding an analytic call the name eKuiper gives it: the
/// function's name for a bare call (`changed_col`), else the expression's text.
fn name_unnamed_items(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if !is_analytic(e) {
            continue;
        }
        let alias = match &*e {
            Expr::Function(f) => function_name(&f.name),
            other => other.to_string(),
        };
        *item = SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::with_quote('"', alias),
        };
    }
}

/// `SELECT *` must not show the columns `hidden` (analytic results, hit counts).
pub(super) fn hide_from_wildcards(query: &mut Query, hidden: &[String]) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let opts = match item {
            SelectItem::Wildcard(o) | SelectItem::QualifiedWildcard(_, o) => o,
            _ => continue,
        };
        let mut names: Vec<ObjectName> = match opts.opt_exclude.take() {
            Some(ExcludeSelectItem::Single(i)) => vec![i],
            Some(ExcludeSelectItem::Multiple(v)) => v,
            None => vec![],
        };
        names.extend(
            hidden
                .iter()
                .map(|c| ObjectName::from(vec![Ident::with_quote('"', c.as_str())])),
        );
        opts.opt_exclude = Some(ExcludeSelectItem::Multiple(names));
    }
}

fn has_marker(order_by: &[datafusion::sql::sqlparser::ast::OrderByExpr]) -> bool {
    matches!(order_by.first().map(|o| &o.expr),
        Some(Expr::Identifier(id)) if id.value == WHEN_MARKER)
}

/// Reads one analytic call: its constant arguments, the expressions evaluated per row,
/// and its `OVER (PARTITION BY ... WHEN ...)`.
fn analytic_call(
    f: &Function,
    name: &str,
    earlier: &[AnalyticCall],
) -> Result<AnalyticCall, Located> {
    let pos = span_pos(&f.name);
    let usage = |u: &str| (pos, format!("{name} takes {u}"));
    let (args, all_columns) = call_args(f, name)?;
    let (partition, when) = match &f.over {
        None => (vec![], None),
        Some(WindowType::NamedWindow(w)) => {
            return Err((
                span_pos(&Expr::Identifier(w.clone())),
                format!(
                    "{name}: a named window is not supported here; write OVER (PARTITION BY ... WHEN ...)"
                ),
            ));
        }
        Some(WindowType::WindowSpec(spec)) => {
            if spec.window_frame.is_some() || spec.window_name.is_some() {
                return Err((
                    pos,
                    format!("{name}: OVER takes PARTITION BY and WHEN only"),
                ));
            }
            let when = match spec.order_by.as_slice() {
                [] => None,
                [_, cond] if has_marker(&spec.order_by) => Some(cond.expr.clone()),
                _ => {
                    return Err((
                        pos,
                        format!(
                            "{name}: OVER takes PARTITION BY and WHEN only; rows are taken \
                             in the order they arrive, so ORDER BY has no place here"
                        ),
                    ));
                }
            };
            (spec.partition_by.clone(), when)
        }
    };
    if f.filter.is_some() {
        return Err((pos, format!("{name} takes no FILTER; use OVER (WHEN ...)")));
    }
    let func = match name {
        "lag" => {
            let offset = match args.get(1) {
                None => 1,
                Some(e) => usize::try_from(int_literal(e).ok_or_else(|| {
                    (
                        span_pos(e),
                        "lag's offset must be a whole number such as 1".to_string(),
                    )
                })?)
                .map_err(|_| (span_pos(e), "lag's offset must not be negative".to_string()))?,
            };
            if offset == 0 || offset > 1024 {
                return Err((pos, "lag's offset must be between 1 and 1024".into()));
            }
            let ignore_null = match args.get(3) {
                None => true,
                Some(e) => bool_literal(e, "lag's fourth argument (ignore null)")?,
            };
            if args.is_empty() || args.len() > 4 {
                return Err(usage("(expr[, offset[, default[, ignore null]]])"));
            }
            AnalyticFn::Lag {
                offset,
                ignore_null,
            }
        }
        "latest" => {
            if args.is_empty() || args.len() > 2 {
                return Err(usage("(expr[, default])"));
            }
            AnalyticFn::Latest
        }
        "changed_col" => {
            if args.len() != 2 {
                return Err(usage(
                    "(ignore null, expr), e.g. changed_col(true, temperature)",
                ));
            }
            AnalyticFn::ChangedCol {
                ignore_null: bool_literal(&args[0], "changed_col's first argument (ignore null)")?,
            }
        }
        "had_changed" => {
            if args.len() < 2 && !all_columns {
                return Err(usage(
                    "(ignore null, expr, ...), e.g. had_changed(true, temperature)",
                ));
            }
            AnalyticFn::HadChanged {
                ignore_null: bool_literal(&args[0], "had_changed's first argument (ignore null)")?,
            }
        }
        "deadband" | "deadband_pct" => {
            if !(2..=3).contains(&args.len()) {
                return Err(usage(
                    "(value, band[, heartbeat]), e.g. deadband(temp, 0.5, INTERVAL '60' SECOND)",
                ));
            }
            let band = number_literal(&args[1])
                .filter(|b| b.is_finite() && *b >= 0.0)
                .ok_or_else(|| {
                    (
                        span_pos(&args[1]),
                        format!("{name}'s band must be a number, 0 or more"),
                    )
                })?;
            let heartbeat_ms = match args.get(2) {
                None => None,
                Some(Expr::Value(v)) if matches!(&v.value, Value::SingleQuotedString(_)) => {
                    let Value::SingleQuotedString(s) = &v.value else {
                        unreachable!()
                    };
                    Some(
                        humantime::parse_duration(s)
                            .ok()
                            .and_then(|d| i64::try_from(d.as_millis()).ok())
                            .filter(|m| *m > 0)
                            .ok_or_else(|| {
                                (
                                    span_pos(&args[2]),
                                    format!("`{s}` is not a duration such as '60s'"),
                                )
                            })?,
                    )
                }
                Some(e) => Some(interval_millis(e)?),
            };
            AnalyticFn::Deadband {
                band,
                percent: name == "deadband_pct",
                heartbeat_ms,
            }
        }
        acc => {
            let kind = match acc {
                "acc_sum" => AccKind::Sum,
                "acc_min" => AccKind::Min,
                "acc_max" => AccKind::Max,
                "acc_count" => AccKind::Count,
                _ => AccKind::Avg,
            };
            if args.len() != 1 && args.len() != 3 {
                return Err(usage("(expr) or (expr, begin condition, reset condition)"));
            }
            AnalyticFn::Acc {
                kind,
                conditional: args.len() == 3,
            }
        }
    };
    // The expressions evaluated per row, by function.
    let row_args: Vec<Expr> = match &func {
        AnalyticFn::Lag { .. } => args
            .iter()
            .take(3)
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, e)| e.clone())
            .collect(),
        AnalyticFn::Latest | AnalyticFn::Acc { .. } => args.clone(),
        AnalyticFn::ChangedCol { .. } | AnalyticFn::HadChanged { .. } => args[1..].to_vec(),
        AnalyticFn::Deadband { .. } => args[..1].to_vec(),
    };
    let mut level = 0;
    for e in row_args.iter().chain(&partition).chain(when.iter()) {
        let _ = visit_expressions(e, |x| {
            if let Expr::Identifier(id) = x
                && let Some(i) = crate::analytic::column_index(&id.value)
                && let Some(c) = earlier.get(i)
            {
                level = level.max(c.level + 1);
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Ok(AnalyticCall {
        func,
        name: name.to_string(),
        args: row_args,
        all_columns,
        partition,
        when,
        level,
    })
}

/// The plain arguments of a call, and whether one of them is `*` (all columns; only
/// `had_changed` takes it).
fn call_args(f: &Function, name: &str) -> Result<(Vec<Expr>, bool), Located> {
    let pos = span_pos(&f.name);
    let FunctionArguments::List(list) = &f.args else {
        return Ok((vec![], false));
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return Err((pos, format!("{name} takes plain arguments only")));
    }
    let mut args = Vec::new();
    let mut all = false;
    for a in &list.args {
        match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard)
                if name == "had_changed" && !args.is_empty() =>
            {
                all = true
            }
            _ => {
                return Err((
                    pos,
                    format!("{name} takes plain arguments only (`*` only in had_changed)"),
                ));
            }
        }
    }
    Ok((args, all))
}

fn bool_literal(e: &Expr, what: &str) -> Result<bool, Located> {
    match e {
        Expr::Value(v) => match v.value {
            Value::Boolean(b) => Some(b),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| (span_pos(e), format!("{what} must be true or false")))
}
