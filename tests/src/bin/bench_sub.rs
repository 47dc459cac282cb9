//! `bench_sub`: the far end of `scripts/bench.sh`. Subscribes to a broker (the cloud
//! mosquitto), counts what arrives and measures each row's latency from the `sent_us`
//! (epoch µs) that `fieldgate simulate` put in the payload to the moment the row
//! arrived here. Prints one JSON object when it got `--count` rows, or when nothing
//! arrived for `--idle` after the first message, or at `--timeout`.
//!
//! It speaks just enough MQTT 3.1.1 over a blocking socket (CONNECT, SUBSCRIBE at
//! QoS 0, PUBLISH in) to stay cheap at several hundred thousand messages per second:
//! on a 2-core machine it shares the CPU with the system it measures.
//!
//! ```text
//! bench_sub --broker 127.0.0.1:1883 [--topic '#'] [--count N] [--idle 3s]
//!           [--timeout 600s] [--ready FILE]
//! ```
//!
//! A payload may be one JSON object or a JSON array of them (the MQTT sink's
//! `json_array` format): every `"sent_us":<digits>` in it is one row.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fieldgate_e2e::{mqtt_packet, put_mqtt_string};

struct Args {
    broker: String,
    topic: String,
    count: u64,
    idle: Duration,
    timeout: Duration,
    ready: Option<String>,
}

fn parse_secs(s: &str) -> anyhow::Result<Duration> {
    let (n, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    Ok(Duration::from_secs_f64(v * scale))
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        broker: "127.0.0.1:1883".into(),
        topic: "#".into(),
        count: 0,
        idle: Duration::from_secs(3),
        timeout: Duration::from_secs(600),
        ready: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--broker" => a.broker = v()?,
            "--topic" => a.topic = v()?,
            "--count" => a.count = v()?.parse().context("--count")?,
            "--idle" => a.idle = parse_secs(&v()?)?,
            "--timeout" => a.timeout = parse_secs(&v()?)?,
            "--ready" => a.ready = Some(v()?),
            _ => bail!("unknown argument {k:?}"),
        }
    }
    Ok(a)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Reads one packet: its first byte and its body into `body`. `Ok(None)` on a read
/// timeout before the packet started.
fn read_packet(r: &mut impl Read, body: &mut Vec<u8>) -> anyhow::Result<Option<u8>> {
    let mut first = [0u8; 1];
    match r.read(&mut first) {
        Ok(0) => bail!("the broker closed the connection"),
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        read_full(r, &mut b)?;
        len |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("malformed remaining length");
        }
    }
    body.resize(len, 0);
    read_full(r, body)?;
    Ok(Some(first[0]))
}

/// `read_exact` that waits through read timeouts (a packet already started).
fn read_full(r: &mut impl Read, mut buf: &mut [u8]) -> anyhow::Result<()> {
    while !buf.is_empty() {
        match r.read(buf) {
            Ok(0) => bail!("the broker closed the connection"),
            Ok(n) => buf = &mut buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Every `"sent_us":<digits>` in a payload.
fn sent_times(payload: &[u8], mut each: impl FnMut(i64)) {
    const KEY: &[u8] = b"\"sent_us\":";
    let mut i = 0;
    while let Some(at) = find(&payload[i..], KEY) {
        let mut j = i + at + KEY.len();
        while payload.get(j) == Some(&b' ') {
            j += 1;
        }
        let mut v: i64 = 0;
        let start = j;
        while let Some(d) = payload.get(j).filter(|d| d.is_ascii_digit()) {
            v = v * 10 + i64::from(d - b'0');
            j += 1;
        }
        if j > start {
            each(v);
        }
        i = j;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let stream =
        TcpStream::connect(&a.broker).with_context(|| format!("cannot connect to {}", a.broker))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, stream);

    // CONNECT: MQTT 3.1.1, clean session, keepalive 0 (no pings needed).
    let mut body = Vec::new();
    put_mqtt_string(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    put_mqtt_string(
        &mut body,
        format!("bench-sub-{}", std::process::id()).as_bytes(),
    );
    w.write_all(&mqtt_packet(0x10, &body))?;
    // SUBSCRIBE, packet id 1, QoS 0.
    let mut body = vec![0, 1];
    put_mqtt_string(&mut body, a.topic.as_bytes());
    body.push(0);
    w.write_all(&mqtt_packet(0x82, &body))?;

    let started = Instant::now();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut subscribed = false;
    let mut messages: u64 = 0;
    let mut rows: u64 = 0;
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 22);
    let mut first_us: i64 = 0;
    let mut last_us: i64 = 0;
    let mut last_seen = Instant::now();
    let mut ended = "timeout";
    while started.elapsed() < a.timeout {
        let Some(kind) = read_packet(&mut r, &mut buf)? else {
            if messages > 0 && last_seen.elapsed() >= a.idle {
                ended = "idle";
                break;
            }
            continue;
        };
        match kind >> 4 {
            2 if buf.len() < 2 || buf[1] != 0 => bail!("CONNECT refused: {buf:?}"),
            9 => {
                if buf.last() == Some(&0x80) {
                    bail!("SUBSCRIBE to {:?} refused", a.topic);
                }
                subscribed = true;
                if let Some(path) = &a.ready {
                    std::fs::write(path, "ready\n")?;
                }
            }
            3 => {
                let arrived = now_us();
                let qos = (kind >> 1) & 3;
                if buf.len() < 2 {
                    bail!("short PUBLISH");
                }
                let topic_len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let mut at = 2 + topic_len;
                if qos > 0 {
                    // Granted QoS is 0, so this does not happen; answer anyway.
                    let id = [buf[at], buf[at + 1]];
                    at += 2;
                    if qos == 1 {
                        w.write_all(&[0x40, 2, id[0], id[1]])?;
                    }
                }
                messages += 1;
                if first_us == 0 {
                    first_us = arrived;
                }
                last_us = arrived;
                last_seen = Instant::now();
                let mut n = 0;
                sent_times(&buf[at.min(buf.len())..], |sent| {
                    n += 1;
                    lat.push((arrived - sent).clamp(0, i64::from(u32::MAX)) as u32);
                });
                // A payload without sent_us (a window's result) is one row.
                rows += n.max(1);
                if a.count > 0 && rows >= a.count {
                    ended = "count";
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = w.write_all(&[0xe0, 0]);
    if !subscribed {
        bail!("no SUBACK from {}", a.broker);
    }
    lat.sort_unstable();
    let seconds = (last_us - first_us) as f64 / 1e6;
    let report = serde_json::json!({
        "ended": ended,
        "messages": messages,
        "rows": rows,
        "rows_with_sent_us": lat.len(),
        "first_arrival_us": first_us,
        "last_arrival_us": last_us,
        "seconds": seconds,
        "rate": if seconds > 0.0 { rows as f64 / seconds } else { 0.0 },
        "p50_us": percentile(&lat, 50.0),
        "p90_us": percentile(&lat, 90.0),
        "p99_us": percentile(&lat, 99.0),
        "max_us": lat.last(),
    });
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_sent_time() {
        let mut got = Vec::new();
        sent_times(
            br#"[{"_msg_id":"a","sent_us":12,"temp":1},{"sent_us": 345}]"#,
            |v| got.push(v),
        );
        assert_eq!(got, [12, 345]);
    }

    #[test]
    fn percentiles_by_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn remaining_length_round_trip() {
        for n in [0usize, 127, 128, 16_383, 16_384, 2_000_000] {
            let p = mqtt_packet(0x30, &vec![0; n]);
            let mut r = &p[..];
            let mut body = Vec::new();
            assert_eq!(read_packet(&mut r, &mut body).unwrap(), Some(0x30));
            assert_eq!(body.len(), n);
        }
    }
}
