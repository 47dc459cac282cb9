//! The input limits, checked on a payload's bytes before it is decoded.
//!
//! A payload is screened in one pass without recursion, so no input can exhaust the
//! stack, whatever its nesting: size, nesting depth, string and array lengths against
//! [`InputLimits`], JSON syntax, top-level values that are objects, and numbers given for
//! integer columns that must be whole (`1.5` for a BIGINT is refused where the decoder
//! would truncate it to `1`). Only what passes reaches the Arrow decoder.

use std::collections::HashMap;

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
    /// An object: the shapes of the fields that need checks.
    Object(HashMap<String, usize>),
    /// A list: the shape of its elements.
    List(usize),
}

/// The checks for one schema: shapes in an arena, 0 being [`Shape::Any`].
#[derive(Debug)]
pub struct Screen {
    limits: InputLimits,
    shapes: Vec<Shape>,
    root: usize,
}

/// An open object or array while screening.
struct Frame {
    array: bool,
    /// Shape of the object, or of the array's elements.
    shape: usize,
    items: usize,
}

/// What the screen expects next.
#[derive(Clone, Copy)]
enum Want {
    /// A payload's next top-level object, or its end.
    Top,
    /// A value of this shape.
    Value(usize),
    /// The first key of an object, or its end.
    FirstKey,
    /// A key after a comma.
    Key,
    /// The colon after a key whose value has this shape.
    Colon(usize),
    /// A comma or the end of the open object or array.
    Next,
    /// The first element of an array, or its end.
    FirstItem,
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
        if let Err(e) = std::str::from_utf8(payload) {
            return Err((RejectReason::NotUtf8, format!("payload is not UTF-8: {e}")));
        }
        Scan {
            screen: self,
            p: payload,
            i: 0,
        }
        .run()
    }
}

/// The shape of an object with these fields; 0 when none of them needs a check.
fn object_shape(fields: &[(String, &DataType)], shapes: &mut Vec<Shape>) -> usize {
    let mut checked = HashMap::new();
    for (name, dt) in fields {
        let s = shape_of(dt, shapes);
        if s != 0 {
            checked.insert(name.clone(), s);
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

/// One pass over one payload.
struct Scan<'a> {
    screen: &'a Screen,
    p: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn malformed(&self, what: &str) -> Refusal {
        let at = match self.p.get(self.i) {
            Some(b) => format!("{:?}", char::from(*b)),
            None => "the end".into(),
        };
        (
            RejectReason::Malformed,
            format!("not JSON: {what} at byte {} (found {at})", self.i),
        )
    }

    fn skip_ws(&mut self) {
        while matches!(self.p.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn run(mut self) -> Result<(), Refusal> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut want = Want::Top;
        loop {
            self.skip_ws();
            want = match want {
                Want::Top => match self.p.get(self.i) {
                    None => return Ok(()),
                    Some(b'{') => self.open(&mut stack, false, self.screen.root)?,
                    Some(_) => return Err(self.malformed("expected a JSON object")),
                },
                Want::Value(shape) => self.value(&mut stack, shape)?,
                Want::FirstKey if self.p.get(self.i) == Some(&b'}') => {
                    self.i += 1;
                    stack.pop();
                    after(&stack)
                }
                Want::FirstKey | Want::Key => {
                    if self.p.get(self.i) != Some(&b'"') {
                        return Err(self.malformed("expected a field name"));
                    }
                    let key = self.string()?;
                    let shape = stack.last().map_or(0, |f| f.shape);
                    match &self.screen.shapes[shape] {
                        Shape::Object(fields) => Want::Colon(self.key_shape(fields, key)),
                        _ => Want::Colon(0),
                    }
                }
                Want::Colon(shape) => {
                    if self.p.get(self.i) != Some(&b':') {
                        return Err(self.malformed("expected `:`"));
                    }
                    self.i += 1;
                    Want::Value(shape)
                }
                Want::FirstItem if self.p.get(self.i) == Some(&b']') => {
                    self.i += 1;
                    stack.pop();
                    after(&stack)
                }
                Want::FirstItem => self.item(&mut stack)?,
                Want::Next => {
                    let Some(top) = stack.last() else {
                        return Err(self.malformed("unexpected state"));
                    };
                    let array = top.array;
                    match (self.p.get(self.i), array) {
                        (Some(b','), false) => {
                            self.i += 1;
                            Want::Key
                        }
                        (Some(b','), true) => {
                            self.i += 1;
                            self.item(&mut stack)?
                        }
                        (Some(b'}'), false) | (Some(b']'), true) => {
                            self.i += 1;
                            stack.pop();
                            after(&stack)
                        }
                        (_, false) => return Err(self.malformed("expected `,` or `}`")),
                        (_, true) => return Err(self.malformed("expected `,` or `]`")),
                    }
                }
            };
        }
    }

    /// Opens an object or array at `self.i`.
    fn open(&mut self, stack: &mut Vec<Frame>, array: bool, shape: usize) -> Result<Want, Refusal> {
        let max = self.screen.limits.max_depth;
        if stack.len() >= max {
            return Err((
                RejectReason::TooDeep,
                format!("nested deeper than {max} levels at byte {}", self.i),
            ));
        }
        self.i += 1;
        stack.push(Frame {
            array,
            shape,
            items: 0,
        });
        Ok(if array {
            Want::FirstItem
        } else {
            Want::FirstKey
        })
    }

    /// Counts the next element of the open array and expects it.
    fn item(&mut self, stack: &mut [Frame]) -> Result<Want, Refusal> {
        let max = self.screen.limits.max_array_items;
        let Some(top) = stack.last_mut() else {
            return Err(self.malformed("unexpected state"));
        };
        top.items += 1;
        if top.items > max {
            return Err((
                RejectReason::ArrayTooLong,
                format!("an array has more than {max} elements (byte {})", self.i),
            ));
        }
        Ok(Want::Value(top.shape))
    }

    fn key_shape(&self, fields: &HashMap<String, usize>, key: &[u8]) -> usize {
        if !key.contains(&b'\\') {
            return std::str::from_utf8(key)
                .ok()
                .and_then(|k| fields.get(k))
                .copied()
                .unwrap_or(0);
        }
        let mut quoted = Vec::with_capacity(key.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(key);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .ok()
            .and_then(|k| fields.get(&k).copied())
            .unwrap_or(0)
    }

    /// A value of `shape` at `self.i`.
    fn value(&mut self, stack: &mut Vec<Frame>, shape: usize) -> Result<Want, Refusal> {
        let shapes = &self.screen.shapes;
        match self.p.get(self.i) {
            Some(b'{') => {
                let inner = match &shapes[shape] {
                    Shape::Object(_) => shape,
                    _ => 0,
                };
                self.open(stack, false, inner)
            }
            Some(b'[') => {
                let inner = match &shapes[shape] {
                    Shape::List(elem) => *elem,
                    _ => 0,
                };
                self.open(stack, true, inner)
            }
            Some(b'"') => {
                self.string()?;
                Ok(after(stack))
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                let whole = self.number()?;
                if let Shape::Integer { min, max, what } = &shapes[shape] {
                    let text = std::str::from_utf8(&self.p[start..self.i]).unwrap_or("");
                    let fits = match whole {
                        true => text
                            .parse::<i128>()
                            .is_ok_and(|v| (*min..=*max).contains(&v)),
                        false => text.parse::<f64>().is_ok_and(|v| {
                            v.fract() == 0.0 && v >= *min as f64 && v <= *max as f64
                        }),
                    };
                    if !fits {
                        return Err((
                            RejectReason::WrongType,
                            format!("{text} is not a whole number {what} can hold (byte {start})"),
                        ));
                    }
                }
                Ok(after(stack))
            }
            Some(b't') => self.literal(b"true", stack),
            Some(b'f') => self.literal(b"false", stack),
            Some(b'n') => self.literal(b"null", stack),
            _ => Err(self.malformed("expected a value")),
        }
    }

    fn literal(&mut self, word: &[u8], stack: &[Frame]) -> Result<Want, Refusal> {
        if self.p[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(after(stack))
        } else {
            Err(self.malformed("expected true, false or null"))
        }
    }

    /// A string at `self.i` (its opening quote); returns its raw content.
    fn string(&mut self) -> Result<&'a [u8], Refusal> {
        let start = self.i + 1;
        let mut i = start;
        loop {
            match self.p.get(i) {
                None => {
                    self.i = i;
                    return Err(self.malformed("unterminated string"));
                }
                Some(b'"') => break,
                Some(b'\\') => match self.p.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u')
                        if self
                            .p
                            .get(i + 2..i + 6)
                            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                    {
                        i += 6
                    }
                    _ => {
                        self.i = i;
                        return Err(self.malformed("bad escape in a string"));
                    }
                },
                Some(c) if *c < 0x20 => {
                    self.i = i;
                    return Err(self.malformed("control character in a string"));
                }
                Some(_) => i += 1,
            }
        }
        let max = self.screen.limits.max_string_bytes;
        if i - start > max {
            return Err((
                RejectReason::StringTooLong,
                format!(
                    "a string of {} bytes is over the limit of {max} (byte {})",
                    i - start,
                    self.i
                ),
            ));
        }
        self.i = i + 1;
        Ok(&self.p[start..i])
    }

    /// A number at `self.i`, by JSON's grammar; returns whether it has neither fraction
    /// nor exponent.
    fn number(&mut self) -> Result<bool, Refusal> {
        let p = self.p;
        let mut i = self.i;
        if p.get(i) == Some(&b'-') {
            i += 1;
        }
        match p.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while p.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return Err(self.malformed("bad number"));
            }
        }
        let mut whole = true;
        if p.get(i) == Some(&b'.') {
            whole = false;
            i = self.digits(i + 1)?;
        }
        if matches!(p.get(i), Some(b'e' | b'E')) {
            whole = false;
            i += 1;
            if matches!(p.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = self.digits(i)?;
        }
        self.i = i;
        Ok(whole)
    }
}

impl Scan<'_> {
    /// The end of the one or more digits at `i` (a fraction's or an exponent's).
    fn digits(&mut self, mut i: usize) -> Result<usize, Refusal> {
        if !self.p.get(i).is_some_and(u8::is_ascii_digit) {
            self.i = i;
            return Err(self.malformed("bad number"));
        }
        while self.p.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        Ok(i)
    }
}

/// What follows a complete value.
fn after(stack: &[Frame]) -> Want {
    if stack.is_empty() {
        Want::Top
    } else {
        Want::Next
    }
}

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
