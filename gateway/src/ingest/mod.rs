//! Ingest: what comes in, on its way to the streams.
//!
//! - [`mqtt`]: the reader of the ingest journal (what the embedded broker accepted),
//!   routing messages to the streams whose topic filter matches, in micro-batches of raw
//!   payloads;
//! - [`modbus`]: the Modbus pollers, whose rows (already Arrow) go to the streams that
//!   read their poll group, and optionally out to the broker as JSON;
//! - [`opcua`]: the OPC UA servers, whose node groups' rows (already Arrow) go to the
//!   streams that read them.
//!
//! All read the same [`Route`] list, which a rules reload replaces. [`SourceGroups`]
//! refuses, when the rules load, a stream that names a Modbus or OPC UA group that is not
//! configured or a column its group does not have, with file:line:col.

pub mod modbus;
pub mod mqtt;
pub mod opcua;

use fieldgate_connectors::groups::Groups;
use fieldgate_rules::{RuleSet, SqlError, StreamDef};

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

/// The configured groups of the sources whose rows come typed.
#[derive(Debug, Clone)]
pub struct SourceGroups {
    /// Modbus poll groups.
    pub modbus: Groups,
    /// OPC UA node groups.
    pub opcua: Groups,
}

impl SourceGroups {
    /// The groups of a config.
    pub fn of(cfg: &crate::config::Config) -> anyhow::Result<SourceGroups> {
        let pollers = fieldgate_connectors::modbus::pollers(&cfg.modbus.source())?;
        let pollers: Vec<_> = pollers.into_iter().map(std::sync::Arc::new).collect();
        Ok(SourceGroups {
            modbus: fieldgate_connectors::modbus::groups(&pollers),
            opcua: fieldgate_connectors::opcua::groups(&cfg.opcua),
        })
    }

    /// Takes the streams that [`Groups::check`] refuses out of `set`, adding an error at
    /// each one's `DATASOURCE`. Their rules then fail for want of a stream.
    pub fn retain_known(&self, set: &mut RuleSet, errors: &mut Vec<SqlError>) {
        set.streams.retain(|s| match self.check(s) {
            Ok(()) => true,
            Err(message) => {
                errors.push(SqlError::new(&s.file, s.source_pos, message));
                false
            }
        });
    }

    /// Checks a stream against its group; MQTT streams pass.
    fn check(&self, stream: &StreamDef) -> Result<(), String> {
        match &stream.source {
            Source::Modbus { device, group } => {
                self.modbus
                    .check(&stream.name, device, group, &stream.schema)
            }
            Source::Opcua { server, group } => {
                self.opcua
                    .check(&stream.name, server, group, &stream.schema)
            }
            Source::Mqtt { .. } => Ok(()),
        }
    }
}

/// Where one stream's input goes.
#[derive(Clone)]
pub struct Route {
    /// The stream's name.
    pub stream: String,
    /// What the stream reads: an MQTT topic filter, a Modbus poll group or an OPC UA
    /// node group.
    pub source: Source,
    /// The stream's columns.
    pub schema: SchemaRef,
    /// The stream task's input.
    pub tx: mpsc::Sender<Input>,
}
