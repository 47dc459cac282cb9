//! The listeners' protocol codec: rumqttd's own MQTT 3.1.1 or 5 codec, wrapped.
//!
//! The wrapper sees every packet a device sends, before the router does. It
//! - accepts a CONNECT with keepalive 0, which MQTT allows ("no keepalive") and some
//!   devices send, but rumqttd refuses: it becomes the largest keepalive MQTT can express
//!   (65535 s), which the broker enforces as an idle limit of about 27 hours;
//! - counts connections;
//! - refuses what MQTT forbids and rumqttd lets through, closing the connection as the
//!   specification asks (MQTT 3.1.1 §4.8, MQTT 5 §4.13): a PUBLISH whose topic is empty
//!   (without an MQTT 5 topic alias), holds a wildcard (`+`, `#`) or a NUL (§4.7), a
//!   second CONNECT, a first packet that is not a CONNECT, packets only a server sends;
//! - counts every protocol violation by [`Violation`], those rumqttd's own parser finds
//!   (malformed packets, oversized packets, QoS 3, packet id 0, ...) included, and logs
//!   them at a bounded rate;
//! - counts each PUBLISH into the [`Backpressure`] lag, and holds the listeners' thread
//!   while ingest is too far behind.
//!
//! Where it may hold the thread matters. rumqttd parses a connection's packets in two
//! steps: one read that waits on the socket, then a loop over what is already buffered,
//! run while it holds the lock of the connection's buffer, which the router needs too.
//! Waiting inside that loop would stall the router, and with it ingest. So the codec
//! waits only at the start of a read that follows a partial packet (outside the loop) and
//! before writing a packet (a PUBACK, say); inside the loop it stops parsing instead,
//! and the next read starts outside it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rumqttd::protocol::{self, Packet, Protocol};

use super::BrokerCounters;
use super::backpressure::Backpressure;

/// A protocol violation that closed a device's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A packet that does not parse.
    Malformed,
    /// A packet over `broker.max_payload_size`.
    TooLarge,
    /// A remaining length that is not a valid variable byte integer.
    BadRemainingLength,
    /// A reserved packet type, or one only a server sends.
    InvalidPacketType,
    /// QoS 3.
    InvalidQos,
    /// Packet id 0 where one is required.
    PacketIdZero,
    /// An unknown protocol name or level in CONNECT.
    BadProtocol,
    /// Text that is not UTF-8.
    NotUtf8,
    /// A PUBLISH topic that is empty or holds `+`, `#` or NUL.
    InvalidTopic,
    /// A first packet other than CONNECT.
    ConnectExpected,
    /// A CONNECT on a connection that already sent one.
    SecondConnect,
}

impl Violation {
    /// Every violation, in the order of [`Violation::index`].
    pub const ALL: [Violation; 11] = [
        Violation::Malformed,
        Violation::TooLarge,
        Violation::BadRemainingLength,
        Violation::InvalidPacketType,
        Violation::InvalidQos,
        Violation::PacketIdZero,
        Violation::BadProtocol,
        Violation::NotUtf8,
        Violation::InvalidTopic,
        Violation::ConnectExpected,
        Violation::SecondConnect,
    ];

    /// The violation as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Malformed => "malformed",
            Violation::TooLarge => "too_large",
            Violation::BadRemainingLength => "bad_remaining_length",
            Violation::InvalidPacketType => "invalid_packet_type",
            Violation::InvalidQos => "invalid_qos",
            Violation::PacketIdZero => "packet_id_zero",
            Violation::BadProtocol => "bad_protocol",
            Violation::NotUtf8 => "not_utf8",
            Violation::InvalidTopic => "invalid_topic",
            Violation::ConnectExpected => "connect_expected",
            Violation::SecondConnect => "second_connect",
        }
    }

    /// Position in [`Violation::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The violation a parse error of rumqttd's stands for.
    fn of(e: &protocol::Error) -> Violation {
        use protocol::Error as E;
        match e {
            E::PayloadSizeLimitExceeded(_) | E::PayloadTooLong => Violation::TooLarge,
            E::MalformedRemainingLength | E::InvalidRemainingLength(_) => {
                Violation::BadRemainingLength
            }
            E::InvalidPacketType(_) => Violation::InvalidPacketType,
            E::InvalidQoS(_) => Violation::InvalidQos,
            E::PacketIdZero => Violation::PacketIdZero,
            E::InvalidProtocol | E::InvalidProtocolLevel(_) => Violation::BadProtocol,
            E::TopicNotUtf8 | E::PayloadNotUtf8(_) => Violation::NotUtf8,
            _ => Violation::Malformed,
        }
    }
}

/// Why a PUBLISH topic is not a topic name (MQTT §4.7.3), if it is not one. An empty
/// topic is allowed with an MQTT 5 topic alias, which stands for the topic.
fn topic_problem(topic: &[u8], has_alias: bool) -> Option<&'static str> {
    if topic.is_empty() {
        return (!has_alias).then_some("empty topic");
    }
    if topic.iter().any(|b| matches!(b, b'+' | b'#')) {
        return Some("wildcard in a topic name");
    }
    if topic.contains(&0) {
        return Some("NUL in a topic name");
    }
    None
}

/// One copy per connection: counts the connection from its CONNECT until the copy is
/// dropped with the connection.
pub(super) struct Codec<P> {
    inner: P,
    counters: Arc<BrokerCounters>,
    backpressure: Arc<Backpressure>,
    counted: bool,
    /// The last read returned a packet: this read may be rumqttd's loop over buffered
    /// packets, where waiting is not safe.
    after_packet: bool,
}

impl<P> Codec<P> {
    pub(super) fn new(
        inner: P,
        counters: &Arc<BrokerCounters>,
        backpressure: &Arc<Backpressure>,
    ) -> Self {
        Codec {
            inner,
            counters: counters.clone(),
            backpressure: backpressure.clone(),
            counted: false,
            after_packet: false,
        }
    }
}

impl<P: Clone> Clone for Codec<P> {
    /// A fresh copy for a new connection: not counted yet.
    fn clone(&self) -> Self {
        Codec::new(self.inner.clone(), &self.counters, &self.backpressure)
    }
}

impl<P> Drop for Codec<P> {
    fn drop(&mut self) {
        if self.counted {
            self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<P> Codec<P> {
    /// Counts a violation and returns the error that makes rumqttd close the connection.
    fn refuse(&self, v: Violation, what: &str) -> protocol::Error {
        self.counters.violation(v, what);
        match v {
            Violation::InvalidPacketType => protocol::Error::InvalidPacketType(0),
            _ => protocol::Error::IncorrectPacketFormat,
        }
    }
}

impl<P: Protocol + Clone> Protocol for Codec<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        if self.backpressure.lagging() {
            if self.after_packet {
                // Possibly inside the buffered loop: end it, unparsed bytes stay buffered.
                self.after_packet = false;
                return Err(protocol::Error::InsufficientBytes(1));
            }
            self.backpressure.wait();
        }
        self.after_packet = false;
        let mut packet = match self.inner.read_mut(stream, max_size) {
            Ok(p) => p,
            Err(e @ protocol::Error::InsufficientBytes(_)) => return Err(e),
            Err(e) => {
                self.counters.violation(Violation::of(&e), &e.to_string());
                return Err(e);
            }
        };
        self.after_packet = true;
        match &packet {
            Packet::Connect(..) if self.counted => {
                return Err(self.refuse(Violation::SecondConnect, "a second CONNECT"));
            }
            Packet::Connect(..) => {}
            _ if !self.counted => {
                return Err(self.refuse(Violation::ConnectExpected, "a packet before CONNECT"));
            }
            Packet::ConnAck(..)
            | Packet::SubAck(..)
            | Packet::UnsubAck(..)
            | Packet::PingResp(..) => {
                return Err(
                    self.refuse(Violation::InvalidPacketType, "a packet only a server sends")
                );
            }
            Packet::Publish(p, props) => {
                let alias = props.as_ref().is_some_and(|pr| pr.topic_alias.is_some());
                if let Some(why) = topic_problem(&p.topic, alias) {
                    return Err(self.refuse(Violation::InvalidTopic, why));
                }
            }
            _ => {}
        }
        match &mut packet {
            // `$` topics match no `#` subscription, so ingest never takes them.
            Packet::Publish(p, ..) if !p.topic.starts_with(b"$") => self
                .backpressure
                .accepted(Backpressure::size(p.topic.len(), p.payload.len())),
            Packet::Connect(connect, ..) => {
                if connect.keep_alive == 0 {
                    connect.keep_alive = u16::MAX;
                }
                // The first CONNECT: a second one was refused above.
                self.counted = true;
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        self.backpressure.wait();
        self.inner.write(packet, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_specification() {
        assert_eq!(topic_problem(b"plant/m1/reading", false), None);
        assert_eq!(topic_problem(b"/", false), None);
        assert_eq!(topic_problem(b"a b/\xc3\xa9", false), None);
        assert!(topic_problem(b"", false).is_some());
        assert_eq!(topic_problem(b"", true), None, "MQTT 5 topic alias");
        assert!(topic_problem(b"plant/+/reading", false).is_some());
        assert!(topic_problem(b"plant/#", false).is_some());
        assert!(topic_problem(b"a+b", false).is_some());
        assert!(topic_problem(b"plant/\0x", false).is_some());
    }
}
