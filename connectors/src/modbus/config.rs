//! Configuration of the Modbus source: devices, their transport, poll groups and tags,
//! as read from TOML, and its validation into resolved [`Tag`]s.
//!
//! Addresses come in two explicit notations, never guessed:
//! - `address`: the 0-based protocol address sent on the wire, with `area` naming the
//!   table (`address = 0, area = "holding_register"` is the first holding register);
//! - `register`: 1-based Modicon notation whose leading digit names the table:
//!   `1..=9999` coils, `10001..=19999` discrete inputs, `30001..=39999` input registers,
//!   `40001..=49999` holding registers, and the 6-digit forms `100001..=165536`,
//!   `300001..=365536`, `400001..=465536` (`register = 40001` is protocol address 0 of the
//!   holding registers). 6-digit coil numbers cannot be told apart from the other forms:
//!   give those as `address`.
//!
//! A tag with both or neither, or with an `area` that contradicts its `register`, is refused.

use std::time::Duration;

use serde::Deserialize;

/// Registers a read request may ask for (function codes 3 and 4).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Bits a read request may ask for (function codes 1 and 2).
pub const MAX_READ_BITS: u16 = 2000;

/// The Modbus source: the devices to poll.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// One entry per `[[modbus.devices]]` table; none by default.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// One device (one unit id) and how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique name; the `device` column of every row.
    pub name: String,
    /// How the device is reached: `transport.type` is `tcp` or `rtu`.
    pub transport: Transport,
    /// Modbus unit (slave) id; 1..=247 on serial lines, any u8 over TCP.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Longest wait for one response (and for a connection attempt).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts of a request after a timeout or I/O error (not after an exception).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`, with jitter.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay, and longest wait between probes of a silent device; 5s
    /// by default, so that a device back after an outage is read again within seconds.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Consecutive failed poll cycles after which the device counts as degraded.
    #[serde(default = "default_degraded_after")]
    pub degraded_after: u32,
    /// Largest run of unused registers (or bits) a read may span to join two tags.
    #[serde(default)]
    pub max_gap: u16,
    /// The poll groups (`[[modbus.devices.groups]]`); at least one.
    pub groups: Vec<GroupConfig>,
}

/// How a device is reached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transport {
    /// Modbus TCP.
    Tcp {
        /// Host name or IP address of the device.
        host: String,
        /// TCP port; 502 by default.
        #[serde(default = "default_tcp_port")]
        port: u16,
    },
    /// Modbus RTU over a serial line; devices with the same `path` share the line.
    Rtu {
        /// The serial port, e.g. `/dev/ttyUSB0`.
        path: String,
        /// Line speed in bits per second; 9600 by default.
        #[serde(default = "default_baud")]
        baud: u32,
        /// Parity bit; none by default.
        #[serde(default)]
        parity: Parity,
        /// Data bits per character, 5 to 8; 8 by default.
        #[serde(default = "default_data_bits")]
        data_bits: u8,
        /// Stop bits per character, 1 or 2; 1 by default.
        #[serde(default = "default_stop_bits")]
        stop_bits: u8,
    },
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit (`"none"`, the default).
    #[default]
    None,
    /// Even parity (`"even"`).
    Even,
    /// Odd parity (`"odd"`).
    Odd,
}

/// Tags polled together at one interval; one row per poll.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The `group` column; unique within the device.
    pub name: String,
    /// Time between polls, e.g. `"500ms"`; must be positive.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Overrides the device's `max_gap` for this group.
    #[serde(default)]
    pub max_gap: Option<u16>,
    /// The tags read at each poll (`[[modbus.devices.groups.tags]]`); at least one.
    pub tags: Vec<TagConfig>,
}

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Single bits, read and written (`coil`; function codes 1, 5, 15).
    Coil,
    /// Single bits, read only (`discrete_input`; function code 2).
    DiscreteInput,
    /// 16-bit registers, read only (`input_register`; function code 4).
    InputRegister,
    /// 16-bit registers, read and written (`holding_register`; function codes 3, 6, 16).
    HoldingRegister,
}

impl Area {
    /// Whether the table holds single bits (coils, discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }
    /// Function code that reads the table.
    pub fn read_function(self) -> u8 {
        match self {
            Area::Coil => 1,
            Area::DiscreteInput => 2,
            Area::HoldingRegister => 3,
            Area::InputRegister => 4,
        }
    }
}

/// A tag's value type as stored in the device.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TagType {
    /// A coil or discrete input.
    Bool,
    /// Unsigned 16-bit integer in one register.
    U16,
    /// Signed (two's complement) 16-bit integer in one register.
    I16,
    /// Unsigned 32-bit integer in two registers.
    U32,
    /// Signed (two's complement) 32-bit integer in two registers.
    I32,
    /// Unsigned 64-bit integer in four registers.
    U64,
    /// Signed (two's complement) 64-bit integer in four registers.
    I64,
    /// IEEE 754 single-precision float in two registers.
    F32,
    /// IEEE 754 double-precision float in four registers.
    F64,
    /// Text in `length` registers, two bytes each, high byte first; NULs at the end are cut.
    String,
    /// Bit `bit` (0 = least significant) of one register.
    Bit,
}

/// Order of the bytes of a multi-register value, naming the bytes of the big-endian value
/// A (most significant) to D as they arrive: `abcd` big-endian, `cdab` words swapped,
/// `badc` bytes swapped within each word, `dcba` little-endian. For 64-bit values the
/// same rule applies to all four words; for 16-bit values `badc`/`dcba` swap the two bytes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum WordOrder {
    /// Big-endian: most significant word first, high byte first in each (the default).
    #[default]
    #[serde(alias = "abcd")]
    Abcd,
    /// Words in reverse order, high byte first in each.
    #[serde(alias = "cdab")]
    Cdab,
    /// Most significant word first, low byte first in each.
    #[serde(alias = "badc")]
    Badc,
    /// Little-endian: least significant byte first.
    #[serde(alias = "dcba")]
    Dcba,
}

/// One tag as configured.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Column name; unique within the group.
    pub name: String,
    /// The table; required with `address`, optional (and checked) with `register`.
    #[serde(default)]
    pub area: Option<Area>,
    /// 0-based protocol address.
    #[serde(default)]
    pub address: Option<u16>,
    /// 1-based Modicon register number (e.g. 40001).
    #[serde(default)]
    pub register: Option<u32>,
    /// Defaults to `bool` on coils and discrete inputs, `u16` on registers.
    #[serde(default, rename = "type")]
    pub kind: Option<TagType>,
    /// Registers of a `string` tag.
    #[serde(default)]
    pub length: Option<u16>,
    /// Bit index (0..=15) of a `bit` tag.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Byte order of multi-byte values (registers only); ABCD when not given.
    #[serde(default)]
    pub order: Option<WordOrder>,
    /// Value = raw * scale + offset; either makes the column f64.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after scaling; see `scale`.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, for documentation and metadata.
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether writes to the tag are allowed (coils and holding registers only).
    #[serde(default)]
    pub writable: bool,
}

/// A validated tag with its resolved table and protocol address.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// Column name; unique within the group.
    pub name: String,
    /// The table the tag is in.
    pub area: Area,
    /// 0-based protocol address of its first register or bit.
    pub address: u16,
    /// Value type; the configured `type`, or its default for the table.
    pub kind: TagType,
    /// Registers of a string.
    pub length: u16,
    /// Bit index of a `bit` tag.
    pub bit: u8,
    /// Byte order of multi-byte values; ABCD when not configured.
    pub order: WordOrder,
    /// Factor in `raw * scale + offset`; `None` means 1.
    pub scale: Option<f64>,
    /// Term in `raw * scale + offset`; `None` means 0.
    pub offset: Option<f64>,
    /// Engineering unit, as configured.
    pub unit: Option<String>,
    /// Whether rule results may write to the tag.
    pub writable: bool,
}

impl Tag {
    /// Registers (or bits, on bit tables) the tag occupies.
    pub fn width(&self) -> u16 {
        match self.kind {
            TagType::Bool | TagType::U16 | TagType::I16 | TagType::Bit => 1,
            TagType::U32 | TagType::I32 | TagType::F32 => 2,
            TagType::U64 | TagType::I64 | TagType::F64 => 4,
            TagType::String => self.length,
        }
    }
    /// Whether scale or offset apply (the value becomes f64).
    pub fn is_scaled(&self) -> bool {
        self.scale.is_some() || self.offset.is_some()
    }
}

/// Whether `s` can name a device or group: it goes into `device/group` and topics.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn default_unit_id() -> u8 {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u32 {
    1
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
/// 5 s: a device back after an outage is read again within seconds (30 s made a 20 s
/// outage last up to 15 s longer).
fn default_reconnect_max() -> Duration {
    Duration::from_secs(5)
}
fn default_degraded_after() -> u32 {
    3
}
fn default_tcp_port() -> u16 {
    502
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// Splits a Modicon register number into its table and 0-based address.
fn modicon(register: u32) -> Option<(Area, u16)> {
    let (area, first) = match register {
        1..=9999 => (Area::Coil, 1),
        10001..=19999 => (Area::DiscreteInput, 10001),
        30001..=39999 => (Area::InputRegister, 30001),
        40001..=49999 => (Area::HoldingRegister, 40001),
        100001..=165536 => (Area::DiscreteInput, 100001),
        300001..=365536 => (Area::InputRegister, 300001),
        400001..=465536 => (Area::HoldingRegister, 400001),
        _ => return None,
    };
    u16::try_from(register - first).ok().map(|a| (area, a))
}

impl TagConfig {
    /// Resolves and checks the tag; the error names the offending key.
    pub fn resolve(&self) -> Result<Tag, String> {
        let name = &self.name;
        if name.is_empty() {
            return Err("tag `name` is empty".into());
        }
        let (area, address) = match (self.address, self.register) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "tag `{name}`: give either `address` (0-based) or `register` (1-based Modicon), not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "tag `{name}`: needs `address` (0-based, with `area`) or `register` (1-based Modicon, e.g. 40001)"
                ));
            }
            (Some(a), None) => match self.area {
                Some(area) => (area, a),
                None => return Err(format!("tag `{name}`: `address` needs `area`")),
            },
            (None, Some(r)) => {
                let Some((area, a)) = modicon(r) else {
                    return Err(format!(
                        "tag `{name}`: `register` = {r} is not a Modicon number (1-9999, 10001-19999, 30001-39999, 40001-49999 or 6-digit 1xxxxx/3xxxxx/4xxxxx)"
                    ));
                };
                if let Some(given) = self.area
                    && given != area
                {
                    return Err(format!(
                        "tag `{name}`: `area` = {given:?} contradicts `register` = {r} ({area:?})"
                    ));
                }
                (area, a)
            }
        };
        let kind = self.kind.unwrap_or(if area.is_bits() {
            TagType::Bool
        } else {
            TagType::U16
        });
        if (kind == TagType::Bool) != area.is_bits() {
            return Err(format!(
                "tag `{name}`: `type` = {kind:?} does not fit `area` = {area:?} (bool is for coils and discrete inputs, the others for registers)"
            ));
        }
        let length = match (kind, self.length) {
            (TagType::String, Some(n)) if (1..=MAX_READ_REGISTERS).contains(&n) => n,
            (TagType::String, _) => {
                return Err(format!(
                    "tag `{name}`: a string needs `length` of 1 to {MAX_READ_REGISTERS} registers"
                ));
            }
            (_, Some(_)) => return Err(format!("tag `{name}`: `length` is only for strings")),
            (_, None) => 0,
        };
        let bit = match (kind, self.bit) {
            (TagType::Bit, Some(b)) if b < 16 => b,
            (TagType::Bit, _) => {
                return Err(format!("tag `{name}`: a bit tag needs `bit` from 0 to 15"));
            }
            (_, Some(_)) => return Err(format!("tag `{name}`: `bit` is only for type = \"bit\"")),
            (_, None) => 0,
        };
        let numeric = !matches!(kind, TagType::Bool | TagType::Bit | TagType::String);
        if (self.scale.is_some() || self.offset.is_some()) && !numeric {
            return Err(format!(
                "tag `{name}`: `scale`/`offset` only apply to numeric types"
            ));
        }
        if let Some(s) = self.scale
            && (s == 0.0 || !s.is_finite())
        {
            return Err(format!("tag `{name}`: `scale` must be finite and not 0"));
        }
        if let Some(o) = self.offset
            && !o.is_finite()
        {
            return Err(format!("tag `{name}`: `offset` must be finite"));
        }
        if self.order.is_some() && matches!(kind, TagType::Bool | TagType::Bit) {
            return Err(format!(
                "tag `{name}`: `order` is for register values; a {} has no byte order",
                if kind == TagType::Bool {
                    "coil or discrete input"
                } else {
                    "bit tag"
                }
            ));
        }
        if self.writable && !matches!(area, Area::Coil | Area::HoldingRegister) {
            return Err(format!(
                "tag `{name}`: `writable` needs a coil or holding register, not {area:?}"
            ));
        }
        let tag = Tag {
            name: name.clone(),
            area,
            address,
            kind,
            length,
            bit,
            order: self.order.unwrap_or_default(),
            scale: self.scale,
            offset: self.offset,
            unit: self.unit.clone(),
            writable: self.writable,
        };
        if u32::from(address) + u32::from(tag.width()) > 65536 {
            return Err(format!("tag `{name}`: runs past the last address 65535"));
        }
        Ok(tag)
    }
}

impl DeviceConfig {
    /// Checks the device and resolves its tags, group by group.
    pub fn validate(&self) -> Result<Vec<Vec<Tag>>, String> {
        let dev = &self.name;
        if !is_name(dev) {
            return Err(format!(
                "device name {dev:?} must be non-empty letters, digits, `-`, `_` or `.` \
                 (streams name it in `device/group`, topics in `modbus/<device>/<group>`)"
            ));
        }
        match &self.transport {
            Transport::Tcp { host, .. } if host.is_empty() => {
                return Err(format!("device `{dev}`: `transport.host` is empty"));
            }
            Transport::Rtu {
                path,
                baud,
                data_bits,
                stop_bits,
                ..
            } => {
                if path.is_empty() {
                    return Err(format!("device `{dev}`: `transport.path` is empty"));
                }
                if *baud == 0 {
                    return Err(format!("device `{dev}`: `transport.baud` must be positive"));
                }
                if !(5..=8).contains(data_bits) {
                    return Err(format!(
                        "device `{dev}`: `transport.data_bits` must be 5 to 8"
                    ));
                }
                if !(1..=2).contains(stop_bits) {
                    return Err(format!(
                        "device `{dev}`: `transport.stop_bits` must be 1 or 2"
                    ));
                }
                if !(1..=247).contains(&self.unit_id) {
                    return Err(format!(
                        "device `{dev}`: `unit_id` must be 1 to 247 on a serial line"
                    ));
                }
            }
            Transport::Tcp { .. } => {}
        }
        if self.timeout.is_zero() {
            return Err(format!("device `{dev}`: `timeout` must be positive"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(format!(
                "device `{dev}`: `reconnect_min` must be positive and not above `reconnect_max`"
            ));
        }
        if self.degraded_after == 0 {
            return Err(format!(
                "device `{dev}`: `degraded_after` must be at least 1"
            ));
        }
        if self.groups.is_empty() {
            return Err(format!("device `{dev}`: no `groups`"));
        }
        let mut groups = Vec::with_capacity(self.groups.len());
        for (i, g) in self.groups.iter().enumerate() {
            if !is_name(&g.name) {
                return Err(format!(
                    "device `{dev}`: group name {:?} must be non-empty letters, digits, `-`, `_` or `.`",
                    g.name
                ));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(format!(
                    "device `{dev}`: group `{}` is defined twice",
                    g.name
                ));
            }
            if g.interval.is_zero() {
                return Err(format!(
                    "device `{dev}` group `{}`: `interval` must be positive",
                    g.name
                ));
            }
            if g.tags.is_empty() {
                return Err(format!("device `{dev}` group `{}`: no `tags`", g.name));
            }
            let mut tags: Vec<Tag> = Vec::with_capacity(g.tags.len());
            for t in &g.tags {
                let tag = t
                    .resolve()
                    .map_err(|e| format!("device `{dev}` group `{}`: {e}", g.name))?;
                let reserved = ["device", "group", "timestamp"];
                if reserved.contains(&tag.name.as_str())
                    || tag.name.ends_with("_quality")
                    || tags.iter().any(|o| o.name == tag.name)
                {
                    return Err(format!(
                        "device `{dev}` group `{}`: tag name `{}` is taken (duplicate, reserved, or ends in `_quality`)",
                        g.name, tag.name
                    ));
                }
                if let Some(other) = tags.iter().find(|o| overlap(o, &tag)) {
                    return Err(format!(
                        "device `{dev}` group `{}`: tags `{}` and `{}` overlap (the same {:?} address {}); \
                         a bit tag may share a register with a register tag, nothing else may",
                        g.name,
                        other.name,
                        tag.name,
                        tag.area,
                        tag.address.max(other.address)
                    ));
                }
                tags.push(tag);
            }
            groups.push(tags);
        }
        Ok(groups)
    }
}

/// Whether two tags of one group read the same data: register tags sharing a register
/// (or bits sharing a bit), or two bit tags naming the same bit of one register.
fn overlap(a: &Tag, b: &Tag) -> bool {
    if a.area != b.area {
        return false;
    }
    let span = |t: &Tag| {
        (
            u32::from(t.address),
            u32::from(t.address) + u32::from(t.width()),
        )
    };
    match (a.kind == TagType::Bit, b.kind == TagType::Bit) {
        (true, true) => a.address == b.address && a.bit == b.bit,
        (true, false) | (false, true) => false,
        (false, false) => {
            let ((a0, a1), (b0, b1)) = (span(a), span(b));
            a0 < b1 && b0 < a1
        }
    }
}

/// The device a config names: where it is reached and its unit id.
fn endpoint(d: &DeviceConfig) -> (String, u8) {
    let at = match &d.transport {
        Transport::Tcp { host, port } => format!("tcp://{}:{port}", host.to_ascii_lowercase()),
        Transport::Rtu { path, .. } => format!("rtu:{path}"),
    };
    (at, d.unit_id)
}

impl ModbusConfig {
    /// Checks every device; device names must be unique, and so must the devices
    /// themselves (endpoint and unit id).
    pub fn validate(&self) -> Result<(), String> {
        for (i, d) in self.devices.iter().enumerate() {
            if self.devices[..i].iter().any(|o| o.name == d.name) {
                return Err(format!("device `{}` is defined twice", d.name));
            }
            d.validate()?;
            if let Some(o) = self.devices[..i]
                .iter()
                .find(|o| endpoint(o) == endpoint(d))
            {
                let (at, unit) = endpoint(d);
                return Err(format!(
                    "devices `{}` and `{}` are the same device ({at}, unit id {unit}): \
                     put their groups in one device",
                    o.name, d.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(tags: &str) -> Result<Vec<Vec<Tag>>, String> {
        let text = format!(
            r#"
            [[devices]]
            name = "plc"
            transport = {{ type = "tcp", host = "127.0.0.1", port = 1502 }}
            timeout = "250ms"
            [[devices.groups]]
            name = "fast"
            interval = "1s"
            {tags}
            "#
        );
        let cfg: ModbusConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        cfg.devices[0].validate()
    }

    #[test]
    fn both_address_notations_resolve_to_protocol_addresses() {
        let g = device(
            r#"
            [[devices.groups.tags]]
            name = "a"
            area = "holding_register"
            address = 0
            [[devices.groups.tags]]
            name = "b"
            register = 40002
            [[devices.groups.tags]]
            name = "c"
            register = 30010
            type = "f32"
            order = "CDAB"
            [[devices.groups.tags]]
            name = "d"
            register = 1
            [[devices.groups.tags]]
            name = "e"
            register = 10001
            [[devices.groups.tags]]
            name = "f"
            register = 465536
            [[devices.groups.tags]]
            name = "g"
            area = "input_register"
            register = 300001
            "#,
        )
        .unwrap();
        let got: Vec<(Area, u16, TagType)> =
            g[0].iter().map(|t| (t.area, t.address, t.kind)).collect();
        assert_eq!(
            got,
            vec![
                (Area::HoldingRegister, 0, TagType::U16),
                (Area::HoldingRegister, 1, TagType::U16),
                (Area::InputRegister, 9, TagType::F32),
                (Area::Coil, 0, TagType::Bool),
                (Area::DiscreteInput, 0, TagType::Bool),
                (Area::HoldingRegister, 65535, TagType::U16),
                (Area::InputRegister, 0, TagType::U16),
            ]
        );
        assert_eq!(g[0][2].order, WordOrder::Cdab);
    }

    #[test]
    fn ambiguous_or_contradictory_addresses_are_refused() {
        let err = |tags: &str| device(tags).unwrap_err();
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\naddress = 1\nregister = 40002\narea = \"holding_register\"",
        );
        assert!(e.contains("either `address`") && e.contains("`x`"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\naddress = 1");
        assert!(e.contains("`address` needs `area`"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"");
        assert!(e.contains("needs `address`"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 20001");
        assert!(e.contains("`register` = 20001"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\narea = \"coil\"");
        assert!(e.contains("contradicts"), "{e}");
    }

    #[test]
    fn types_lengths_and_keys_are_checked() {
        let err = |tags: &str| device(tags).unwrap_err();
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 1\ntype = \"u16\"");
        assert!(e.contains("does not fit"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"bool\"");
        assert!(e.contains("does not fit"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"string\"");
        assert!(e.contains("`length`"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"bit\"\nbit = 16",
        );
        assert!(e.contains("`bit`"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"string\"\nlength = 2\nscale = 2.0",
        );
        assert!(e.contains("`scale`"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 30001\nwritable = true");
        assert!(e.contains("`writable`"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"f64\"\naddres = 3",
        );
        assert!(e.contains("unknown field `addres`"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"u128\"");
        assert!(e.contains("u128"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"u32\"\norder = \"ABDC\"",
        );
        assert!(e.contains("ABDC"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\n[[devices.groups.tags]]\nname = \"x\"\nregister = 40002",
        );
        assert!(e.contains("`x` is taken"), "{e}");
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 465536\ntype = \"u32\"");
        assert!(e.contains("past the last address"), "{e}");
    }

    #[test]
    fn overlapping_tags_duplicate_devices_and_misplaced_orders_are_refused() {
        let err = |tags: &str| device(tags).unwrap_err();
        let e = err(
            "[[devices.groups.tags]]\nname = \"a\"\nregister = 40001\ntype = \"u32\"\n\
             [[devices.groups.tags]]\nname = \"b\"\nregister = 40002",
        );
        assert!(e.contains("`a` and `b` overlap"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"a\"\nregister = 40001\ntype = \"bit\"\nbit = 3\n\
             [[devices.groups.tags]]\nname = \"b\"\nregister = 40001\ntype = \"bit\"\nbit = 3",
        );
        assert!(e.contains("overlap"), "{e}");
        // Bits of a register next to the register itself, other bits, other tables: fine.
        device(
            "[[devices.groups.tags]]\nname = \"status\"\nregister = 40001\n\
             [[devices.groups.tags]]\nname = \"run\"\nregister = 40001\ntype = \"bit\"\nbit = 0\n\
             [[devices.groups.tags]]\nname = \"fault\"\nregister = 40001\ntype = \"bit\"\nbit = 1\n\
             [[devices.groups.tags]]\nname = \"in\"\nregister = 30001",
        )
        .unwrap();
        let e = err("[[devices.groups.tags]]\nname = \"x\"\nregister = 1\norder = \"CDAB\"");
        assert!(e.contains("`order`"), "{e}");
        let e = err(
            "[[devices.groups.tags]]\nname = \"x\"\nregister = 40001\ntype = \"bit\"\nbit = 2\norder = \"DCBA\"",
        );
        assert!(e.contains("`order`"), "{e}");
        let two = |a: &str, b: &str| {
            let text = format!(
                "[[devices]]\nname = \"a\"\n{a}\n[[devices.groups]]\nname = \"g\"\ninterval = \"1s\"\n\
                 tags = [{{ name = \"x\", register = 40001 }}]\n\
                 [[devices]]\nname = \"b\"\n{b}\n[[devices.groups]]\nname = \"g\"\ninterval = \"1s\"\n\
                 tags = [{{ name = \"x\", register = 40001 }}]\n"
            );
            toml::from_str::<ModbusConfig>(&text).unwrap().validate()
        };
        let tcp = "transport = { type = \"tcp\", host = \"plc\" }";
        let e = two(tcp, &tcp.replace("plc", "PLC")).unwrap_err();
        assert!(e.contains("the same device"), "{e}");
        two(tcp, &format!("{tcp}\nunit_id = 2")).unwrap();
        let rtu = "transport = { type = \"rtu\", path = \"/dev/ttyS1\" }";
        let e = two(rtu, rtu).unwrap_err();
        assert!(e.contains("the same device"), "{e}");
        two(rtu, &format!("{rtu}\nunit_id = 2")).unwrap();
    }

    #[test]
    fn rtu_transport_and_defaults() {
        let cfg: ModbusConfig = toml::from_str(
            r#"
            [[devices]]
            name = "meter"
            unit_id = 7
            transport = { type = "rtu", path = "/dev/ttyUSB0", baud = 19200, parity = "even" }
            [[devices.groups]]
            name = "energy"
            interval = "5s"
            tags = [{ name = "kwh", register = 30001, type = "u32", scale = 0.01, unit = "kWh" }]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let d = &cfg.devices[0];
        assert_eq!(
            d.transport,
            Transport::Rtu {
                path: "/dev/ttyUSB0".into(),
                baud: 19200,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1
            }
        );
        assert_eq!(
            (d.timeout, d.retries, d.max_gap),
            (Duration::from_secs(1), 1, 0)
        );
        let mut bad = d.clone();
        bad.unit_id = 0;
        assert!(bad.validate().unwrap_err().contains("`unit_id`"));
    }
}
