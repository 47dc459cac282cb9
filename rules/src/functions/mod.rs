//! Scalar functions the rules have besides DataFusion's own, registered in every
//! rule's planning session.
//!
//! - [`clock`]: `now()`, `current_timestamp`, `current_date` and `current_time` read
//!   the clock for every batch. DataFusion folds them into constants when a query is
//!   planned, and a rule is planned once and runs for months.
//! - [`list_field`]: a struct field taken from every element of a list, for eKuiper's
//!   list projections (`friends[*]->first`).
//! - [`merge_agg`] and [`deduplicate`]: eKuiper's aggregates of whole objects.

mod clock;
mod deduplicate;
mod list_field;
mod merge_agg;

use datafusion::prelude::SessionContext;

pub(crate) use deduplicate::{DEDUP_ALL, DEDUP_LAST};
pub(crate) use list_field::LIST_FIELD;

/// Registers the functions in `ctx`, replacing DataFusion's of the same name.
pub(crate) fn register(ctx: &SessionContext) {
    for f in clock::functions() {
        ctx.register_udf(f);
    }
    ctx.register_udf(list_field::udf());
    ctx.register_udaf(merge_agg::udaf());
    for f in deduplicate::udafs() {
        ctx.register_udaf(f);
    }
}
