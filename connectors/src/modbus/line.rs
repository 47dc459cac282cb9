//! Connections: one [`Line`] per TCP device or per serial port, shared by every unit id
//! polled through it, with reconnect backoff. Requests on a line take turns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Instant;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

use super::config::{Parity, Transport};
use crate::retry::backoff;

/// A line shared by the pollers of the devices on it.
pub type SharedLine = Arc<tokio::sync::Mutex<Line>>;

/// Why no connection is available right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The connection attempt did not finish within the timeout.
    Timeout,
    /// Refused, unreachable, port missing, or still waiting out the reconnect backoff.
    Io,
}

/// A transport endpoint and its current connection.
pub struct Line {
    transport: Transport,
    ctx: Option<Context>,
    /// Failed connection attempts in a row.
    attempt: u32,
    /// No new attempt before this instant.
    retry_at: Option<Instant>,
    reconnect_min: Duration,
    reconnect_max: Duration,
    /// Silence after each RTU transaction (3.5 character times); zero over TCP.
    frame_gap: Duration,
    /// Bytes read from the serial port so far, so that a request that timed out can be
    /// told apart: silence, or an answer the RTU decoder threw away (CRC or framing).
    received: Arc<AtomicU64>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("transport", &self.transport)
            .field("connected", &self.ctx.is_some())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Line {
    /// A line that connects on first use.
    pub fn new(transport: Transport, reconnect_min: Duration, reconnect_max: Duration) -> Self {
        let frame_gap = match &transport {
            Transport::Tcp { .. } => Duration::ZERO,
            // 3.5 characters of 11 bits; fixed at 1.75 ms above 19200 baud (Modbus over
            // serial line spec, 2.5.1.1).
            Transport::Rtu { baud, .. } if *baud > 19_200 => Duration::from_micros(1750),
            Transport::Rtu { baud, .. } => {
                Duration::from_micros(38_500_000 / u64::from((*baud).max(1)))
            }
        };
        Line {
            transport,
            ctx: None,
            attempt: 0,
            retry_at: None,
            reconnect_min,
            reconnect_max,
            frame_gap,
            received: Arc::default(),
        }
    }

    /// Bytes received on a serial line since it was created; always 0 over TCP.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Wraps the line for sharing.
    pub fn shared(self) -> SharedLine {
        Arc::new(tokio::sync::Mutex::new(self))
    }

    /// Silence to keep after each transaction.
    pub fn frame_gap(&self) -> Duration {
        self.frame_gap
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.ctx.is_some()
    }

    /// The open connection, connecting first if the backoff allows (or, with `now`, at
    /// once: a poller probing a silent device has waited out a backoff of its own).
    pub async fn context(
        &mut self,
        timeout: Duration,
        now: bool,
    ) -> Result<&mut Context, ConnectFailure> {
        if self.ctx.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
                && !now
            {
                return Err(ConnectFailure::Io);
            }
            let result = match tokio::time::timeout(
                timeout,
                open(self.transport.clone(), self.received.clone()),
            )
            .await
            {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(e)) => {
                    if self.attempt == 0 {
                        tracing::warn!(line = %self.describe(), error = %e, "Modbus line cannot be opened; retrying with backoff");
                    } else {
                        tracing::debug!(line = %self.describe(), error = %e, "Modbus connect failed");
                    }
                    Err(ConnectFailure::Io)
                }
                Err(_) => {
                    if self.attempt == 0 {
                        tracing::warn!(line = %self.describe(), "Modbus line: no connection within the timeout; retrying with backoff");
                    }
                    Err(ConnectFailure::Timeout)
                }
            };
            match result {
                Ok(ctx) => {
                    if self.attempt > 0 {
                        tracing::info!(line = %self.describe(), failed_attempts = self.attempt, "Modbus line open again");
                    }
                    self.attempt = 0;
                    self.retry_at = None;
                    self.ctx = Some(ctx);
                }
                Err(e) => {
                    self.retry_at = Some(
                        Instant::now()
                            + backoff(self.attempt, self.reconnect_min, self.reconnect_max),
                    );
                    self.attempt = self.attempt.saturating_add(1);
                    return Err(e);
                }
            }
        }
        self.ctx.as_mut().ok_or(ConnectFailure::Io)
    }

    /// The line as a person names it: `host:port` or the serial port's path.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Tcp { host, port } => format!("{host}:{port}"),
            Transport::Rtu { path, .. } => format!("serial port {path}"),
        }
    }

    /// Drops the connection after a timeout or I/O error; the next use reconnects.
    pub fn reset(&mut self) {
        self.ctx = None;
    }
}

/// Opens a connection (the line itself is not `Sync`, so this takes the transport alone).
async fn open(transport: Transport, received: Arc<AtomicU64>) -> io::Result<Context> {
    match &transport {
        Transport::Tcp { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in tokio::net::lookup_host((host.as_str(), *port)).await? {
                match tcp::connect(addr).await {
                    Ok(ctx) => return Ok(ctx),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Transport::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            use tokio_serial::{DataBits, StopBits};
            let builder = tokio_serial::new(path, *baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(match data_bits {
                    5 => DataBits::Five,
                    6 => DataBits::Six,
                    7 => DataBits::Seven,
                    _ => DataBits::Eight,
                })
                .stop_bits(if *stop_bits == 2 {
                    StopBits::Two
                } else {
                    StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)?;
            Ok(rtu::attach(Counted {
                inner: port,
                received,
            }))
        }
    }
}

/// A serial port that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
