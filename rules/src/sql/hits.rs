//! Finding eKuiper's hit functions in a rule's query and putting what computes them in
//! their place (see [`crate::hits`]):
//!
//! - `last_hit_count()` and `last_hit_time()`, for rules without a window, become
//!   columns computed for each row before the query runs;
//! - `last_agg_hit_count()` and `last_agg_hit_time()`, for windowed rules, become calls
//!   of functions that read the rule's count when a window's results are computed;
//! - `event_time()` becomes a column beside the hit columns, or `window_end` in a
//!   windowed rule.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    Query, SelectItem, SetExpr, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::create_rule::{Located, span_pos};
use super::function_name;
use crate::hits::{AGG_HIT_COUNT, AGG_HIT_TIME, EVENT_TIME, HIT_COUNT, HIT_TIME, HitFunctions};

/// What each hit function becomes.
enum Replacement {
    Column(&'static str),
    Call(&'static str),
    EventTime,
}

fn replacement(name: &str) -> Option<Replacement> {
    Some(match name {
        "last_hit_count" => Replacement::Column(HIT_COUNT),
        "last_hit_time" => Replacement::Column(HIT_TIME),
        "last_agg_hit_count" => Replacement::Call(AGG_HIT_COUNT),
        "last_agg_hit_time" => Replacement::Call(AGG_HIT_TIME),
        "event_time" => Replacement::EventTime,
        _ => return None,
    })
}

/// Replaces every hit function of `query`; `windowed` says whether the rule has a
/// window, which decides the functions it may use.
pub(super) fn extract(query: &mut Query, windowed: bool) -> Result<HitFunctions, Located> {
    let mut used = HitFunctions::default();
    if !mentions_hits(query) {
        return Ok(used);
    }
    name_unnamed_items(query);
    if windowed && let SetExpr::Select(select) = query.body.as_ref() {
        // A windowed rule's WHERE runs on rows before they enter windows.
        if let Some(w) = &select.selection
            && let Some((pos, name)) = first_hit(w)
            && (name.starts_with("last_agg_") || name == "event_time")
        {
            if name == "event_time" {
                return Err((
                    pos,
                    "event_time() in a windowed rule is the window's end, which WHERE \
                     cannot read: WHERE runs on the rows before they enter a window (use \
                     the stream's TIMESTAMP column there)"
                        .into(),
                ));
            }
            return Err((
                pos,
                format!(
                    "{name}() counts the windows that gave a result: use it in SELECT or \
                     HAVING; WHERE runs on the rows before they enter a window"
                ),
            ));
        }
    }
    let flow = visit_expressions_mut(query, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let name = function_name(&f.name);
        let Some(with) = replacement(&name) else {
            return ControlFlow::Continue(());
        };
        let pos = span_pos(&f.name);
        let empty = match &f.args {
            FunctionArguments::None => true,
            FunctionArguments::List(l) => l.args.is_empty(),
            FunctionArguments::Subquery(_) => false,
        };
        if !empty || f.over.is_some() {
            return ControlFlow::Break((pos, format!("{name}() takes no arguments and no OVER")));
        }
        match with {
            Replacement::EventTime if windowed => {
                *e = Expr::Identifier(Ident::new("window_end"));
                ControlFlow::Continue(())
            }
            Replacement::EventTime => {
                used.event_time = true;
                *e = Expr::Identifier(Ident::with_quote('"', EVENT_TIME));
                ControlFlow::Continue(())
            }
            Replacement::Column(_) if windowed => ControlFlow::Break((
                pos,
                format!(
                    "{name}() is for rules without a window; a windowed rule counts the \
                     windows that gave a result with {}()",
                    name.replacen("last_", "last_agg_", 1)
                ),
            )),
            Replacement::Call(_) if !windowed => ControlFlow::Break((
                pos,
                format!(
                    "{name}() counts windows and this rule has none; a rule without a \
                     window counts its rows with {}()",
                    name.replacen("last_agg_", "last_", 1)
                ),
            )),
            Replacement::Column(c) => {
                used.rows = true;
                *e = Expr::Identifier(Ident::with_quote('"', c));
                ControlFlow::Continue(())
            }
            Replacement::Call(c) => {
                used.windows = true;
                // The argument, which the function ignores, ties it to the aggregate:
                // without one, the planner would run a HAVING that reads it under the
                // aggregate, before the window's results exist.
                let tie = Parser::new(&GenericDialect {})
                    .try_with_sql("count(*)")
                    .and_then(|mut p| p.parse_expr());
                let Ok(tie) = tie else {
                    return ControlFlow::Break((pos, format!("{name}(): cannot be planned")));
                };
                f.name = ObjectName::from(vec![Ident::new(c)]);
                f.args = FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(tie))],
                    clauses: vec![],
                });
                ControlFlow::Continue(())
            }
        }
    });
    if let ControlFlow::Break(err) = flow {
        return Err(err);
    }
    if used.rows || used.event_time {
        let hidden = [HIT_COUNT, HIT_TIME, EVENT_TIME].map(String::from);
        super::analytic::hide_from_wildcards(query, &hidden);
    }
    Ok(used)
}

fn mentions_hits(query: &Query) -> bool {
    let mut found = false;
    let _ = visit_expressions(query, |e| {
        found = first_hit(e).is_some();
        if found {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    found
}

/// The first hit function `e` calls, with where it is.
fn first_hit(e: &Expr) -> Option<(Option<crate::error::Pos>, String)> {
    let mut hit = None;
    let _ = visit_expressions(e, |x| {
        if let Expr::Function(f) = x {
            let name = function_name(&f.name);
            if replacement(&name).is_some() {
                hit = Some((span_pos(&f.name), name));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    hit
}

/// A bare call in the SELECT list is named for its function, as eKuiper names it.
fn name_unnamed_items(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(Expr::Function(f)) = item {
            let name = function_name(&f.name);
            if replacement(&name).is_some() {
                *item = SelectItem::ExprWithAlias {
                    expr: Expr::Function(f.clone()),
                    alias: Ident::with_quote('"', name),
                };
            }
        }
    }
}
