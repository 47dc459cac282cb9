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
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, ObjectName, Query, SelectItem, SetExpr, Spanned, Subscript, Value, VisitMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

mod build;
mod functions;
mod json_path;
mod time;

use super::create_rule::{Located, has_window, span_pos};
use super::{calls_any, function_name, int_literal};
use crate::error::Pos;
use crate::functions::{DEDUP_ALL, DEDUP_LAST, LIST_FIELD};
use build::{by_sign, call, index, number, plain_args, plus, string};

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

/// Rewrites `a->b` into `a['b']` at the token level, where `->` would otherwise bind
/// more loosely than a comparison (`info->level > 1`), and `a[*]` into the whole slice
/// `a[:]`.
pub(super) fn field_arrows(
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<TokenWithSpan>, (Pos, String)> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut pending: Option<TokenWithSpan> = None;
    // Whether the last tokens out are a `->` field: a `.name` after it is one more.
    let mut after_arrow = false;
    for t in in_lists(tokens) {
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
                    after_arrow = true;
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
        if t.token == Token::Arrow || (after_arrow && t.token == Token::Period) {
            pending = Some(t);
            continue;
        }
        after_arrow = false;
        // `list[*]`: every element, as the slice `list[:]`.
        let n = out.len();
        if t.token == Token::RBracket
            && n >= 2
            && out[n - 1].token == Token::Mul
            && out[n - 2].token == Token::LBracket
        {
            out[n - 1].token = Token::Colon;
        }
        out.push(t);
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

/// Rewrites `x IN list` (a list-valued operand rather than a parenthesised list of
/// values) into `x IN UNNEST(list)`, which [`translate`] turns into `array_has`, and
/// reads `values(` as a call.
fn in_lists(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let significant = |from: usize| {
        (from..tokens.len()).find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
    };
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let is_in = matches!(&tokens[i].token, Token::Word(w)
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("IN"));
        let mut t = tokens[i].clone();
        // eKuiper's `values(obj)` is a function, not SQL's VALUES.
        if let Token::Word(w) = &mut t.token
            && w.keyword == Keyword::VALUES
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::LParen))
        {
            w.keyword = Keyword::NoKeyword;
        }
        out.push(t);
        i += 1;
        if !is_in {
            continue;
        }
        let Some(start) = significant(i) else {
            continue;
        };
        let Token::Word(w) = &tokens[start].token else {
            continue;
        };
        if w.quote_style.is_none()
            && ["SELECT", "UNNEST"]
                .iter()
                .any(|k| w.value.eq_ignore_ascii_case(k))
        {
            continue;
        }
        // The operand: a name and its accesses (`->f`, `.f`, `[...]`).
        let mut end = start + 1;
        while end < tokens.len() {
            match &tokens[end].token {
                Token::Arrow | Token::Period
                    if matches!(tokens.get(end + 1).map(|t| &t.token), Some(Token::Word(_))) =>
                {
                    end += 2;
                }
                Token::LBracket => {
                    let mut depth = 0;
                    while end < tokens.len() {
                        match tokens[end].token {
                            Token::LBracket => depth += 1,
                            Token::RBracket => depth -= 1,
                            _ => {}
                        }
                        end += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
        let span = tokens[start].span;
        out.extend(tokens[i..start].iter().cloned());
        out.push(TokenWithSpan::new(Token::make_keyword("UNNEST"), span));
        out.push(TokenWithSpan::new(Token::LParen, span));
        out.extend(tokens[start..end].iter().cloned());
        out.push(TokenWithSpan::new(Token::RParen, span));
        i = end;
    }
    out
}

/// `* EXCEPT(a, b) REPLACE(a * 10 AS a)`: a replaced column is kept, as in eKuiper,
/// though the exception names it.
fn replace_wins(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let SelectItem::Wildcard(options) = item else {
            continue;
        };
        let (Some(except), Some(replace)) = (&options.opt_except, &options.opt_replace) else {
            continue;
        };
        let replaced = |i: &Ident| {
            replace
                .items
                .iter()
                .any(|r| r.column_name.value.eq_ignore_ascii_case(&i.value))
        };
        let kept: Vec<Ident> = std::iter::once(&except.first_element)
            .chain(&except.additional_elements)
            .filter(|i| !replaced(i))
            .cloned()
            .collect();
        options.opt_except = kept.split_first().map(|(first, rest)| {
            datafusion::sql::sqlparser::ast::ExceptSelectItem {
                first_element: first.clone(),
                additional_elements: rest.to_vec(),
            }
        });
    }
}

/// Cuts an access chain after its first slice when field names follow it: those apply
/// to every element of the slice (`friends[:2]->first` is a list of first names).
/// Returns the cut-off accesses.
fn list_projection(chain: &mut Vec<AccessExpr>) -> Option<Vec<AccessExpr>> {
    let slice = chain
        .iter()
        .position(|a| matches!(a, AccessExpr::Subscript(Subscript::Slice { .. })))?;
    let names_follow = chain[slice + 1..].iter().any(|a| field_of(a).is_some());
    names_follow.then(|| chain.split_off(slice + 1))
}

/// The field an access names: `.name`, `['name']` (what `->name` becomes).
fn field_of(a: &AccessExpr) -> Option<&str> {
    match a {
        AccessExpr::Dot(Expr::Identifier(i)) => Some(&i.value),
        AccessExpr::Subscript(Subscript::Index {
            index: Expr::Value(v),
        }) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Applies the accesses that follow a slice: each field name to every element, an index
/// to the list of them.
fn project_fields(mut list: Expr, rest: Vec<AccessExpr>) -> Expr {
    for a in rest {
        list = match field_of(&a) {
            Some(name) => call(LIST_FIELD, vec![list, string(name)]),
            None => {
                let a = match a {
                    AccessExpr::Subscript(Subscript::Index { index: i }) => {
                        AccessExpr::Subscript(Subscript::Index { index: index(i) })
                    }
                    other => other,
                };
                Expr::CompoundFieldAccess {
                    root: Box::new(list),
                    access_chain: vec![a],
                }
            }
        };
    }
    list
}

/// The name eKuiper gives an unnamed SELECT item: a column's or field's name (the last
/// one named; an index or slice keeps it), a function's name, else `kuiper_field_N`
/// (`None` for a plain column, which has its name already).
fn item_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(_) => None,
        Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()),
        Expr::CompoundFieldAccess { root, access_chain } => {
            let mut name = match root.as_ref() {
                Expr::Identifier(i) => Some(i.value.clone()),
                Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()),
                _ => None,
            };
            for a in access_chain {
                if let Some(f) = field_of(a) {
                    name = Some(f.to_string());
                }
            }
            name
        }
        Expr::Function(f) => Some(function_name(&f.name)),
        _ => None,
    }
}

/// `changed_cols(...)` names the columns it expands into.
fn names_itself(e: &Expr) -> bool {
    matches!(e, Expr::Function(f) if function_name(&f.name) == "changed_cols")
}

/// An alias is a result's name as written: `AS Temp` gives `Temp`, not `temp`.
/// HAVING and ORDER BY name an alias in any case.
fn keep_alias_case(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let mut aliases = Vec::new();
    for item in &mut select.projection {
        if let SelectItem::ExprWithAlias { alias, .. } = item {
            alias.quote_style = Some('"');
            aliases.push(alias.value.clone());
        }
    }
    let spell = |e: &mut Expr| {
        if let Expr::Identifier(id) = e
            && id.quote_style.is_none()
            && let Some(a) = aliases.iter().find(|a| a.eq_ignore_ascii_case(&id.value))
        {
            *id = Ident::with_quote('"', a.clone());
        }
        ControlFlow::<()>::Continue(())
    };
    if let Some(having) = select.having.as_mut() {
        let _ = visit_expressions_mut(having, spell);
    }
    if let Some(order) = query.order_by.as_mut() {
        let _ = visit_expressions_mut(order, spell);
    }
}

/// Names the unnamed SELECT items as eKuiper does ([`item_name`]).
fn name_items(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let mut taken: Vec<String> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.clone()),
            _ => None,
        })
        .collect();
    let mut unnamed = 0;
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if names_itself(e) {
            continue;
        }
        let name = match item_name(e) {
            // Two items of one name (`tags[0], tags[1]`): the second is numbered.
            Some(name) if !taken.contains(&name) => name,
            None if matches!(e, Expr::Identifier(_)) => continue,
            _ => {
                unnamed += 1;
                format!("kuiper_field_{}", unnamed - 1)
            }
        };
        taken.push(name.clone());
        *item = SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::with_quote('"', name),
        };
    }
}

/// Whether `f` is an aggregate. Aggregates may not nest: an alias of an aggregate is
/// not replaced inside another.
fn is_aggregate(f: &Function) -> bool {
    super::AGGREGATES.contains(&function_name(&f.name).as_str())
}

/// An alias may be used in the other SELECT items, where it stands for its expression
/// (before a column of the same name): `a + 1 AS sum1, sum1 + 1 AS sum2`.
fn inline_aliases(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let aliased: Vec<Option<(String, Expr)>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { expr, alias } => Some((alias.value.clone(), expr.clone())),
            _ => None,
        })
        .collect();
    if aliased.iter().flatten().count() < 2 {
        return;
    }
    for (i, item) in select.projection.iter_mut().enumerate() {
        // A bare alias keeps its name: `a + 1 AS x, x` gives `x` twice.
        if let SelectItem::UnnamedExpr(Expr::Identifier(id)) = item
            && aliased.iter().flatten().any(|(name, _)| *name == id.value)
        {
            let alias = Ident::with_quote('"', id.value.clone());
            *item = SelectItem::ExprWithAlias {
                expr: Expr::Identifier(id.clone()),
                alias,
            };
        }
        let expr = match item {
            SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr) => expr,
            _ => continue,
        };
        *expr = substitute(expr.clone(), &aliased, &mut vec![i], false);
    }
}

/// `e` with each alias of another item (not one on `stack`, which would be a cycle)
/// replaced by that item's expression.
fn substitute(
    mut e: Expr,
    aliased: &[Option<(String, Expr)>],
    stack: &mut Vec<usize>,
    in_aggregate: bool,
) -> Expr {
    match &mut e {
        Expr::Identifier(id) if id.quote_style.is_none() => {
            let found = aliased.iter().enumerate().find(|(j, a)| {
                !stack.contains(j) && a.as_ref().is_some_and(|(name, _)| *name == id.value)
            });
            if let Some((j, Some((_, expr)))) = found
                && !(in_aggregate && calls_any(expr, super::AGGREGATES))
            {
                stack.push(j);
                let inner = substitute(expr.clone(), aliased, stack, in_aggregate);
                stack.pop();
                return Expr::Nested(Box::new(inner));
            }
            e
        }
        Expr::Function(f) => {
            let inside = in_aggregate || is_aggregate(f);
            if let FunctionArguments::List(list) = &mut f.args {
                for a in &mut list.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = a {
                        *x = substitute(x.clone(), aliased, stack, inside);
                    }
                }
            }
            e
        }
        _ => {
            let mut sub = |x: &mut Expr| *x = substitute(x.clone(), aliased, stack, in_aggregate);
            match &mut e {
                Expr::BinaryOp { left, right, .. } => {
                    sub(left);
                    sub(right);
                }
                Expr::UnaryOp { expr, .. }
                | Expr::Nested(expr)
                | Expr::Cast { expr, .. }
                | Expr::IsNull(expr)
                | Expr::IsNotNull(expr)
                | Expr::IsTrue(expr)
                | Expr::IsFalse(expr) => sub(expr),
                Expr::CompoundFieldAccess { root, .. } => sub(root),
                Expr::Between {
                    expr, low, high, ..
                } => {
                    sub(expr);
                    sub(low);
                    sub(high);
                }
                Expr::InList { expr, list, .. } => {
                    sub(expr);
                    list.iter_mut().for_each(sub);
                }
                Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                    sub(expr);
                    sub(pattern);
                }
                Expr::Case {
                    operand,
                    conditions,
                    else_result,
                    ..
                } => {
                    if let Some(o) = operand {
                        sub(o);
                    }
                    for c in conditions {
                        sub(&mut c.condition);
                        sub(&mut c.result);
                    }
                    if let Some(x) = else_result {
                        sub(x);
                    }
                }
                _ => {}
            }
            e
        }
    }
}

/// Rewrites a query written in eKuiper's dialect into the engine's terms.
pub(super) fn translate(query: &mut Query, rule: &str) -> Result<(), Located> {
    replace_wins(query);
    // Without a window, eKuiper's window_start() and window_end() are 0.
    let windowed = has_window(query);
    // The stream's name (or alias): a JSON path may start at the row itself.
    let from = match query.body.as_ref() {
        SetExpr::Select(s) => s.from.first().and_then(|t| match &t.relation {
            datafusion::sql::sqlparser::ast::TableFactor::Table { name, alias, .. } => Some(
                alias
                    .as_ref()
                    .map_or_else(|| name.to_string(), |a| a.name.value.clone()),
            ),
            _ => None,
        }),
        _ => None,
    };
    // The user's aliases first: the names given below are not for reuse.
    inline_aliases(query);
    name_items(query);
    keep_alias_case(query);
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
                let projected = list_projection(access_chain);
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
                if let Some(rest) = projected {
                    *e = project_fields(e.clone(), rest);
                }
            }
            Expr::Function(f)
                if !windowed
                    && matches!(
                        function_name(&f.name).as_str(),
                        "window_start" | "window_end"
                    )
                    && plain_args(f).is_some_and(|a| a.is_empty()) =>
            {
                *e = number(0);
            }
            Expr::Function(f)
                if function_name(&f.name) == "rule_id"
                    && plain_args(f).is_some_and(|a| a.is_empty()) =>
            {
                *e = string(rule);
            }
            Expr::Function(f) => match functions::function(f, from.as_deref()) {
                Ok(Some(x)) => *e = x,
                Ok(None) => {}
                Err(msg) => {
                    return ControlFlow::Break((span_pos(&f.name), msg));
                }
            },
            // `x IN list`: whether the list holds x.
            Expr::InUnnest {
                expr,
                array_expr,
                negated,
            } => {
                let has = call("array_has", vec![(**array_expr).clone(), (**expr).clone()]);
                *e = if *negated {
                    Expr::UnaryOp {
                        op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                        expr: Box::new(Expr::Nested(Box::new(has))),
                    }
                } else {
                    has
                };
            }
            // trim(s) removes tabs and line ends too.
            Expr::Trim {
                expr,
                trim_where: None,
                trim_what: None,
                trim_characters: None,
            } => {
                *e = call(
                    "btrim",
                    vec![(**expr).clone(), string(functions::WHITESPACE)],
                )
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
                let name = function_name(&f.name);
                let differs = match name.as_str() {
                    "array_position" => {
                        "is 1-based and null when absent here; 0-based and -1 in eKuiper"
                    }
                    "array_remove" => "removes the first match here; every match in eKuiper",
                    "lpad" | "rpad" => "pads to a length here; adds that many spaces in eKuiper",
                    "stddev" | "var" => {
                        "is the sample statistic here; the population's in eKuiper \
                         (stddev_pop, var_pop here)"
                    }
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

/// The stream's row as one object: `named_struct('a', a, 'b', b, ...)` of its columns.
fn whole_row(schema: &Schema) -> Expr {
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
    call("named_struct", fields)
}

/// eKuiper's aggregates of rows, in either dialect (DataFusion has none of these names):
/// - `collect(col)` is `array_agg(col)`, and `collect(*)` an array of the group's rows
///   as objects of the stream's columns;
/// - `merge_agg(*)` merges the rows (as objects), `merge_agg(obj)` the objects;
/// - `deduplicate(key, all)`: see [`crate::functions`].
pub(crate) fn row_aggregates(query: &mut Query, schema: &Schema) -> Result<(), String> {
    let flow = visit_expressions_mut(query, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let name = function_name(&f.name);
        let FunctionArguments::List(list) = &mut f.args else {
            return ControlFlow::Continue(());
        };
        let star = matches!(
            list.args.as_slice(),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
        );
        match name.as_str() {
            "collect" => {
                f.name = ObjectName::from(vec![Ident::new("array_agg")]);
                if star {
                    list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(whole_row(
                        schema,
                    )))];
                }
            }
            "merge_agg" if star => {
                list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(whole_row(
                    schema,
                )))];
            }
            "deduplicate" => {
                let all = match list.args.as_slice() {
                    [
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(_)),
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))),
                    ] => match v.value {
                        Value::Boolean(b) => Some(b),
                        _ => None,
                    },
                    _ => None,
                };
                let Some(all) = all else {
                    return ControlFlow::Break(
                        "deduplicate takes (key, true | false): the key column, and whether \
                         to return every row with a new key (true) or the last row unless \
                         its key was seen before (false)"
                            .to_string(),
                    );
                };
                f.name =
                    ObjectName::from(vec![Ident::new(if all { DEDUP_ALL } else { DEDUP_LAST })]);
                list.args[1] = FunctionArg::Unnamed(FunctionArgExpr::Expr(whole_row(schema)));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(message) => Err(message),
        ControlFlow::Continue(()) => Ok(()),
    }
}
