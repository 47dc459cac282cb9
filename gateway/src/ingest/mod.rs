//! Ingest: what comes in, on its way to the streams.
//!
//! - [`mqtt`]: the reader of the ingest journal (what the embedded broker accepted),
//!   routing messages to the streams whose topic filter matches, in micro-batches of raw
//!   payloads;
//! - [`modbus`]: the Modbus pollers, whose rows (already Arrow) go to the streams that
//!   read their poll group, and optionally out to the broker as JSON.
//!
//! Both read the same [`Route`] list, which a rules reload replaces.

pub mod modbus;
pub mod mqtt;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use fieldgate_rules::Source;
use tokio::sync::mpsc;

use crate::journal::Hold;

/// What a stream task is handed.
#[derive(Debug)]
pub enum Input {
    /// Raw MQTT payloads, decoded by the stream, and the holds that keep them in the
    /// journal until the stream has processed them.
    Payloads(Vec<Bytes>, Vec<Hold>),
    /// Rows already in the stream's schema.
    Rows(RecordBatch),
}

/// Where one stream's input goes.
#[derive(Clone)]
pub struct Route {
    /// The stream's name.
    pub stream: String,
    /// What the stream reads: an MQTT topic filter or a Modbus poll group.
    pub source: Source,
    /// The stream's columns.
    pub schema: SchemaRef,
    /// The stream task's input.
    pub tx: mpsc::Sender<Input>,
}
