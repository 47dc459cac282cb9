//! Building the SQL expressions the eKuiper rewrites produce: literals, calls, casts,
//! arithmetic, and eKuiper's 0-based indexes as DataFusion's 1-based ones.

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CaseWhen, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, Interval, ObjectName, UnaryOperator, Value, ValueWithSpan,
};
use datafusion::sql::sqlparser::tokenizer::Span;

use crate::sql::int_literal;

pub(super) fn number(n: i64) -> Expr {
    literal(Value::Number(n.to_string(), false))
}

/// A literal value.
pub(super) fn literal(value: Value) -> Expr {
    Expr::Value(ValueWithSpan {
        value,
        span: Span::empty(),
    })
}

pub(super) fn plus(e: Expr, n: i64) -> Expr {
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
pub(super) fn by_sign(e: Expr, nonneg: i64, neg: i64) -> Expr {
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
pub(super) fn index(e: Expr) -> Expr {
    // A string index names a struct field: unchanged.
    if matches!(&e, Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_) | Value::DoubleQuotedString(_)))
    {
        return e;
    }
    by_sign(e, 1, 0)
}

pub(super) fn call(name: &str, args: Vec<Expr>) -> Expr {
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

pub(super) fn plain_args(f: &Function) -> Option<Vec<Expr>> {
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

pub(super) fn string(s: &str) -> Expr {
    Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(s.into()),
        span: Span::empty(),
    })
}

/// `left op right`, in parentheses.
pub(super) fn binary(left: Expr, op: BinaryOperator, right: Expr) -> Expr {
    Expr::Nested(Box::new(Expr::BinaryOp {
        left: Box::new(left),
        op,
        right: Box::new(right),
    }))
}

/// `-e`.
pub(super) fn negate(e: Expr) -> Expr {
    Expr::UnaryOp {
        op: UnaryOperator::Minus,
        expr: Box::new(e),
    }
}

/// `arrow_cast(e, 'type')`: `e` as an Arrow type (`Int64`, `Float64`, `Utf8`, ...).
pub(super) fn cast(e: Expr, arrow_type: &str) -> Expr {
    call("arrow_cast", vec![e, string(arrow_type)])
}

/// `INTERVAL 'text'`.
pub(super) fn interval(text: &str) -> Expr {
    Expr::Interval(Interval {
        value: Box::new(string(text)),
        leading_field: None,
        leading_precision: None,
        last_field: None,
        fractional_seconds_precision: None,
    })
}

/// The string a literal holds, if it is one.
pub(super) fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}
