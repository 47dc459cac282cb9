//! Connections the broker closed for a protocol error, counted by reason.
//!
//! rmqtt decodes packets itself and reports a connection it closed for a bad packet
//! only in its log (one line per connection: "MQTTv3 processing error: ...", "MQTT
//! version detection failed: ..."). A logging layer ([`ProtocolErrorLayer`]) reads those
//! lines, whatever the log level, and counts them here by the error they name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

use crate::logging::SharedRateLimited;

/// Why the broker closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not MQTT, or a version the broker does not speak.
    BadProtocol,
    /// A packet type a client may not send, or none at all.
    InvalidPacketType,
    /// A packet larger than `broker.max_payload_size`.
    TooLarge,
    /// A PUBLISH topic with wildcards, or a bad subscription filter.
    InvalidTopic,
    /// A QoS 1/2 packet without its packet id, or with id 0.
    PacketId,
    /// Lengths, flags or strings that do not add up.
    Malformed,
    /// No CONNECT within `broker.connect_timeout`.
    ConnectTimeout,
    /// A keepalive that ran out.
    KeepaliveTimeout,
    /// Anything else the broker closed a connection for.
    Other,
}

impl ProtocolError {
    /// Every reason, in [`ProtocolError::index`] order.
    pub const ALL: [ProtocolError; 9] = [
        ProtocolError::BadProtocol,
        ProtocolError::InvalidPacketType,
        ProtocolError::TooLarge,
        ProtocolError::InvalidTopic,
        ProtocolError::PacketId,
        ProtocolError::Malformed,
        ProtocolError::ConnectTimeout,
        ProtocolError::KeepaliveTimeout,
        ProtocolError::Other,
    ];

    /// Position in [`ProtocolError::ALL`] and among the counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label in metrics and logs, e.g. `too_large`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::BadProtocol => "bad_protocol",
            ProtocolError::InvalidPacketType => "invalid_packet_type",
            ProtocolError::TooLarge => "too_large",
            ProtocolError::InvalidTopic => "invalid_topic",
            ProtocolError::PacketId => "packet_id",
            ProtocolError::Malformed => "malformed",
            ProtocolError::ConnectTimeout => "connect_timeout",
            ProtocolError::KeepaliveTimeout => "keepalive_timeout",
            ProtocolError::Other => "other",
        }
    }

    /// The reason an rmqtt error text names.
    fn of(text: &str) -> ProtocolError {
        let has = |s: &str| text.contains(s);
        if has("MaxSizeExceeded") || has("OverMaxPacketSize") || has("Max size exceeded") {
            ProtocolError::TooLarge
        } else if has("InvalidTopic") || has("Invalid topic") {
            ProtocolError::InvalidTopic
        } else if has("UnsupportedPacketType")
            || has("Unsupported packet type")
            || has("unimplemented message")
        {
            ProtocolError::InvalidPacketType
        } else if has("PacketId") || has("Packet id") {
            ProtocolError::PacketId
        } else if has("Keep Alive timeout") || has("KeepAliveTimeout") {
            ProtocolError::KeepaliveTimeout
        } else if has("Handshake timeout") || has("Timeout") {
            ProtocolError::ConnectTimeout
        } else if has("InvalidProtocol")
            || has("UnsupportedProtocolLevel")
            || has("version detection failed")
        {
            ProtocolError::BadProtocol
        } else if has("InvalidLength")
            || has("MalformedPacket")
            || has("Malformed packet")
            || has("Utf8Error")
            || has("InvalidClientId")
            || has("Invalid connect flags")
            || has("InvalidConnectFlags")
            || has("reserved flag")
            || has("Decod")
        {
            ProtocolError::Malformed
        } else {
            ProtocolError::Other
        }
    }
}

/// Connections closed for a protocol error since start, by [`ProtocolError::index`].
pub static PROTOCOL_ERRORS: [AtomicU64; ProtocolError::ALL.len()] =
    [const { AtomicU64::new(0) }; ProtocolError::ALL.len()];

/// Counts rmqtt's lines about connections it closed for an error; give it to
/// [`crate::logging::init`].
pub struct ProtocolErrorLayer;

impl ProtocolErrorLayer {
    /// Whether a line of this target is one this layer reads.
    fn reads(target: &str) -> bool {
        target.starts_with("rmqtt")
    }
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for ProtocolErrorLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        use tracing_log::NormalizeEvent;
        let meta = event.normalized_metadata();
        let target = meta
            .as_ref()
            .map_or(event.metadata().target(), |m| m.target());
        if !Self::reads(target) {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        let text = m.0.as_str();
        if text.contains("Connection Refused, handshake, ack_code") {
            if let Some((_, code)) = text.split_once("new_ack_code: ") {
                super::gate::handshake_refused(code.split(',').next().unwrap_or(code));
            }
            return;
        }
        let closed =
            text.contains("processing error:") || text.contains("version detection failed");
        if closed && !gone(text) {
            counted(ProtocolError::of(text), text);
        }
    }
}

/// Counts a session that ended for a protocol error (rmqtt hands the reason to its
/// disconnect hook rather than logging it).
pub fn disconnected(reason: &rmqtt::types::Reason) {
    use rmqtt::types::Reason;
    let (e, detail) = match reason {
        Reason::ProtocolError(t) | Reason::Error(t) if !gone(t) => {
            (ProtocolError::of(t), t.to_string())
        }
        Reason::MqttError(e) => {
            let text = format!("{e:?} {e}");
            if gone(&text) {
                return;
            }
            (ProtocolError::of(&text), text)
        }
        Reason::ConnectKeepaliveTimeout => {
            (ProtocolError::KeepaliveTimeout, "keepalive timeout".into())
        }
        Reason::Reasons(all) => {
            for r in all {
                disconnected(r);
            }
            return;
        }
        _ => return,
    };
    counted(e, &detail);
}

/// Counts one connection closed for `e`, and logs it with rmqtt's words for it
/// (`detail`, cut to 160 bytes) unless one was logged within the last few seconds.
pub fn counted(e: ProtocolError, detail: &str) {
    PROTOCOL_ERRORS[e.index()].fetch_add(1, Ordering::Relaxed);
    static LOG: SharedRateLimited = SharedRateLimited::new(Duration::from_secs(5));
    if let Some(held) = LOG.allow(1) {
        tracing::warn!(
            target: "fieldgate::broker",
            reason = e.as_str(),
            detail = ?cut(detail, 160),
            not_logged_before = held,
            "broker closed a connection for a protocol violation"
        );
    }
}

/// Whether rmqtt's words for a closed connection say that the client went away (it
/// closed or reset the socket, or disconnected): not an error of the protocol.
fn gone(text: &str) -> bool {
    [
        "Disconnected",
        "connection reset",
        "Connection reset",
        "Broken pipe",
        "peer closed",
        "unexpected end of file",
        "UnexpectedEof",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// `text` up to `max` bytes, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Connections closed for `e` since start.
pub fn count(e: ProtocolError) -> u64 {
    PROTOCOL_ERRORS[e.index()].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmqtt_error_texts_map_to_reasons() {
        for (text, want) in [
            (
                "MQTTv3 processing error: Decoding error: MaxSizeExceeded { size: 307210, max: 262144 }, from: 127.0.0.1:5",
                ProtocolError::TooLarge,
            ),
            (
                "MQTTv3 processing error: Decoding error: InvalidTopicName, from: x",
                ProtocolError::InvalidTopic,
            ),
            (
                "MQTT version detection failed: Decoding error: InvalidProtocol, from: x",
                ProtocolError::BadProtocol,
            ),
            (
                "MQTTv3 processing error: Decoding error: UnsupportedPacketType, from: x",
                ProtocolError::InvalidPacketType,
            ),
            (
                "MQTTv5 processing error: Decoding error: MalformedPacket, from: x",
                ProtocolError::Malformed,
            ),
            (
                "MQTTv3 processing error: something new",
                ProtocolError::Other,
            ),
        ] {
            assert_eq!(ProtocolError::of(text), want, "{text}");
        }
    }

    #[test]
    fn a_client_gone_while_the_broker_wrote_is_not_a_protocol_error() {
        use rmqtt::types::Reason;
        let before: Vec<u64> = ProtocolError::ALL.iter().map(|e| count(*e)).collect();
        // The words rmqtt gave for a device that closed its socket while a PUBACK was sent.
        disconnected(&Reason::Error(
            "SendPacket(Encode(Io(\"Broken pipe (os error 32)\"))) Mqtt send packet error".into(),
        ));
        disconnected(&Reason::Error(
            "SendPacket(Encode(Io(\"Connection reset by peer (os error 104)\")))".into(),
        ));
        let after: Vec<u64> = ProtocolError::ALL.iter().map(|e| count(*e)).collect();
        assert_eq!(before, after);
        disconnected(&Reason::Error("Decoding error: MalformedPacket".into()));
        assert_eq!(
            count(ProtocolError::Malformed),
            before[ProtocolError::Malformed.index()] + 1
        );
    }
}
