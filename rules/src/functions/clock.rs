//! The clock functions, read once per batch instead of once per plan.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Which reading of the clock a function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reading {
    /// The UTC timestamp, nanoseconds.
    Timestamp,
    /// Days since the epoch (UTC).
    Date,
    /// Nanoseconds since midnight (UTC).
    Time,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Clock {
    name: &'static str,
    aliases: Vec<String>,
    reading: Reading,
    signature: Signature,
}

/// `now()` (also `current_timestamp`), `current_date()` and `current_time()`.
pub(super) fn functions() -> Vec<ScalarUDF> {
    [
        (
            "now",
            vec!["current_timestamp".to_string()],
            Reading::Timestamp,
        ),
        ("current_date", vec!["today".to_string()], Reading::Date),
        ("current_time", vec![], Reading::Time),
    ]
    .into_iter()
    .map(|(name, aliases, reading)| {
        ScalarUDF::new_from_impl(Clock {
            name,
            aliases,
            reading,
            signature: Signature::nullary(Volatility::Volatile),
        })
    })
    .collect()
}

impl ScalarUDFImpl for Clock {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.reading {
            Reading::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, None),
            Reading::Date => DataType::Date32,
            Reading::Time => DataType::Time64(TimeUnit::Nanosecond),
        })
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        const DAY_NS: i64 = 86_400_000_000_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok());
        let value = match self.reading {
            Reading::Timestamp => ScalarValue::TimestampNanosecond(now, None),
            Reading::Date => {
                ScalarValue::Date32(now.and_then(|n| i32::try_from(n.div_euclid(DAY_NS)).ok()))
            }
            Reading::Time => ScalarValue::Time64Nanosecond(now.map(|n| n.rem_euclid(DAY_NS))),
        };
        Ok(ColumnarValue::Scalar(value))
    }
}
