//! Event-time windows with fixed boundaries (tumbling, hopping) and sliding windows.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use super::{Input, tag};
use crate::watermark::Watermark;

/// Tumbling (`slide == size`) and hopping windows: each row is copied into every window
/// `[k·slide, k·slide + size)` that holds its event time.
pub(crate) struct PaneWindows {
    size: i64,
    slide: i64,
    schema: SchemaRef,
    /// Tagged rows by window start.
    open: BTreeMap<i64, Vec<RecordBatch>>,
}

impl PaneWindows {
    pub fn new(size: i64, slide: i64, schema: SchemaRef) -> Self {
        Self {
            size,
            slide,
            schema,
            open: BTreeMap::new(),
        }
    }

    /// Starts of the windows holding `ts`, oldest first.
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.size, self.slide);
        let last = ts.div_euclid(slide) * slide;
        let first = (ts - size).div_euclid(slide) * slide + slide;
        (0..)
            .map(move |k| first + k * slide)
            .take_while(move |s| *s <= last)
    }

    pub fn push(&mut self, input: Input<'_>, wm: &Watermark) -> Result<Vec<u32>, ArrowError> {
        let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        let mut late = Vec::new();
        for (i, ts) in input.times.iter().enumerate() {
            let Some(ts) = ts else { continue };
            let mut any = false;
            for start in self.starts(ts) {
                if !wm.closes(start + self.size) {
                    by_window.entry(start).or_default().push(i as u32);
                    any = true;
                }
            }
            if !any {
                late.push(i as u32);
            }
        }
        for (start, rows) in by_window {
            let b = tag(input.rows, &rows, start, start + self.size, &self.schema)?;
            self.open.entry(start).or_default().push(b);
        }
        Ok(late)
    }

    pub fn close(&mut self, wm: Option<&Watermark>) -> Result<Vec<RecordBatch>, ArrowError> {
        let closing = match wm {
            None => std::mem::take(&mut self.open),
            Some(wm) => {
                let keep_from = self
                    .open
                    .keys()
                    .copied()
                    .find(|s| !wm.closes(s + self.size));
                match keep_from {
                    Some(k) => {
                        let rest = self.open.split_off(&k);
                        std::mem::replace(&mut self.open, rest)
                    }
                    None => std::mem::take(&mut self.open),
                }
            }
        };
        Ok(closing.into_values().flatten().collect())
    }

    pub fn open(&self) -> usize {
        self.open.len()
    }
}

/// Sliding windows: every distinct event time `t` triggers a window
/// `(t − size, t + delay]`, emitted once the watermark reaches `t + delay`.
pub(crate) struct SlidingWindows {
    size: i64,
    /// How long after its trigger a window ends (eKuiper's third argument; usually 0).
    delay: i64,
    schema: SchemaRef,
    /// Rows not yet too old for any future window, with their event times.
    rows: Vec<(RecordBatch, Int64Array)>,
    /// Every trigger up to this time has been emitted.
    emitted_to: Option<i64>,
}

impl SlidingWindows {
    pub fn new(size: i64, delay: i64, schema: SchemaRef) -> Self {
        Self {
            size,
            delay,
            schema,
            rows: Vec::new(),
            emitted_to: None,
        }
    }

    pub fn push(&mut self, input: Input<'_>, wm: &Watermark) -> Result<Vec<u32>, ArrowError> {
        let mut keep = Vec::new();
        let mut late = Vec::new();
        for (i, ts) in input.times.iter().enumerate() {
            let Some(ts) = ts else { continue };
            // Its own window (ending at ts) is already complete.
            if wm.closes(ts) || self.emitted_to.is_some_and(|e| ts <= e) {
                late.push(i as u32);
            } else {
                keep.push(i as u32);
            }
        }
        if !keep.is_empty() {
            let idx = datafusion::arrow::array::UInt32Array::from(keep);
            let rows = datafusion::arrow::compute::take_record_batch(input.rows, &idx)?;
            let times = datafusion::arrow::compute::take(input.times, &idx, None)?;
            let times = times
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| ArrowError::CastError("event times are not Int64".into()))?;
            self.rows.push((rows, times));
        }
        Ok(late)
    }

    pub fn close(&mut self, wm: Option<&Watermark>) -> Result<Vec<RecordBatch>, ArrowError> {
        if self.rows.is_empty() {
            return Ok(vec![]);
        }
        let limit = match wm {
            Some(w) => match w.current() {
                Some(c) => c,
                None => return Ok(vec![]),
            },
            None => i64::MAX,
        };
        let schema = self.rows[0].0.schema();
        let all = concat_batches(&schema, self.rows.iter().map(|(b, _)| b))?;
        let times: Vec<i64> = self
            .rows
            .iter()
            .flat_map(|(_, t)| t.values().iter().copied())
            .collect();
        let mut triggers: Vec<i64> = times
            .iter()
            .copied()
            .filter(|t| {
                t.saturating_add(self.delay) <= limit && self.emitted_to.is_none_or(|e| *t > e)
            })
            .collect();
        triggers.sort_unstable();
        triggers.dedup();
        let mut out = Vec::new();
        for t in &triggers {
            let members: Vec<u32> = times
                .iter()
                .enumerate()
                .filter(|(_, ts)| **ts > t - self.size && **ts <= t + self.delay)
                .map(|(i, _)| i as u32)
                .collect();
            let end = t + self.delay;
            out.push(tag(&all, &members, t - self.size, end, &self.schema)?);
        }
        if let Some(last) = triggers.last() {
            self.emitted_to = Some(*last);
        }
        // Keep only rows that a future window (triggered after `limit - delay`) can hold.
        let keep: Vec<u32> = times
            .iter()
            .enumerate()
            .filter(|(_, ts)| {
                wm.is_some()
                    && limit
                        .checked_sub(self.size.saturating_add(self.delay))
                        .is_none_or(|min| **ts > min)
            })
            .map(|(i, _)| i as u32)
            .collect();
        self.rows.clear();
        if !keep.is_empty() {
            let idx = datafusion::arrow::array::UInt32Array::from(keep.clone());
            let rows = datafusion::arrow::compute::take_record_batch(&all, &idx)?;
            let kept_times =
                Int64Array::from(keep.iter().map(|i| times[*i as usize]).collect::<Vec<_>>());
            self.rows.push((rows, kept_times));
        }
        Ok(out)
    }

    pub fn open(&self) -> usize {
        self.rows.iter().map(|(b, _)| b.num_rows()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn panes(size: i64, slide: i64) -> PaneWindows {
        let schema = Arc::new(Schema::new(vec![
            Field::new("window_start", DataType::Int64, false),
            Field::new("window_end", DataType::Int64, false),
        ]));
        PaneWindows::new(size, slide, schema)
    }

    #[test]
    fn tumbling_assignment_is_epoch_aligned_and_half_open() {
        let w = panes(10_000, 10_000);
        assert_eq!(w.starts(0).collect::<Vec<_>>(), [0]);
        assert_eq!(w.starts(9_999).collect::<Vec<_>>(), [0]);
        assert_eq!(w.starts(10_000).collect::<Vec<_>>(), [10_000]);
        assert_eq!(
            w.starts(1_764_000_012_345).collect::<Vec<_>>(),
            [1_764_000_010_000]
        );
        assert_eq!(w.starts(-1).collect::<Vec<_>>(), [-10_000]);
    }

    #[test]
    fn hopping_assignment_covers_every_window_holding_the_time() {
        let w = panes(10_000, 5_000);
        assert_eq!(w.starts(12_000).collect::<Vec<_>>(), [5_000, 10_000]);
        assert_eq!(w.starts(10_000).collect::<Vec<_>>(), [5_000, 10_000]);
        assert_eq!(w.starts(9_999).collect::<Vec<_>>(), [0, 5_000]);
        let w = panes(10_000, 3_000);
        // Windows [3k, 3k+10s) holding 10_000: starts 3_000, 6_000, 9_000.
        assert_eq!(w.starts(10_000).collect::<Vec<_>>(), [3_000, 6_000, 9_000]);
    }
}
