//! `fieldgate simulate`: a load generator. Simulated sensors publish JSON readings over
//! real MQTT TCP connections, at a total rate or as fast as the broker takes them,
//! bounded by a count and a duration. Each payload carries its send time (`sent_us`,
//! epoch microseconds) so that the far end can measure latency. At QoS 1 the report
//! also gives the PUBACK latency: from the PUBLISH written to the socket to its PUBACK.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::task::JoinSet;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Broker host and port.
    pub host: String,
    /// The broker's TCP port.
    pub port: u16,
    /// Simulated devices; each publishes on its own topic.
    pub devices: u32,
    /// MQTT connections the devices share.
    pub connections: u32,
    /// Messages per second over all devices; 0 for as fast as possible.
    pub rate: u64,
    /// Stop after this many messages in all (0: no limit)...
    pub count: u64,
    /// ...or after this long, whichever comes first.
    pub duration: Duration,
    /// QoS of the publishes: 0 or 1.
    pub qos: QoS,
    /// Topic with `{device}` replaced by the device's name (`dev-<n>`).
    pub topic: String,
    /// Extra numeric fields `f0`, `f1`, ... per payload, for larger messages.
    pub fields: u32,
}

/// What was sent.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Report {
    /// Messages handed to the network.
    pub sent: u64,
    /// Of those, acknowledged by the broker (QoS 1; equal to `sent` for QoS 0).
    pub acknowledged: u64,
    /// Time the run took, in seconds.
    pub seconds: f64,
    /// Messages per second achieved.
    pub rate: f64,
    /// PUBACK latency over every acknowledged message (QoS 1 only).
    pub puback: Option<Latency>,
}

/// Percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of samples in microseconds; `None` when there are none.
    fn of(mut micros: Vec<u32>) -> Option<Latency> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
            f64::from(micros[i]) / 1000.0
        };
        Some(Latency {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// Runs the simulation and reports what it sent.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.devices == 0 || opts.connections == 0 {
        bail!("--devices and --connections must be at least 1");
    }
    if opts.count == 0 && opts.duration.is_zero() {
        bail!("give --count or --duration: the simulation must end");
    }
    let connections = opts.connections.min(opts.devices);
    let started = Instant::now();
    let deadline = (!opts.duration.is_zero()).then(|| started + opts.duration);
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        // Devices c, c + connections, ... publish through connection c.
        let devices: Vec<String> = (c..opts.devices)
            .step_by(connections as usize)
            .map(|d| format!("dev-{d}"))
            .collect();
        let share = |total: u64| {
            total / u64::from(connections)
                + u64::from(u64::from(c) < total % u64::from(connections))
        };
        let conn = Connection {
            opts: opts.clone(),
            id: c,
            devices,
            rate: share(opts.rate),
            count: (opts.count > 0).then(|| share(opts.count)),
            deadline,
            sent: sent.clone(),
            acked: acked.clone(),
            latencies: latencies.clone(),
        };
        tasks.spawn(conn.run());
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a simulated connection panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    let micros = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Report {
        sent,
        acknowledged: acked.load(Ordering::Relaxed),
        seconds,
        rate: sent as f64 / seconds.max(1e-9),
        puback: Latency::of(micros),
    })
}

/// One MQTT connection and the devices publishing through it.
struct Connection {
    opts: Options,
    id: u32,
    devices: Vec<String>,
    /// Messages per second on this connection; 0 for unlimited.
    rate: u64,
    count: Option<u64>,
    deadline: Option<Instant>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    /// PUBACK latencies in microseconds, appended by each connection as it ends.
    latencies: Arc<Mutex<Vec<u32>>>,
}

impl Connection {
    async fn run(self) -> anyhow::Result<()> {
        let mut mqtt = MqttOptions::new(
            format!("fieldgate-sim-{}-{}", std::process::id(), self.id),
            self.opts.host.clone(),
            self.opts.port,
        );
        mqtt.set_keep_alive(Duration::from_secs(30))
            .set_inflight(1000)
            .set_request_channel_capacity(1000);
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1000);
        // Hundreds of connections opening at once under full load: a CONNACK may take
        // longer than the client's default 5 s.
        let mut network = eventloop.network_options();
        network.set_connection_timeout(30);
        eventloop.set_network_options(network);
        let qos = self.opts.qos;
        let acked = self.acked.clone();
        let acked_here = Arc::new(AtomicU64::new(0));
        let counted = acked_here.clone();
        let latencies = self.latencies.clone();
        let id = self.id;
        // The event loop: sends what the publisher queues and counts acknowledgements;
        // ends when the publisher has dropped the client and everything went out.
        let network = tokio::spawn(async move {
            // When each packet id in flight was written, and the latencies measured.
            // Keyed by packet id, so only the ids in flight take room.
            let mut written: std::collections::HashMap<u16, Instant> = Default::default();
            let mut micros = Vec::new();
            let result = loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if qos != QoS::AtMostOnce => {
                        written.insert(pkid, Instant::now());
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(at) = written.remove(&ack.pkid) {
                            micros
                                .push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break Ok(()),
                    Ok(_) => {}
                    Err(e) => break Err(anyhow::anyhow!("MQTT connection {id}: {e}")),
                }
            };
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(micros);
            result
        });
        let mut n: u64 = 0;
        let tick = Duration::from_millis(1);
        let started = Instant::now();
        let mut payload = Vec::with_capacity(256);
        loop {
            if self.count.is_some_and(|c| n >= c)
                || self.deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            // Keep to the rate: send what is due by now, then wait a tick.
            if self.rate > 0 {
                let due = (started.elapsed().as_secs_f64() * self.rate as f64) as u64;
                if n >= due {
                    tokio::time::sleep(tick).await;
                    continue;
                }
            }
            let device = &self.devices[(n % self.devices.len() as u64) as usize];
            payload.clear();
            self.payload(&mut payload, device, n);
            let topic = self.opts.topic.replace("{device}", device);
            if let Err(e) = client.publish(topic, qos, false, payload.clone()).await {
                // The connection's event loop ended; its error says why.
                return match network.await {
                    Ok(Err(ended)) => Err(ended),
                    _ => Err(anyhow::anyhow!("publishing: {e}")),
                };
            }
            n += 1;
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        // Let the acknowledgements (QoS 1) or the writes (QoS 0) of this connection's
        // messages arrive, bounded; then disconnect.
        let wait_until = Instant::now() + Duration::from_secs(10);
        while acked_here.load(Ordering::Relaxed) < n
            && Instant::now() < wait_until
            && !network.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = client.disconnect().await;
        match tokio::time::timeout(Duration::from_secs(10), network).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// `{"device":..,"seq":..,"ts":<ms>,"sent_us":<µs>,"temp":..,"humidity":..,"f0":..}`
    fn payload(&self, out: &mut Vec<u8>, device: &str, n: u64) {
        use std::io::Write;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let us = now.as_micros();
        // Smooth, device-specific values: a sensor's reading drifts, it does not jump.
        let phase = (n as f64 / 50.0) + f64::from(self.id);
        let temp = 20.0 + 5.0 * phase.sin();
        let humidity = 50.0 + 10.0 * (phase / 3.0).cos();
        let _ = write!(
            out,
            r#"{{"device":"{device}","seq":{n},"ts":{},"sent_us":{us},"temp":{temp:.2},"humidity":{humidity:.1}"#,
            now.as_millis()
        );
        for f in 0..self.opts.fields {
            let _ = write!(out, r#","f{f}":{:.3}"#, phase + f64::from(f));
        }
        out.push(b'}');
    }
}
