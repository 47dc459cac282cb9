//! eKuiper's state windows, in arrival order and per group key.
//!
//! - `STATEWINDOW(begin, end)`: rows are dropped until one meets `begin`; from that row
//!   on they are kept, and the row that meets `end` completes the window with itself in
//!   it.
//! - `STATEWINDOW(trigger)`: rows are dropped until one meets `trigger`; from then on,
//!   each row that meets it completes the window held so far (without itself) and
//!   starts the next one.
//!
//! `window_start` and `window_end` are the smallest and largest time of a window's rows.
//! A window still open at the end of a finite input is not emitted.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;

use super::{Input, tag};

/// The rows one key's open window holds, each a one-row slice, with their times.
type Held = Vec<(RecordBatch, i64)>;

pub(crate) struct StateWindows {
    /// One condition (a trigger) rather than begin and end.
    single: bool,
    schema: SchemaRef,
    open: HashMap<u64, Held>,
}

fn holds(c: Option<&ArrayRef>, i: usize) -> bool {
    c.and_then(|a| a.as_boolean_opt())
        .is_some_and(|b| b.is_valid(i) && b.value(i))
}

impl StateWindows {
    pub fn new(single: bool, schema: SchemaRef) -> Self {
        Self {
            single,
            schema,
            open: HashMap::new(),
        }
    }

    fn emit(&self, held: Held) -> Result<RecordBatch, ArrowError> {
        let (lo, hi) = held.iter().fold((i64::MAX, i64::MIN), |(lo, hi), (_, t)| {
            (lo.min(*t), hi.max(*t))
        });
        let batches: Vec<&RecordBatch> = held.iter().map(|(b, _)| b).collect();
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| ArrowError::InvalidArgumentError("empty state window".into()))?;
        let rows = concat_batches(&schema, batches)?;
        let idx: Vec<u32> = (0..rows.num_rows() as u32).collect();
        tag(&rows, &idx, lo, hi, &self.schema)
    }

    /// Takes rows in; returns the windows they completed, in the order they did.
    pub fn push(&mut self, input: Input<'_>) -> Result<Vec<RecordBatch>, ArrowError> {
        let (begin, end) = (input.conditions.first(), input.conditions.get(1));
        let mut done = Vec::new();
        for i in 0..input.rows.num_rows() {
            let key = input.keys.map_or(0, |k| k[i]);
            let row = (input.rows.slice(i, 1), input.times.value(i));
            let starts = holds(begin, i);
            if self.single {
                match self.open.remove(&key) {
                    Some(held) if starts => {
                        done.push(self.emit(held)?);
                        self.open.insert(key, vec![row]);
                    }
                    Some(mut held) => {
                        held.push(row);
                        self.open.insert(key, held);
                    }
                    None if starts => {
                        self.open.insert(key, vec![row]);
                    }
                    None => {}
                }
                continue;
            }
            let held = match self.open.remove(&key) {
                Some(mut held) => {
                    held.push(row);
                    held
                }
                None if starts => vec![row],
                None => continue,
            };
            if holds(end, i) {
                done.push(self.emit(held)?);
            } else {
                self.open.insert(key, held);
            }
        }
        Ok(done)
    }

    /// Rows held in open windows.
    pub fn open(&self) -> usize {
        self.open.values().map(Vec::len).sum()
    }
}
