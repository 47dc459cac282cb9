//! What one analytic call keeps for one partition key, and how one row changes it.

use std::collections::VecDeque;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use datafusion::common::ScalarValue;
use datafusion::error::Result;

use super::{AccKind, AnalyticFn};

/// A call's inputs for one batch, evaluated per row.
pub(super) struct Inputs<'a> {
    /// The values the function watches.
    pub values: &'a [ArrayRef],
    /// `lag`'s and `latest`'s default (cast to the value's type), or `acc_*`'s begin
    /// and reset conditions.
    pub extra: &'a [ArrayRef],
    /// The first value as a double, for `acc_*` and `deadband`.
    pub numbers: Option<&'a Float64Array>,
    /// Each row's time (event time, else arrival), for `deadband`'s heartbeat.
    pub times: Option<&'a Int64Array>,
    /// A null of the result's type.
    pub null: &'a ScalarValue,
}

impl Inputs<'_> {
    fn value(&self, j: usize, i: usize) -> Result<ScalarValue> {
        ScalarValue::try_from_array(&self.values[j], i)
    }

    fn extra(&self, j: usize, i: usize) -> Result<Option<ScalarValue>> {
        self.extra
            .get(j)
            .map(|a| ScalarValue::try_from_array(a, i))
            .transpose()
    }

    fn flag(&self, j: usize, i: usize) -> bool {
        self.extra
            .get(j)
            .and_then(|a| a.as_boolean_opt())
            .is_some_and(|b| b.is_valid(i) && b.value(i))
    }

    fn number(&self, i: usize) -> Option<f64> {
        self.numbers.filter(|n| n.is_valid(i)).map(|n| n.value(i))
    }
}

/// One key's state.
#[derive(Debug, Clone)]
pub(super) enum State {
    /// The last `offset` values counted, oldest first; empty before the first row.
    Lag(VecDeque<ScalarValue>),
    Latest(Option<ScalarValue>),
    /// The last value of each watched expression; `None` before one was seen.
    Changed(Vec<Option<ScalarValue>>),
    Acc(Acc),
    /// The value and time of the last row passed.
    Deadband(Option<(f64, i64)>),
}

#[derive(Debug, Clone, Default)]
pub(super) struct Acc {
    sum: f64,
    count: i64,
    min: Option<f64>,
    max: Option<f64>,
    begun: bool,
}

impl Acc {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
    }

    fn result(&self, kind: AccKind) -> ScalarValue {
        match kind {
            AccKind::Count => ScalarValue::Int64(Some(self.count)),
            AccKind::Sum => ScalarValue::Float64(Some(self.sum)),
            AccKind::Min => ScalarValue::Float64(Some(self.min.unwrap_or(0.0))),
            AccKind::Max => ScalarValue::Float64(Some(self.max.unwrap_or(0.0))),
            AccKind::Avg => ScalarValue::Float64(Some(match self.count {
                0 => 0.0,
                n => self.sum / n as f64,
            })),
        }
    }
}

/// Whether `v` differs from the last value seen (`None`: none yet, as if null).
fn differs(last: &Option<ScalarValue>, v: &ScalarValue) -> bool {
    match last {
        None => !v.is_null(),
        Some(l) => l != v,
    }
}

impl State {
    /// The state of a key not seen before.
    pub fn new(func: &AnalyticFn, values: usize) -> Self {
        match func {
            AnalyticFn::Lag { .. } => State::Lag(VecDeque::new()),
            AnalyticFn::Latest => State::Latest(None),
            AnalyticFn::ChangedCol { .. } | AnalyticFn::HadChanged { .. } => {
                State::Changed(vec![None; values])
            }
            AnalyticFn::Acc { .. } => State::Acc(Acc::default()),
            AnalyticFn::Deadband { .. } => State::Deadband(None),
        }
    }

    /// Takes row `i` (which counts when `valid`) and returns the function's result for it.
    pub fn step(
        &mut self,
        func: &AnalyticFn,
        inputs: &Inputs,
        i: usize,
        valid: bool,
    ) -> Result<ScalarValue> {
        Ok(match (self, func) {
            (
                State::Lag(ring),
                AnalyticFn::Lag {
                    offset,
                    ignore_null,
                },
            ) => {
                let v = inputs.value(0, i)?;
                if ring.is_empty() {
                    // As eKuiper: the default of the first row stands for every value
                    // before it.
                    let default = inputs.extra(0, i)?.unwrap_or_else(|| inputs.null.clone());
                    ring.extend(std::iter::repeat_n(default, *offset));
                }
                if valid && (!ignore_null || !v.is_null()) {
                    ring.push_back(v);
                    ring.pop_front().unwrap_or_else(|| inputs.null.clone())
                } else {
                    ring.front().cloned().unwrap_or_else(|| inputs.null.clone())
                }
            }
            (State::Latest(last), AnalyticFn::Latest) => {
                let v = inputs.value(0, i)?;
                if valid && !v.is_null() {
                    *last = Some(v.clone());
                    v
                } else {
                    match last {
                        Some(l) => l.clone(),
                        None => inputs.extra(0, i)?.unwrap_or_else(|| inputs.null.clone()),
                    }
                }
            }
            (State::Changed(last), AnalyticFn::ChangedCol { ignore_null }) => {
                let v = inputs.value(0, i)?;
                if !valid || (*ignore_null && v.is_null()) || !differs(&last[0], &v) {
                    inputs.null.clone()
                } else {
                    last[0] = Some(v.clone());
                    v
                }
            }
            (State::Changed(last), AnalyticFn::HadChanged { ignore_null }) => {
                if !valid {
                    return Ok(ScalarValue::Boolean(Some(false)));
                }
                let mut changed = false;
                for (j, l) in last.iter_mut().enumerate() {
                    let v = inputs.value(j, i)?;
                    if (*ignore_null && v.is_null()) || !differs(l, &v) {
                        continue;
                    }
                    changed = true;
                    *l = Some(v);
                }
                ScalarValue::Boolean(Some(changed))
            }
            (State::Acc(acc), AnalyticFn::Acc { kind, conditional }) => {
                let counts = !*conditional || {
                    if !acc.begun {
                        *acc = Acc::default();
                        acc.begun = inputs.flag(0, i);
                    }
                    acc.begun
                };
                if counts && valid {
                    match kind {
                        AccKind::Count => {
                            if inputs.values[0].is_valid(i) {
                                acc.count += 1;
                            }
                        }
                        _ => {
                            if let Some(v) = inputs.number(i) {
                                acc.add(v);
                            }
                        }
                    }
                }
                let result = acc.result(*kind);
                if *conditional && inputs.flag(1, i) {
                    acc.begun = false;
                }
                result
            }
            (
                State::Deadband(last),
                AnalyticFn::Deadband {
                    band,
                    percent,
                    heartbeat_ms,
                },
            ) => {
                let Some(v) = inputs.number(i).filter(|_| valid) else {
                    return Ok(ScalarValue::Boolean(Some(false)));
                };
                let t = inputs.times.map_or(0, |t| t.value(i));
                let pass = match *last {
                    None => true,
                    Some((lv, lt)) => {
                        let limit = if *percent {
                            lv.abs() * band / 100.0
                        } else {
                            *band
                        };
                        (v - lv).abs() > limit || heartbeat_ms.is_some_and(|h| t - lt >= h)
                    }
                };
                if pass {
                    *last = Some((v, t));
                }
                ScalarValue::Boolean(Some(pass))
            }
            _ => {
                return Err(datafusion::error::DataFusionError::Internal(
                    "analytic state of another function".into(),
                ));
            }
        })
    }
}
