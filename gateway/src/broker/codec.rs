//! The listeners' protocol codec: rumqttd's own MQTT 3.1.1 or 5 codec, wrapped.
//!
//! The wrapper sees every packet a device sends, before the router does. It
//! - accepts a CONNECT with keepalive 0, which MQTT allows ("no keepalive") and some
//!   devices send, but rumqttd refuses: it becomes the largest keepalive MQTT can express
//!   (65535 s), which the broker enforces as an idle limit of about 27 hours;
//! - counts connections;
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
        let mut packet = self.inner.read_mut(stream, max_size)?;
        self.after_packet = true;
        match &mut packet {
            // `$` topics match no `#` subscription, so ingest never takes them.
            Packet::Publish(p, ..) if !p.topic.starts_with(b"$") => self
                .backpressure
                .accepted(Backpressure::size(p.topic.len(), p.payload.len())),
            Packet::Connect(connect, ..) => {
                if connect.keep_alive == 0 {
                    connect.keep_alive = u16::MAX;
                }
                if !self.counted {
                    self.counted = true;
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                }
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
