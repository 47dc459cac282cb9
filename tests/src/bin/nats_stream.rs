//! `nats_stream`: the stream side of `scripts/bench-nats.sh`. Creates a JetStream
//! stream on a cluster, or reads one back and counts what it holds.
//!
//! ```text
//! nats_stream create --servers URL[,URL...] --stream NAME --subjects 'a.>' [--replicas 3]
//! nats_stream count  --servers URL[,URL...] --stream NAME
//! ```
//!
//! `count` prints one JSON object: the stream's messages, the results in them (a
//! message is one result or a JSON array of results) and the distinct `_msg_id`s.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use fieldgate_e2e::nats::{read_stream, stream_config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context("a command: create or count")?;
    let (mut servers, mut stream, mut subjects, mut replicas) =
        (String::new(), String::new(), String::new(), 3usize);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--servers" => servers = value,
            "--stream" => stream = value,
            "--subjects" => subjects = value,
            "--replicas" => replicas = value.parse().context("--replicas")?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if servers.is_empty() || stream.is_empty() {
        bail!("--servers and --stream are required");
    }
    let addrs: Vec<async_nats::ServerAddr> = servers
        .split(',')
        .map(|s| s.parse().with_context(|| format!("server {s}")))
        .collect::<anyhow::Result<_>>()?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .context("connect")?;
    let js = jetstream::new(client);
    match command.as_str() {
        "create" => {
            let config = stream_config(
                &stream,
                &[subjects.as_str()],
                replicas,
                Duration::from_secs(600),
            );
            js.create_stream(config).await.context("create stream")?;
        }
        "count" => {
            let c = read_stream(&js, &stream).await;
            println!(
                "{}",
                serde_json::json!({
                    "messages": c.messages,
                    "results": c.results.len(),
                    "distinct_ids": c.by_id.len(),
                })
            );
        }
        _ => bail!("unknown command {command}"),
    }
    Ok(())
}
