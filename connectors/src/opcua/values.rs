//! Values: the node types a config names, their Arrow columns, OPC UA variants turned
//! into those columns (lossless widening only; anything else is a type mismatch named
//! by node and type), and JSON values of rule results turned into variants for writes.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder,
    Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use opcua::types::{Array, DateTime, Variant, VariantScalarTypeId};
use serde::Deserialize;
use serde_json::Value as Json;

/// A scalar OPC UA type the gateway reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// Boolean.
    Boolean,
    /// SByte (i8).
    SByte,
    /// Byte (u8).
    Byte,
    /// Int16.
    Int16,
    /// UInt16.
    UInt16,
    /// Int32.
    Int32,
    /// UInt32.
    UInt32,
    /// Int64.
    Int64,
    /// UInt64.
    UInt64,
    /// Float (f32).
    Float,
    /// Double (f64).
    Double,
    /// String.
    String,
    /// DateTime, as a millisecond timestamp.
    DateTime,
}

/// A node's configured type: a scalar, or a one-dimensional array of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeType {
    /// The element type.
    pub scalar: Scalar,
    /// Whether the value is an array (a list column).
    pub array: bool,
}

const SCALARS: [(&str, Scalar); 13] = [
    ("boolean", Scalar::Boolean),
    ("sbyte", Scalar::SByte),
    ("byte", Scalar::Byte),
    ("int16", Scalar::Int16),
    ("uint16", Scalar::UInt16),
    ("int32", Scalar::Int32),
    ("uint32", Scalar::UInt32),
    ("int64", Scalar::Int64),
    ("uint64", Scalar::UInt64),
    ("float", Scalar::Float),
    ("double", Scalar::Double),
    ("string", Scalar::String),
    ("datetime", Scalar::DateTime),
];

impl Scalar {
    fn name(self) -> &'static str {
        SCALARS
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The Arrow type of the scalar's column.
    pub fn data_type(self) -> DataType {
        match self {
            Scalar::Boolean => DataType::Boolean,
            Scalar::SByte => DataType::Int8,
            Scalar::Byte => DataType::UInt8,
            Scalar::Int16 => DataType::Int16,
            Scalar::UInt16 => DataType::UInt16,
            Scalar::Int32 => DataType::Int32,
            Scalar::UInt32 => DataType::UInt32,
            Scalar::Int64 => DataType::Int64,
            Scalar::UInt64 => DataType::UInt64,
            Scalar::Float => DataType::Float32,
            Scalar::Double => DataType::Float64,
            Scalar::String => DataType::Utf8,
            Scalar::DateTime => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }

    fn is_numeric(self) -> bool {
        !matches!(self, Scalar::Boolean | Scalar::String | Scalar::DateTime)
    }

    fn variant_type(self) -> VariantScalarTypeId {
        match self {
            Scalar::Boolean => VariantScalarTypeId::Boolean,
            Scalar::SByte => VariantScalarTypeId::SByte,
            Scalar::Byte => VariantScalarTypeId::Byte,
            Scalar::Int16 => VariantScalarTypeId::Int16,
            Scalar::UInt16 => VariantScalarTypeId::UInt16,
            Scalar::Int32 => VariantScalarTypeId::Int32,
            Scalar::UInt32 => VariantScalarTypeId::UInt32,
            Scalar::Int64 => VariantScalarTypeId::Int64,
            Scalar::UInt64 => VariantScalarTypeId::UInt64,
            Scalar::Float => VariantScalarTypeId::Float,
            Scalar::Double => VariantScalarTypeId::Double,
            Scalar::String => VariantScalarTypeId::String,
            Scalar::DateTime => VariantScalarTypeId::DateTime,
        }
    }
}

impl NodeType {
    /// The Arrow type of the node's value column.
    pub fn data_type(&self) -> DataType {
        let t = self.scalar.data_type();
        if self.array {
            DataType::List(Arc::new(Field::new("item", t, true)))
        } else {
            t
        }
    }

    /// Whether the node holds numbers (scalar), so deadbands and ranges apply.
    pub fn is_numeric(&self) -> bool {
        !self.array && self.scalar.is_numeric()
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.scalar.name(),
            if self.array { "[]" } else { "" }
        )
    }
}

impl std::str::FromStr for NodeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, array) = match lower.strip_suffix("[]") {
            Some(n) => (n.trim_end(), true),
            None => (lower.as_str(), false),
        };
        let scalar = SCALARS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let known: Vec<&str> = SCALARS.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown node type `{s}` (known: {}, each also as an array with `[]`)",
                    known.join(", ")
                )
            })?;
        Ok(NodeType { scalar, array })
    }
}

impl<'de> Deserialize<'de> for NodeType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The OPC UA type name of a variant, for messages.
pub fn variant_type_name(v: &Variant) -> String {
    match v {
        Variant::Array(a) => format!("{:?}[]", a.value_type),
        Variant::Empty => "Empty".into(),
        other => match other.scalar_type_id() {
            Some(t) => format!("{t:?}"),
            None => "unknown".into(),
        },
    }
}

/// Builds one value column of a node's type from variants.
pub struct ColumnBuilder {
    node_type: NodeType,
    inner: Box<dyn ArrayBuilder>,
}

/// A variant that is not of the node's type (and does not widen to it losslessly).
#[derive(Debug)]
pub struct Mismatch;

impl ColumnBuilder {
    /// An empty column for values of this type.
    pub fn new(node_type: NodeType, capacity: usize) -> Self {
        let scalar = scalar_builder(node_type.scalar, capacity);
        let inner: Box<dyn ArrayBuilder> = if node_type.array {
            let field = Field::new("item", node_type.scalar.data_type(), true);
            Box::new(ListBuilder::new(scalar).with_field(Arc::new(field)))
        } else {
            scalar
        };
        ColumnBuilder { node_type, inner }
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        if self.node_type.array {
            list(&mut self.inner).append(false);
        } else {
            append_scalar(self.node_type.scalar, self.inner.as_mut(), None);
        }
    }

    /// Appends a value, or a null and [`Mismatch`] when it is of another type.
    pub fn append(&mut self, v: &Variant) -> Result<(), Mismatch> {
        if matches!(v, Variant::Empty) {
            self.append_null();
            return Ok(());
        }
        if !self.node_type.array {
            if matches!(v, Variant::Array(_)) || !fits(self.node_type.scalar, v) {
                self.append_null();
                return Err(Mismatch);
            }
            append_scalar(self.node_type.scalar, self.inner.as_mut(), Some(v));
            return Ok(());
        }
        let Variant::Array(a) = v else {
            self.append_null();
            return Err(Mismatch);
        };
        if !a.values.iter().all(|e| fits(self.node_type.scalar, e)) {
            self.append_null();
            return Err(Mismatch);
        }
        let scalar = self.node_type.scalar;
        let l = list(&mut self.inner);
        for e in &a.values {
            append_scalar(scalar, l.values().as_mut(), Some(e));
        }
        l.append(true);
        Ok(())
    }

    /// The column.
    pub fn finish(&mut self) -> ArrayRef {
        self.inner.finish()
    }
}

fn list(b: &mut Box<dyn ArrayBuilder>) -> &mut ListBuilder<Box<dyn ArrayBuilder>> {
    b.as_any_mut()
        .downcast_mut::<ListBuilder<Box<dyn ArrayBuilder>>>()
        .expect("array columns are built by a ListBuilder")
}

fn scalar_builder(s: Scalar, n: usize) -> Box<dyn ArrayBuilder> {
    match s {
        Scalar::Boolean => Box::new(BooleanBuilder::with_capacity(n)),
        Scalar::SByte => Box::new(Int8Builder::with_capacity(n)),
        Scalar::Byte => Box::new(UInt8Builder::with_capacity(n)),
        Scalar::Int16 => Box::new(Int16Builder::with_capacity(n)),
        Scalar::UInt16 => Box::new(UInt16Builder::with_capacity(n)),
        Scalar::Int32 => Box::new(Int32Builder::with_capacity(n)),
        Scalar::UInt32 => Box::new(UInt32Builder::with_capacity(n)),
        Scalar::Int64 => Box::new(Int64Builder::with_capacity(n)),
        Scalar::UInt64 => Box::new(UInt64Builder::with_capacity(n)),
        Scalar::Float => Box::new(Float32Builder::with_capacity(n)),
        Scalar::Double => Box::new(Float64Builder::with_capacity(n)),
        Scalar::String => Box::new(StringBuilder::with_capacity(n, n * 8)),
        Scalar::DateTime => Box::new(TimestampMillisecondBuilder::with_capacity(n)),
    }
}

/// Whether `v` is of type `s`, or widens to it without loss.
fn fits(s: Scalar, v: &Variant) -> bool {
    use Variant as V;
    matches!(
        (s, v),
        (Scalar::Boolean, V::Boolean(_))
            | (Scalar::SByte, V::SByte(_))
            | (Scalar::Byte, V::Byte(_))
            | (Scalar::Int16, V::Int16(_) | V::SByte(_) | V::Byte(_))
            | (Scalar::UInt16, V::UInt16(_) | V::Byte(_))
            | (
                Scalar::Int32,
                V::Int32(_) | V::Int16(_) | V::UInt16(_) | V::SByte(_) | V::Byte(_)
            )
            | (Scalar::UInt32, V::UInt32(_) | V::UInt16(_) | V::Byte(_))
            | (
                Scalar::Int64,
                V::Int64(_)
                    | V::Int32(_)
                    | V::UInt32(_)
                    | V::Int16(_)
                    | V::UInt16(_)
                    | V::SByte(_)
                    | V::Byte(_)
            )
            | (
                Scalar::UInt64,
                V::UInt64(_) | V::UInt32(_) | V::UInt16(_) | V::Byte(_)
            )
            | (Scalar::Float, V::Float(_))
            | (
                Scalar::Double,
                V::Double(_)
                    | V::Float(_)
                    | V::Int32(_)
                    | V::UInt32(_)
                    | V::Int16(_)
                    | V::UInt16(_)
                    | V::SByte(_)
                    | V::Byte(_)
            )
            | (Scalar::String, V::String(_))
            | (Scalar::DateTime, V::DateTime(_))
    )
}

fn as_i64(v: &Variant) -> Option<i64> {
    Some(match v {
        Variant::SByte(x) => i64::from(*x),
        Variant::Byte(x) => i64::from(*x),
        Variant::Int16(x) => i64::from(*x),
        Variant::UInt16(x) => i64::from(*x),
        Variant::Int32(x) => i64::from(*x),
        Variant::UInt32(x) => i64::from(*x),
        Variant::Int64(x) => *x,
        _ => return None,
    })
}

fn as_u64(v: &Variant) -> Option<u64> {
    Some(match v {
        Variant::Byte(x) => u64::from(*x),
        Variant::UInt16(x) => u64::from(*x),
        Variant::UInt32(x) => u64::from(*x),
        Variant::UInt64(x) => *x,
        _ => return None,
    })
}

/// Epoch milliseconds of an OPC UA time; `None` for the null time.
pub fn epoch_ms(t: &DateTime) -> Option<i64> {
    if t.is_null() {
        None
    } else {
        Some(t.as_chrono().timestamp_millis())
    }
}

macro_rules! push {
    ($b:expr, $ty:ty, $v:expr) => {
        if let Some(b) = $b.as_any_mut().downcast_mut::<$ty>() {
            b.append_option($v);
        }
    };
}

/// Appends `v` (already checked by [`fits`]) or a null.
fn append_scalar(s: Scalar, b: &mut dyn ArrayBuilder, v: Option<&Variant>) {
    match s {
        Scalar::Boolean => push!(
            b,
            BooleanBuilder,
            v.and_then(|v| match v {
                Variant::Boolean(x) => Some(*x),
                _ => None,
            })
        ),
        Scalar::SByte => push!(
            b,
            Int8Builder,
            v.and_then(|v| match v {
                Variant::SByte(x) => Some(*x),
                _ => None,
            })
        ),
        Scalar::Byte => push!(
            b,
            UInt8Builder,
            v.and_then(|v| match v {
                Variant::Byte(x) => Some(*x),
                _ => None,
            })
        ),
        Scalar::Int16 => push!(
            b,
            Int16Builder,
            v.and_then(as_i64).and_then(|x| i16::try_from(x).ok())
        ),
        Scalar::UInt16 => push!(
            b,
            UInt16Builder,
            v.and_then(as_u64).and_then(|x| u16::try_from(x).ok())
        ),
        Scalar::Int32 => push!(
            b,
            Int32Builder,
            v.and_then(as_i64).and_then(|x| i32::try_from(x).ok())
        ),
        Scalar::UInt32 => push!(
            b,
            UInt32Builder,
            v.and_then(as_u64).and_then(|x| u32::try_from(x).ok())
        ),
        Scalar::Int64 => push!(b, Int64Builder, v.and_then(as_i64)),
        Scalar::UInt64 => push!(b, UInt64Builder, v.and_then(as_u64)),
        Scalar::Float => push!(
            b,
            Float32Builder,
            v.and_then(|v| match v {
                Variant::Float(x) => Some(*x),
                _ => None,
            })
        ),
        Scalar::Double => push!(
            b,
            Float64Builder,
            v.and_then(|v| match v {
                Variant::Double(x) => Some(*x),
                // The f64 with the f32's shortest decimal form: 1.1 stays 1.1.
                Variant::Float(x) => Some(x.to_string().parse::<f64>().unwrap_or(f64::from(*x))),
                other => as_i64(other).map(|i| i as f64),
            })
        ),
        Scalar::String => push!(
            b,
            StringBuilder,
            v.and_then(|v| match v {
                Variant::String(s) => s.value().clone(),
                _ => None,
            })
        ),
        Scalar::DateTime => push!(
            b,
            TimestampMillisecondBuilder,
            v.and_then(|v| match v {
                Variant::DateTime(t) => epoch_ms(t),
                _ => None,
            })
        ),
    }
}

/// Why a result's field cannot be written to a node.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WriteValueError {
    /// The JSON value is not of the node's type.
    #[error("{value} is not a {node_type}")]
    WrongType {
        /// The value, as JSON.
        value: String,
        /// The node's type.
        node_type: NodeType,
    },
    /// The value is outside the node's configured `min`..`max` or its type's range.
    #[error("{value} is outside {range}")]
    OutOfRange {
        /// The value.
        value: String,
        /// The allowed range.
        range: String,
    },
}

/// The variant to write for a JSON value to a node of type `t`, within `min..=max`.
pub fn to_variant(
    t: NodeType,
    json: &Json,
    min: Option<f64>,
    max: Option<f64>,
) -> Result<Variant, WriteValueError> {
    if t.array {
        let Json::Array(items) = json else {
            return Err(wrong(json, t));
        };
        let elem = NodeType {
            scalar: t.scalar,
            array: false,
        };
        let values = items
            .iter()
            .map(|j| to_variant(elem, j, min, max))
            .collect::<Result<Vec<_>, _>>()?;
        return Array::new(t.scalar.variant_type(), values)
            .map(|a| Variant::Array(Box::new(a)))
            .map_err(|_| wrong(json, t));
    }
    if t.scalar.is_numeric() {
        let x = json.as_f64().ok_or_else(|| wrong(json, t))?;
        if min.is_some_and(|lo| x < lo) || max.is_some_and(|hi| x > hi) {
            return Err(WriteValueError::OutOfRange {
                value: json.to_string(),
                range: format!(
                    "{}..={}",
                    min.map_or("".into(), |v| v.to_string()),
                    max.map_or("".into(), |v| v.to_string())
                ),
            });
        }
    }
    let int = || -> Result<i128, WriteValueError> {
        if let Some(i) = json.as_i64() {
            Ok(i128::from(i))
        } else if let Some(u) = json.as_u64() {
            Ok(i128::from(u))
        } else {
            Err(wrong(json, t))
        }
    };
    let range = |v: i128, lo: i128, hi: i128| -> Result<i128, WriteValueError> {
        if v < lo || v > hi {
            Err(WriteValueError::OutOfRange {
                value: json.to_string(),
                range: format!("{lo}..={hi} ({t})"),
            })
        } else {
            Ok(v)
        }
    };
    Ok(match t.scalar {
        Scalar::Boolean => Variant::Boolean(json.as_bool().ok_or_else(|| wrong(json, t))?),
        Scalar::SByte => Variant::SByte(range(int()?, -128, 127)? as i8),
        Scalar::Byte => Variant::Byte(range(int()?, 0, 255)? as u8),
        Scalar::Int16 => Variant::Int16(range(int()?, i16::MIN.into(), i16::MAX.into())? as i16),
        Scalar::UInt16 => Variant::UInt16(range(int()?, 0, u16::MAX.into())? as u16),
        Scalar::Int32 => Variant::Int32(range(int()?, i32::MIN.into(), i32::MAX.into())? as i32),
        Scalar::UInt32 => Variant::UInt32(range(int()?, 0, u32::MAX.into())? as u32),
        Scalar::Int64 => Variant::Int64(range(int()?, i64::MIN.into(), i64::MAX.into())? as i64),
        Scalar::UInt64 => Variant::UInt64(range(int()?, 0, u64::MAX.into())? as u64),
        Scalar::Float => {
            let x = json.as_f64().ok_or_else(|| wrong(json, t))?;
            if x.is_finite() && x.abs() > f64::from(f32::MAX) {
                return Err(WriteValueError::OutOfRange {
                    value: json.to_string(),
                    range: "the range of float".into(),
                });
            }
            Variant::Float(x as f32)
        }
        Scalar::Double => Variant::Double(json.as_f64().ok_or_else(|| wrong(json, t))?),
        Scalar::String => Variant::from(json.as_str().ok_or_else(|| wrong(json, t))?),
        Scalar::DateTime => {
            let t_ms = json.as_i64().ok_or_else(|| wrong(json, t))?;
            let c = chrono::DateTime::from_timestamp_millis(t_ms).ok_or_else(|| wrong(json, t))?;
            Variant::DateTime(Box::new(DateTime::from(c)))
        }
    })
}

fn wrong(json: &Json, t: NodeType) -> WriteValueError {
    WriteValueError::WrongType {
        value: json.to_string(),
        node_type: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array as _, AsArray};
    use datafusion::arrow::datatypes::{Float64Type, Int32Type};

    #[test]
    fn types_parse_and_name_themselves() {
        let t: NodeType = "Double[]".parse().unwrap();
        assert_eq!(
            t,
            NodeType {
                scalar: Scalar::Double,
                array: true
            }
        );
        assert_eq!(t.to_string(), "double[]");
        let e = "guid".parse::<NodeType>().unwrap_err();
        assert!(
            e.contains("unknown node type `guid`") && e.contains("uint64"),
            "{e}"
        );
    }

    #[test]
    fn values_widen_losslessly_and_other_types_are_mismatches() {
        let mut b = ColumnBuilder::new("double".parse().unwrap(), 4);
        b.append(&Variant::Float(1.1)).unwrap();
        b.append(&Variant::Int32(-7)).unwrap();
        assert!(
            b.append(&Variant::Int64(1)).is_err(),
            "i64 may not fit an f64 exactly"
        );
        assert!(b.append(&Variant::from("x")).is_err());
        let col = b.finish();
        let col = col.as_primitive::<Float64Type>();
        assert_eq!(col.value(0), 1.1);
        assert_eq!(col.value(1), -7.0);
        assert!(col.is_null(2) && col.is_null(3));
    }

    #[test]
    fn arrays_become_lists_and_mixed_arrays_are_refused() {
        let t: NodeType = "int32[]".parse().unwrap();
        let mut b = ColumnBuilder::new(t, 2);
        let good = Array::new(
            VariantScalarTypeId::Int32,
            vec![Variant::Int32(1), Variant::Int32(2)],
        )
        .unwrap();
        b.append(&Variant::Array(Box::new(good))).unwrap();
        assert!(b.append(&Variant::Int32(3)).is_err());
        let col = b.finish();
        let list = col.as_list::<i32>();
        assert_eq!(list.value(0).as_primitive::<Int32Type>().values(), &[1, 2]);
        assert!(list.is_null(1));
        assert_eq!(col.data_type(), &t.data_type());
    }

    #[test]
    fn writes_are_checked_for_type_and_range() {
        let t: NodeType = "int16".parse().unwrap();
        assert_eq!(
            to_variant(t, &serde_json::json!(-5), None, None),
            Ok(Variant::Int16(-5))
        );
        assert!(matches!(
            to_variant(t, &serde_json::json!(40000), None, None),
            Err(WriteValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            to_variant(t, &serde_json::json!(1.5), None, None),
            Err(WriteValueError::WrongType { .. })
        ));
        let d: NodeType = "double".parse().unwrap();
        assert!(matches!(
            to_variant(d, &serde_json::json!(101.0), Some(0.0), Some(100.0)),
            Err(WriteValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            to_variant(
                "boolean".parse().unwrap(),
                &serde_json::json!(1),
                None,
                None
            ),
            Err(WriteValueError::WrongType { .. })
        ));
    }
}
