//! `CREATE RULE name INTO sink[, sink...] AS <query>`.

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DateTimeField, ExceptSelectItem, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, JoinConstraint, JoinOperator, ObjectName,
    ObjectNamePart, Query, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Spanned,
    TableFactor, Value, WildcardAdditionalOptions, WindowType,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::Cursor;
use super::ekuiper::{self, Dialect};
use super::{analytic, hits};
use crate::error::{Pos, SqlError};
use crate::rule_def::RuleDef;
use crate::window::{WindowSpec, unit_millis};

/// Window functions accepted in GROUP BY, by eKuiper's spelling.
pub(crate) const WINDOW_FUNCTIONS: [&str; 9] = [
    "STATEWINDOW",
    "TUMBLINGWINDOW",
    "HOPPINGWINDOW",
    "SLIDINGWINDOW",
    "SESSIONWINDOW",
    "COUNTWINDOW",
    "TUMBLE",
    "HOP",
    "SESSION",
];

pub(super) fn parse(c: &mut Cursor, dialect: Dialect) -> Result<RuleDef, SqlError> {
    let (name, pos) = c.ident("a rule name")?;
    if name.eq_ignore_ascii_case("INTO") && c.peek_word_upper().as_deref() != Some("INTO") {
        return Err(c.error_at(
            pos,
            "the rule's name is missing: write `CREATE RULE <name> INTO <sink> AS SELECT ...`",
        ));
    }
    c.expect_keyword("INTO")?;
    let mut sinks = Vec::new();
    loop {
        if c.peek_word_upper().as_deref() == Some("AS") {
            let at = c.pos();
            return Err(c.error_at(
                at,
                "a sink name is missing after INTO: write `INTO <sink> AS SELECT ...`",
            ));
        }
        let (sink, sink_pos) = c.ident("a sink name")?;
        if sinks.contains(&sink) {
            return Err(c.error_at(sink_pos, format!("sink `{sink}` is named twice")));
        }
        sinks.push(sink);
        if !c.eat_token(&Token::Comma) {
            break;
        }
    }
    let mut late_sink = None;
    if c.peek_word_upper().as_deref() == Some("LATE") {
        c.next();
        c.expect_keyword("INTO")?;
        let (sink, _) = c.ident("a sink name for late rows")?;
        late_sink = Some(sink);
    }
    let mut error_sink = None;
    if c.peek_word_upper().as_deref() == Some("ERRORS") {
        c.next();
        c.expect_keyword("INTO")?;
        let (sink, _) = c.ident("a sink name for rows that fail")?;
        error_sink = Some(sink);
    }
    c.expect_keyword("AS")?;
    let query_pos = c.pos();
    let file = c.file().to_path_buf();
    let mut tokens = analytic::mark_when(c.rest());
    if dialect == Dialect::Ekuiper {
        tokens = ekuiper::field_arrows(tokens).map_err(|(p, m)| c.error_at(p, m))?;
    }
    // Where the statement ends: errors about a missing part point there.
    let end_pos = tokens
        .iter()
        .rev()
        .find(|t| !matches!(t.token, Token::Whitespace(_)))
        .map_or(query_pos, |t| Pos {
            line: t.span.end.line,
            column: t.span.end.column,
        });
    let words = tokens
        .iter()
        .filter_map(|t| {
            let word = match &t.token {
                Token::Word(w) => w.value.clone(),
                // A struct field named in `col['field']`.
                Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
                _ => return None,
            };
            Some((
                word,
                Pos {
                    line: t.span.start.line,
                    column: t.span.start.column,
                },
            ))
        })
        .collect();
    let differences_from = (dialect == Dialect::Fieldgate).then(|| tokens.clone());
    let mut parser = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
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
        // A misspelt clause keyword (`GRUOP BY`, `WEHRE`) parses as a table alias and
        // leaves what follows it unexpected: name the word.
        let alias = match &query.body.as_ref() {
            SetExpr::Select(s) => s.from.last().and_then(|f| match &f.relation {
                TableFactor::Table { alias: Some(a), .. } => Some(a.name.clone()),
                _ => None,
            }),
            _ => None,
        };
        if let Some(alias) = alias
            && alias.quote_style.is_none()
            && let Some(keyword) = misspelt_keyword(&alias.value)
        {
            let at = match alias.span.start.line {
                0 => p,
                line => Pos {
                    line,
                    column: alias.span.start.column,
                },
            };
            return Err(SqlError::new(
                &file,
                at,
                format!(
                    "`{}` is not a keyword (it was read as a name for the stream): did you \
                     mean {keyword}?",
                    alias.value
                ),
            ));
        }
        return Err(SqlError::new(
            &file,
            p,
            format!("unexpected `{}` after the rule's query", next.token),
        ));
    }
    let located = |(p, m): Located| SqlError::new(&file, p.unwrap_or(query_pos), m);
    if dialect == Dialect::Ekuiper {
        ekuiper::translate(&mut query, &name).map_err(located)?;
    }
    let warnings = differences_from
        .map(|tokens| ekuiper::differences(&query, &tokens))
        .unwrap_or_default()
        .into_iter()
        .map(|(p, m)| SqlError::new(&file, p, m))
        .collect();
    let extracted = analytic::extract(&mut query).map_err(located)?;
    let windowed = has_window(&query);
    let hits = hits::extract(&mut query, windowed).map_err(located)?;
    let (stream, window, prefilter, keys, tables) = inspect_select(&mut query).map_err(located)?;
    if let Some((at, name)) = extracted.sql_window_at
        && window.is_none()
    {
        return Err(SqlError::new(
            &file,
            at.unwrap_or(query_pos),
            format!(
                "`{name}(...) OVER (...)` is not supported in a rule without a window: such a rule runs on \
             batches of a few rows at a time, so a window function (lag, lead, row_number, \
             ...) would see one batch only; add a window to GROUP BY, or use eKuiper's \
             analytic functions (lag, latest, changed_col, had_changed, acc_*), which keep \
             their state from batch to batch"
            ),
        ));
    }
    if late_sink.is_some() && !window.is_some_and(|w| w.uses_time()) {
        return Err(SqlError::new(
            &file,
            pos,
            "LATE INTO needs a time window in GROUP BY: only windowed rules have late rows",
        ));
    }
    Ok(RuleDef {
        name,
        sinks,
        stream,
        query,
        window,
        prefilter,
        keys,
        late_sink,
        error_sink,
        analytic: extracted.calls,
        hits,
        dialect,
        tables,
        warnings,
        file,
        pos,
        query_pos,
        words,
    })
}

/// The clause keyword a word is a likely misspelling of (one or two letters off).
fn misspelt_keyword(word: &str) -> Option<&'static str> {
    const CLAUSES: [&str; 6] = ["WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "WINDOW"];
    let upper = word.to_uppercase();
    CLAUSES
        .iter()
        .map(|k| (k, k.split(' ').next().unwrap_or(k)))
        .filter(|(_, first)| *first != upper)
        .map(|(k, first)| (k, strsim::damerau_levenshtein(first, &upper)))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| *k)
}

pub(super) type Located = (Option<Pos>, String);

pub(super) fn span_pos(e: &impl Spanned) -> Option<Pos> {
    let s = e.span();
    (s.start.line > 0).then_some(Pos {
        line: s.start.line,
        column: s.start.column,
    })
}

/// What [`inspect_select`] finds: the stream, the window, the pre-window filter query
/// and the number of key columns it appends.
type Inspected = (
    String,
    Option<WindowSpec>,
    Option<Box<Query>>,
    usize,
    Vec<String>,
);

/// Finds the stream in FROM, takes the window function out of GROUP BY and, for
/// windowed rules, splits off the part that runs before windowing.
fn inspect_select(query: &mut Query) -> Result<Inspected, Located> {
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
    let mut tables = Vec::new();
    let first_join_at = from.joins.first().and_then(|j| span_pos(&j.relation));
    for join in &from.joins {
        let name = match &join.relation {
            TableFactor::Table { name, .. } => match name.0.as_slice() {
                [ObjectNamePart::Identifier(id)] => id.value.clone(),
                _ => return Err((span_pos(name), format!("`{name}` is not a table name"))),
            },
            other => {
                return Err((
                    span_pos(other),
                    "a rule joins its stream to tables (CREATE TABLE) only".into(),
                ));
            }
        };
        match &join.join_operator {
            JoinOperator::Join(JoinConstraint::On(_))
            | JoinOperator::Inner(JoinConstraint::On(_))
            | JoinOperator::Left(JoinConstraint::On(_))
            | JoinOperator::LeftOuter(JoinConstraint::On(_)) => {}
            _ => {
                return Err((
                    span_pos(&join.relation),
                    format!(
                        "join `{name}` with [INNER | LEFT] JOIN {name} ON <condition>: a stream \
                         is joined to a lookup table row by row"
                    ),
                ));
            }
        }
        tables.push(name);
    }
    if tables.len() > 1 {
        return Err((
            first_join_at,
            "a rule joins one table for now: put the columns it needs in one table".into(),
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
    let mut keys = Vec::new();
    // eKuiper's `GROUP BY ..., TUMBLINGWINDOW(ss, 10) FILTER (WHERE cond)`: the rows
    // that enter the window, as WHERE does here.
    let mut window_filter = None;
    // A state window's begin and end conditions, and the keys of its OVER (...).
    let mut conditions: Vec<Expr> = Vec::new();
    let mut partition: Vec<Expr> = Vec::new();
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
                    if let Expr::Function(f) = &e {
                        window_filter = f.filter.as_deref().cloned();
                        if let WindowSpec::State { .. } = spec {
                            // Its conditions, and eKuiper's OVER (PARTITION BY ...) as keys.
                            conditions = args_of(f).into_iter().cloned().collect();
                            if let Some(WindowType::WindowSpec(w)) = &f.over {
                                partition = w.partition_by.clone();
                            }
                        }
                    }
                }
                None => kept.push(e),
            }
        }
        // A window without aggregates emits its rows, as eKuiper does (`SELECT *`,
        // `ORDER BY`, `LIMIT` over the window's rows).
        let rows_of_window = window.is_some()
            && kept.is_empty()
            && select.having.is_none()
            && !select.projection.iter().any(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    super::calls_any(e, super::AGGREGATES)
                }
                _ => false,
            });
        if window.is_some() {
            kept.append(&mut partition);
            keys = kept.clone();
            kept.push(Expr::Identifier(Ident::new("window_start")));
            kept.push(Expr::Identifier(Ident::new("window_end")));
        }
        if rows_of_window {
            kept.clear();
            // `*` is the stream's columns, not the window's bounds.
            for item in &mut select.projection {
                if let SelectItem::Wildcard(options) = item {
                    let bounds = [Ident::new("window_start"), Ident::new("window_end")];
                    match &mut options.opt_except {
                        Some(except) => except.additional_elements.extend(bounds),
                        None => {
                            let [start, end] = bounds;
                            options.opt_except = Some(ExceptSelectItem {
                                first_element: start,
                                additional_elements: vec![end],
                            });
                        }
                    }
                }
            }
        }
        *exprs = kept;
    }
    let Some(spec) = window else {
        if !tables.is_empty() {
            probe_with_the_stream(select);
        }
        return Ok((stream, None, None, 0, tables));
    };
    if !tables.is_empty() && spec.per_key() {
        return Err((
            first_join_at,
            "session and state windows are formed per key before the join: join a table in \
             a rule with a tumbling, hopping, sliding or count window, or in a rule without \
             one"
            .into(),
        ));
    }
    if let Some(filter) = window_filter {
        select.selection = Some(match select.selection.take() {
            None => filter,
            Some(w) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(w))),
                op: BinaryOperator::And,
                right: Box::new(Expr::Nested(Box::new(filter))),
            },
        });
    }
    // Rows are filtered (and keyed) before they enter windows, as eKuiper does: the
    // WHERE decides which rows count for sessions, count windows and sliding triggers.
    if select.selection.is_none() && !spec.per_key() {
        return Ok((stream, window, None, 0, tables));
    }
    let selection = select.selection.take();
    let mut pre = query.clone();
    if let SetExpr::Select(pre_select) = pre.body.as_mut() {
        pre_select.projection = vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())];
        if spec.per_key() {
            for (i, k) in keys.iter().enumerate() {
                pre_select.projection.push(SelectItem::ExprWithAlias {
                    expr: k.clone(),
                    alias: Ident::new(format!("__fg_key{i}")),
                });
            }
        }
        for (i, c) in conditions.iter().enumerate() {
            pre_select.projection.push(SelectItem::ExprWithAlias {
                expr: c.clone(),
                alias: Ident::new(format!("__fg_cond{i}")),
            });
        }
        pre_select.selection = selection;
        pre_select.group_by = GroupByExpr::Expressions(vec![], vec![]);
        pre_select.having = None;
    }
    // WHERE runs on the stream's rows as they arrive; the table is joined to the rows of
    // the windows.
    if let SetExpr::Select(pre_select) = pre.body.as_mut()
        && let Some(from) = pre_select.from.first_mut()
    {
        from.joins.clear();
    }
    pre.order_by = None;
    pre.limit_clause = None;
    let n_keys = if spec.per_key() { keys.len() } else { 0 };
    Ok((stream, window, Some(Box::new(pre)), n_keys, tables))
}

/// Rewrites `stream [LEFT] JOIN table` as `table [RIGHT] JOIN stream`: the same rows, but
/// DataFusion builds its hash table from the first relation and probes it with the
/// second, so the lookup table is the one hashed and the results keep the order the
/// stream's rows came in. `SELECT *` still lists the stream's columns first.
fn probe_with_the_stream(select: &mut datafusion::sql::sqlparser::ast::Select) {
    let Some(from) = select.from.first_mut() else {
        return;
    };
    let Some(join) = from.joins.first_mut() else {
        return;
    };
    let reference = |t: &TableFactor| match t {
        TableFactor::Table { alias: Some(a), .. } => ObjectName::from(vec![a.name.clone()]),
        TableFactor::Table { name, .. } => name.clone(),
        _ => ObjectName::from(vec![]),
    };
    let (stream_ref, table_ref) = (reference(&from.relation), reference(&join.relation));
    std::mem::swap(&mut from.relation, &mut join.relation);
    join.join_operator = match std::mem::replace(&mut join.join_operator, JoinOperator::CrossApply)
    {
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => JoinOperator::Right(c),
        JoinOperator::Join(c) => JoinOperator::Inner(c),
        other => other,
    };
    let mut projection = Vec::with_capacity(select.projection.len() + 1);
    for item in select.projection.drain(..) {
        match item {
            SelectItem::Wildcard(opts) => {
                projection.push(SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(stream_ref.clone()),
                    opts,
                ));
                projection.push(SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(table_ref.clone()),
                    WildcardAdditionalOptions::default(),
                ));
            }
            other => projection.push(other),
        }
    }
    select.projection = projection;
}

/// The numeric arguments of a window call, after the function name.
fn args_of(f: &datafusion::sql::sqlparser::ast::Function) -> Vec<&Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

fn positive_int(e: &Expr) -> Result<i64, Located> {
    let number = match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n),
            _ => None,
        },
        _ => None,
    };
    match number.map(|n| (n, n.parse::<i64>())) {
        Some((_, Ok(n))) if n > 0 => Ok(n),
        Some((n, Err(_))) if n.chars().all(|c| c.is_ascii_digit()) => Err((
            span_pos(e),
            format!("`{e}` is too large: at most {}", i64::MAX),
        )),
        _ => Err((span_pos(e), format!("`{e}` must be a positive integer"))),
    }
}

/// `INTERVAL '10' SECOND` or `INTERVAL '10 seconds'`, in milliseconds.
pub(super) fn interval_millis(e: &Expr) -> Result<i64, Located> {
    let bad = || {
        (
            span_pos(e),
            format!("`{e}` is not an interval such as INTERVAL '10' SECOND"),
        )
    };
    let Expr::Interval(iv) = e else {
        return Err(bad());
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let ms = match &iv.leading_field {
        Some(field) => {
            let unit = match field {
                DateTimeField::Second | DateTimeField::Seconds => 1_000,
                DateTimeField::Minute | DateTimeField::Minutes => 60_000,
                DateTimeField::Hour | DateTimeField::Hours => 3_600_000,
                DateTimeField::Day | DateTimeField::Days => 86_400_000,
                _ => return Err(bad()),
            };
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad())?
                .checked_mul(unit)
        }
        None => humantime::parse_duration(text.trim())
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok()),
    };
    ms.filter(|m| *m > 0).ok_or_else(bad)
}

/// Recognises the window functions of GROUP BY: eKuiper's spellings and the SQL-style
/// `TUMBLE`, `HOP` and `SESSION` with intervals.
/// Whether `e` is a call of a window function (`TUMBLINGWINDOW(...)`, in any case).
pub(super) fn is_window_call(e: &Expr) -> bool {
    matches!(e, Expr::Function(f)
        if WINDOW_FUNCTIONS.contains(&f.name.to_string().to_ascii_uppercase().as_str()))
}

/// Whether the query's GROUP BY has a window.
pub(super) fn has_window(query: &Query) -> bool {
    match query.body.as_ref() {
        SetExpr::Select(s) => match &s.group_by {
            GroupByExpr::Expressions(exprs, _) => exprs.iter().any(is_window_call),
            _ => false,
        },
        _ => false,
    }
}

fn window_call(e: &Expr) -> Result<Option<WindowSpec>, Located> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    if !is_window_call(e) {
        return Ok(None);
    }
    let fname = f.name.to_string().to_ascii_uppercase();
    let pos = span_pos(e);
    let args = args_of(f);
    let usage = |u: &str| (pos, format!("{fname} takes {u}"));
    // eKuiper time windows: (unit, n[, m]).
    let timed = |n: usize, u: &str| -> Result<Vec<i64>, Located> {
        if args.len() != n + 1 {
            return Err(usage(u));
        }
        let unit = match args[0] {
            Expr::Identifier(id) => unit_millis(&id.value),
            _ => None,
        }
        .ok_or_else(|| {
            (
                span_pos(args[0]),
                format!("unknown time unit `{}` (use ms, ss, mi, hh or dd)", args[0]),
            )
        })?;
        args[1..]
            .iter()
            .map(|a| {
                positive_int(a)?
                    .checked_mul(unit)
                    .ok_or_else(|| (span_pos(*a), "window length is too large".to_string()))
            })
            .collect()
    };
    let spec = match fname.as_str() {
        "TUMBLINGWINDOW" => {
            let v = timed(1, "(unit, size), e.g. TUMBLINGWINDOW(ss, 10)")?;
            WindowSpec::Tumbling { size_ms: v[0] }
        }
        "HOPPINGWINDOW" => {
            let v = timed(2, "(unit, size, hop), e.g. HOPPINGWINDOW(ss, 10, 5)")?;
            WindowSpec::Hopping {
                size_ms: v[0],
                slide_ms: v[1],
            }
        }
        "SLIDINGWINDOW" => {
            let u = "(unit, size) or (unit, size, delay), e.g. SLIDINGWINDOW(ss, 10)";
            let v = timed(args.len().clamp(2, 3) - 1, u)?;
            WindowSpec::Sliding {
                size_ms: v[0],
                delay_ms: v.get(1).copied().unwrap_or(0),
            }
        }
        "SESSIONWINDOW" => {
            let v = timed(
                2,
                "(unit, max duration, gap), e.g. SESSIONWINDOW(ss, 60, 10)",
            )?;
            WindowSpec::Session {
                max_ms: v[0],
                gap_ms: v[1],
            }
        }
        "STATEWINDOW" => match args.len() {
            1 => WindowSpec::State { single: true },
            2 => WindowSpec::State { single: false },
            _ => {
                return Err(usage(
                    "(begin, end) or (trigger), e.g. STATEWINDOW(state = 'run', state = 'stop')",
                ));
            }
        },
        "COUNTWINDOW" => {
            let n: Vec<i64> = match args.len() {
                1 | 2 => args
                    .iter()
                    .map(|a| positive_int(a))
                    .collect::<Result<_, _>>()?,
                _ => return Err(usage("(size) or (size, slide), e.g. COUNTWINDOW(5, 2)")),
            };
            let size = n[0] as u64;
            WindowSpec::Count {
                size,
                slide: n.get(1).map_or(size, |s| *s as u64),
            }
        }
        "TUMBLE" => match args.as_slice() {
            [size] => WindowSpec::Tumbling {
                size_ms: interval_millis(size)?,
            },
            _ => return Err(usage("(INTERVAL size), e.g. TUMBLE(INTERVAL '10' SECOND)")),
        },
        "HOP" => match args.as_slice() {
            [size, slide] => WindowSpec::Hopping {
                size_ms: interval_millis(size)?,
                slide_ms: interval_millis(slide)?,
            },
            _ => {
                return Err(usage(
                    "(INTERVAL size, INTERVAL hop), e.g. HOP(INTERVAL '10' SECOND, INTERVAL '5' SECOND)",
                ));
            }
        },
        "SESSION" => match args.as_slice() {
            [gap, max] => WindowSpec::Session {
                gap_ms: interval_millis(gap)?,
                max_ms: interval_millis(max)?,
            },
            _ => {
                return Err(usage(
                    "(INTERVAL gap, INTERVAL max), e.g. SESSION(INTERVAL '10' SECOND, INTERVAL '1' MINUTE)",
                ));
            }
        },
        _ => return Ok(None),
    };
    match spec {
        WindowSpec::Hopping { size_ms, slide_ms } if slide_ms > size_ms => Err((
            pos,
            "the hop of a hopping window must not exceed its size".into(),
        )),
        WindowSpec::Count { size, slide } if slide > size => Err((
            pos,
            "the slide of a count window must not exceed its size".into(),
        )),
        WindowSpec::Session { max_ms, gap_ms } if gap_ms > max_ms => Err((
            pos,
            "a session's gap must not exceed its maximum duration".into(),
        )),
        s => Ok(Some(s)),
    }
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
