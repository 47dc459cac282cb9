//! The gateway's TOML configuration, with the embedded default used when no file is
//! given. Unknown keys and bad values are errors that name the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fieldgate_connectors::codec::InputLimits;
use fieldgate_connectors::file::FileSinkConfig;
use fieldgate_connectors::http::HttpSinkConfig;
use fieldgate_connectors::modbus::ModbusSinkConfig;
use fieldgate_connectors::modbus::{DeviceConfig, ModbusConfig, Transport};
use fieldgate_connectors::mqtt::MqttSinkConfig;
use fieldgate_connectors::nats::NatsSinkConfig;
use fieldgate_connectors::opcua::config::Identity;
use fieldgate_connectors::opcua::{OpcuaConfig, OpcuaSinkConfig};
use fieldgate_connectors::republish::RepublishSinkConfig;
use serde::Deserialize;

use crate::queue::{OnFull, QueueLimits, QueueOptions};

/// The configuration `fieldgate run` uses without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this gateway in message topics and client ids.
    #[serde(default = "default_gateway_id")]
    pub gateway_id: String,
    /// Where the durable queues live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Directory of `.sql` rule files.
    pub rules_dir: PathBuf,
    /// `[broker]`: the embedded MQTT broker.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// `[admin]`: the admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[log]`: the log level.
    #[serde(default)]
    pub log: LogConfig,
    /// `[ingest]`: micro-batching and the limits of a payload.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[journal]`: the ingest journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// `[queue]`: the durable queues in front of the sinks.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Modbus devices to poll.
    #[serde(default)]
    pub modbus: ModbusSection,
    /// OPC UA servers to subscribe to and poll.
    #[serde(default)]
    pub opcua: OpcuaConfig,
    /// Named sinks that rules send to.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// The smallest `broker.max_payload_size`: room for any CONNECT a device sends.
pub const MIN_PACKET_SIZE: usize = 1024;

/// Whether two listen addresses take the same port on a common address.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The embedded MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// The MQTT listener: 3.1, 3.1.1 and 5 on one port.
    pub listen: Option<SocketAddr>,
    /// Replaced by `listen`, which serves MQTT 5 too; refused with a message saying so.
    pub listen_v5: Option<SocketAddr>,
    /// An MQTT listener over TLS.
    pub tls: Option<BrokerTlsConfig>,
    /// Clients without a username. Unset: allowed only when every listener is on
    /// loopback.
    pub allow_anonymous: Option<bool>,
    /// Users and password hashes, one `user:hash` a line (mosquitto's `$7$` lines or
    /// `fieldgate passwd`'s argon2id lines).
    pub password_file: Option<PathBuf>,
    /// Access rules in mosquitto's ACL syntax; reloaded on SIGHUP and when it changes.
    pub acl_file: Option<PathBuf>,
    /// When a QoS 1/2 PUBLISH is acknowledged.
    pub ack: AckMode,
    /// Client connections open at once (default 10000); a CONNECT past it is refused.
    /// Also the most sessions held, offline persistent ones included.
    pub max_connections: usize,
    /// Largest MQTT packet a device may send (its payload, topic and header), in bytes.
    pub max_payload_size: usize,
    /// In-flight QoS 1/2 messages per client (receive maximum).
    pub max_inflight: usize,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest topic name or filter, in bytes, and most levels in one.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter (default 32).
    pub max_topic_levels: usize,
    /// Subscriptions one client may hold (0: no limit).
    pub max_subscriptions: usize,
    /// Longest client id, in bytes.
    pub max_client_id_length: usize,
    /// Largest keepalive a client may ask for: an MQTT 5 client asking for more is given
    /// this one, an MQTT 3.1.1 client is refused.
    pub max_keepalive: u16,
    /// How long a persistent session outlives its connection: an MQTT 3.1.1 session
    /// (clean session 0) ends after it, an MQTT 5 client asking for longer gets this.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
}

/// When the broker acknowledges a QoS 1/2 PUBLISH.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Once the message is in the journal on disk.
    #[default]
    Durable,
    /// At once; the journal writes it within a commit (a crash can lose the messages of
    /// the last commit, a few milliseconds).
    Received,
}

/// A TLS listener of the embedded broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// Address of the TLS listener; required.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they signed
    /// (mutual TLS), and its common name is the client's username.
    pub client_ca: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            listen_v5: None,
            tls: None,
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            ack: AckMode::Durable,
            max_connections: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight: 100,
            connect_timeout: Duration::from_secs(10),
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions: 100,
            max_client_id_length: 256,
            max_keepalive: u16::MAX,
            session_expiry: Duration::from_secs(2 * 60 * 60),
        }
    }
}

impl BrokerConfig {
    /// The broker's listen addresses.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen
            .into_iter()
            .chain(self.tls.as_ref().map(|t| t.listen))
    }

    /// Whether clients without a username may connect.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or_else(|| self.addresses().all(|a| a.ip().is_loopback()))
    }
}

/// The ingest journal, under `data_dir/journal`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Most bytes of accepted messages not yet processed; devices wait beyond it.
    pub max_bytes: u64,
    /// Size of one journal file.
    pub segment_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The admin HTTP endpoint.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the endpoint (default 127.0.0.1:9180); off loopback it needs `token` or
    /// `token_env`.
    pub listen: SocketAddr,
    /// Bearer token `/metrics` and `/api` require. Needed when `listen` is not loopback.
    pub token: Option<String>,
    /// The name of an environment variable holding the token instead.
    pub token_env: Option<String>,
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Names besides the admin address and loopback that the `Host` header may carry
    /// (the box's DNS name, say).
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .field("max_connections", &self.max_connections)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            token: None,
            token_env: None,
            max_connections: 64,
            allowed_hosts: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// The token, read from the environment when `token_env` names a variable.
    pub fn resolve_token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_env) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Ok(Some(t)),
                _ => bail!("key `admin.token_env`: environment variable `{var}` is not set"),
            },
            (None, None) => Ok(None),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter (`info`, `debug`, `info,fieldgate::queue=debug`); `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// How messages are batched before decoding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Messages per micro-batch, at most.
    pub batch_rows: usize,
    /// Longest a message waits for more to join its micro-batch. 0 (the default): a
    /// batch goes as soon as the broker has nothing more ready, so batches are as large
    /// as the load makes them and no message waits on a timer.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Deepest nesting of objects and arrays a payload may have (its object is level 1).
    pub max_depth: usize,
    /// Longest string in a payload, in bytes.
    pub max_string_bytes: usize,
    /// Most elements of an array in a payload.
    pub max_array_items: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let limits = InputLimits::default();
        Self {
            batch_rows: 4096,
            batch_delay: Duration::ZERO,
            max_depth: limits.max_depth,
            max_string_bytes: limits.max_string_bytes,
            max_array_items: limits.max_array_items,
        }
    }
}

/// Deepest nesting `ingest.max_depth` may allow: the decoder behind the screen
/// recurses into nested values.
pub const MAX_DEPTH_LIMIT: usize = 256;

impl Config {
    /// What a payload may be: `[ingest]`'s limits, and the broker's largest payload.
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_payload_bytes: self.broker.max_payload_size,
            max_depth: self.ingest.max_depth,
            max_string_bytes: self.ingest.max_string_bytes,
            max_array_items: self.ingest.max_array_items,
        }
    }
}

/// Durable queue settings, shared by all sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Extra time an append waits for others to share its fsync. The default, 0, needs
    /// no waiting to group: appends that arrive while a commit syncs share the next one
    /// (`docs/benchmarks.md` measured 0 faster than 5 ms for one producer and for four).
    #[serde(with = "humantime_serde")]
    pub commit_delay: Duration,
    /// redb cache per queue, in bytes.
    pub cache_bytes: usize,
    /// Time the uplink gets on shutdown to deliver what is queued.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest size of each sink's queue in bytes (default 1 GiB).
    pub max_bytes: Option<u64>,
    /// What a full queue does: `drop_oldest` (default) or `reject_new`.
    pub on_full: OnFull,
    /// Results older than this are dropped from the queue (default: never).
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Free space the queues leave on the file system of `data_dir`: there, a queue
    /// stops growing and its on-full policy applies, before the disk is full. Default:
    /// 5% of the file system, at most 64 MiB. 0 turns the reserve off.
    pub min_free_bytes: Option<u64>,
    /// Limits for one sink's queue, replacing `max_bytes`, `on_full` and `ttl`:
    /// `[queue.sinks.NAME]`.
    pub sinks: BTreeMap<String, QueueLimits>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            commit_delay: Duration::ZERO,
            cache_bytes: 4 * 1024 * 1024,
            drain_timeout: Duration::from_secs(2),
            max_bytes: Some(1024 * 1024 * 1024),
            on_full: OnFull::DropOldest,
            ttl: None,
            min_free_bytes: None,
            sinks: BTreeMap::new(),
        }
    }
}

impl QueueConfig {
    /// The options of the named sink's queue.
    pub fn options(&self, sink: &str) -> QueueOptions {
        QueueOptions {
            commit_delay: self.commit_delay,
            cache_bytes: self.cache_bytes,
            limits: self.limits(sink),
            min_free_bytes: self.min_free_bytes,
        }
    }

    /// The limits of the named sink's queue.
    pub fn limits(&self, sink: &str) -> QueueLimits {
        self.sinks.get(sink).copied().unwrap_or(QueueLimits {
            max_bytes: self.max_bytes,
            on_full: self.on_full,
            ttl: self.ttl,
        })
    }
}

/// The Modbus source: `[modbus]` and its `[[modbus.devices]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusSection {
    /// Also publish every poll row as a JSON object to the embedded broker.
    pub republish: bool,
    /// Topic of republished rows; `{device}` and `{group}` are replaced.
    pub republish_topic: String,
    /// The devices; see `docs/connectors.md`.
    pub devices: Vec<DeviceConfig>,
}

impl Default for ModbusSection {
    fn default() -> Self {
        Self {
            republish: false,
            republish_topic: "modbus/{device}/{group}".into(),
            devices: Vec::new(),
        }
    }
}

impl ModbusSection {
    /// The devices as the pollers take them.
    pub fn source(&self) -> ModbusConfig {
        ModbusConfig {
            devices: self.devices.clone(),
        }
    }
}

/// One named sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// Publishes to an MQTT broker off the box (the cloud), over TCP or TLS
    /// (`type = "mqtt"`).
    Mqtt(Box<MqttSinkConfig>),
    /// POSTs batches of results to an HTTP endpoint (`type = "http"`).
    Http(Box<HttpSinkConfig>),
    /// Publishes to a NATS JetStream stream, exactly once in the stream
    /// (`type = "nats"`).
    Nats(Box<NatsSinkConfig>),
    /// Appends results to a file as JSON lines (`type = "file"`).
    File(FileSinkConfig),
    /// Writes results to the tags of Modbus devices (`type = "modbus"`).
    Modbus(ModbusSinkConfig),
    /// Writes results to the nodes of OPC UA servers (`type = "opcua"`).
    Opcua(OpcuaSinkConfig),
    /// Publishes to the embedded broker, for applications on the box.
    Republish(RepublishSinkConfig),
}

fn default_gateway_id() -> String {
    "fieldgate".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Config {
    /// Reads the files the sinks name (TLS certificates and keys, NATS credentials) as
    /// the sinks do at start; the error names the sink's key and the file.
    pub fn check_sink_files(&self) -> anyhow::Result<()> {
        for (name, sink) in &self.sinks {
            let r = match sink {
                SinkConfig::Mqtt(m) => m.tls.as_ref().map_or(Ok(()), |t| {
                    t.client_config().map(drop).map_err(|e| e.to_string())
                }),
                SinkConfig::Nats(n) => n.check_files().map_err(|e| e.to_string()),
                _ => Ok(()),
            };
            r.map_err(|e| anyhow::anyhow!("key `sinks.{name}`: {e}"))?;
        }
        Ok(())
    }

    /// Reads a config file; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded default; its relative paths are taken from the working directory.
    pub fn embedded() -> anyhow::Result<Config> {
        Self::parse(DEFAULT_CONFIG, "<embedded default config>", Path::new(""))
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, base: &Path) -> anyhow::Result<Config> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.check().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.data_dir = base.join(&cfg.data_dir);
        cfg.rules_dir = base.join(&cfg.rules_dir);
        let b = &mut cfg.broker;
        for p in [&mut b.password_file, &mut b.acl_file]
            .into_iter()
            .flatten()
        {
            *p = base.join(&*p);
        }
        if let Some(t) = &mut b.tls {
            t.cert = base.join(&t.cert);
            t.key = base.join(&t.key);
            if let Some(ca) = &mut t.client_ca {
                *ca = base.join(&*ca);
            }
        }
        for sink in cfg.sinks.values_mut() {
            match sink {
                SinkConfig::File(f) => f.path = base.join(&f.path),
                SinkConfig::Mqtt(m) => {
                    if let Some(tls) = &mut m.tls {
                        tls.rebase(base);
                    }
                }
                SinkConfig::Http(h) => h.rebase(base),
                SinkConfig::Nats(n) => n.rebase(base),
                SinkConfig::Modbus(_) | SinkConfig::Opcua(_) | SinkConfig::Republish(_) => {}
            }
        }
        // Serial ports as other paths: `/dev/ttyUSB0` stays, `ports/meter` is the
        // config's.
        for d in &mut cfg.modbus.devices {
            if let Transport::Rtu { path, .. } = &mut d.transport
                && Path::new(path.as_str()).is_relative()
            {
                *path = base.join(&*path).to_string_lossy().into_owned();
            }
        }
        for s in &mut cfg.opcua.servers {
            if let Identity::X509 {
                certificate,
                private_key,
            } = &mut s.identity
            {
                *certificate = base.join(&*certificate);
                *private_key = base.join(&*private_key);
            }
        }
        Ok(cfg)
    }

    /// Every address the gateway listens on, with its key.
    fn listeners(&self) -> [(&'static str, Option<SocketAddr>); 3] {
        [
            ("broker.listen", self.broker.listen),
            (
                "broker.tls.listen",
                self.broker.tls.as_ref().map(|t| t.listen),
            ),
            ("admin.listen", Some(self.admin.listen)),
        ]
    }

    /// What only this machine can tell: the listen addresses are free and the serial
    /// devices exist. `run` makes these checks at start, and `validate` unless told it
    /// runs elsewhere (`--offline`). Errors name the key.
    pub fn check_host(&self) -> anyhow::Result<()> {
        for (key, addr) in self.listeners() {
            let Some(addr) = addr else { continue };
            if let Err(e) = std::net::TcpListener::bind(addr) {
                bail!("key `{key}`: cannot listen on {addr}: {e} (is another fieldgate running?)");
            }
        }
        for (i, d) in self.modbus.devices.iter().enumerate() {
            if let Transport::Rtu { path, .. } = &d.transport
                && !Path::new(path).exists()
            {
                bail!(
                    "key `modbus.devices[{i}].transport.path` (device `{}`): serial device {path} does not exist",
                    d.name
                );
            }
        }
        Ok(())
    }

    /// Who may connect to the broker: off loopback, only clients that authenticate.
    fn check_access(&self) -> anyhow::Result<()> {
        let b = &self.broker;
        let mutual_tls = b.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !b.anonymous_allowed() && b.password_file.is_none() && !mutual_tls {
            bail!(
                "key `broker`: a listener is reachable from other hosts and anonymous clients \
                 are refused there, so set `broker.password_file` (see `fieldgate passwd`) or \
                 `broker.tls.client_ca`; `allow_anonymous = true` lets anyone on the network in"
            );
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        let id_ok = !self.gateway_id.is_empty()
            && self
                .gateway_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            bail!(
                "key `gateway_id`: {:?} must be non-empty letters, digits, `-`, `_` or `.`",
                self.gateway_id
            );
        }
        if let Err(e) = crate::logging::check_level(&self.log.level) {
            bail!(
                "key `log.level`: {:?} is not a level or filter: {e}",
                self.log.level
            );
        }
        let a = &self.admin;
        if a.token.is_some() && a.token_env.is_some() {
            bail!("keys `admin.token` and `admin.token_env`: set one, not both");
        }
        if a.token.as_deref() == Some("") {
            bail!("key `admin.token` is empty");
        }
        if !a.listen.ip().is_loopback() && a.token.is_none() && a.token_env.is_none() {
            bail!(
                "key `admin.listen`: {} is reachable from other hosts, so `admin.token` or \
                 `admin.token_env` must be set (the API can stop rules)",
                a.listen
            );
        }
        if a.max_connections == 0 {
            bail!("key `admin.max_connections` must be at least 1");
        }
        let b = &self.broker;
        if let Some(addr) = b.listen_v5 {
            bail!(
                "key `broker.listen_v5` ({addr}) is gone: `broker.listen` serves MQTT 3.1.1 and 5 \
                 on one port; remove `listen_v5`"
            );
        }
        if b.listen.is_none() && b.tls.is_none() {
            bail!("key `broker`: set `listen` or `tls`");
        }
        self.check_access()?;
        let listeners = self.listeners();
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr else { continue };
            for (other, o) in &listeners[..i] {
                if o.is_some_and(|o| clash(o, *addr)) {
                    bail!(
                        "keys `{other}` and `{key}`: both listen on {addr}; give each its own port"
                    );
                }
            }
        }
        // Every packet, CONNECT included, is held to this size.
        if b.max_payload_size < MIN_PACKET_SIZE {
            bail!(
                "key `broker.max_payload_size` must be at least {MIN_PACKET_SIZE} bytes: it bounds \
                 every MQTT packet a device sends, CONNECT included"
            );
        }
        if b.max_connections == 0 {
            bail!("key `broker.max_connections` must be at least 1");
        }
        if !(1..=usize::from(u16::MAX)).contains(&b.max_inflight) {
            bail!("key `broker.max_inflight` must be 1 to 65535");
        }
        if b.connect_timeout.is_zero() || b.connect_timeout > Duration::from_millis(u16::MAX.into())
        {
            bail!("key `broker.connect_timeout` must be positive and at most 65s");
        }
        if b.max_topic_length == 0 || b.max_topic_length > usize::from(u16::MAX) {
            bail!("key `broker.max_topic_length` must be 1 to 65535");
        }
        if b.max_topic_levels == 0 {
            bail!("key `broker.max_topic_levels` must be at least 1");
        }
        if b.max_client_id_length < 23 {
            bail!("key `broker.max_client_id_length` must be at least 23 (MQTT's own minimum)");
        }
        if b.max_keepalive == 0 {
            bail!("key `broker.max_keepalive` must be at least 1 second");
        }
        if b.session_expiry < Duration::from_secs(1)
            || b.session_expiry > Duration::from_secs(u32::MAX.into())
        {
            bail!("key `broker.session_expiry` must be 1s to 136 years (MQTT's 2^32 - 1 seconds)");
        }
        let j = &self.journal;
        let least = 2 * b.max_payload_size as u64 + 2 * u64::from(u16::MAX);
        if j.max_bytes < least {
            bail!(
                "key `journal.max_bytes` must be at least {least} bytes: twice the largest \
                 message (`broker.max_payload_size`) with its topic"
            );
        }
        if j.segment_bytes < 4096 {
            bail!("key `journal.segment_bytes` must be at least 4096");
        }
        if self.ingest.batch_rows == 0 {
            bail!("key `ingest.batch_rows` must be positive");
        }
        if !(1..=MAX_DEPTH_LIMIT).contains(&self.ingest.max_depth) {
            bail!("key `ingest.max_depth` must be 1 to {MAX_DEPTH_LIMIT}");
        }
        if self.ingest.max_string_bytes == 0 || self.ingest.max_array_items == 0 {
            bail!("keys `ingest.max_string_bytes` and `ingest.max_array_items` must be positive");
        }
        for (name, sink) in &self.sinks {
            let valid_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                bail!("key `sinks.{name}`: sink names are letters, digits and `_`");
            }
            let r = match sink {
                SinkConfig::Mqtt(m) => m.validate(),
                SinkConfig::Http(h) => h.validate(),
                SinkConfig::Nats(n) => n.validate(),
                SinkConfig::File(f) => f.validate(),
                SinkConfig::Republish(r) => r.validate(),
                SinkConfig::Modbus(m) => m.validate().and_then(|()| match &m.device {
                    Some(d) if !self.modbus.devices.iter().any(|x| &x.name == d) => {
                        Err(format!("device `{d}` is not a [[modbus.devices]] entry"))
                    }
                    _ => Ok(()),
                }),
                SinkConfig::Opcua(o) => o.validate().and_then(|()| match &o.server {
                    Some(s) if !self.opcua.servers.iter().any(|x| &x.name == s) => {
                        Err(format!("server `{s}` is not an [[opcua.servers]] entry"))
                    }
                    _ => Ok(()),
                }),
            };
            r.map_err(|e| anyhow::anyhow!("key `sinks.{name}`: {e}"))?;
        }
        self.modbus
            .source()
            .validate()
            .map_err(|e| anyhow::anyhow!("key `modbus.devices`: {e}"))?;
        self.opcua
            .validate()
            .map_err(|e| anyhow::anyhow!("key `opcua.servers`: {e}"))?;
        let topic = &self.modbus.republish_topic;
        if topic.is_empty() || topic.contains(['+', '#']) {
            bail!("key `modbus.republish_topic`: {topic:?} must be a topic name without wildcards");
        }
        for name in self.queue.sinks.keys() {
            if !self.sinks.contains_key(name) {
                bail!("key `queue.sinks.{name}`: there is no sink `{name}`");
            }
        }
        let limits = std::iter::once(("queue".to_string(), self.queue.limits(""))).chain(
            self.queue
                .sinks
                .iter()
                .map(|(n, l)| (format!("queue.sinks.{n}"), *l)),
        );
        for (key, l) in limits {
            if l.max_bytes.is_some_and(|m| m < 4096) {
                bail!("key `{key}.max_bytes` must be at least 4096");
            }
            if l.ttl.is_some_and(|t| t.is_zero()) {
                bail!("key `{key}.ttl` must be positive");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.broker.listen, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.admin.listen, "127.0.0.1:9180".parse().unwrap());
        assert!(c.sinks.contains_key("local"));
        assert_eq!(c.rules_dir, PathBuf::from("configs/rules"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let base = Path::new("/etc/fg");
        let e = Config::parse("rules_dir = 'r'\nbogus = 1\n", "gw.toml", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gw.toml") && e.contains("bogus"), "{e}");
        let e = Config::parse(
            "rules_dir = 'r'\n[ingest]\nbatch_delay = 'soon'\n",
            "gw.toml",
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gw.toml") && e.contains("batch_delay"), "{e}");
        let e = Config::parse(
            "rules_dir = 'r'\n[sinks.cloud]\ntype = 'mqtt'\nhost = 'h'\nqos = 2\n",
            "gw.toml",
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("qos"), "{e}");
        let e = Config::parse(
            "rules_dir = 'r'\n[sinks.x]\ntype = 'kafka'\n",
            "gw.toml",
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kafka"), "{e}");
    }

    #[test]
    fn the_readme_example_config_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\ngateway_id")
            .expect("README has the example config")
            + 8;
        let len = readme[start..].find("```").expect("closing fence");
        let c = Config::parse(
            &readme[start..start + len],
            "README.md",
            Path::new("/etc/fg"),
        )
        .unwrap();
        assert_eq!(c.sinks.len(), 4);
        assert_eq!(c.admin.token_env.as_deref(), Some("FIELDGATE_ADMIN_TOKEN"));
    }

    #[test]
    fn the_connector_reference_examples_are_valid() {
        let doc = include_str!("../../docs/connectors.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 5, "{blocks:?}");
        let text = format!("rules_dir = 'r'\n{}", blocks.join("\n"));
        let c = Config::parse(&text, "docs/connectors.md", Path::new("")).unwrap();
        assert_eq!(c.modbus.devices.len(), 2);
        assert!(matches!(c.sinks["press_ctl"], SinkConfig::Modbus(_)));
        assert!(matches!(&c.sinks["cloud"], SinkConfig::Mqtt(m) if m.tls.is_some()));
        assert_eq!(c.opcua.servers[0].groups.len(), 2);
        assert!(matches!(c.sinks["line1_ctl"], SinkConfig::Opcua(_)));
        assert!(
            matches!(&c.sinks["fleet"], SinkConfig::Nats(n) if n.servers.len() == 3 && n.tls.is_some())
        );
    }

    #[test]
    fn an_admin_endpoint_off_loopback_needs_a_token() {
        let base = Path::new("/etc/fg");
        let e = Config::parse(
            "rules_dir = 'r'\n[admin]\nlisten = '0.0.0.0:9180'\n",
            "gw.toml",
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("admin") && e.contains("token"), "{e}");
        let c = Config::parse(
            "rules_dir = 'r'\n[admin]\nlisten = '0.0.0.0:9180'\ntoken = 's3cret'\n",
            "gw.toml",
            base,
        )
        .unwrap();
        assert_eq!(c.admin.resolve_token().unwrap().as_deref(), Some("s3cret"));
        assert!(!format!("{:?}", c.admin).contains("s3cret"));
        let c = Config::parse(
            "rules_dir = 'r'\n[admin]\nlisten = '0.0.0.0:9180'\ntoken_env = 'FG_TEST_NO_SUCH_VAR'\n",
            "gw.toml",
            base,
        )
        .unwrap();
        let e = c.admin.resolve_token().unwrap_err().to_string();
        assert!(e.contains("FG_TEST_NO_SUCH_VAR"), "{e}");
    }

    #[test]
    fn modbus_devices_and_sinks_are_checked() {
        let base = Path::new("/etc/fg");
        let device = "[[modbus.devices]]\nname = 'plc/1'\n\
                      transport = { type = 'tcp', host = 'h' }\n\
                      [[modbus.devices.groups]]\nname = 'g'\ninterval = '1s'\n\
                      tags = [{ name = 'x', register = 40001 }]\n";
        let e = Config::parse(&format!("rules_dir = 'r'\n{device}"), "gw.toml", base)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gw.toml") && e.contains("modbus.devices") && e.contains("plc/1"),
            "{e}"
        );
        let good = device.replace("plc/1", "plc1");
        let c = Config::parse(
            &format!("rules_dir = 'r'\n[sinks.ctl]\ntype = 'modbus'\ndevice = 'plc1'\n{good}"),
            "gw.toml",
            base,
        )
        .unwrap();
        assert_eq!(c.modbus.devices.len(), 1);
        assert_eq!(c.modbus.republish_topic, "modbus/{device}/{group}");
        let e = Config::parse(
            &format!("rules_dir = 'r'\n[sinks.ctl]\ntype = 'modbus'\ndevice = 'plc2'\n{good}"),
            "gw.toml",
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sinks.ctl") && e.contains("plc2"), "{e}");
    }

    #[test]
    fn configs_that_could_not_run_are_refused_naming_the_key() {
        let base = Path::new("/etc/fg");
        let err = |extra: &str| {
            Config::parse(&format!("rules_dir = 'r'\n{extra}"), "gw.toml", base)
                .unwrap_err()
                .to_string()
        };
        let cases = [
            ("[log]\nlevel = 'warning'", "log.level"),
            (
                "[broker]\nlisten = '127.0.0.1:1883'\nlisten_v5 = '127.0.0.1:1884'",
                "broker.listen_v5",
            ),
            ("[broker]\nlisten = '0.0.0.0:1883'", "broker.password_file"),
            (
                "[broker]\nlisten = '0.0.0.0:1883'\nallow_anonymous = false",
                "broker.password_file",
            ),
            ("[broker]\nlisten = '127.0.0.1:9180'\n", "admin.listen"),
            (
                "[broker]\ntls = { listen = '127.0.0.1:9180', cert = 'c', key = 'k' }",
                "broker.tls.listen",
            ),
            ("[broker]\nsegment_size = 1", "segment_size"),
            ("[broker]\nmax_topic_levels = 0", "broker.max_topic_levels"),
            (
                "[broker]\nmax_client_id_length = 8",
                "broker.max_client_id_length",
            ),
            ("[journal]\nmax_bytes = 100", "journal.max_bytes"),
            ("[broker]\nmax_payload_size = 0", "broker.max_payload_size"),
            ("[broker]\nmax_connections = 0", "broker.max_connections"),
            ("[broker]\nsession_expiry = '0s'", "broker.session_expiry"),
            ("[broker]\nmax_inflight = 0", "broker.max_inflight"),
            ("[broker]\nconnect_timeout = '2m'", "broker.connect_timeout"),
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            ("[ingest]\nmax_depth = 0", "ingest.max_depth"),
            ("[ingest]\nmax_depth = 100000", "ingest.max_depth"),
            ("[ingest]\nmax_array_items = 0", "ingest.max_array_items"),
        ];
        for (extra, key) in cases {
            let e = err(extra);
            assert!(e.contains("gw.toml") && e.contains(key), "{extra:?}: {e}");
        }
        // Distinct ports on distinct addresses are fine.
        Config::parse(
            "rules_dir = 'r'\n[broker]\nlisten = '127.0.0.1:1883'\n\
             tls = { listen = '127.0.0.2:1883', cert = 'c', key = 'k' }\n",
            "gw.toml",
            base,
        )
        .unwrap();
    }

    #[test]
    fn relative_serial_ports_and_opcua_identity_files_are_the_config_files() {
        let c = Config::parse(
            "rules_dir = 'r'\n\
             [[modbus.devices]]\nname = 'near'\ntransport = { type = 'rtu', path = 'ports/meter' }\n\
             [[modbus.devices.groups]]\nname = 'g'\ninterval = '1s'\ntags = [{ name = 'x', register = 40001 }]\n\
             [[modbus.devices]]\nname = 'usb'\nunit_id = 2\ntransport = { type = 'rtu', path = '/dev/ttyUSB0' }\n\
             [[modbus.devices.groups]]\nname = 'g'\ninterval = '1s'\ntags = [{ name = 'x', register = 40001 }]\n\
             [[opcua.servers]]\nname = 'plc'\nendpoint = 'opc.tcp://10.0.0.1:4840'\n\
             identity = { type = 'x509', certificate = 'pki/user.der', private_key = 'pki/user.pem' }\n",
            "gw.toml",
            Path::new("/etc/fieldgate"),
        )
        .unwrap();
        let paths: Vec<&str> = c
            .modbus
            .devices
            .iter()
            .map(|d| match &d.transport {
                Transport::Rtu { path, .. } => path.as_str(),
                Transport::Tcp { .. } => "",
            })
            .collect();
        assert_eq!(paths, ["/etc/fieldgate/ports/meter", "/dev/ttyUSB0"]);
        assert!(matches!(
            &c.opcua.servers[0].identity,
            Identity::X509 { certificate, .. } if certificate == Path::new("/etc/fieldgate/pki/user.der")
        ));
    }

    #[test]
    fn opcua_servers_and_sinks_are_checked() {
        let server = "[[opcua.servers]]\nname = 'plc'\nendpoint = 'opc.tcp://10.0.0.1:4840'\n";
        let e = Config::parse(
            &format!("rules_dir = 'r'\n[sinks.ctl]\ntype = 'opcua'\nserver = 'plc2'\n{server}"),
            "gw.toml",
            Path::new(""),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sinks.ctl") && e.contains("plc2"), "{e}");
        let e = Config::parse(
            "rules_dir = 'r'\n[[opcua.servers]]\nname = 'plc'\nendpoint = 'tcp://x'\n",
            "gw.toml",
            Path::new(""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("opcua.servers") && e.contains("opc.tcp://"),
            "{e}"
        );
        Config::parse(
            &format!("rules_dir = 'r'\n[sinks.ctl]\ntype = 'opcua'\nserver = 'plc'\n{server}"),
            "gw.toml",
            Path::new(""),
        )
        .unwrap();
    }

    #[test]
    fn host_checks_find_ports_in_use_and_missing_serial_devices() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let c = Config::parse(
            &format!("rules_dir = 'r'\n[admin]\nlisten = '127.0.0.1:{port}'\n[broker]\nlisten = '127.0.0.1:0'\n"),
            "gw.toml",
            Path::new(""),
        )
        .unwrap();
        let e = c.check_host().unwrap_err().to_string();
        assert!(
            e.contains("admin.listen") && e.contains(&port.to_string()),
            "{e}"
        );
        drop(taken);
        c.check_host().unwrap();
        let c = Config::parse(
            "rules_dir = 'r'\n[broker]\nlisten = '127.0.0.1:0'\n[admin]\nlisten = '127.0.0.1:0'\n\
             [[modbus.devices]]\nname = 'meter'\ntransport = { type = 'rtu', path = '/dev/fieldgate-no-such-tty' }\n\
             [[modbus.devices.groups]]\nname = 'g'\ninterval = '1s'\ntags = [{ name = 'x', register = 40001 }]\n",
            "gw.toml",
            Path::new(""),
        )
        .unwrap();
        let e = c.check_host().unwrap_err().to_string();
        assert!(
            e.contains("modbus.devices[0].transport.path") && e.contains("no-such-tty"),
            "{e}"
        );
    }

    #[test]
    fn human_durations_and_relative_paths() {
        let c = Config::parse(
            "rules_dir = 'rules'\ndata_dir = 'd'\n[ingest]\nbatch_delay = '250ms'\n\
             [sinks.f]\ntype = 'file'\npath = 'out/{rule}.jsonl'\n",
            "gw.toml",
            Path::new("/etc/fg"),
        )
        .unwrap();
        assert_eq!(c.ingest.batch_delay, Duration::from_millis(250));
        assert_eq!(c.rules_dir, PathBuf::from("/etc/fg/rules"));
        assert_eq!(c.data_dir, PathBuf::from("/etc/fg/d"));
        match &c.sinks["f"] {
            SinkConfig::File(f) => assert_eq!(f.path, PathBuf::from("/etc/fg/out/{rule}.jsonl")),
            other => panic!("{other:?}"),
        }
    }
}
