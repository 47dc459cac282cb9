//! Harness for fieldgate's end-to-end tests: the built `fieldgate` binary, a real
//! mosquitto as the cloud broker, a NATS JetStream cluster, and MQTT clients, all on loopback ports picked free
//! at run time. Every wait is bounded and fails the test with a message when it runs out.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub mod modbus_sim;
pub mod nats;
pub mod pki;
pub use modbus_sim::ModbusSim;

/// Appends MQTT's variable-length "remaining length" of `n` bytes.
pub fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// An MQTT packet: its first byte, the remaining length, the body.
pub fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    put_remaining_length(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

/// Appends an MQTT string: its length as two bytes, then its bytes.
pub fn put_mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Waits until something accepts connections on `port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {} failed", child.id());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real mosquitto broker playing the cloud, with persistence so that persistent
/// sessions (and the messages queued for them) survive a restart.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Further configuration lines (another listener, say).
    extra: String,
}

impl Mosquitto {
    fn binary() -> PathBuf {
        for p in [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ] {
            if Path::new(p).exists() {
                return PathBuf::from(p);
            }
        }
        panic!(
            "mosquitto is not installed: run scripts/test.sh, which installs it (apt-get install mosquitto)"
        );
    }

    /// Starts mosquitto on `port`, keeping its files in `dir`.
    pub fn start(port: u16, dir: &Path) -> Mosquitto {
        Self::start_with(port, dir, "")
    }

    /// Starts mosquitto on `port` with further configuration lines, e.g. a TLS listener.
    pub fn start_with(port: u16, dir: &Path, extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            child: None,
            extra: extra.to_string(),
        };
        m.restart();
        m
    }

    /// Starts the (stopped) broker again on the same port with the same persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        std::fs::create_dir_all(&self.dir).expect("mosquitto dir");
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n{}",
                self.port,
                self.dir.display(),
                self.extra
            ),
        )
        .expect("mosquitto config");
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).expect("mosquitto log");
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        wait_listening(self.port, "mosquitto");
    }

    /// Stops the broker (SIGTERM, so it saves its sessions) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, "TERM");
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The fieldgate binary built by `cargo build -p fieldgate` (or `FIELDGATE_BIN`).
pub fn fieldgate_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FIELDGATE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/fieldgate");
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p fieldgate` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Ports and files of one gateway under test.
pub struct GatewaySetup {
    pub dir: PathBuf,
    /// The broker's port: MQTT 3.1.1 and 5.
    pub mqtt_port: u16,
    pub admin_port: u16,
}

impl GatewaySetup {
    /// Writes a config whose sinks are `sinks_toml` and rules are `rules_sql`.
    pub fn new(dir: &Path, sinks_toml: &str, rules_sql: &str) -> GatewaySetup {
        Self::with_admin(dir, "", sinks_toml, rules_sql)
    }

    /// Like [`GatewaySetup::new`], with more keys (`admin_toml`) in the `[admin]` table.
    pub fn with_admin(
        dir: &Path,
        admin_toml: &str,
        sinks_toml: &str,
        rules_sql: &str,
    ) -> GatewaySetup {
        let s = GatewaySetup {
            dir: dir.to_path_buf(),
            mqtt_port: free_port(),
            admin_port: free_port(),
        };
        std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
        std::fs::write(dir.join("rules/rules.sql"), rules_sql).expect("rules file");
        std::fs::write(
            dir.join("fieldgate.toml"),
            format!(
                "gateway_id = \"gw-test\"\ndata_dir = \"data\"\nrules_dir = \"rules\"\n\
                 [broker]\nlisten = \"127.0.0.1:{}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{}\"\n{admin_toml}\n[ingest]\nbatch_delay = \"5ms\"\n\
                 [queue]\ndrain_timeout = \"1s\"\n{sinks_toml}",
                s.mqtt_port, s.admin_port
            ),
        )
        .expect("config file");
        s
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("fieldgate.toml")
    }

    /// Adds `lines` to the `[table]` of the written config (`broker`, `queue`, ...),
    /// which is added at the end when the config has none.
    pub fn add_to_table(&self, table: &str, lines: &str) {
        let path = self.config();
        let text = std::fs::read_to_string(&path).expect("config file");
        let header = format!("[{table}]\n");
        let text = match text.contains(&header) {
            true => text.replacen(&header, &format!("{header}{lines}\n"), 1),
            false => format!("{text}\n{header}{lines}\n"),
        };
        std::fs::write(&path, text).expect("config file");
    }
}

/// A tmpfs of a few MiB mounted on a directory, unmounted when dropped: a disk that
/// fills up. Tests run as root (as CI does); one that cannot mount fails, loudly.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created if missing).
    pub fn mount(dir: &Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8) runs");
        assert!(
            status.success(),
            "cannot mount a {mib} MiB tmpfs on {} (the full-disk tests need root): {status}",
            dir.display()
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills what is left of the disk with a file; returns its path (delete it to free
    /// the space again).
    pub fn fill(&self) -> PathBuf {
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler file");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.sync_all();
        p
    }

    /// Bytes free on the disk.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A device publishing with QoS 1 in the background, counting the PUBACKs it gets as
/// they come: for tests that watch devices being held back.
pub struct CountingPublisher {
    pub acked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingPublisher {
    /// Starts publishing `msgs`, in order, to the broker on `port`.
    pub fn start(port: u16, client_id: &str, msgs: Vec<(String, Vec<u8>)>) -> CountingPublisher {
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (client, mut eventloop) = device(port, client_id);
        let count = acked.clone();
        let total = msgs.len();
        let task = tokio::spawn(async move {
            let pump = tokio::spawn(async move {
                while count.load(std::sync::atomic::Ordering::SeqCst) < total {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => panic!("publisher connection failed: {e}"),
                    }
                }
            });
            for (topic, payload) in msgs {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = pump.await;
            let _ = client.disconnect().await;
        });
        CountingPublisher { acked, task }
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until every message was acknowledged, at most `timeout`; returns whether.
    pub async fn finish(self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.task)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A running fieldgate process.
pub struct Gateway {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the gateway and waits until `/readyz` answers 200.
    pub fn start(setup: &GatewaySetup) -> Gateway {
        Self::start_wrapped(setup, &[])
    }

    /// Starts the gateway through a wrapper command that execs it (`prlimit ... --`,
    /// say) and waits until `/readyz` answers 200.
    pub fn start_wrapped(setup: &GatewaySetup, wrapper: &[&str]) -> Gateway {
        let n = std::fs::read_dir(&setup.dir)
            .map(|d| d.count())
            .unwrap_or(0);
        let log = setup.dir.join(format!("fieldgate-{n}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(fieldgate_binary());
                c
            }
            None => Command::new(fieldgate_binary()),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(setup.config())
            .env(
                "RUST_LOG",
                std::env::var("FIELDGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("fieldgate starts");
        let g = Gateway {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(setup.admin_port, "/readyz") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "fieldgate not ready within 30 s; log:\n{}",
                g.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_listening(setup.mqtt_port, "fieldgate's MQTT listener");
        g
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the running gateway.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("gateway running"), signal);
    }

    /// Waits until the log has a line holding every one of `parts`; returns that line.
    pub async fn wait_log(&self, timeout: Duration, parts: &[&str]) -> String {
        let mut found = None;
        let held = eventually(timeout, || {
            found = self
                .log_text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string);
            found.is_some()
        })
        .await;
        assert!(
            held,
            "no log line with {parts:?} within {timeout:?}; log:\n{}",
            self.log_text()
        );
        found.unwrap_or_default()
    }

    /// Kills the gateway with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, "KILL");
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status, failing if it takes over `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("gateway running");
        send_signal(&c, "TERM");
        match wait_exit(&mut c, timeout) {
            Some(s) => s,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "fieldgate did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Status code of a plain HTTP GET on loopback, or `None` if nothing answered.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// One HTTP/1.1 request on loopback, with `Authorization: Bearer <token>` when given,
/// as a script would send it (a JSON content type on anything but GET): its status and
/// body. Panics when nothing answers.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let json = if method == "GET" {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    http_raw(
        port,
        method,
        path,
        &format!("Host: localhost\r\n{json}"),
        token,
    )
}

/// One HTTP/1.1 request with exactly the header lines given (each ending in `\r\n`),
/// plus the token when given: its status and body.
pub fn http_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("admin endpoint answers");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let length = if headers.to_ascii_lowercase().contains("content-length:") {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{headers}{auth}{length}Connection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {buf}"));
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The samples of a `/metrics` scrape: `name{labels}` (as exposed) to value.
pub fn scrape(port: u16, token: Option<&str>) -> HashMap<String, f64> {
    let (status, body) = http(port, "GET", "/metrics", token);
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {l}"));
            let v = match v {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {l}: {e}")),
            };
            (k.to_string(), v)
        })
        .collect()
}

/// A device's MQTT client: 100 QoS 1 publishes in flight, packets up to 1 MiB, a
/// keepalive long enough to outlast the broker holding it back.
fn device(port: u16, client_id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(opts, 200)
}

/// Publishes with QoS 1 over TCP and returns once every publish was acknowledged.
pub async fn publish_all(port: u16, client_id: &str, msgs: &[(String, Vec<u8>)]) {
    publish_all_within(port, client_id, msgs, Duration::from_secs(120)).await;
}

/// [`publish_all`], failing when the acknowledgements take longer than `limit`.
pub async fn publish_all_within(
    port: u16,
    client_id: &str,
    msgs: &[(String, Vec<u8>)],
    limit: Duration,
) {
    let (client, mut eventloop) = device(port, client_id);
    let total = msgs.len();
    let pump = tokio::spawn(async move {
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + limit;
        while acked < total {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher connection failed after {acked} acks: {e}"),
                Err(_) => panic!("only {acked} of {total} publishes acknowledged within {limit:?}"),
            }
        }
    });
    for (topic, payload) in msgs {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish queued");
    }
    pump.await.expect("publisher");
    let _ = client.disconnect().await;
}

/// Messages received by a [`Subscriber`], by topic.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A cloud-side subscriber with a persistent session: it reconnects on its own, and
/// the broker keeps its QoS 1 messages while it is away.
pub struct Subscriber {
    pub received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `port`, subscribes to `filter` and waits for the SUBACK.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let received: Received = Arc::default();
        let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut subacked_tx = Some(subacked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subacked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock()
                            .expect("lock")
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked)
            .await
            .expect("SUBACK within 10 s")
            .expect("subscriber running");
        Subscriber { received, task }
    }

    /// The received payloads parsed as JSON objects.
    pub fn json(&self) -> Vec<(String, serde_json::Value)> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|(t, p)| {
                let v = serde_json::from_slice(p).unwrap_or_else(|e| {
                    panic!(
                        "cloud got a payload that is not JSON ({e}): {}",
                        String::from_utf8_lossy(p)
                    )
                });
                (t.clone(), v)
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts values by key; for assertions on exact multisets.
pub fn counts<K: std::hash::Hash + Eq>(items: impl IntoIterator<Item = K>) -> HashMap<K, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// `mosquitto_sub` as the cloud application: an independent MQTT client with a
/// persistent session (`-c`), reconnecting by itself; every payload it prints is kept.
pub struct MosquittoSub {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl MosquittoSub {
    /// Subscribes to `filter` with QoS 1 as client `client_id`; waits until the broker
    /// holds the subscription (a probe message on the same filter comes back).
    pub fn start(port: u16, client_id: &str, filter: &str) -> MosquittoSub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-c"])
            .args(["-i", client_id, "-t", filter, "-t", "probe/mosquitto-sub"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs (scripts/test.sh installs mosquitto-clients when missing)");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = child.stdout.take().expect("stdout piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lock").push(line);
            }
        });
        let sub = MosquittoSub { child, lines };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sub.lines().iter().any(|l| l == "probe") {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not subscribe within 15 s"
            );
            let _ = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "probe/mosquitto-sub",
                ])
                .args(["-m", "probe"])
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
        sub
    }

    /// Every line received so far (probes included).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// The received payloads that are JSON objects.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("cloud got a payload that is not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stream of [`plant_readings`] and a rule `forward` sending every reading's device
/// and `n` to `sink`.
pub fn forward_rules(sink: &str) -> String {
    format!(
        "CREATE STREAM readings (device STRING, n BIGINT)\n\
         WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n\
         CREATE RULE forward INTO {sink} AS SELECT device, n FROM readings;\n"
    )
}

/// Readings `{"device": "m<n % devices>", "n": n}` on `plant/<device>/reading`, as the
/// `plant/+/reading` streams of the tests expect.
pub fn plant_readings(range: std::ops::Range<i64>, devices: i64) -> Vec<(String, Vec<u8>)> {
    range
        .map(|n| {
            let d = format!("m{}", n % devices.max(1));
            (
                format!("plant/{d}/reading"),
                format!(r#"{{"device":"{d}","n":{n}}}"#).into_bytes(),
            )
        })
        .collect()
}
