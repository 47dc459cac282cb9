//! OPC UA: subscribes to (or polls) nodes of OPC UA servers, turns each change set of a
//! node group into Arrow rows with a value, a quality, a status and two timestamps per
//! node, and writes rule results to writable nodes.
//!
//! - [`config`]: servers, security, identity, node groups and nodes; validation.
//! - [`pki`]: the gateway's application certificate and the trust list.
//! - [`connect`]: the client, endpoint selection and login.
//! - [`values`]: node types, variants to Arrow columns, JSON to variants for writes.
//! - [`rows`]: a group's columns and its change sets as rows.
//! - [`server`]: one server's session, subscriptions, read loops, counters and writes.
//! - [`schema`]: the groups' columns as streams declare them.
//! - [`sink`](mod@sink): rule results written to nodes.
//! - [`browse`]: the address space, printed for a person writing the config.

pub mod browse;
pub mod config;
pub mod connect;
pub mod pki;
pub mod rows;
pub mod schema;
pub mod server;
pub mod sink;
pub mod values;

pub use config::{GroupConfig, NodeConfig, OpcuaConfig, ServerConfig};
pub use pki::Pki;
pub use schema::groups;
pub use server::{OpcuaRow, OpcuaServer, ServerCounters, servers};
pub use sink::{OpcuaSink, OpcuaSinkConfig, OpcuaSinkCounters};
