//! Count windows, in arrival order.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use super::{Input, tag};

/// At every `slide`-th row (rows `slide`, `2·slide`, ...) that has `size` rows up to
/// it, a window of the last `size` rows, as eKuiper counts: `COUNTWINDOW(5, 2)` ends
/// windows at rows 6, 8, 10, ...
/// `window_start` and `window_end` are the smallest and largest time of its rows.
pub(crate) struct CountWindows {
    size: u64,
    slide: u64,
    schema: SchemaRef,
    /// Rows a future window may still need, and their times.
    buf: Option<(RecordBatch, Vec<i64>)>,
    /// Rows seen in all.
    total: u64,
}

impl CountWindows {
    pub fn new(size: u64, slide: u64, schema: SchemaRef) -> Self {
        Self {
            size,
            slide,
            schema,
            buf: None,
            total: 0,
        }
    }

    /// The first row count `c > after` at which a window ends.
    fn next_end(&self, after: u64) -> u64 {
        let first = self.size.div_ceil(self.slide) * self.slide;
        if after < first {
            return first;
        }
        (after / self.slide + 1) * self.slide
    }

    pub fn push(&mut self, input: Input<'_>) -> Result<Vec<RecordBatch>, ArrowError> {
        let times: Vec<i64> = input.times.iter().map(|t| t.unwrap_or(0)).collect();
        let (all, all_times) = match self.buf.take() {
            None => (input.rows.clone(), times),
            Some((b, mut t)) => {
                let all = concat_batches(&b.schema(), [&b, input.rows])?;
                t.extend(times);
                (all, t)
            }
        };
        let base = self.total + input.rows.num_rows() as u64 - all.num_rows() as u64;
        let new_total = self.total + input.rows.num_rows() as u64;
        let mut out = Vec::new();
        let mut end = self.next_end(self.total);
        while end <= new_total {
            let from = (end - self.size - base) as usize;
            let to = (end - base) as usize;
            let idx: Vec<u32> = (from as u32..to as u32).collect();
            let ts = &all_times[from..to];
            let (lo, hi) = (
                ts.iter().min().copied().unwrap_or(0),
                ts.iter().max().copied().unwrap_or(0),
            );
            out.push(tag(&all, &idx, lo, hi, &self.schema)?);
            end = self.next_end(end);
        }
        self.total = new_total;
        // Keep what the next window needs.
        let need_from = end.saturating_sub(self.size).max(base);
        let skip = (need_from - base) as usize;
        if skip < all.num_rows() {
            let kept = all.slice(skip, all.num_rows() - skip);
            self.buf = Some((kept, all_times[skip..].to_vec()));
        }
        Ok(out)
    }

    pub fn open(&self) -> usize {
        self.buf.as_ref().map_or(0, |(b, _)| b.num_rows())
    }
}
