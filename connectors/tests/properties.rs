//! Property tests: whatever bytes arrive, the JSON decoder and the Modbus value codec
//! answer with a value or an error, never a panic or an abort; and the payload screen
//! agrees with an independent JSON parser on what is JSON.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use fieldgate_connectors::codec::{InputLimits, JsonDecoder, RejectReason, Screen};
use fieldgate_connectors::modbus::Tag;
use fieldgate_connectors::modbus::config::TagConfig;
use fieldgate_connectors::modbus::registers::{Value, decode, encode};
use proptest::prelude::*;

fn schema() -> SchemaRef {
    let reading = DataType::Struct(Fields::from(vec![
        Field::new("count", DataType::Int64, true),
        Field::new("site", DataType::Utf8, true),
    ]));
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)));
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("temp", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("reading", reading, true),
        Field::new("tags", list, true),
    ]))
}

/// Text made of JSON's own pieces, so that most of it is close to JSON and some is JSON.
fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just(" ".to_string()),
        Just("\"n\"".to_string()),
        Just("\"device\"".to_string()),
        Just("\"reading\"".to_string()),
        Just("\"tags\"".to_string()),
        Just("\"count\"".to_string()),
        Just("\"x\\\"y\"".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("-0".to_string()),
        Just("12".to_string()),
        Just("1.5".to_string()),
        Just("3e2".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
}

/// JSON objects of any shape, as an independent serializer writes them.
fn json_objects() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["n", "device", "reading", "tags", "count", "k", "é\"x"])
                    .prop_map(String::from),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(
        prop::sample::select(vec!["n", "device", "temp", "reading", "tags", "other"])
            .prop_map(String::from),
        value,
        0..6,
    )
    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
}

/// Values an independent parser accepts as a payload: one or more JSON objects.
fn serde_accepts(text: &str) -> bool {
    let mut any = false;
    for v in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        match v {
            Ok(serde_json::Value::Object(_)) => any = true,
            _ => return false,
        }
    }
    any
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8)) {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&payloads);
        let rows = out.batch.map_or(0, |b| b.num_rows());
        prop_assert!(out.rejected.len() <= payloads.len());
        prop_assert!(rows == 0 || out.rejected.len() < payloads.len());
    }

    #[test]
    fn json_like_text_never_panics_the_decoder(texts in prop::collection::vec(jsonish(), 1..8)) {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&texts);
        prop_assert!(out.rejected.len() <= texts.len());
    }

    #[test]
    fn the_screen_agrees_with_serde_json_on_what_is_json(text in jsonish()) {
        let limits = InputLimits { max_payload_bytes: 1 << 20, max_depth: 100, max_string_bytes: 1 << 20, max_array_items: 1 << 20 };
        let screen = Screen::new(&schema(), limits);
        let verdict = screen.check(text.as_bytes()).map_err(|(r, _)| r);
        let blank = text.trim().is_empty();
        // The screen stops at the first problem: a wrong type found before a syntax
        // error is reported as the wrong type.
        let json = serde_accepts(&text);
        match verdict {
            Err(RejectReason::Empty) => prop_assert!(blank),
            Err(RejectReason::Malformed) => prop_assert!(!json, "serde_json takes {text:?}"),
            Ok(()) => prop_assert!(json, "serde_json refuses {text:?}"),
            Err(RejectReason::WrongType) => {}
            Err(other) => prop_assert!(false, "{other:?} for {text:?}"),
        }
        if json {
            prop_assert!(matches!(verdict, Ok(()) | Err(RejectReason::WrongType)), "{verdict:?} for {text:?}");
        }
    }

    #[test]
    fn what_a_json_serializer_writes_is_never_malformed(v in json_objects()) {
        let text = serde_json::to_string(&v).unwrap();
        let verdict = Screen::new(&schema(), InputLimits::default()).check(text.as_bytes()).map_err(|(r, _)| r);
        prop_assert!(matches!(verdict, Ok(()) | Err(RejectReason::WrongType)), "{verdict:?} for {text}");
        // And what passes the screen, the decoder decodes or refuses as a wrong type.
        let mut d = JsonDecoder::new(schema()).unwrap();
        let out = d.decode(&[text.as_bytes()]);
        prop_assert!(out.rejected.iter().all(|r| r.kind == RejectReason::WrongType), "{:?}", out.rejected);
    }

    #[test]
    fn nesting_of_any_depth_is_refused_by_the_screen_not_the_stack(depth in 1usize..200_000, tail in "[\\]}]{0,3}") {
        let text = format!("{{\"tags\":{}{}{tail}", "[".repeat(depth), "]".repeat(depth.min(10)));
        let mut d = JsonDecoder::with_limits(schema(), InputLimits { max_payload_bytes: 1 << 20, ..InputLimits::default() }).unwrap();
        let out = d.decode(&[text.as_bytes()]);
        prop_assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn modbus_values_decode_from_any_registers_and_encode_from_any_value(
        kind in prop::sample::select(vec!["bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bit"]),
        order in prop::option::of(prop::sample::select(vec!["ABCD", "CDAB", "BADC", "DCBA"])),
        length in 1u16..8,
        bit in 0u8..16,
        scale in prop::option::of(-1e6f64..1e6),
        regs in prop::collection::vec(any::<u16>(), 0..10),
        number in any::<f64>(),
        text in ".{0,20}",
    ) {
        let Some(tag) = tag(kind, order, length, bit, scale) else { return Ok(()) };
        let _ = decode(&tag, &regs);
        for v in [Value::F64(number), Value::I64(number as i64), Value::U64(number as u64), Value::Bool(number > 0.0), Value::Str(text.clone()), Value::F32(number as f32)] {
            let _ = encode(&tag, &v);
        }
    }
}

/// A writable tag of this shape, if the shape is a valid tag.
fn tag(kind: &str, order: Option<&str>, length: u16, bit: u8, scale: Option<f64>) -> Option<Tag> {
    let register = if kind == "bool" {
        "register = 1"
    } else {
        "register = 40001"
    };
    let mut t = format!("name = \"t\"\n{register}\ntype = \"{kind}\"\nwritable = true\n");
    if kind == "string" {
        t.push_str(&format!("length = {length}\n"));
    }
    if kind == "bit" {
        t.push_str(&format!("bit = {bit}\n"));
    }
    if let Some(o) = order {
        t.push_str(&format!("order = \"{o}\"\n"));
    }
    if let Some(s) = scale {
        t.push_str(&format!("scale = {s:?}\n"));
    }
    let cfg: TagConfig = toml::from_str(&t).ok()?;
    cfg.resolve().ok()
}
