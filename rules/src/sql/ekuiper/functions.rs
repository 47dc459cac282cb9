//! eKuiper's functions in DataFusion's terms: a call whose name or meaning differs is
//! rewritten once, when the rule is translated, into DataFusion's functions, operators
//! and the gateway's own (see `crate::functions`).

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, Ident, NullTreatment, ObjectName, Value, WindowSpec, WindowType,
};

use super::build::{
    self, binary, by_sign, call, cast, interval, negate, number, plain_args, plus, string,
    string_literal,
};
use super::json_path::{self, Ask};
use super::time::{duration_ns, strftime};
use crate::functions::{CONV, CRC32, FORMAT, LENGTH, LIST_FIELD, ObjectOp, PRESENT, SHA1, TO_JSON};
use crate::sql::function_name;

/// eKuiper's functions that are DataFusion's under another name, with the same
/// arguments.
const RENAMED: &[(&str, &str)] = &[
    // The population statistics: SQL's plain names are the sample ones.
    ("stddev", "stddev_pop"),
    ("stddevs", "stddev_samp"),
    ("var", "var_pop"),
    ("vars", "var_samp"),
    ("percentile", "percentile_cont"),
    // Strings.
    ("numbytes", "octet_length"),
    ("regexp_matches", "regexp_like"),
    // Numbers.
    ("ceiling", "ceil"),
    ("rand", "random"),
    // Lists.
    ("array_create", "make_array"),
    ("array_contains_any", "array_has_any"),
    ("array_flatten", "flatten"),
    ("array_join", "array_to_string"),
    ("sequence", "generate_series"),
    ("repeat", "array_repeat"),
    // Others.
    ("newuuid", "uuid"),
    ("object_construct", "named_struct"),
];

/// The characters eKuiper's trims remove.
pub(super) const WHITESPACE: &str = " \t\n\r";

/// eKuiper's reading of a value as a time: a number is milliseconds since the epoch, a
/// string is parsed, a timestamp is itself.
fn time(e: Expr) -> Expr {
    call("to_timestamp_millis", vec![e])
}

/// A part of a time (`hour`, `doy`, ...) as an integer.
fn part(name: &str, e: Expr) -> Expr {
    cast(call("date_part", vec![string(name), time(e)]), "Int64")
}

fn text_of_time(e: Expr, pattern: &str) -> Expr {
    call("to_char", vec![e, string(pattern)])
}

/// eKuiper's function of this name and arguments, in DataFusion's terms; `None` for a
/// function that means the same in both; an error for a call eKuiper accepts that
/// cannot be translated (a pattern or duration that is not a literal, say).
pub(super) fn function(f: &mut Function, stream: Option<&str>) -> Result<Option<Expr>, String> {
    let name = function_name(&f.name);
    if let Some((_, to)) = RENAMED.iter().find(|(from, _)| *from == name) {
        f.name = ObjectName::from(vec![Ident::new(*to)]);
        return Ok(None);
    }
    if f.over.is_some() {
        return Ok(None);
    }
    // row_number(): the row's place in its window (or batch), from 1.
    if name == "row_number" {
        let mut g = f.clone();
        g.over = Some(WindowType::WindowSpec(WindowSpec {
            window_name: None,
            partition_by: vec![],
            order_by: vec![],
            window_frame: None,
        }));
        return Ok(Some(Expr::Function(g)));
    }
    let Some(args) = plain_args(f) else {
        return Ok(None);
    };
    // last_value(x, ignore_nulls): SQL's IGNORE NULLS.
    if name == "last_value" || name == "first_value" {
        if let [x, flag] = args.as_slice() {
            let ignore = match flag {
                Expr::Value(v) => v.value.to_string().eq_ignore_ascii_case("true"),
                _ => return Err(format!("{name}'s second argument is true or false")),
            };
            let mut g = f.clone();
            g.args = match call(&name, vec![x.clone()]) {
                Expr::Function(h) => h.args,
                _ => return Ok(None),
            };
            g.null_treatment = ignore.then_some(NullTreatment::IgnoreNulls);
            return Ok(Some(Expr::Function(g)));
        }
        return Ok(None);
    }
    let literal = |e: &Expr, what: &str| -> Result<String, String> {
        string_literal(e)
            .map(str::to_string)
            .ok_or_else(|| format!("{name}'s {what} must be a string literal here"))
    };
    Ok(Some(match (name.as_str(), args.as_slice()) {
        // Strings.
        // array_position(a, v): 0-based, -1 when absent.
        ("array_position", [a, v]) => call(
            "coalesce",
            vec![
                plus(call("array_position", vec![a.clone(), v.clone()]), -1),
                number(-1),
            ],
        ),
        // array_last_position(a, v): the last, 0-based, -1 when absent.
        ("array_last_position", [a, v]) => call(
            "coalesce",
            vec![
                binary(
                    call("cardinality", vec![a.clone()]),
                    BinaryOperator::Minus,
                    call(
                        "array_position",
                        vec![call("array_reverse", vec![a.clone()]), v.clone()],
                    ),
                ),
                number(-1),
            ],
        ),
        // array_remove(a, v): every element equal to v.
        ("array_remove", [a, v]) => call("array_remove_all", vec![a.clone(), v.clone()]),
        // The elements that are not null, 0 for a null list.
        ("array_cardinality", [a]) => call(PRESENT, vec![a.clone()]),
        // The characters of a string, or the elements of a list.
        ("length", [x]) => call(LENGTH, vec![x.clone()]),
        // The number of elements, 0 for null.
        ("cardinality", [a]) => call(
            "coalesce",
            vec![call("cardinality", vec![a.clone()]), number(0)],
        ),
        // element_at(list, i) counts from 0; element_at(object, 'key') is a field.
        ("element_at", [a, key]) => match string_literal(key) {
            Some(_) => call("get_field", vec![a.clone(), key.clone()]),
            None => call("array_element", vec![a.clone(), by_sign(key.clone(), 1, 0)]),
        },
        // lpad(s, n) and rpad(s, n): n spaces added, whatever the length of s.
        // `||` keeps a null null, where concat would drop it.
        ("lpad", [s, n]) => binary(
            call("repeat", vec![string(" "), n.clone()]),
            BinaryOperator::StringConcat,
            s.clone(),
        ),
        ("rpad", [s, n]) => binary(
            s.clone(),
            BinaryOperator::StringConcat,
            call("repeat", vec![string(" "), n.clone()]),
        ),
        ("ltrim" | "rtrim", [s]) => call(&name, vec![s.clone(), string(WHITESPACE)]),
        ("trim", [s]) => call("btrim", vec![s.clone(), string(WHITESPACE)]),
        // indexof(s, t): 0-based, -1 when absent or null.
        ("indexof", [s, t]) => call(
            "coalesce",
            vec![
                plus(call("strpos", vec![s.clone(), t.clone()]), -1),
                number(-1),
            ],
        ),
        // False when either is null.
        ("endswith" | "startswith", [s, t]) => call(
            "coalesce",
            vec![
                call(
                    if name == "endswith" {
                        "ends_with"
                    } else {
                        "starts_with"
                    },
                    vec![s.clone(), t.clone()],
                ),
                build::literal(Value::Boolean(false)),
            ],
        ),
        // split_value(s, separator, i): the i-th part, from 0.
        ("split_value", [s, sep, i]) => call(
            "split_part",
            vec![s.clone(), sep.clone(), plus(i.clone(), 1)],
        ),
        // Every match is replaced.
        ("regexp_replace", [s, re, with]) => call(
            "regexp_replace",
            vec![s.clone(), re.clone(), with.clone(), string("g")],
        ),
        // The first match, whole.
        ("regexp_substr" | "regexp_substring", [s, re]) => call(
            "array_element",
            vec![
                call(
                    "regexp_match",
                    vec![
                        s.clone(),
                        call("concat", vec![string("("), re.clone(), string(")")]),
                    ],
                ),
                number(1),
            ],
        ),
        ("format", [x, d]) => format(x, d, string("")),
        ("format", [x, d, locale]) => format(x, d, locale.clone()),
        // Numbers.
        ("mod", [a, b]) => binary(a.clone(), BinaryOperator::Modulo, b.clone()),
        ("bitand", [a, b]) => binary(a.clone(), BinaryOperator::BitwiseAnd, b.clone()),
        ("bitor", [a, b]) => binary(a.clone(), BinaryOperator::BitwiseOr, b.clone()),
        ("bitxor", [a, b]) => binary(a.clone(), BinaryOperator::BitwiseXor, b.clone()),
        // ~a = -a - 1 in two's complement.
        ("bitnot", [a]) => binary(
            negate(cast(a.clone(), "Int64")),
            BinaryOperator::Minus,
            number(1),
        ),
        ("sign", [x]) => cast(call("signum", vec![x.clone()]), "Int64"),
        ("conv", [n, from, to]) => call(
            CONV,
            vec![
                cast(n.clone(), "Utf8"),
                cast(from.clone(), "Int64"),
                cast(to.clone(), "Int64"),
            ],
        ),
        ("hex2dec", [s]) => cast(
            call(
                CONV,
                vec![
                    call(
                        "regexp_replace",
                        vec![s.clone(), string("^0[xX]"), string("")],
                    ),
                    number(16),
                    number(10),
                ],
            ),
            "Int64",
        ),
        ("dec2hex", [n]) => binary(
            string("0x"),
            BinaryOperator::StringConcat,
            call("to_hex", vec![cast(n.clone(), "Int64")]),
        ),
        // Conversions.
        ("cast", [x, to]) => {
            let to = literal(to, "type")?;
            match to.to_ascii_lowercase().as_str() {
                "bigint" => cast(x.clone(), "Int64"),
                "float" => cast(x.clone(), "Float64"),
                "string" => cast(x.clone(), "Utf8"),
                "boolean" => cast(x.clone(), "Boolean"),
                "bytea" => cast(x.clone(), "Binary"),
                "datetime" => time(x.clone()),
                other => {
                    return Err(format!(
                        "cast to `{other}`: the types are bigint, float, string, boolean, \
                         bytea and datetime"
                    ));
                }
            }
        }
        ("encode", [x, how]) => {
            base64_only(&literal(how, "encoding")?)?;
            call("encode", vec![x.clone(), string("base64pad")])
        }
        ("decode", [x, how]) => {
            base64_only(&literal(how, "encoding")?)?;
            cast(call("decode", vec![x.clone(), string("base64pad")]), "Utf8")
        }
        ("to_json", [x]) => call(TO_JSON, vec![x.clone()]),
        ("sha1", [x]) => call(SHA1, vec![cast(x.clone(), "Utf8")]),
        ("crc32", [x]) => call(CRC32, vec![cast(x.clone(), "Utf8")]),
        ("isnull", [x]) => Expr::IsNull(Box::new(x.clone())),
        ("tstamp", []) => cast(
            cast(call("now", vec![]), "Timestamp(Millisecond, None)"),
            "Int64",
        ),
        // Times.
        // The clock as eKuiper's text: `YYYY-MM-DD HH:mm:ss`, with `fsp` decimals.
        ("now" | "current_timestamp" | "local_time" | "local_timestamp", []) => {
            text_of_time(call("now", vec![]), "%Y-%m-%d %H:%M:%S")
        }
        ("now" | "current_timestamp" | "local_time" | "local_timestamp", [fsp]) => {
            let digits = match crate::sql::int_literal(fsp) {
                Some(d @ 0..=6) => d,
                _ => return Err(format!("{name}'s precision is a number from 0 to 6")),
            };
            let text = text_of_time(call("now", vec![]), "%Y-%m-%d %H:%M:%S%.9f");
            let length = if digits == 0 { 19 } else { 20 + digits };
            call("substr", vec![text, number(1), number(length)])
        }
        ("cur_date" | "current_date", []) => text_of_time(call("current_date", vec![]), "%Y-%m-%d"),
        ("cur_time" | "current_time", [] | [_]) => {
            text_of_time(call("current_time", vec![]), "%H:%M:%S")
        }
        ("to_seconds", [t]) => call("to_unixtime", vec![time(t.clone())]),
        ("format_time", [t, pattern]) => {
            text_of_time(time(t.clone()), &strftime(&literal(pattern, "pattern")?)?)
        }
        ("date_calc", [t, by]) => {
            let ns = duration_ns(&literal(by, "duration")?)?;
            let op = if ns < 0 {
                BinaryOperator::Minus
            } else {
                BinaryOperator::Plus
            };
            let by = interval(&format!(
                "{} seconds {} nanoseconds",
                ns.abs() / 1_000_000_000,
                ns.abs() % 1_000_000_000
            ));
            text_of_time(binary(time(t.clone()), op, by), "%Y-%m-%d %H:%M:%S")
        }
        // The difference in nanoseconds, as eKuiper's duration.
        ("date_diff", [a, b]) => binary(
            binary(
                cast(time(b.clone()), "Int64"),
                BinaryOperator::Minus,
                cast(time(a.clone()), "Int64"),
            ),
            BinaryOperator::Multiply,
            number(1_000_000),
        ),
        ("year", [t]) => part("year", t.clone()),
        ("month", [t]) => part("month", t.clone()),
        ("day" | "day_of_month", [t]) => part("day", t.clone()),
        ("hour", [t]) => part("hour", t.clone()),
        ("minute", [t]) => part("minute", t.clone()),
        ("second", [t]) => part("second", t.clone()),
        ("day_of_year", [t]) => part("doy", t.clone()),
        // Sunday is 1.
        ("day_of_week", [t]) => plus(part("dow", t.clone()), 1),
        ("microsecond", [t]) => binary(
            part("microsecond", t.clone()),
            BinaryOperator::Modulo,
            number(1_000_000),
        ),
        ("day_name", [t]) => text_of_time(time(t.clone()), "%A"),
        ("month_name", [t]) => text_of_time(time(t.clone()), "%B"),
        ("last_day", [t]) => text_of_time(
            binary(
                binary(
                    call("date_trunc", vec![string("month"), time(t.clone())]),
                    BinaryOperator::Plus,
                    interval("1 month"),
                ),
                BinaryOperator::Minus,
                interval("1 day"),
            ),
            "%Y-%m-%d",
        ),
        // Day 1 is 1970-01-01; 0 is null.
        ("from_days", [n]) => text_of_time(
            call(
                "to_timestamp_seconds",
                vec![binary(
                    plus(call("nullif", vec![n.clone(), number(0)]), -1),
                    BinaryOperator::Multiply,
                    number(86_400),
                )],
            ),
            "%Y-%m-%d",
        ),
        ("from_unix_time", [s]) => text_of_time(
            call(
                "to_timestamp_seconds",
                vec![call("nullif", vec![s.clone(), number(0)])],
            ),
            "%Y-%m-%d %H:%M:%S",
        ),
        // JSON paths.
        ("json_path_query" | "json_path_query_first" | "json_path_exists", [base, path]) => {
            let ask = match name.as_str() {
                "json_path_query" => Ask::Query,
                "json_path_query_first" => Ask::First,
                _ => Ask::Exists,
            };
            let row = matches!(base, Expr::Identifier(i) if Some(i.value.as_str()) == stream);
            json_path::translate((!row).then(|| base.clone()), &literal(path, "path")?, ask)?
        }
        // Objects.
        ("keys", [o]) => call(ObjectOp::Keys.name(), vec![o.clone()]),
        ("values", [o]) => call(ObjectOp::Values.name(), vec![o.clone()]),
        ("obj_to_kvpair_array", [o]) => call(ObjectOp::KeyValuePairs.name(), vec![o.clone()]),
        ("object_concat", objects) if !objects.is_empty() => {
            call(ObjectOp::Concat.name(), objects.to_vec())
        }
        ("object_pick" | "erase", [o, names @ ..]) if !names.is_empty() => {
            let op = if name == "erase" {
                ObjectOp::Erase
            } else {
                ObjectOp::Pick
            };
            // A list of names, array_create('a', 'b'), is the names themselves.
            let mut args = vec![o.clone()];
            for n in names {
                match n {
                    Expr::Function(g) if function_name(&g.name) == "make_array" => {
                        args.extend(plain_args(g).unwrap_or_default());
                    }
                    other => args.push(other.clone()),
                }
            }
            call(op.name(), args)
        }
        // [{"key": k, "value": v}, ...] as the map {k: v, ...}.
        ("kvpair_array_to_obj", [pairs]) => call(
            "map",
            vec![
                call(LIST_FIELD, vec![pairs.clone(), string("key")]),
                call(LIST_FIELD, vec![pairs.clone(), string("value")]),
            ],
        ),
        // object(keys, values): a map.
        ("object", [keys, values]) => call("map", vec![keys.clone(), values.clone()]),
        // The window's bounds are columns.
        ("window_start" | "window_end", []) => Expr::Identifier(Ident::new(name.as_str())),
        _ => return Ok(None),
    }))
}

fn format(x: &Expr, decimals: &Expr, locale: Expr) -> Expr {
    call(
        FORMAT,
        vec![
            cast(x.clone(), "Float64"),
            cast(decimals.clone(), "Int64"),
            locale,
        ],
    )
}

fn base64_only(how: &str) -> Result<(), String> {
    if how.eq_ignore_ascii_case("base64") {
        Ok(())
    } else {
        Err(format!(
            "the encoding `{how}` is not supported: only base64 is"
        ))
    }
}
