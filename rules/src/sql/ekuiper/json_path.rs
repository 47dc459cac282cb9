//! eKuiper's JSON path functions (`json_path_query`, `json_path_query_first`,
//! `json_path_exists`) with a literal path, translated into field accesses when the
//! rule is read: `$.a.b`, `$['a']`, `$[0]` (from 0, negative from the end), `$.list[*].f`
//! and filters of a list of objects, `$.list[? @.f > 30]` (also `[?(...)]`), comparing a
//! field to a number or a string.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Ident, Value};

use super::build::{self, binary, by_sign, call, number, string};
use crate::functions::{LIST_FIELD, LIST_WHERE};

/// One step of a path.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    /// `[? @.field op value]`.
    Where(String, String, Box<Expr>),
}

/// What the call asks of the path's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// Every match (a list once the path went through a list).
    Query,
    /// The first match.
    First,
    /// Whether anything matches.
    Exists,
}

fn steps(path: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("JSON path `{path}`: {why}");
    let Some(mut rest) = path.trim().strip_prefix('$') else {
        return Err(bad("a path starts with $"));
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(bad("a field name is missing after `.`"));
            }
            out.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| bad("`[` is not closed"))?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                out.push(Step::All);
            } else if let Some(cond) = inner.strip_prefix('?') {
                out.push(condition(cond).ok_or_else(|| {
                    bad("a filter compares a field to a literal, e.g. [? @.age > 30]")
                })?);
            } else if let Some(name) = quoted(inner) {
                out.push(Step::Field(name));
            } else {
                let i: i64 = inner
                    .parse()
                    .map_err(|_| bad(&format!("`[{inner}]` is not an index, * or a filter")))?;
                out.push(Step::Index(i));
            }
        } else {
            return Err(bad(&format!("unexpected `{rest}`")));
        }
    }
    Ok(out)
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    ['\'', '"'].iter().find_map(|q| {
        s.strip_prefix(*q)
            .and_then(|r| r.strip_suffix(*q))
            .map(str::to_string)
    })
}

/// `@.field op literal`, in parentheses or not.
fn condition(text: &str) -> Option<Step> {
    let mut t = text.trim();
    while let Some(inner) = t.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        t = inner.trim();
    }
    let t = t.strip_prefix("@.")?;
    let op_at = t.find(['<', '>', '=', '!'])?;
    let field = t[..op_at].trim().to_string();
    let after = &t[op_at..];
    let op_len = if after.len() > 1 && after.as_bytes()[1] == b'=' {
        2
    } else {
        1
    };
    let op = after[..op_len].to_string();
    let literal = after[op_len..].trim();
    let value = match quoted(literal) {
        Some(s) => string(&s),
        None => {
            literal.parse::<f64>().ok()?;
            build::literal(Value::Number(literal.into(), false))
        }
    };
    if field.is_empty() || !["==", "=", "!=", ">", ">=", "<", "<="].contains(&op.as_str()) {
        return None;
    }
    Some(Step::Where(field, op, Box::new(value)))
}

/// The call in DataFusion's terms; `base` is `None` when the path starts at the row
/// (the argument is the stream itself).
pub(super) fn translate(base: Option<Expr>, path: &str, ask: Ask) -> Result<Expr, String> {
    let mut cur = base;
    // Whether `cur` is a list of the matches (after `[*]` or a filter).
    let mut many = false;
    for step in steps(path)? {
        cur = Some(match (step, cur) {
            (Step::Field(name), None) => Expr::Identifier(Ident::new(name)),
            (Step::Field(name), Some(c)) if many => call(LIST_FIELD, vec![c, string(&name)]),
            (Step::Field(name), Some(c)) => call("get_field", vec![c, string(&name)]),
            (_, None) => return Err(format!("JSON path `{path}`: the row is not a list")),
            (Step::Index(_) | Step::All | Step::Where(..), Some(_)) if many => {
                return Err(format!(
                    "JSON path `{path}`: only one `[*]` or filter per path is supported"
                ));
            }
            (Step::Index(i), Some(c)) => call("array_element", vec![c, by_sign(number(i), 1, 0)]),
            (Step::All, Some(c)) => {
                many = true;
                c
            }
            (Step::Where(field, op, value), Some(c)) => {
                many = true;
                call(LIST_WHERE, vec![c, string(&field), string(&op), *value])
            }
        });
    }
    let Some(cur) = cur else {
        return Err(format!("JSON path `{path}` selects nothing"));
    };
    Ok(match (ask, many) {
        (Ask::Query, _) | (Ask::First, false) => cur,
        (Ask::First, true) => call("array_element", vec![cur, number(1)]),
        (Ask::Exists, true) => call(
            "coalesce",
            vec![
                binary(
                    call("cardinality", vec![cur]),
                    BinaryOperator::Gt,
                    number(0),
                ),
                build::literal(Value::Boolean(false)),
            ],
        ),
        (Ask::Exists, false) => Expr::IsNotNull(Box::new(cur)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_into_steps() {
        assert_eq!(
            steps("$.Group1[*].last"),
            Ok(vec![
                Step::Field("Group1".into()),
                Step::All,
                Step::Field("last".into())
            ])
        );
        assert_eq!(
            steps("$[0]['first']"),
            Ok(vec![Step::Index(0), Step::Field("first".into())])
        );
        assert!(matches!(
            steps("$[? (@.age>60)].first").as_deref(),
            Ok([Step::Where(f, op, _), Step::Field(_)]) if f == "age" && op == ">"
        ));
        assert!(steps("a.b").is_err());
        assert!(steps("$[x]").is_err());
        assert!(steps("$[? @.age ~ 3]").is_err());
    }
}
