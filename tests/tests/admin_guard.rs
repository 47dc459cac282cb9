//! The admin endpoint against a browser and a flood: cross-origin orders and rebound
//! host names are refused, oversized bodies too, and half-open connections neither
//! starve the endpoint nor take the descriptors devices need.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fieldgate_e2e::*;
use serde_json::Value;

const SINKS: &str = "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n";

fn status_of(port: u16) -> String {
    let (code, body) = http(port, "GET", "/api/rules/forward", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_same_origin_json_changes_state_and_foreign_hosts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let setup = GatewaySetup::new(&tmp.path().join("gw"), SINKS, &forward_rules("disk"));
    let gw = Gateway::start(&setup);
    let port = setup.admin_port;
    let stop = "/api/rules/forward/stop";
    // What a web page can make a browser send: a form post, cross-origin or not.
    for headers in [
        "Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n",
        "Host: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        "Host: localhost\r\nReferer: http://evil.example/x\r\nContent-Type: application/json\r\n",
        "Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n",
        "Host: localhost\r\n",
    ] {
        let (code, body) = http_raw(port, "POST", stop, headers, None);
        assert_eq!(code, 403, "{headers:?}: {body}");
        assert_eq!(status_of(port), "running", "{headers:?} stopped the rule");
    }
    // DNS rebinding: a foreign name for this address reads nothing.
    for path in ["/api/rules", "/metrics", "/healthz", "/readyz"] {
        let (code, _) = http_raw(port, "GET", path, "Host: evil.example\r\n", None);
        assert_eq!(code, 403, "{path} answered a foreign Host");
    }
    let (code, _) = http_raw(port, "GET", "/api/rules", "", None);
    assert_eq!(code, 400, "no Host header");
    // An oversized body is refused before it is read.
    let (code, _) = http_raw(
        port,
        "POST",
        "/api/rules/reload",
        "Host: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n",
        None,
    );
    assert_eq!(code, 413);
    // A script on the box, same-origin JSON: obeyed.
    let (code, body) = http_raw(
        port,
        "POST",
        stop,
        &format!(
            "Host: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        ),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(status_of(port), "stopped");
    assert_eq!(http(port, "POST", "/api/rules/forward/start", None).0, 200);
    assert_eq!(status_of(port), "running");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admin_connections_starve_neither_devices_nor_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let setup = GatewaySetup::new(&dir, SINKS, &forward_rules("disk"));
    // A box with few descriptors, as under systemd's default of 1024, only smaller.
    let gw = Gateway::start_wrapped(&setup, &["prlimit", "--nofile=300:300", "--"]);
    let port = setup.admin_port;
    // More half-open requests than the process has descriptors.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} refused: {e}", idle.len()),
        }
    }
    // Devices still connect and their readings go through.
    publish_all(setup.mqtt_port, "device", &plant_readings(0..200, 4)).await;
    let written = || {
        std::fs::read_to_string(dir.join("out/forward.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(20), || written() == 200).await,
        "{} of 200 readings written; log:\n{}",
        written(),
        gw.log_text()
    );
    // The probes answer, once the held connections time out ahead of them.
    let start = Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || http_status(port, "/healthz")
            == Some(200))
        .await,
        "/healthz did not answer; log:\n{}",
        gw.log_text()
    );
    let waited = start.elapsed();
    // Every half-open connection is closed by the server after its header timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection {i} still open after 60 s");
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => assert!(n > 0, "connection {i}: unexpected data"),
        }
    }
    let log = gw.log_text();
    assert!(log.len() < 200_000, "the log grew to {} bytes", log.len());
    assert!(
        !log.contains("Too many open files"),
        "descriptors ran out:\n{log}"
    );
    eprintln!("/healthz answered after {waited:?}");
}
