//! Hostile and malformed input against the running binary while a good stream flows:
//! MQTT packets no client may send, and payloads built to hurt the decoder. After every
//! case the process is alive, the good stream is complete, and the counter for that
//! case moved.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fieldgate_e2e::*;
use rand::{Rng, SeedableRng};

const RULES: &str = "CREATE STREAM readings (device STRING, n BIGINT, tags ARRAY(BIGINT), \
    reading STRUCT(temp DOUBLE))\n\
    WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n\
    CREATE RULE forward INTO disk AS SELECT device, n FROM readings;\n";

const SINKS: &str = "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n";

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    put_mqtt_string(&mut v, s);
    v
}

/// An MQTT 3.1.1 CONNECT with a clean session.
fn connect(client_id: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(string(client_id));
    mqtt_packet(0x10, &body)
}

/// A PUBLISH: QoS in bits 1-2 of `flags`; a packet id follows the topic for QoS > 0.
fn publish(flags: u8, topic: &[u8], pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = pkid {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    mqtt_packet(0x30 | flags, &body)
}

/// Sends `bytes` on a new connection and reads until the server closes it; returns
/// whether it did within `wait`.
fn closed_after(port: u16, bytes: &[u8], wait: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // The server may close while the bytes are still being written.
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn violations(m: &HashMap<String, f64>, reason: &str) -> f64 {
    m.get(&format!(
        "fieldgate_broker_protocol_errors_total{{reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or_else(|| panic!("no protocol error counter for {reason}"))
}

fn rejected(m: &HashMap<String, f64>, reason: &str) -> f64 {
    m.get(&format!(
        "fieldgate_stream_payloads_rejected_total{{stream=\"readings\",reason=\"{reason}\"}}"
    ))
    .copied()
    .unwrap_or_else(|| panic!("no rejection counter for {reason}"))
}

/// The `n`s the file sink wrote.
fn written(dir: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(dir.join("out/forward.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["n"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_and_hostile_payloads_are_refused_and_counted_while_good_data_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let setup = GatewaySetup::new(&dir, SINKS, RULES);
    let gw = Gateway::start(&setup);
    let port = setup.mqtt_port;
    let mut good = 0i64;
    let mut good_batch = || {
        let r = plant_readings(good..good + 50, 3);
        good += 50;
        r
    };

    // Packets that must close the connection, each with the violation it counts.
    let with_connect = |rest: Vec<u8>| [connect(b"bad-client"), rest].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("reserved packet type 0", vec![0x00, 0x00], "bad_protocol"),
        (
            "packet type 15 on MQTT 3.1.1",
            vec![0xF0, 0x00],
            "bad_protocol",
        ),
        (
            "a remaining length of five bytes",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            "bad_protocol",
        ),
        (
            "QoS 3",
            with_connect(publish(0x06, b"plant/m0/reading", Some(7), b"{}")),
            "malformed",
        ),
        (
            "packet id 0",
            with_connect(publish(0x02, b"plant/m0/reading", Some(0), b"{}")),
            "malformed",
        ),
        (
            "PUBLISH before CONNECT",
            publish(0x00, b"plant/m0/reading", None, br#"{"device":"z","n":-1}"#),
            "bad_protocol",
        ),
        (
            "a 1 MB client id",
            connect(&vec![b'c'; 1 << 20]),
            "too_large",
        ),
        (
            "a second CONNECT",
            with_connect(connect(b"again")),
            "invalid_packet_type",
        ),
        (
            "CONNACK from a client",
            with_connect(vec![0x20, 0x02, 0x00, 0x00]),
            "invalid_packet_type",
        ),
        (
            "a payload over max_payload_size",
            with_connect(publish(
                0x00,
                b"plant/m0/reading",
                None,
                &vec![b' '; 300 * 1024],
            )),
            "too_large",
        ),
        (
            "a `+` in a topic name",
            with_connect(publish(
                0x02,
                b"plant/+/reading",
                Some(1),
                br#"{"device":"z","n":-2}"#,
            )),
            "invalid_topic",
        ),
        (
            "a `#` topic name",
            with_connect(publish(0x00, b"#", None, br#"{"device":"z","n":-3}"#)),
            "invalid_topic",
        ),
        (
            "an empty topic name",
            with_connect(publish(0x02, b"", Some(1), br#"{"device":"z","n":-4}"#)),
            "invalid_topic",
        ),
        (
            "a NUL in a topic name",
            with_connect(publish(
                0x00,
                b"plant/m\0/reading",
                None,
                br#"{"device":"z","n":-5}"#,
            )),
            "invalid_topic",
        ),
    ];
    for (what, bytes, reason) in &cases {
        publish_all(port, "good", &good_batch()).await;
        let before = violations(&scrape(setup.admin_port, None), reason);
        let t = Instant::now();
        assert!(
            closed_after(port, bytes, Duration::from_secs(10)),
            "{what}: the connection stayed open"
        );
        eprintln!("{what}: closed after {:?}", t.elapsed());
        let counted = eventually(Duration::from_secs(5), || {
            violations(&scrape(setup.admin_port, None), reason) > before
        })
        .await;
        assert!(
            counted,
            "{what}: `{reason}` was not counted; counted: {:?}; log:\n{}",
            scrape(setup.admin_port, None)
                .into_iter()
                .filter(|(k, v)| k.starts_with("fieldgate_broker_protocol") && *v > 0.0)
                .collect::<Vec<_>>(),
            gw.log_text()
        );
        assert_eq!(
            http_status(setup.admin_port, "/healthz"),
            Some(200),
            "{what}: {}",
            gw.log_text()
        );
    }
    // Random bytes, from a fixed seed.
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let total_before: f64 = scrape(setup.admin_port, None)
        .iter()
        .filter(|(k, _)| k.starts_with("fieldgate_broker_protocol_errors_total"))
        .map(|(_, v)| v)
        .sum();
    for _ in 0..50 {
        let len = rng.random_range(1..200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Bytes that could start a packet leave the connection waiting for more, until
        // the broker's connect timeout: no need to wait that long.
        let _ = closed_after(port, &bytes, Duration::from_millis(300));
    }
    publish_all(port, "good", &good_batch()).await;
    let total_after: f64 = scrape(setup.admin_port, None)
        .iter()
        .filter(|(k, _)| k.starts_with("fieldgate_broker_protocol_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        total_after > total_before,
        "random bytes counted no violation"
    );
    // The broker library logs each of these connections; past its rate limit the lines
    // are counted, not written.
    let suppressed = scrape(setup.admin_port, None)["fieldgate_log_lines_suppressed_total"];
    assert!(suppressed > 0.0, "no library log line was held back");

    // Payloads that must be refused, each with its reason; none of them reaches a rule.
    let deep = format!(
        r#"{{"device":"z","n":-6,"tags":{}{}}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let long_string = format!(r#"{{"device":"{}","n":-7}}"#, "s".repeat(70_000));
    let long_array = format!(
        r#"{{"device":"z","n":-8,"tags":[{}]}}"#,
        vec!["1"; 20_000].join(",")
    );
    let payloads: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "30,000 levels in a declared column",
            deep.into_bytes(),
            "too_deep",
        ),
        (
            "1.5 for a BIGINT",
            br#"{"device":"z","n":1.5}"#.to_vec(),
            "wrong_type",
        ),
        (
            "a fraction inside a declared struct",
            br#"{"device":"z","n":-9,"tags":[2.5]}"#.to_vec(),
            "wrong_type",
        ),
        (
            "a 70 KB string",
            long_string.into_bytes(),
            "string_too_long",
        ),
        (
            "a 20,000-element array",
            long_array.into_bytes(),
            "array_too_long",
        ),
        ("truncated JSON", br#"{"device":"z","#.to_vec(), "malformed"),
        ("a JSON array", b"[1,2,3]".to_vec(), "malformed"),
        (
            "bytes that are not UTF-8",
            b"{\"device\":\"\xff\xfe\"}".to_vec(),
            "not_utf8",
        ),
        ("an empty payload", b"  ".to_vec(), "empty"),
    ];
    for (what, payload, reason) in &payloads {
        let before = rejected(&scrape(setup.admin_port, None), reason);
        let mut msgs = good_batch();
        msgs.insert(25, ("plant/m0/reading".into(), payload.clone()));
        publish_all(port, "good", &msgs).await;
        let counted = eventually(Duration::from_secs(10), || {
            rejected(&scrape(setup.admin_port, None), reason) == before + 1.0
        })
        .await;
        assert!(
            counted,
            "{what}: not counted as `{reason}`; log:\n{}",
            gw.log_text()
        );
    }
    publish_all(port, "good", &good_batch()).await;

    // The good stream is complete, in order, and nothing bad reached the rule.
    let want: Vec<i64> = (0..good).collect();
    let complete = eventually(Duration::from_secs(20), || {
        written(&dir).len() >= want.len()
    })
    .await;
    assert!(
        complete,
        "{} of {good} good readings written; log:\n{}",
        written(&dir).len(),
        gw.log_text()
    );
    let got = written(&dir);
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        want.iter().copied().collect(),
        "only the good readings, each once"
    );
    assert_eq!(got.len(), want.len());
    assert_eq!(http_status(setup.admin_port, "/readyz"), Some(200));
    // Logged, but at a bounded rate.
    let log = gw.log_text();
    assert!(log.len() < 200_000, "the log grew to {} bytes", log.len());
    assert!(log.contains("protocol violation"), "violations are logged");
    assert!(log.contains("payloads refused"), "refusals are logged");
}
