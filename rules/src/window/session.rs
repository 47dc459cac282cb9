//! Session windows, per group key.

use std::collections::HashMap;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use super::{Input, tag};
use crate::watermark::Watermark;

/// Rows of one key not yet emitted.
#[derive(Default)]
struct KeyRows {
    batches: Vec<RecordBatch>,
    times: Vec<i64>,
    /// End of the last session emitted for this key.
    closed_to: Option<i64>,
    /// No session of this key can be complete before the watermark reaches this: the
    /// end of its first open session as last computed, lowered by rows that arrived
    /// since (a row at `t` may start a session ending at `t + min(gap, max)`).
    not_before: Option<i64>,
}

/// Per key, rows less than `gap` apart form a session; a session is also cut when it
/// would span `max` or more. A session `[first, min(last + gap, first + max))` is
/// complete once the watermark reaches its end.
pub(crate) struct SessionWindows {
    max: i64,
    gap: i64,
    schema: SchemaRef,
    keys: HashMap<u64, KeyRows>,
}

impl SessionWindows {
    pub fn new(max: i64, gap: i64, schema: SchemaRef) -> Self {
        Self {
            max,
            gap,
            schema,
            keys: HashMap::new(),
        }
    }

    pub fn push(&mut self, input: Input<'_>, wm: &Watermark) -> Result<Vec<u32>, ArrowError> {
        let mut late = Vec::new();
        let mut by_key: HashMap<u64, (Vec<u32>, Vec<i64>)> = HashMap::new();
        for (i, ts) in input.times.iter().enumerate() {
            let Some(ts) = ts else { continue };
            let key = input.keys.map_or(0, |k| k[i]);
            let closed_to = self.keys.get(&key).and_then(|k| k.closed_to);
            if wm.closes(ts + self.gap) || closed_to.is_some_and(|c| ts < c) {
                late.push(i as u32);
                continue;
            }
            let e = by_key.entry(key).or_default();
            e.0.push(i as u32);
            e.1.push(ts);
        }
        for (key, (idx, times)) in by_key {
            let rows = take_record_batch(input.rows, &UInt32Array::from(idx))?;
            let k = self.keys.entry(key).or_default();
            let soonest = times
                .iter()
                .min()
                .map(|t| t.saturating_add(self.gap.min(self.max)));
            k.not_before = match (k.not_before, soonest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            k.batches.push(rows);
            k.times.extend(times);
        }
        Ok(late)
    }

    pub fn close(&mut self, wm: Option<&Watermark>) -> Result<Vec<RecordBatch>, ArrowError> {
        let limit = match wm {
            None => i64::MAX,
            Some(w) => match w.current() {
                Some(c) => c,
                None => return Ok(vec![]),
            },
        };
        let mut out = Vec::new();
        for k in self.keys.values_mut() {
            if k.times.is_empty() || k.not_before.is_some_and(|nb| limit < nb) {
                continue;
            }
            let mut order: Vec<usize> = (0..k.times.len()).collect();
            order.sort_by_key(|&i| k.times[i]);
            // Sweep the sorted rows into sessions: (first index in `order`, end).
            let mut sessions: Vec<(usize, usize, i64, i64)> = Vec::new();
            let mut s = 0;
            while s < order.len() {
                let start = k.times[order[s]];
                let mut last = start;
                let mut e = s + 1;
                while e < order.len() {
                    let t = k.times[order[e]];
                    if t - last < self.gap && t - start < self.max {
                        last = t;
                        e += 1;
                    } else {
                        break;
                    }
                }
                let end = (last + self.gap).min(start + self.max);
                sessions.push((s, e, start, end));
                s = e;
            }
            let complete = sessions
                .iter()
                .take_while(|(_, _, _, end)| *end <= limit)
                .count();
            k.not_before = sessions.get(complete).map(|(_, _, _, end)| *end);
            if complete == 0 {
                continue;
            }
            let schema = k.batches[0].schema();
            let all = concat_batches(&schema, &k.batches)?;
            for (s, e, start, end) in &sessions[..complete] {
                let idx: Vec<u32> = order[*s..*e].iter().map(|i| *i as u32).collect();
                out.push(tag(&all, &idx, *start, *end, &self.schema)?);
            }
            let done_to = sessions[complete - 1].1;
            k.closed_to = Some(sessions[complete - 1].3);
            let rest: Vec<usize> = order[done_to..].to_vec();
            k.times = rest.iter().map(|i| k.times[*i]).collect();
            k.batches = if rest.is_empty() {
                vec![]
            } else {
                let idx = UInt32Array::from(rest.iter().map(|i| *i as u32).collect::<Vec<_>>());
                vec![take_record_batch(&all, &idx)?]
            };
        }
        self.keys.retain(|_, k| {
            !k.times.is_empty()
                || k.closed_to
                    .is_some_and(|c| c > limit.saturating_sub(self.gap + self.max))
        });
        Ok(out)
    }

    pub fn open(&self) -> usize {
        self.keys.values().filter(|k| !k.times.is_empty()).count()
    }
}
