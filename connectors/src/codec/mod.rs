//! The JSON↔Arrow codec: device payloads screened ([`screen`]) and decoded into Arrow
//! rows of a declared stream ([`decode`]); rule results encoded as one JSON object per
//! row, with the message ids that make resends recognisable ([`encode`]).

mod decode;
mod encode;
mod screen;

pub use decode::{Decoded, JsonDecoder, Rejected};
pub use encode::{MESSAGE_ID_FIELD, MessageIds, json_array, json_rows};
pub use screen::{InputLimits, RejectReason, Screen};
