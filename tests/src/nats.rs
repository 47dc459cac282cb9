//! A real NATS JetStream cluster on loopback for the fleet tests: `nats-server`
//! processes (Debian's package) with client and route ports picked free, and the
//! official client to set up streams and read them back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::free_port;

/// One server of a [`NatsCluster`].
pub struct NatsNode {
    /// Its server name (`n1`, …).
    pub name: String,
    /// Its client port.
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    fn spawn(&mut self) {
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log.with_extension("err")).expect("stderr file"))
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    /// Whether its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its log, and what it wrote to stderr (a config it refused).
    pub fn log_text(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        read(&self.log) + &read(&self.log.with_extension("err"))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Servers clustered over routes on loopback, each with JetStream on its own disk.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

/// The `nats-server` binary: `NATS_SERVER` or the one on the path; fails loudly
/// without one (scripts/test.sh installs Debian's `nats-server`).
pub fn nats_server() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    for p in ["/usr/bin/nats-server", "/usr/sbin/nats-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nats-server is not installed: scripts/test.sh installs Debian's nats-server");
}

impl NatsCluster {
    /// Starts `n` servers under `dir` (one alone when `n` is 1) and waits until they
    /// listen. `extra` goes into every server's config (accounts, TLS, ...).
    pub fn start(dir: &Path, n: usize, extra: &str) -> NatsCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let cluster = match n {
                1 => String::new(),
                _ => format!(
                    "cluster {{\n  name: fg\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ),
            };
            let log = dir.join(format!("{name}.log"));
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 0\n\
                     log_file: \"{}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n\
                     {cluster}{extra}\n",
                    log.display(),
                    store.display()
                ),
            )
            .expect("nats config");
            nodes.push(NatsNode {
                name,
                port: *port,
                config,
                log,
                child: None,
            });
        }
        let mut c = NatsCluster { nodes };
        for i in 0..n {
            c.start_node(i);
        }
        c
    }

    /// The client URLs of all servers, for a sink's `servers`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    /// `servers = [...]` for a sink's TOML.
    pub fn servers_toml(&self) -> String {
        let list: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("servers = [{}]", list.join(", "))
    }

    /// Starts a stopped server again, on its ports and store.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.spawn();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not listen on port {} within 15 s:\n{}",
                node.name,
                node.port,
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a server with SIGKILL and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Index of the server whose name is `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// Every server's log, for a failed assertion.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_text()))
            .collect()
    }

    /// A client connected to the running servers.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.url().parse().expect("url"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(urls.clone())
                .await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("test client: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot connect to the NATS cluster: {e}\n{}", self.logs()),
            }
        }
    }

    /// Creates a stream (retrying while the cluster elects its meta leader) and returns
    /// a context on it.
    pub async fn create_stream(&self, config: stream::Config) -> jetstream::Context {
        let js = jetstream::new(self.client().await);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match js.create_stream(config.clone()).await {
                Ok(_) => return js,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("creating stream {}: {e}; trying again", config.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("cannot create stream {}: {e}\n{}", config.name, self.logs()),
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

/// A stream of `replicas` on `subjects` with a duplicate window of `window`.
pub fn stream_config(
    name: &str,
    subjects: &[&str],
    replicas: usize,
    window: Duration,
) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        num_replicas: replicas,
        duplicate_window: window,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// What a stream holds, read back message by message.
#[derive(Debug, Default)]
pub struct StreamContents {
    /// Messages in the stream.
    pub messages: u64,
    /// Results by their `_msg_id`: how often each is stored.
    pub by_id: HashMap<String, usize>,
    /// The results themselves (each with its `_msg_id`), in stream order, with their
    /// subjects.
    pub results: Vec<(String, serde_json::Value)>,
}

impl StreamContents {
    /// How often each reading number `n` is stored.
    pub fn readings(&self) -> HashMap<i64, usize> {
        let mut out = HashMap::new();
        for (_, r) in &self.results {
            if let Some(n) = r["n"].as_i64() {
                *out.entry(n).or_insert(0) += 1;
            }
        }
        out
    }
}

/// Reads every message of `stream` (objects and arrays of results alike), retrying
/// while the stream has no leader.
pub async fn read_stream(js: &jetstream::Context, name: &str) -> StreamContents {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut s = loop {
        match js.get_stream(name).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("stream {name}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("stream {name}: {e}"),
        }
    };
    // A reader of one replica in memory; after a server was lost, creating it may time
    // out while the cluster elects leaders.
    let consumer = loop {
        match s
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(60),
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            })
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reader consumer on {name}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("reader consumer on {name}: {e}"),
        }
    };
    let total = s.info().await.expect("stream info").state.messages;
    let mut out = StreamContents {
        messages: total,
        ..Default::default()
    };
    let mut read = 0u64;
    while read < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            got += 1;
            let subject = m.subject.to_string();
            let value: serde_json::Value =
                serde_json::from_slice(&m.payload).expect("stored payload is JSON");
            let rows = match value {
                serde_json::Value::Array(rows) => rows,
                v => vec![v],
            };
            for r in rows {
                let id = r["_msg_id"].as_str().unwrap_or("").to_string();
                *out.by_id.entry(id).or_insert(0) += 1;
                out.results.push((subject.clone(), r));
            }
        }
        assert!(
            got > 0,
            "stream {name}: read {read} of {total} messages, then nothing"
        );
        read += got;
    }
    out
}

/// A plain (core NATS) subscriber: it sees every message published, the resends that
/// the stream drops as duplicates included.
pub struct CoreSubscriber {
    /// The `Nats-Msg-Id` and result count of every message received, in order.
    pub ids: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CoreSubscriber {
    /// Subscribes to `subject` and waits until the servers have the subscription.
    pub async fn start(cluster: &NatsCluster, subject: &str) -> CoreSubscriber {
        let client = cluster.client().await;
        let mut sub = client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = ids.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let rows = match serde_json::from_slice(&m.payload) {
                    Ok(serde_json::Value::Array(rows)) => rows.len(),
                    _ => 1,
                };
                into.lock().expect("ids").push((id, rows));
            }
        });
        CoreSubscriber { ids, task }
    }

    /// How many messages arrived.
    pub fn count(&self) -> usize {
        self.ids.lock().expect("ids").len()
    }

    /// Messages from the `from`-th on whose id arrived before (the resends among them),
    /// and the results they held.
    pub fn repeats_since(&self, from: usize) -> (usize, usize) {
        let ids = self.ids.lock().expect("ids");
        let from = from.min(ids.len());
        let mut seen: std::collections::HashSet<&str> =
            ids[..from].iter().map(|(id, _)| id.as_str()).collect();
        let repeats: Vec<usize> = ids[from..]
            .iter()
            .filter(|(id, _)| !seen.insert(id.as_str()))
            .map(|(_, rows)| *rows)
            .collect();
        (repeats.len(), repeats.iter().sum())
    }
}

impl Drop for CoreSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The name of the server leading `stream`'s replicas, once it has one.
pub async fn stream_leader(js: &jetstream::Context, stream: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "stream {stream} has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Messages in `stream` now (0 while it cannot be asked).
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// Decentralised auth as `nsc` sets it up, made here: an operator, an account with
/// JetStream, and a user of it. Writes the user's credentials file to `creds` and
/// returns the server config lines that trust the operator and know the account.
pub fn operator_mode(creds: &Path) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let jwt = |issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value| {
        let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = serde_json::json!({
            "jti": format!("{name}-{now}"), "iat": now, "iss": issuer.public_key(),
            "name": name, "sub": subject, "nats": nats,
        });
        let body = b64(claims.to_string().as_bytes());
        let signed = format!("{header}.{body}");
        let sig = issuer.sign(signed.as_bytes()).expect("signs");
        format!("{signed}.{}", b64(&sig))
    };
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "fleet-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "fleet",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1, "mem_storage": -1,
                       "disk_storage": -1, "streams": -1, "consumer": -1},
            "type": "account", "version": 2,
        }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "gw1",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                           "type": "user", "version": 2}),
    );
    std::fs::write(
        creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("seed")
        ),
    )
    .expect("credentials file");
    format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
        account.public_key(),
        sys = system.public_key(),
    )
}
