//! Scalar functions the rules have besides DataFusion's own, registered in every
//! rule's planning session.
//!
//! - [`clock`]: `now()`, `current_timestamp`, `current_date` and `current_time` read
//!   the clock for every batch. DataFusion folds them into constants when a query is
//!   planned, and a rule is planned once and runs for months.
//! - [`list_field`]: a struct field taken from every element of a list, for eKuiper's
//!   list projections (`friends[*]->first`); [`list_where`]: the objects of a list
//!   that meet a comparison, for JSON path filters (`$[? @.age > 30]`).
//! - [`merge_agg`] and [`deduplicate`]: eKuiper's aggregates of whole objects.
//! - [`length`]: eKuiper's `length` and `array_cardinality`, of strings and lists.
//! - [`objects`]: eKuiper's functions of objects (`keys`, `object_pick`, ...), typed
//!   from the object's fields.
//! - [`text`] and [`to_json`]: eKuiper's functions that write values as text
//!   (`format`, `conv`, `sha1`, `crc32`, `to_json`), under internal names that only the
//!   eKuiper dialect's rewrite calls.

mod clock;
mod deduplicate;
mod length;
mod list_field;
mod list_where;
mod merge_agg;
mod objects;
mod text;
mod to_json;

use datafusion::prelude::SessionContext;

pub(crate) use deduplicate::{DEDUP_ALL, DEDUP_LAST};
pub(crate) use length::{LENGTH, PRESENT};
pub(crate) use list_field::LIST_FIELD;
pub(crate) use list_where::LIST_WHERE;
pub(crate) use objects::ObjectOp;
pub(crate) use text::{CONV, CRC32, FORMAT, SHA1};
pub(crate) use to_json::TO_JSON;

/// Registers the functions in `ctx`, replacing DataFusion's of the same name.
pub(crate) fn register(ctx: &SessionContext) {
    for f in clock::functions() {
        ctx.register_udf(f);
    }
    ctx.register_udf(list_field::udf());
    for f in length::udfs() {
        ctx.register_udf(f);
    }
    ctx.register_udf(list_where::udf());
    ctx.register_udaf(merge_agg::udaf());
    for f in deduplicate::udafs() {
        ctx.register_udaf(f);
    }
    for f in text::udfs() {
        ctx.register_udf(f);
    }
    ctx.register_udf(to_json::udf());
    for f in objects::udfs() {
        ctx.register_udf(f);
    }
}
