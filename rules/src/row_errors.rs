//! Finding the rows of a micro-batch a plan fails on (a CAST that cannot convert one
//! value, say), so that the batch's other rows still produce their results.
//!
//! A batch that fails is halved, and each half run again, down to single rows: for a
//! few bad rows among many this costs a few runs per bad row. The runs spent on one
//! batch are bounded; past the bound, the rows not yet cleared count as failed.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;

use crate::query::CompiledQuery;

/// Most runs of the plan spent on one batch.
const MAX_RUNS: usize = 256;

/// What running a plan over a batch gave: the output of the rows that ran, and the rows
/// that failed, each with its error.
pub(crate) struct Isolated {
    pub out: Vec<RecordBatch>,
    pub failed: Vec<(usize, String)>,
}

/// Runs `query` over `batch`; if it fails, runs it over parts of the batch to leave out
/// only the rows it fails on. Output keeps the order of the rows.
pub(crate) async fn run_isolating(query: &CompiledQuery, batch: &RecordBatch) -> Result<Isolated> {
    let whole = query.run(vec![batch.clone()]).await;
    let mut last_error = match whole {
        Ok(out) => {
            return Ok(Isolated {
                out,
                failed: vec![],
            });
        }
        Err(e) => e.strip_backtrace(),
    };
    let n = batch.num_rows();
    let mut out = Vec::new();
    let mut failed = Vec::new();
    if n <= 1 {
        failed.extend((0..n).map(|i| (i, last_error.clone())));
        return Ok(Isolated { out, failed });
    }
    // Ranges still to run, the next one last.
    let mut ranges = vec![(n / 2, n - n / 2), (0, n / 2)];
    let mut runs = 1;
    while let Some((offset, len)) = ranges.pop() {
        if runs >= MAX_RUNS {
            failed.extend((offset..offset + len).map(|i| (i, last_error.clone())));
            continue;
        }
        runs += 1;
        match query.run(vec![batch.slice(offset, len)]).await {
            Ok(o) => out.extend(o),
            Err(e) if len == 1 => failed.push((offset, e.strip_backtrace())),
            Err(e) => {
                last_error = e.strip_backtrace();
                let half = len / 2;
                ranges.push((offset + half, len - half));
                ranges.push((offset, half));
            }
        }
    }
    Ok(Isolated { out, failed })
}
