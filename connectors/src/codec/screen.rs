//! The input limits, checked on a payload's bytes before it is decoded.
//!
//! A payload is screened in one pass without recursion, so no input can exhaust the
//! stack, whatever its nesting (the open objects and arrays are counted on a stack of
//! its own): size, nesting depth, string and array lengths against
//! [`InputLimits`], JSON syntax, top-level values that are objects, and numbers given for
//! integer columns that must be whole (`1.5` for a BIGINT is refused where the decoder
//! would truncate it to `1`). Only what passes reaches the Arrow decoder. A payload
//! with several problems is refused for the first one the pass meets.

use std::cell::RefCell;

use datafusion::arrow::datatypes::{DataType, Schema};

/// Bounds on one payload, enforced before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting of objects and arrays; the payload's object is depth 1.
    pub max_depth: usize,
    /// Longest string (keys included), in bytes as sent.
    pub max_string_bytes: usize,
    /// Most elements of one array.
    pub max_array_items: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_depth: 32,
            max_string_bytes: 64 * 1024,
            max_array_items: 10_000,
        }
    }
}

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Nothing but whitespace.
    Empty,
    /// Not UTF-8 text.
    NotUtf8,
    /// Over `max_payload_bytes`.
    TooLarge,
    /// Nested deeper than `max_depth`.
    TooDeep,
    /// A string over `max_string_bytes`.
    StringTooLong,
    /// An array over `max_array_items`.
    ArrayTooLong,
    /// Not JSON, or not JSON objects.
    Malformed,
    /// A value that does not fit its column's type.
    WrongType,
}

impl RejectReason {
    /// Every reason, in the order of [`RejectReason::index`].
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Empty,
        RejectReason::NotUtf8,
        RejectReason::TooLarge,
        RejectReason::TooDeep,
        RejectReason::StringTooLong,
        RejectReason::ArrayTooLong,
        RejectReason::Malformed,
        RejectReason::WrongType,
    ];

    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooDeep => "too_deep",
            RejectReason::StringTooLong => "string_too_long",
            RejectReason::ArrayTooLong => "array_too_long",
            RejectReason::Malformed => "malformed",
            RejectReason::WrongType => "wrong_type",
        }
    }

    /// Position in [`RejectReason::ALL`], for arrays of counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refusal: its reason and a message saying where.
pub type Refusal = (RejectReason, String);

/// What the screen knows of a value's column: whether it must be a whole number, and
/// the fields or elements below it that must.
#[derive(Debug, Default)]
enum Shape {
    /// Nothing to check below.
    #[default]
    Any,
    /// A whole number in this range.
    Integer {
        min: i128,
        max: i128,
        what: &'static str,
    },
    /// An object: the names and shapes of the fields that need checks (few: a linear
    /// search beats hashing every key of every payload).
    Object(Vec<(Box<[u8]>, usize)>),
    /// A list: the shape of its elements.
    List(usize),
}

/// The checks for one schema: shapes in an arena, 0 being [`Shape::Any`].
#[derive(Debug)]
pub struct Screen {
    limits: InputLimits,
    shapes: Vec<Shape>,
    root: usize,
    /// The open objects and arrays of the payload being screened, kept between
    /// payloads so that screening allocates nothing.
    stack: RefCell<Vec<Frame>>,
}

/// An open object or array while screening.
#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    /// Shape of the object, or of the array's elements.
    shape: usize,
    items: usize,
}

impl Screen {
    /// The checks a payload for `schema` goes through.
    pub fn new(schema: &Schema, limits: InputLimits) -> Screen {
        let mut shapes = vec![Shape::Any];
        let fields: Vec<(String, &DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type()))
            .collect();
        let root = object_shape(&fields, &mut shapes);
        Screen {
            limits,
            shapes,
            root,
            stack: RefCell::new(Vec::new()),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> &InputLimits {
        &self.limits
    }

    /// Checks one payload; `Err` says why it is refused.
    pub fn check(&self, payload: &[u8]) -> Result<(), Refusal> {
        let l = &self.limits;
        if payload.len() > l.max_payload_bytes {
            return Err((
                RejectReason::TooLarge,
                format!(
                    "payload of {} bytes is over the limit of {}",
                    payload.len(),
                    l.max_payload_bytes
                ),
            ));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err((RejectReason::Empty, "empty payload".into()));
        }
        match self.stack.try_borrow_mut() {
            Ok(mut stack) => self.scan(payload, &mut stack),
            Err(_) => self.scan(payload, &mut Vec::new()),
        }
    }

    /// One pass over a payload, one turn of the loop per element: objects hold
    /// `"key": value` members, arrays values. UTF-8 is checked inside strings (outside
    /// them JSON is ASCII, and anything else is malformed).
    fn scan(&self, p: &[u8], stack: &mut Vec<Frame>) -> Result<(), Refusal> {
        let lim = &self.limits;
        stack.clear();
        let mut i = 0;
        'top: loop {
            i = skip_ws(p, i);
            match p.get(i) {
                None => return Ok(()),
                Some(b'{') => {}
                Some(_) => return Err(malformed(p, i, "expected a JSON object")),
            }
            stack.push(Frame {
                array: false,
                shape: self.root,
                items: 0,
            });
            i += 1;
            // Right after an opening bracket: the container may be empty.
            let mut opened = true;
            loop {
                let Some(&top) = stack.last() else {
                    continue 'top;
                };
                i = skip_ws(p, i);
                let close = if top.array { b']' } else { b'}' };
                match p.get(i) {
                    Some(&c) if c == close => {
                        i += 1;
                        stack.pop();
                        if stack.is_empty() {
                            continue 'top;
                        }
                        opened = false;
                        continue;
                    }
                    Some(b',') if !opened => {
                        i = skip_ws(p, i + 1);
                    }
                    _ if opened => {}
                    _ if top.array => return Err(malformed(p, i, "expected `,` or `]`")),
                    _ => return Err(malformed(p, i, "expected `,` or `}`")),
                }
                opened = false;
                // The element: a member's key and colon, or an array's count.
                let shape = if top.array {
                    let items = top.items + 1;
                    if items > lim.max_array_items {
                        return Err((
                            RejectReason::ArrayTooLong,
                            format!(
                                "an array has more than {} elements (byte {i})",
                                lim.max_array_items
                            ),
                        ));
                    }
                    if let Some(f) = stack.last_mut() {
                        f.items = items;
                    }
                    top.shape
                } else {
                    if p.get(i) != Some(&b'"') {
                        return Err(malformed(p, i, "expected a field name"));
                    }
                    let (end, escaped) = string(p, i, lim.max_string_bytes)?;
                    let key = &p[i + 1..end - 1];
                    let shape = match &self.shapes[top.shape] {
                        Shape::Object(fields) => key_shape(fields, key, escaped),
                        _ => 0,
                    };
                    i = skip_ws(p, end);
                    if p.get(i) != Some(&b':') {
                        return Err(malformed(p, i, "expected `:`"));
                    }
                    i = skip_ws(p, i + 1);
                    shape
                };
                // The value.
                match p.get(i) {
                    Some(&b @ (b'{' | b'[')) => {
                        if stack.len() >= lim.max_depth {
                            return Err((
                                RejectReason::TooDeep,
                                format!("nested deeper than {} levels at byte {i}", lim.max_depth),
                            ));
                        }
                        let array = b == b'[';
                        let inner = match (&self.shapes[shape], array) {
                            (Shape::Object(_), false) => shape,
                            (Shape::List(elem), true) => *elem,
                            _ => 0,
                        };
                        stack.push(Frame {
                            array,
                            shape: inner,
                            items: 0,
                        });
                        i += 1;
                        opened = true;
                    }
                    Some(b'"') => i = string(p, i, lim.max_string_bytes)?.0,
                    Some(b'-' | b'0'..=b'9') => {
                        let (end, whole) = number(p, i)?;
                        if let Shape::Integer { min, max, what } = &self.shapes[shape] {
                            integer(&p[i..end], whole, *min, *max, what, i)?;
                        }
                        i = end;
                    }
                    Some(b't') => i = literal(p, i, b"true")?,
                    Some(b'f') => i = literal(p, i, b"false")?,
                    Some(b'n') => i = literal(p, i, b"null")?,
                    _ => return Err(malformed(p, i, "expected a value")),
                }
            }
        }
    }
}

fn malformed(p: &[u8], i: usize, what: &str) -> Refusal {
    let at = match p.get(i) {
        Some(b) if b.is_ascii_graphic() => format!("{:?}", char::from(*b)),
        Some(b) => format!("byte 0x{b:02x}"),
        None => "the end".into(),
    };
    (
        RejectReason::Malformed,
        format!("not JSON: {what} at byte {i} (found {at})"),
    )
}

#[inline]
fn skip_ws(p: &[u8], mut i: usize) -> usize {
    while matches!(p.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The string whose opening quote is at `i`: the index after its closing quote, and
/// whether it holds escapes. Its content must be UTF-8 and at most `max` bytes.
fn string(p: &[u8], i: usize, max: usize) -> Result<(usize, bool), Refusal> {
    let start = i + 1;
    let mut j = start;
    let mut escaped = false;
    let mut ascii = true;
    loop {
        // Runs of ordinary ASCII in one tight loop.
        j += p.get(j..).map_or(0, |rest| {
            rest.iter()
                .position(|b| STOP[usize::from(*b)])
                .unwrap_or(rest.len())
        });
        match p.get(j) {
            None => return Err(malformed(p, j, "unterminated string")),
            Some(b'"') => break,
            Some(b'\\') => {
                escaped = true;
                match p.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                    Some(b'u')
                        if p.get(j + 2..j + 6)
                            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                    {
                        j += 6
                    }
                    _ => return Err(malformed(p, j, "bad escape in a string")),
                }
            }
            Some(b) if *b >= 0x80 => {
                ascii = false;
                j += 1;
            }
            Some(_) => return Err(malformed(p, j, "control character in a string")),
        }
    }
    if j - start > max {
        return Err((
            RejectReason::StringTooLong,
            format!(
                "a string of {} bytes is over the limit of {max} (byte {i})",
                j - start
            ),
        ));
    }
    if !ascii && let Err(e) = std::str::from_utf8(&p[start..j]) {
        return Err((
            RejectReason::NotUtf8,
            format!("a string at byte {i} is not UTF-8: {e}"),
        ));
    }
    Ok((j + 1, escaped))
}

/// The number at `i`, by JSON's grammar: the index after it, and whether it has
/// neither fraction nor exponent.
fn number(p: &[u8], mut i: usize) -> Result<(usize, bool), Refusal> {
    if p.get(i) == Some(&b'-') {
        i += 1;
    }
    match p.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(p, i)?,
        _ => return Err(malformed(p, i, "bad number")),
    }
    let mut whole = true;
    if p.get(i) == Some(&b'.') {
        whole = false;
        i = digits(p, i + 1)?;
    }
    if matches!(p.get(i), Some(b'e' | b'E')) {
        whole = false;
        i += 1;
        if matches!(p.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(p, i)?;
    }
    Ok((i, whole))
}

/// The end of the one or more digits at `i`.
#[inline]
fn digits(p: &[u8], mut i: usize) -> Result<usize, Refusal> {
    if !p.get(i).is_some_and(u8::is_ascii_digit) {
        return Err(malformed(p, i, "bad number"));
    }
    while p.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    Ok(i)
}

/// Whether the number `text` (at byte `at`) is a whole number in `min..=max`.
fn integer(
    text: &[u8],
    whole: bool,
    min: i128,
    max: i128,
    what: &str,
    at: usize,
) -> Result<(), Refusal> {
    let digits = text.len() - usize::from(text.first() == Some(&b'-'));
    // Up to 18 digits always fit a BIGINT: no need to parse.
    if whole && digits <= 18 && min == i128::from(i64::MIN) {
        return Ok(());
    }
    let text = std::str::from_utf8(text).unwrap_or("");
    let fits = match whole {
        true => text.parse::<i128>().is_ok_and(|v| (min..=max).contains(&v)),
        false => text
            .parse::<f64>()
            .is_ok_and(|v| v.fract() == 0.0 && v >= min as f64 && v <= max as f64),
    };
    if fits {
        Ok(())
    } else {
        Err((
            RejectReason::WrongType,
            format!("{text} is not a whole number {what} can hold (byte {at})"),
        ))
    }
}

/// The literal `word` at `i`; the index after it.
#[inline]
fn literal(p: &[u8], i: usize, word: &[u8]) -> Result<usize, Refusal> {
    let found = p.get(i..i + word.len());
    if found.is_some_and(|f| f.iter().zip(word).all(|(a, b)| a == b)) {
        Ok(i + word.len())
    } else {
        Err(malformed(p, i, "expected true, false or null"))
    }
}

/// The shape of an object with these fields; 0 when none of them needs a check.
fn object_shape(fields: &[(String, &DataType)], shapes: &mut Vec<Shape>) -> usize {
    let mut checked = Vec::new();
    for (name, dt) in fields {
        let s = shape_of(dt, shapes);
        if s != 0 {
            checked.push((name.as_bytes().into(), s));
        }
    }
    if checked.is_empty() {
        return 0;
    }
    shapes.push(Shape::Object(checked));
    shapes.len() - 1
}

fn shape_of(dt: &DataType, shapes: &mut Vec<Shape>) -> usize {
    let (min, max, what): (i128, i128, &'static str) = match dt {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into(), "TINYINT"),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into(), "SMALLINT"),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into(), "INT"),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into(), "BIGINT"),
        DataType::UInt8 => (0, u8::MAX.into(), "an unsigned 8-bit integer"),
        DataType::UInt16 => (0, u16::MAX.into(), "an unsigned 16-bit integer"),
        DataType::UInt32 => (0, u32::MAX.into(), "an unsigned 32-bit integer"),
        DataType::UInt64 => (0, u64::MAX.into(), "an unsigned 64-bit integer"),
        DataType::Struct(fields) => {
            let fields: Vec<(String, &DataType)> = fields
                .iter()
                .map(|f| (f.name().clone(), f.data_type()))
                .collect();
            return object_shape(&fields, shapes);
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let inner = shape_of(f.data_type(), shapes);
            if inner == 0 {
                return 0;
            }
            shapes.push(Shape::List(inner));
            return shapes.len() - 1;
        }
        _ => return 0,
    };
    shapes.push(Shape::Integer { min, max, what });
    shapes.len() - 1
}

/// The shape of the field named `key` (its raw text; `escaped` if it holds escapes).
fn key_shape(fields: &[(Box<[u8]>, usize)], key: &[u8], escaped: bool) -> usize {
    // Keys are short: a byte loop beats a call to memcmp.
    let find = |k: &[u8]| {
        fields
            .iter()
            .find(|(n, _)| n.len() == k.len() && n.iter().zip(k).all(|(a, b)| a == b))
            .map_or(0, |f| f.1)
    };
    if !escaped {
        return find(key);
    }
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).map_or(0, |k| find(k.as_bytes()))
}

/// Bytes a string scan must stop at: the closing quote, an escape, a control character,
/// a byte of a multi-byte character (for the UTF-8 check).
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    b = 0x80;
    while b < 0x100 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{Field, Fields};

    use super::*;

    fn schema() -> Schema {
        let reading = DataType::Struct(Fields::from(vec![
            Field::new("count", DataType::Int64, true),
            Field::new("temp", DataType::Float64, true),
        ]));
        let ids = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
        Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("reading", reading, true),
            Field::new("ids", ids, true),
        ])
    }

    fn check(limits: InputLimits, payload: &str) -> Result<(), RejectReason> {
        Screen::new(&schema(), limits)
            .check(payload.as_bytes())
            .map_err(|(r, _)| r)
    }

    fn ok(payload: &str) -> Result<(), RejectReason> {
        check(InputLimits::default(), payload)
    }

    #[test]
    fn valid_json_objects_pass() {
        assert_eq!(
            ok(r#"{"device":"a","n":1,"x":[1,2.5,{"y":null}],"z":true}"#),
            Ok(())
        );
        assert_eq!(ok("{}\n{\"n\":-0} {\"n\":12e2}"), Ok(()));
        assert_eq!(
            ok(r#"{"reading":{"count":3,"temp":1.5},"ids":[1,2,-3]}"#),
            Ok(())
        );
        assert_eq!(ok(r#"{"s":"a\"b\\c\u00e9\n","n":1.0}"#), Ok(()));
        assert_eq!(
            ok(r#"{"n\u0000x":1.5}"#),
            Ok(()),
            "an escaped key names no column"
        );
    }

    #[test]
    fn fractions_for_integer_columns_are_wrong_types_at_any_depth() {
        assert_eq!(ok(r#"{"n":1.5}"#), Err(RejectReason::WrongType));
        assert_eq!(ok(r#"{"n":1e-1}"#), Err(RejectReason::WrongType));
        assert_eq!(
            ok(r#"{"n":9223372036854775808}"#),
            Err(RejectReason::WrongType)
        );
        assert_eq!(
            ok(r#"{"reading":{"count":0.5}}"#),
            Err(RejectReason::WrongType)
        );
        assert_eq!(ok(r#"{"ids":[1,2,3.25]}"#), Err(RejectReason::WrongType));
        assert_eq!(
            ok(r#"{"\u006e":2.5}"#),
            Err(RejectReason::WrongType),
            "escaped key"
        );
        // Undeclared fields and float columns take fractions.
        assert_eq!(ok(r#"{"reading":{"temp":0.5},"other":{"n":1.5}}"#), Ok(()));
    }

    #[test]
    fn limits_are_enforced_without_recursion() {
        let deep = |d: usize| format!("{{\"x\":{}{}}}", "[".repeat(d), "]".repeat(d));
        let l = InputLimits::default();
        assert_eq!(check(l, &deep(l.max_depth - 1)), Ok(()));
        assert_eq!(check(l, &deep(l.max_depth)), Err(RejectReason::TooDeep));
        // Far deeper than any stack would take by recursion.
        assert_eq!(
            check(
                InputLimits {
                    max_payload_bytes: 1 << 24,
                    ..l
                },
                &deep(1_000_000)
            ),
            Err(RejectReason::TooDeep)
        );
        let small = InputLimits {
            max_payload_bytes: 64,
            max_depth: 4,
            max_string_bytes: 5,
            max_array_items: 3,
        };
        assert_eq!(check(small, r#"{"abcde":[1,2,3]}"#), Ok(()));
        assert_eq!(
            check(small, r#"{"abcdef":1}"#),
            Err(RejectReason::StringTooLong)
        );
        assert_eq!(
            check(small, r#"{"a":"123456"}"#),
            Err(RejectReason::StringTooLong)
        );
        assert_eq!(
            check(small, r#"{"a":[1,2,3,4]}"#),
            Err(RejectReason::ArrayTooLong)
        );
        assert_eq!(
            check(small, &format!("{{\"a\":\"{}\"}}", "x".repeat(70))),
            Err(RejectReason::TooLarge)
        );
    }

    #[test]
    fn malformed_payloads_are_told_apart() {
        for bad in [
            "{",
            "{\"a\"",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "[1]",
            "\"x\"",
            "{\"a\":tru}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\u{1}\"}",
            "{}}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{} x",
        ] {
            assert_eq!(ok(bad), Err(RejectReason::Malformed), "{bad:?}");
        }
        assert_eq!(ok("  \n"), Err(RejectReason::Empty));
        assert_eq!(
            Screen::new(&schema(), InputLimits::default())
                .check(b"{\"a\":\"\xff\"}")
                .map_err(|e| e.0),
            Err(RejectReason::NotUtf8)
        );
    }
}
