//! Windows: which rows of a stream are aggregated together, and when a window is
//! complete.
//!
//! Time windows (tumbling, hopping, sliding, session) run on the stream's event time and
//! are closed by its watermark; count windows run in arrival order.
//!
//! Tumbling and hopping windows are aggregated incrementally ([`IncrementalWindows`]):
//! rows are folded into partial aggregate state per pane and key as they arrive. The
//! other kinds, and aggregations that cannot be split (grouping sets, a DISTINCT
//! rewritten into two aggregation levels), keep their rows until the window closes
//! ([`WindowState`]): each turns rows into batches tagged with `window_start` and
//! `window_end`, which the rule's aggregate plan groups by.

mod count;
mod groups;
mod incremental;
mod session;
mod state;
mod time;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

pub(crate) use count::CountWindows;
pub(crate) use incremental::IncrementalWindows;
pub(crate) use session::SessionWindows;
pub(crate) use state::StateWindows;
pub(crate) use time::{PaneWindows, SlidingWindows};

use crate::watermark::Watermark;

/// A window declared in a rule's GROUP BY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows `[k·size, (k+1)·size)` in event time.
    Tumbling {
        /// Length of each window, in ms.
        size_ms: i64,
    },
    /// Windows of `size` starting every `slide`: `[k·slide, k·slide + size)`.
    Hopping {
        /// Length of each window, in ms.
        size_ms: i64,
        /// Time from one window's start to the next one's, in ms.
        slide_ms: i64,
    },
    /// One window per distinct event time `t`, covering `(t − size, t + delay]`,
    /// emitted when the watermark reaches `t + delay`.
    Sliding {
        /// How far before a row's time its window reaches, in ms.
        size_ms: i64,
        /// How far after a row's time its window reaches (and its emission waits), in ms.
        delay_ms: i64,
    },
    /// Per group key: rows closer than `gap` to each other form a session, which is
    /// also cut once it spans `max`.
    Session {
        /// A session is cut once it would span this long, in ms.
        max_ms: i64,
        /// Rows less than this far apart (in ms) belong to the same session.
        gap_ms: i64,
    },
    /// Every `slide` rows (in arrival order), a window of the last `size` rows.
    Count {
        /// Rows in each window.
        size: u64,
        /// Rows from the end of one window to the end of the next.
        slide: u64,
    },
    /// eKuiper's `STATEWINDOW(begin, end)` (or `STATEWINDOW(trigger)`, `single`): per
    /// group key, in arrival order, from a row meeting `begin` to one meeting `end`.
    State {
        /// One condition (`STATEWINDOW(trigger)`): each row meeting it ends the window
        /// held so far and begins the next.
        single: bool,
    },
}

impl WindowSpec {
    /// Whether the window is driven by event time (and needs a TIMESTAMP column).
    pub fn uses_time(&self) -> bool {
        !matches!(self, WindowSpec::Count { .. } | WindowSpec::State { .. })
    }

    /// Conditions the window evaluates per row (state windows' begin and end).
    pub fn conditions(&self) -> usize {
        match self {
            WindowSpec::State { single: true } => 1,
            WindowSpec::State { single: false } => 2,
            _ => 0,
        }
    }

    /// Whether the window needs the rule's group keys to form windows.
    pub fn per_key(&self) -> bool {
        matches!(self, WindowSpec::Session { .. } | WindowSpec::State { .. })
    }
}

/// Milliseconds in one unit of eKuiper's time-unit spelling (`ms`, `ss`, `mi`, `hh`, `dd`).
pub fn unit_millis(unit: &str) -> Option<i64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "ss" => 1_000,
        "mi" => 60_000,
        "hh" => 3_600_000,
        "dd" => 86_400_000,
        _ => return None,
    })
}

/// The open windows of one rule.
pub(crate) enum WindowState {
    Panes(PaneWindows),
    Sliding(SlidingWindows),
    Session(SessionWindows),
    Count(CountWindows),
    State(StateWindows),
}

/// Rows offered to a window state: the rule's filtered rows, their event times, and
/// (for per-key windows) a key per row.
pub(crate) struct Input<'a> {
    pub rows: &'a RecordBatch,
    pub times: &'a Int64Array,
    pub keys: Option<&'a [u64]>,
    /// The window's conditions per row (state windows), else empty.
    pub conditions: &'a [ArrayRef],
}

impl WindowState {
    pub fn new(spec: WindowSpec, tagged: SchemaRef) -> Self {
        match spec {
            WindowSpec::Tumbling { size_ms } => {
                Self::Panes(PaneWindows::new(size_ms, size_ms, tagged))
            }
            WindowSpec::Hopping { size_ms, slide_ms } => {
                Self::Panes(PaneWindows::new(size_ms, slide_ms, tagged))
            }
            WindowSpec::Sliding { size_ms, delay_ms } => {
                Self::Sliding(SlidingWindows::new(size_ms, delay_ms, tagged))
            }
            WindowSpec::Session { max_ms, gap_ms } => {
                Self::Session(SessionWindows::new(max_ms, gap_ms, tagged))
            }
            WindowSpec::Count { size, slide } => {
                Self::Count(CountWindows::new(size, slide, tagged))
            }
            WindowSpec::State { single } => Self::State(StateWindows::new(single, tagged)),
        }
    }

    /// Takes rows in; returns the indices of rows that were late, and the batches of any
    /// windows completed by the rows themselves (count windows).
    pub fn push(
        &mut self,
        input: Input<'_>,
        watermark: &Watermark,
    ) -> Result<(Vec<u32>, Vec<RecordBatch>), ArrowError> {
        match self {
            Self::Panes(w) => w.push(input, watermark).map(|l| (l, vec![])),
            Self::Sliding(w) => w.push(input, watermark).map(|l| (l, vec![])),
            Self::Session(w) => w.push(input, watermark).map(|l| (l, vec![])),
            Self::Count(w) => w.push(input).map(|done| (vec![], done)),
            Self::State(w) => w.push(input).map(|done| (vec![], done)),
        }
    }

    /// Tagged rows of every window the watermark completed; with `None`, of every open
    /// time window (the end of a finite input).
    pub fn close(&mut self, watermark: Option<&Watermark>) -> Result<Vec<RecordBatch>, ArrowError> {
        match self {
            Self::Panes(w) => w.close(watermark),
            Self::Sliding(w) => w.close(watermark),
            Self::Session(w) => w.close(watermark),
            Self::Count(_) | Self::State(_) => Ok(vec![]),
        }
    }

    /// Number of windows (or sessions, or buffered rows for count windows) held open.
    pub fn open(&self) -> usize {
        match self {
            Self::Panes(w) => w.open(),
            Self::Sliding(w) => w.open(),
            Self::Session(w) => w.open(),
            Self::Count(w) => w.open(),
            Self::State(w) => w.open(),
        }
    }
}

/// The rows at `indices`, with `window_start` and `window_end` columns appended.
pub(crate) fn tag(
    rows: &RecordBatch,
    indices: &[u32],
    start: i64,
    end: i64,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let taken = take_record_batch(rows, &UInt32Array::from(indices.to_vec()))?;
    let n = taken.num_rows();
    // Only the stream's columns: anything the rule's pre-filter added (keys) is dropped.
    let stream_cols = schema.fields().len() - 2;
    let mut columns: Vec<ArrayRef> = taken.columns()[..stream_cols].to_vec();
    columns.push(Arc::new(Int64Array::from_value(start, n)));
    columns.push(Arc::new(Int64Array::from_value(end, n)));
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(unit_millis("ss"), Some(1_000));
        assert_eq!(unit_millis("MI"), Some(60_000));
        assert_eq!(unit_millis("dd"), Some(86_400_000));
        assert_eq!(unit_millis("week"), None);
    }
}
