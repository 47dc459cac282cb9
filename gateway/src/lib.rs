//! `fieldgate`: an IoT edge gateway in one binary; this library is that binary's
//! inside, also used by its benchmarks.
//!
//! Data flows through the modules in this order: [`broker`] (the embedded MQTT broker)
//! → [`journal`] (what it accepted, on disk before the PUBACK), and the Modbus pollers
//! and OPC UA subscriptions →
//! [`ingest`] (routing messages and poll rows to streams) →
//! [`live`] (a task per stream: decoding and the SQL rules, reloaded live) →
//! [`queue`] (durable, per sink) → [`uplink`] (delivery to the sinks). [`app`] wires
//! them; [`config`] reads the TOML configuration; [`admin`] serves the health probes,
//! metrics and REST API; [`logging`] writes the log; [`rules_cli`] holds the rule
//! author's offline tools; [`opcua_cli`] browses OPC UA servers and trusts their
//! certificates; [`simulate`] is a load generator; [`heap`] hands freed memory
//! back to the system.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod broker;
pub mod config;
pub mod heap;
pub mod ingest;
pub mod journal;
pub mod live;
pub mod logging;
pub mod opcua_cli;
pub mod probe;
pub mod queue;
pub mod rules_cli;
pub mod simulate;
pub mod uplink;

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves at `at`; never without one.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
