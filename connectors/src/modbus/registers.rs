//! Value conversion between registers/bits and tag values: decoding reads by type, word
//! order, scale and offset, and encoding values for writes (function codes 5/6/15/16).

use super::config::{Tag, TagType, WordOrder};

/// A decoded tag value, before it goes into its Arrow column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Of a coil, a discrete input or a `bit` tag.
    Bool(bool),
    /// Of an unscaled `u16` tag.
    U16(u16),
    /// Of an unscaled `i16` tag.
    I16(i16),
    /// Of an unscaled `u32` tag.
    U32(u32),
    /// Of an unscaled `i32` tag.
    I32(i32),
    /// Of an unscaled `u64` tag.
    U64(u64),
    /// Of an unscaled `i64` tag.
    I64(i64),
    /// Of an unscaled `f32` tag.
    F32(f32),
    /// Of an `f64` tag, or of any tag with `scale` or `offset`.
    F64(f64),
    /// Of a `string` tag.
    Str(String),
}

impl Value {
    /// The value as f64, for scaling; `None` for booleans and text.
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v as f64,
            Value::I64(v) => v as f64,
            Value::F32(v) => v.into(),
            Value::F64(v) => v,
            Value::Bool(_) | Value::Str(_) => return None,
        })
    }
}

/// Why a value cannot be written to a tag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The tag (named) is not configured `writable`.
    #[error("tag `{0}` is not writable")]
    NotWritable(String),
    /// The value, with scale and offset undone, does not fit the tag's type, or a text is
    /// longer than the tag's registers hold.
    #[error("tag `{tag}`: value {value} is out of range for {kind:?}")]
    OutOfRange {
        /// The tag's name.
        tag: String,
        /// The value asked for, as text.
        value: String,
        /// The tag's type.
        kind: TagType,
    },
    /// The value is of a kind the tag cannot take, such as text for a `u16` tag.
    #[error("tag `{tag}`: a {kind:?} tag cannot take {value}")]
    WrongType {
        /// The tag's name.
        tag: String,
        /// The value asked for, as text.
        value: String,
        /// The tag's type.
        kind: TagType,
    },
}

/// What a write puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    /// Function code 5.
    Coil(bool),
    /// Function code 6 for one register, 16 for more.
    Registers(Vec<u16>),
    /// Bit `.0` of a holding register set to `.1`: read, change, write back (3, then 6).
    Bit(u8, bool),
}

/// Reorders bytes between wire order and big-endian (each order is its own inverse).
fn reorder(bytes: &mut [u8], order: WordOrder) {
    match order {
        WordOrder::Abcd => {}
        WordOrder::Dcba => bytes.reverse(),
        WordOrder::Badc => bytes.chunks_exact_mut(2).for_each(|w| w.swap(0, 1)),
        WordOrder::Cdab => {
            let words = bytes.len() / 2;
            for i in 0..words / 2 {
                let j = words - 1 - i;
                bytes.swap(2 * i, 2 * j);
                bytes.swap(2 * i + 1, 2 * j + 1);
            }
        }
    }
}

/// Big-endian bytes of `N` registers read in `order`; `None` if too few registers.
fn be_bytes<const N: usize>(regs: &[u16], order: WordOrder) -> Option<[u8; N]> {
    let regs = regs.get(..N / 2)?;
    let mut out = [0u8; N];
    for (chunk, r) in out.chunks_exact_mut(2).zip(regs) {
        chunk.copy_from_slice(&r.to_be_bytes());
    }
    reorder(&mut out, order);
    Some(out)
}

/// Decodes a register tag from the registers starting at its address. `None` if `regs`
/// is shorter than the tag (a planning error, never the device's data).
pub fn decode_registers(tag: &Tag, regs: &[u16]) -> Option<Value> {
    let o = tag.order;
    Some(match tag.kind {
        TagType::Bool => return None,
        TagType::Bit => Value::Bool(regs.first()? >> tag.bit & 1 == 1),
        TagType::U16 => Value::U16(u16::from_be_bytes(be_bytes::<2>(regs, o)?)),
        TagType::I16 => Value::I16(i16::from_be_bytes(be_bytes::<2>(regs, o)?)),
        TagType::U32 => Value::U32(u32::from_be_bytes(be_bytes::<4>(regs, o)?)),
        TagType::I32 => Value::I32(i32::from_be_bytes(be_bytes::<4>(regs, o)?)),
        TagType::F32 => Value::F32(f32::from_be_bytes(be_bytes::<4>(regs, o)?)),
        TagType::U64 => Value::U64(u64::from_be_bytes(be_bytes::<8>(regs, o)?)),
        TagType::I64 => Value::I64(i64::from_be_bytes(be_bytes::<8>(regs, o)?)),
        TagType::F64 => Value::F64(f64::from_be_bytes(be_bytes::<8>(regs, o)?)),
        TagType::String => {
            let regs = regs.get(..usize::from(tag.length))?;
            let mut bytes: Vec<u8> = Vec::with_capacity(regs.len() * 2);
            for r in regs {
                let [a, b] = r.to_be_bytes();
                // Byte-swapped orders swap the two characters of each register.
                if matches!(o, WordOrder::Badc | WordOrder::Dcba) {
                    bytes.extend([b, a]);
                } else {
                    bytes.extend([a, b]);
                }
            }
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            Value::Str(String::from_utf8_lossy(&bytes).into_owned())
        }
    })
}

/// Applies scale and offset: `raw * scale + offset`, as f64. Unscaled tags keep their type.
pub fn scale(tag: &Tag, v: Value) -> Value {
    if !tag.is_scaled() {
        return v;
    }
    match v.as_f64() {
        Some(x) => Value::F64(x * tag.scale.unwrap_or(1.0) + tag.offset.unwrap_or(0.0)),
        None => v,
    }
}

/// Decodes and scales a register tag.
pub fn decode(tag: &Tag, regs: &[u16]) -> Option<Value> {
    decode_registers(tag, regs).map(|v| scale(tag, v))
}

fn out_of_range(tag: &Tag, value: impl ToString) -> EncodeError {
    EncodeError::OutOfRange {
        tag: tag.name.clone(),
        value: value.to_string(),
        kind: tag.kind,
    }
}

fn to_regs<const N: usize>(mut bytes: [u8; N], order: WordOrder) -> Vec<u16> {
    reorder(&mut bytes, order);
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

/// Converts an engineering value into what a write to `tag` sends: undoes scale and
/// offset, rounds to the tag's integer type, orders the words. Refuses non-writable
/// tags, values outside the type's range, and bit-of-register tags (a read-modify-write
/// that could clobber the other bits).
pub fn encode(tag: &Tag, value: &Value) -> Result<WriteData, EncodeError> {
    if !tag.writable {
        return Err(EncodeError::NotWritable(tag.name.clone()));
    }
    let wrong = || EncodeError::WrongType {
        tag: tag.name.clone(),
        value: format!("{value:?}"),
        kind: tag.kind,
    };
    match tag.kind {
        TagType::Bool => match value {
            Value::Bool(b) => return Ok(WriteData::Coil(*b)),
            _ => return Err(wrong()),
        },
        TagType::Bit => return Err(wrong()),
        TagType::String => {
            let Value::Str(s) = value else {
                return Err(wrong());
            };
            let cap = usize::from(tag.length) * 2;
            if s.len() > cap {
                return Err(out_of_range(tag, s));
            }
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(cap, 0);
            let swap = matches!(tag.order, WordOrder::Badc | WordOrder::Dcba);
            let regs = bytes
                .chunks_exact(2)
                .map(|w| {
                    if swap {
                        u16::from_be_bytes([w[1], w[0]])
                    } else {
                        u16::from_be_bytes([w[0], w[1]])
                    }
                })
                .collect();
            return Ok(WriteData::Registers(regs));
        }
        _ => {}
    }
    let x = value.as_f64().ok_or_else(wrong)?;
    let raw = (x - tag.offset.unwrap_or(0.0)) / tag.scale.unwrap_or(1.0);
    if !raw.is_finite() {
        return Err(out_of_range(tag, x));
    }
    let int = |min: f64, max: f64| -> Result<f64, EncodeError> {
        let r = raw.round();
        if r < min || r > max {
            Err(out_of_range(tag, x))
        } else {
            Ok(r)
        }
    };
    let o = tag.order;
    let regs = match tag.kind {
        TagType::U16 => to_regs((int(0.0, u16::MAX.into())? as u16).to_be_bytes(), o),
        TagType::I16 => to_regs(
            (int(i16::MIN.into(), i16::MAX.into())? as i16).to_be_bytes(),
            o,
        ),
        TagType::U32 => to_regs((int(0.0, u32::MAX.into())? as u32).to_be_bytes(), o),
        TagType::I32 => to_regs(
            (int(i32::MIN.into(), i32::MAX.into())? as i32).to_be_bytes(),
            o,
        ),
        // 2^64 and 2^63 are exact in f64; values at or above them do not fit.
        TagType::U64 => {
            let r = raw.round();
            if !(0.0..18_446_744_073_709_551_616.0).contains(&r) {
                return Err(out_of_range(tag, x));
            }
            match value {
                Value::U64(v) if !tag.is_scaled() => to_regs(v.to_be_bytes(), o),
                _ => to_regs((r as u64).to_be_bytes(), o),
            }
        }
        TagType::I64 => {
            let r = raw.round();
            if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r) {
                return Err(out_of_range(tag, x));
            }
            match value {
                Value::I64(v) if !tag.is_scaled() => to_regs(v.to_be_bytes(), o),
                _ => to_regs((r as i64).to_be_bytes(), o),
            }
        }
        TagType::F32 => {
            if raw.abs() > f64::from(f32::MAX) {
                return Err(out_of_range(tag, x));
            }
            to_regs((raw as f32).to_be_bytes(), o)
        }
        TagType::F64 => to_regs(raw.to_be_bytes(), o),
        TagType::Bool | TagType::Bit | TagType::String => return Err(wrong()),
    };
    Ok(WriteData::Registers(regs))
}

#[cfg(test)]
mod tests {
    use super::super::config::Area;
    use super::*;

    fn tag(kind: TagType, order: WordOrder) -> Tag {
        Tag {
            name: "t".into(),
            area: Area::HoldingRegister,
            address: 0,
            kind,
            length: 0,
            bit: 0,
            order,
            scale: None,
            offset: None,
            unit: None,
            writable: true,
        }
    }

    /// Registers of big-endian bytes laid out in `order`, built by hand per order (the
    /// independent reference for `reorder`).
    fn wire(be: &[u8], order: WordOrder) -> Vec<u16> {
        let words: Vec<[u8; 2]> = be.chunks(2).map(|w| [w[0], w[1]]).collect();
        let words: Vec<[u8; 2]> = match order {
            WordOrder::Abcd => words,
            WordOrder::Cdab => words.into_iter().rev().collect(),
            WordOrder::Badc => words.into_iter().map(|[a, b]| [b, a]).collect(),
            WordOrder::Dcba => words.into_iter().rev().map(|[a, b]| [b, a]).collect(),
        };
        words.into_iter().map(u16::from_be_bytes).collect()
    }

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    #[test]
    fn known_registers_per_order() {
        // 0x11223344 as written by devices in each order.
        let t = |o| tag(TagType::U32, o);
        assert_eq!(
            decode(&t(WordOrder::Abcd), &[0x1122, 0x3344]),
            Some(Value::U32(0x1122_3344))
        );
        assert_eq!(
            decode(&t(WordOrder::Cdab), &[0x3344, 0x1122]),
            Some(Value::U32(0x1122_3344))
        );
        assert_eq!(
            decode(&t(WordOrder::Badc), &[0x2211, 0x4433]),
            Some(Value::U32(0x1122_3344))
        );
        assert_eq!(
            decode(&t(WordOrder::Dcba), &[0x4433, 0x2211]),
            Some(Value::U32(0x1122_3344))
        );
        // 64-bit: CDAB reverses all four words.
        assert_eq!(
            decode(
                &tag(TagType::U64, WordOrder::Cdab),
                &[0x7788, 0x5566, 0x3344, 0x1122]
            ),
            Some(Value::U64(0x1122_3344_5566_7788))
        );
        assert_eq!(
            decode(
                &tag(TagType::U64, WordOrder::Badc),
                &[0x2211, 0x4433, 0x6655, 0x8877]
            ),
            Some(Value::U64(0x1122_3344_5566_7788))
        );
    }

    #[test]
    fn every_type_in_every_order() {
        for o in ORDERS {
            let cases: Vec<(TagType, Vec<u8>, Value)> = vec![
                (
                    TagType::U16,
                    54321u16.to_be_bytes().to_vec(),
                    Value::U16(54321),
                ),
                (
                    TagType::I16,
                    (-1234i16).to_be_bytes().to_vec(),
                    Value::I16(-1234),
                ),
                (
                    TagType::U32,
                    3_000_000_000u32.to_be_bytes().to_vec(),
                    Value::U32(3_000_000_000),
                ),
                (
                    TagType::I32,
                    (-2_000_000_000i32).to_be_bytes().to_vec(),
                    Value::I32(-2_000_000_000),
                ),
                (
                    TagType::U64,
                    0x0123_4567_89AB_CDEFu64.to_be_bytes().to_vec(),
                    Value::U64(0x0123_4567_89AB_CDEF),
                ),
                (
                    TagType::I64,
                    (-1_234_567_890_123i64).to_be_bytes().to_vec(),
                    Value::I64(-1_234_567_890_123),
                ),
                (
                    TagType::F32,
                    1234.5678f32.to_be_bytes().to_vec(),
                    Value::F32(1234.5678),
                ),
                (
                    TagType::F64,
                    (-2.718281828459045e10f64).to_be_bytes().to_vec(),
                    Value::F64(-2.718281828459045e10),
                ),
            ];
            for (kind, be, want) in cases {
                let t = tag(kind, o);
                let regs = wire(&be, o);
                assert_eq!(decode(&t, &regs), Some(want.clone()), "{kind:?} {o:?}");
                // Writes are the exact inverse.
                assert_eq!(
                    encode(&t, &want),
                    Ok(WriteData::Registers(regs)),
                    "{kind:?} {o:?}"
                );
            }
        }
    }

    #[test]
    fn bits_strings_and_scaling() {
        let mut b = tag(TagType::Bit, WordOrder::Abcd);
        b.bit = 15;
        assert_eq!(decode(&b, &[0x8000]), Some(Value::Bool(true)));
        b.bit = 0;
        assert_eq!(decode(&b, &[0x8000]), Some(Value::Bool(false)));

        let mut s = tag(TagType::String, WordOrder::Abcd);
        s.length = 4;
        let regs = [0x5055, 0x4D50, 0x2D37, 0x0000]; // "PUMP-7\0\0"
        assert_eq!(decode(&s, &regs), Some(Value::Str("PUMP-7".into())));
        s.order = WordOrder::Badc;
        assert_eq!(
            decode(&s, &[0x5550, 0x504D, 0x372D, 0]),
            Some(Value::Str("PUMP-7".into()))
        );
        assert_eq!(
            encode(&s, &Value::Str("PUMP-7".into())),
            Ok(WriteData::Registers(vec![0x5550, 0x504D, 0x372D, 0]))
        );
        assert_eq!(decode(&s, &regs[..2]), None);

        let mut t = tag(TagType::U16, WordOrder::Abcd);
        t.scale = Some(0.1);
        t.offset = Some(-10.0);
        let Some(Value::F64(v)) = decode(&t, &[2315]) else {
            panic!("scaled value is f64")
        };
        assert!((v - 221.5).abs() < 1e-9, "{v}");
        assert_eq!(
            encode(&t, &Value::F64(221.5)),
            Ok(WriteData::Registers(vec![2315]))
        );
    }

    #[test]
    fn writes_refuse_what_does_not_fit() {
        let t = tag(TagType::U16, WordOrder::Abcd);
        assert!(matches!(
            encode(&t, &Value::F64(65536.0)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&t, &Value::I64(-1)),
            Err(EncodeError::OutOfRange { .. })
        ));
        let mut t = tag(TagType::I16, WordOrder::Abcd);
        t.scale = Some(0.01);
        assert!(matches!(
            encode(&t, &Value::F64(400.0)),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert_eq!(
            encode(&t, &Value::F64(-3.21)),
            Ok(WriteData::Registers(vec![(-321i16) as u16]))
        );
        let mut ro = tag(TagType::U16, WordOrder::Abcd);
        ro.writable = false;
        assert_eq!(
            encode(&ro, &Value::U16(1)),
            Err(EncodeError::NotWritable("t".into()))
        );
        let mut c = tag(TagType::Bool, WordOrder::Abcd);
        c.area = Area::Coil;
        assert_eq!(encode(&c, &Value::Bool(true)), Ok(WriteData::Coil(true)));
        assert!(matches!(
            encode(&c, &Value::F64(1.0)),
            Err(EncodeError::WrongType { .. })
        ));
        let mut s = tag(TagType::String, WordOrder::Abcd);
        s.length = 1;
        assert!(matches!(
            encode(&s, &Value::Str("abc".into())),
            Err(EncodeError::OutOfRange { .. })
        ));
    }
}
