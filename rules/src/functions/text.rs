//! eKuiper's functions that write values as text: `format` (a number with a locale's
//! separators), `conv` (an integer in another base), `sha1` and `crc32` (hex digests).
//! Each takes and returns strings (the rewrite casts its arguments), one row at a time.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use sha1::{Digest, Sha1};

/// The functions' names in rewritten queries.
pub(crate) const FORMAT: &str = "__fg_format";
pub(crate) const CONV: &str = "__fg_conv";
pub(crate) const SHA1: &str = "__fg_sha1";
pub(crate) const CRC32: &str = "__fg_crc32";

pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        create_udf(
            FORMAT,
            vec![DataType::Float64, DataType::Int64, DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(format_numbers),
        ),
        create_udf(
            CONV,
            vec![DataType::Utf8, DataType::Int64, DataType::Int64],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(conv_numbers),
        ),
        create_udf(
            SHA1,
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                map_strings(args, |s| Ok(Some(hex(&Sha1::digest(s.as_bytes())))))
            }),
        ),
        create_udf(
            CRC32,
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                map_strings(args, |s| {
                    Ok(Some(format!("{:x}", crc32fast::hash(s.as_bytes()))))
                })
            }),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The arguments as arrays of one length (scalars repeated).
fn arrays(args: &[ColumnarValue]) -> Result<Vec<ArrayRef>> {
    let rows = args
        .iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1);
    args.iter().map(|a| a.to_array(rows)).collect()
}

fn downcast<'a, T: 'static>(a: &'a ArrayRef, what: &str) -> Result<&'a T> {
    a.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataFusionError::Execution(format!("{what}: unexpected argument type")))
}

fn map_strings(
    args: &[ColumnarValue],
    f: impl Fn(&str) -> Result<Option<String>>,
) -> Result<ColumnarValue> {
    let arrays = arrays(args)?;
    let Some(input) = arrays.first() else {
        return exec_err!("a text function takes one argument");
    };
    let input: &StringArray = downcast(input, "text function")?;
    let out: StringArray = input
        .iter()
        .map(|s| s.map(&f).transpose().map(Option::flatten))
        .collect::<Result<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `format(x, d[, locale])`: `x` rounded to `d` decimals; with a locale, its grouping
/// and decimal separators.
fn format_numbers(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = arrays(args)?;
    let [x, d, locale] = arrays.as_slice() else {
        return exec_err!("format takes a number, the decimals and a locale");
    };
    let (x, d, locale): (&Float64Array, &Int64Array, &StringArray) = (
        downcast(x, "format")?,
        downcast(d, "format")?,
        downcast(locale, "format")?,
    );
    let out: StringArray = (0..x.len())
        .map(|i| {
            if x.is_null(i) || d.is_null(i) {
                return Ok(None);
            }
            let decimals = usize::try_from(d.value(i)).map_err(|_| {
                DataFusionError::Execution("format: the decimals must be 0 or more".into())
            })?;
            let locale = (!locale.is_null(i)).then(|| locale.value(i));
            format_number(x.value(i), decimals, locale).map(Some)
        })
        .collect::<Result<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// The grouping and decimal separators of a locale (`en_US`, `de-DE`); `None` for one
/// that is not known.
fn separators(locale: &str) -> Option<(&'static str, &'static str)> {
    let mut parts = locale.split(['_', '-']);
    let language = parts.next()?.to_ascii_lowercase();
    let country = parts.next().unwrap_or("").to_ascii_uppercase();
    Some(match (language.as_str(), country.as_str()) {
        ("de" | "it" | "rm" | "fr", "CH") => ("'", "."),
        ("fr", _) => ("\u{202f}", ","),
        (
            "de" | "es" | "it" | "nl" | "id" | "da" | "tr" | "el" | "hr" | "sl" | "sr" | "ro"
            | "is" | "vi" | "pt",
            _,
        ) => (".", ","),
        (
            "ru" | "pl" | "cs" | "sk" | "sv" | "fi" | "nb" | "no" | "uk" | "bg" | "lt" | "lv"
            | "et" | "hu" | "be",
            _,
        ) => ("\u{a0}", ","),
        ("en" | "ja" | "ko" | "zh" | "th" | "he" | "hi" | "ms" | "ga" | "mt", _) => (",", "."),
        _ => return None,
    })
}

fn format_number(x: f64, decimals: usize, locale: Option<&str>) -> Result<String> {
    let plain = format!("{x:.decimals$}");
    let Some(locale) = locale.filter(|l| !l.is_empty()) else {
        return Ok(plain);
    };
    let Some((group, point)) = separators(locale) else {
        return exec_err!("format: the locale `{locale}` is not supported");
    };
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", plain.as_str()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let mut out = String::from(sign);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push_str(group);
        }
        out.push(c);
    }
    if !fraction.is_empty() {
        out.push_str(point);
        out.push_str(fraction);
    }
    Ok(out)
}

/// `conv(n, from, to)`: `n` read in base `|from|` and written in base `|to|` (2 to 36,
/// upper case); a negative `to` writes a signed number, a positive one writes a
/// negative number as its 64-bit two's complement, as MySQL's `conv` does.
fn conv_numbers(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let arrays = arrays(args)?;
    let [n, from, to] = arrays.as_slice() else {
        return exec_err!("conv takes a number and two bases");
    };
    let (n, from, to): (&StringArray, &Int64Array, &Int64Array) = (
        downcast(n, "conv")?,
        downcast(from, "conv")?,
        downcast(to, "conv")?,
    );
    let out: StringArray = (0..n.len())
        .map(|i| {
            if n.is_null(i) || from.is_null(i) || to.is_null(i) {
                return Ok(None);
            }
            conv(n.value(i), from.value(i), to.value(i)).map(Some)
        })
        .collect::<Result<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn base(b: i64) -> Result<u32> {
    match u32::try_from(b.unsigned_abs()) {
        Ok(b @ 2..=36) => Ok(b),
        _ => exec_err!("conv: a base is from 2 to 36 (or -2 to -36), not {b}"),
    }
}

fn conv(n: &str, from: i64, to: i64) -> Result<String> {
    let (from_base, to_base) = (base(from)?, base(to)?);
    let n = n.trim();
    let (negative, digits) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n),
    };
    let magnitude = u64::from_str_radix(digits, from_base).map_err(|e| {
        DataFusionError::Execution(format!(
            "conv: `{n}` is not a number in base {from_base}: {e}"
        ))
    })?;
    let (negative, mut value) = if to < 0 {
        (negative, magnitude)
    } else if negative {
        (false, magnitude.wrapping_neg())
    } else {
        (false, magnitude)
    };
    let mut out = Vec::new();
    loop {
        let digit = (value % u64::from(to_base)) as u32;
        out.push(char::from_digit(digit, to_base).map_or('?', |c| c.to_ascii_uppercase()));
        value /= u64::from(to_base);
        if value == 0 {
            break;
        }
    }
    if negative {
        out.push('-');
    }
    Ok(out.iter().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_a_locales_separators() {
        assert_eq!(
            format_number(12332.1234567, 4, Some("en_US")).ok(),
            Some("12,332.1235".into())
        );
        assert_eq!(
            format_number(123456.78, 2, Some("de_DE")).ok(),
            Some("123.456,78".into())
        );
        assert_eq!(
            format_number(123456.78, 2, Some("de_CH")).ok(),
            Some("123'456.78".into())
        );
        assert_eq!(
            format_number(-1234.5, 0, Some("en_US")).ok(),
            Some("-1,234".into())
        );
        assert_eq!(
            format_number(12332.1234567, 2, None).ok(),
            Some("12332.12".into())
        );
        assert!(format_number(1.0, 2, Some("xx_YY")).is_err());
    }

    #[test]
    fn converts_between_bases() {
        assert_eq!(conv("a", 16, 2).ok(), Some("1010".into()));
        assert_eq!(conv("6E", 18, 8).ok(), Some("172".into()));
        assert_eq!(conv("-17", 10, -18).ok(), Some("-H".into()));
        assert_eq!(conv("-1", 10, 16).ok(), Some("FFFFFFFFFFFFFFFF".into()));
        assert_eq!(conv("0", 10, 2).ok(), Some("0".into()));
        assert!(conv("z", 10, 2).is_err());
        assert!(conv("1", 1, 2).is_err());
    }
}
