//! fieldgate's rule engine.
//!
//! Users write two kinds of statement in `.sql` files:
//!
//! ```sql
//! CREATE STREAM telemetry (device STRING, ts BIGINT, temp DOUBLE)
//!   WITH (DATASOURCE = 'sensors/+/telemetry', FORMAT = 'json',
//!         TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '5s');
//!
//! CREATE RULE avg_temp INTO cloud AS
//!   SELECT device, window_start, window_end, avg(temp) AS avg_temp
//!   FROM telemetry GROUP BY device, TUMBLINGWINDOW(ss, 10);
//! ```
//!
//! [`RuleSet`] parses files into [`StreamDef`]s and [`RuleDef`]s; [`RuleSet::build`] plans
//! every rule once (DataFusion) and groups rules into one [`StreamPipeline`] per stream.
//! A pipeline takes decoded Arrow batches of its stream, tracks the event-time
//! [`Watermark`], and returns [`RuleOutput`]s: result rows addressed to named sinks.
//!
//! The crate does no I/O beyond reading rule files, so it runs the same in the gateway,
//! in tests and in benchmarks.

#![warn(missing_docs)]

mod analytic;
mod counters;
mod engine;
mod error;
mod functions;
mod hits;
mod query;
mod reload;
mod row_errors;
mod rule_def;
mod ruleset;
mod sql;
mod stream_def;
mod table_def;
mod watermark;
mod window;

pub use counters::{LATENCY_BUCKETS_US, LatencyHistogram, LatencySnapshot};
pub use engine::{
    ERROR_COLUMN, LATE_REASON, NullFields, RuleCounters, RuleOutput, RunningRule, StreamPipeline,
    WINDOW_END, WINDOW_START, now_millis,
};
pub use error::{ExecError, Pos, SqlError};
pub use hits::HitFunctions;
pub use reload::{
    Applied, ReloadPlan, ReloadSummary, RuleSlot, StreamChange, apply as apply_rules,
    plan as plan_reload, same_rule, same_stream,
};
pub use rule_def::RuleDef;
pub use ruleset::{RuleSet, rule_files};
pub use sql::Dialect;
pub use stream_def::{EventTime, PayloadFormat, Source, StreamDef, TimeEncoding};
pub use table_def::{MAX_TABLE_BYTES, TableDef, TableFormat};
pub use watermark::Watermark;
pub use window::WindowSpec;

/// Arrow, as used by the engine, for callers that build or read batches.
pub use datafusion::arrow;
