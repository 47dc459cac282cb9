//! Configuration of the OPC UA source: servers, how the gateway connects and logs in,
//! and node groups, as read from TOML (`[[opcua.servers]]`), and its validation.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use opcua::types::NodeId;
use serde::Deserialize;

use super::values::NodeType;

/// The OPC UA source: the servers to read from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcuaConfig {
    /// One entry per `[[opcua.servers]]` table; none by default.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
}

/// One OPC UA server and how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unique name; the `server` column of every row and the first half of a
    /// `DATASOURCE = 'server/group'`.
    pub name: String,
    /// The server's endpoint URL, `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    /// `None` (the default), `Basic256Sha256` or `Aes128_Sha256_RsaOaep`.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// `None` (the default with policy `None`), `Sign` or `SignAndEncrypt` (the default
    /// with any other policy).
    #[serde(default)]
    pub security_mode: Option<SecurityMode>,
    /// Who the gateway logs in as; anonymous by default.
    #[serde(default)]
    pub identity: Identity,
    /// Longest wait for one service call's answer.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long the server keeps the session while the gateway is away.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Interval of the keepalive reads that tell a dead connection.
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The server's node groups; each is a stream source.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// Message security policies the gateway speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// No signing, no encryption.
    #[default]
    None,
    /// RSA 2048+ with SHA-256 and AES-256.
    Basic256Sha256,
    /// RSA-OAEP with SHA-256 and AES-128.
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
}

impl SecurityPolicy {
    /// The policy's name as OPC UA spells it.
    pub fn name(&self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
        }
    }
}

/// Message security modes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SecurityMode {
    /// Messages neither signed nor encrypted (policy `None` only).
    None,
    /// Messages signed.
    Sign,
    /// Messages signed and encrypted.
    SignAndEncrypt,
}

/// Who the gateway logs in as.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Identity {
    /// No user.
    #[default]
    Anonymous,
    /// A user name and password; the password from the config or from an environment
    /// variable (`password_env`), never both.
    Username {
        /// The user name.
        user: String,
        /// The password, in the config file.
        #[serde(default)]
        password: Option<String>,
        /// The environment variable holding the password.
        #[serde(default)]
        password_env: Option<String>,
    },
    /// An X.509 user certificate (DER or PEM) and its private key (PEM).
    X509 {
        /// The user certificate.
        certificate: PathBuf,
        /// The certificate's private key.
        private_key: PathBuf,
    },
}

/// How a group's values are read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Monitored items in a subscription: the server reports changes.
    #[default]
    Subscribe,
    /// Read requests every `interval`, for servers or nodes without subscriptions.
    Poll,
}

/// A DataChangeFilter deadband: changes smaller than this are not reported.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Deadband {
    /// Changes of at least this much, in the value's unit.
    Absolute(f64),
    /// Changes of at least this percentage of the node's EURange.
    Percent(f64),
}

/// A group of nodes read together: one stream source, one row per change set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, unique per server; the `group` column of its rows.
    pub name: String,
    /// `subscribe` (the default) or `poll`.
    #[serde(default)]
    pub mode: ReadMode,
    /// How often the server sends the changes collected (subscriptions).
    #[serde(default = "default_publishing_interval", with = "humantime_serde")]
    pub publishing_interval: Duration,
    /// How often the server samples each node (subscriptions); by default the
    /// publishing interval.
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// Changes the server keeps per node between publishes (subscriptions).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Deadband for every numeric node of the group without its own.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Time between reads (`mode = "poll"`).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The group's nodes, one column each.
    pub nodes: Vec<NodeConfig>,
}

/// One node: its id, its column and its type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The column name; also `<name>_quality`, `<name>_status`, `<name>_source_time`
    /// and `<name>_server_time`.
    pub name: String,
    /// The node id in OPC UA's string form: `ns=2;s=Line1.Temp`, `ns=3;i=1001`, `i=2258`.
    pub node_id: String,
    /// The value's type: `boolean`, `sbyte`, `byte`, `int16`, `uint16`, `int32`,
    /// `uint32`, `int64`, `uint64`, `float`, `double`, `string`, `datetime`, or any of
    /// these followed by `[]` for an array.
    #[serde(rename = "type")]
    pub node_type: NodeType,
    /// This node's deadband, instead of the group's.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Whether rules may write the node through an `opcua` sink.
    #[serde(default)]
    pub writable: bool,
    /// Smallest value a write may set (numeric nodes).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest value a write may set (numeric nodes).
    #[serde(default)]
    pub max: Option<f64>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(10)
}
fn default_publishing_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_queue_size() -> u32 {
    10
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// Columns every row has, which node names may not take.
pub const ROW_COLUMNS: [&str; 3] = ["server", "group", "timestamp"];
/// Suffixes of the columns each node adds beside its value.
pub const NODE_SUFFIXES: [&str; 4] = ["_quality", "_status", "_source_time", "_server_time"];

impl ServerConfig {
    /// The security mode in effect: the configured one, else the policy's default.
    pub fn mode(&self) -> SecurityMode {
        self.security_mode.unwrap_or(match self.security_policy {
            SecurityPolicy::None => SecurityMode::None,
            _ => SecurityMode::SignAndEncrypt,
        })
    }

    /// A node by column name, in any group.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.groups
            .iter()
            .flat_map(|g| &g.nodes)
            .find(|n| n.name == name)
    }
}

impl OpcuaConfig {
    /// Checks what serde cannot; the message names the server, group or node.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = format!("servers[{i}] (`{}`)", s.name);
            if s.name.is_empty() || s.name.contains('/') {
                return Err(format!("{at}: `name` must be non-empty, without `/`"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("{at}: server name `{}` is used twice", s.name));
            }
            s.validate().map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), String> {
        let Some(rest) = self.endpoint.strip_prefix("opc.tcp://") else {
            return Err(format!(
                "`endpoint` {:?} must be an opc.tcp:// URL",
                self.endpoint
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("`endpoint` {:?} names no host", self.endpoint));
        }
        match (self.security_policy, self.mode()) {
            (SecurityPolicy::None, SecurityMode::None) => {}
            (SecurityPolicy::None, m) => {
                return Err(format!(
                    "`security_mode` {m:?} needs a `security_policy` other than None"
                ));
            }
            (p, SecurityMode::None) => {
                return Err(format!(
                    "`security_policy` {} needs `security_mode` Sign or SignAndEncrypt",
                    p.name()
                ));
            }
            _ => {}
        }
        if let Identity::Username {
            user,
            password,
            password_env,
        } = &self.identity
        {
            if user.is_empty() {
                return Err("`identity.user` is empty".into());
            }
            if password.is_some() == password_env.is_some() {
                return Err(
                    "`identity` of type username needs exactly one of `password` and `password_env`"
                        .into(),
                );
            }
        }
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("session_timeout", self.session_timeout),
            ("keepalive", self.keepalive),
            ("reconnect_min", self.reconnect_min),
        ] {
            if d.is_zero() {
                return Err(format!("`{key}` must be positive"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err("`reconnect_max` is shorter than `reconnect_min`".into());
        }
        let mut groups = HashSet::new();
        let mut columns: HashMap<&str, &NodeConfig> = HashMap::new();
        for g in &self.groups {
            if g.name.is_empty() || g.name.contains('/') {
                return Err(format!(
                    "group `{}`: `name` must be non-empty, without `/`",
                    g.name
                ));
            }
            if !groups.insert(g.name.as_str()) {
                return Err(format!("group name `{}` is used twice", g.name));
            }
            g.validate()
                .map_err(|e| format!("group `{}`: {e}", g.name))?;
            for n in &g.nodes {
                // The sink writes nodes by name: one name, one node, in every group.
                if let Some(other) = columns.insert(n.name.as_str(), n)
                    && (other.node_id != n.node_id
                        || other.node_type != n.node_type
                        || other.writable != n.writable)
                {
                    return Err(format!(
                        "node name `{}` stands for two different nodes on this server \
                         ({} and {}); the sink writes nodes by name",
                        n.name, other.node_id, n.node_id
                    ));
                }
            }
        }
        Ok(())
    }
}

impl GroupConfig {
    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("has no `nodes`".into());
        }
        if self.publishing_interval.is_zero() || self.interval.is_zero() {
            return Err("`publishing_interval` and `interval` must be positive".into());
        }
        if self.queue_size == 0 {
            return Err("`queue_size` must be at least 1".into());
        }
        let mut names: HashSet<String> = ROW_COLUMNS.iter().map(|c| c.to_string()).collect();
        let mut ids = HashSet::new();
        for n in &self.nodes {
            let at = format!("node `{}`", n.name);
            if n.name.is_empty() {
                return Err("a node has an empty `name`".into());
            }
            for col in std::iter::once(n.name.clone())
                .chain(NODE_SUFFIXES.iter().map(|s| format!("{}{s}", n.name)))
            {
                if !names.insert(col.clone()) {
                    return Err(format!("{at}: column `{col}` is taken"));
                }
            }
            let id = NodeId::from_str(&n.node_id).map_err(|_| {
                format!(
                    "{at}: `node_id` {:?} is not a node id (e.g. ns=2;s=Line1.Temp or ns=3;i=1001)",
                    n.node_id
                )
            })?;
            if !ids.insert(id) {
                return Err(format!("{at}: node {} is in the group twice", n.node_id));
            }
            if let Some(d) = n.deadband.or(self.deadband) {
                let v = match d {
                    Deadband::Absolute(v) => v,
                    Deadband::Percent(v) => {
                        if v > 100.0 {
                            return Err(format!("{at}: a percent deadband is 0..=100"));
                        }
                        v
                    }
                };
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("{at}: deadband must be a number >= 0"));
                }
                if n.deadband.is_some() && !n.node_type.is_numeric() {
                    return Err(format!(
                        "{at}: a deadband applies to numeric nodes, not {}",
                        n.node_type
                    ));
                }
            }
            if (n.min.is_some() || n.max.is_some()) && !n.node_type.is_numeric() {
                return Err(format!(
                    "{at}: `min` and `max` apply to numeric nodes, not {}",
                    n.node_type
                ));
            }
            if let (Some(lo), Some(hi)) = (n.min, n.max)
                && lo > hi
            {
                return Err(format!("{at}: `min` is above `max`"));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// The parsed node id (validated at load).
    pub fn id(&self) -> NodeId {
        NodeId::from_str(&self.node_id).unwrap_or_else(|_| NodeId::null())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(servers: &str) -> Result<(), String> {
        let cfg: OpcuaConfig = toml::from_str(servers).map_err(|e| e.to_string())?;
        cfg.validate()
    }

    const GOOD: &str = r#"
        [[servers]]
        name = "line1"
        endpoint = "opc.tcp://10.0.0.5:4840"
        security_policy = "Basic256Sha256"
        identity = { type = "username", user = "op", password_env = "OPCUA_PW" }
        [[servers.groups]]
        name = "press"
        deadband = { type = "percent", value = 2.0 }
        nodes = [
          { name = "temp", node_id = "ns=2;s=Press.Temp", type = "double" },
          { name = "on", node_id = "ns=2;i=7", type = "boolean", writable = true },
        ]
    "#;

    #[test]
    fn a_good_config_passes_with_secure_defaults() {
        check(GOOD).unwrap();
        let cfg: OpcuaConfig = toml::from_str(GOOD).unwrap();
        assert_eq!(cfg.servers[0].mode(), SecurityMode::SignAndEncrypt);
        assert_eq!(cfg.servers[0].groups[0].mode, ReadMode::Subscribe);
    }

    #[test]
    fn bad_configs_name_what_is_wrong() {
        for (from, to, why) in [
            (
                "opc.tcp://10.0.0.5:4840",
                "http://10.0.0.5",
                "opc.tcp:// URL",
            ),
            ("ns=2;s=Press.Temp", "ns=x;q", "is not a node id"),
            (
                "password_env = \"OPCUA_PW\"",
                "password = \"a\", password_env = \"B\"",
                "exactly one of",
            ),
            (
                "security_policy = \"Basic256Sha256\"",
                "security_mode = \"Sign\"",
                "needs a `security_policy`",
            ),
            ("name = \"on\"", "name = \"temp\"", "column `temp` is taken"),
            (
                "type = \"boolean\"",
                "type = \"boolean\", min = 0",
                "apply to numeric nodes",
            ),
            (
                "type = \"double\"",
                "type = \"guid\"",
                "unknown node type `guid`",
            ),
            ("value = 2.0", "value = 200.0", "0..=100"),
            ("name = \"press\"", "name = \"a/b\"", "without `/`"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let e = check(&text).unwrap_err();
            assert!(e.contains(why), "{to}: {e}");
        }
    }
}
