//! `fieldgate simulate` against a running gateway: every message it reports sent and
//! acknowledged reaches a rule, from every simulated device, with its send time.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use fieldgate_e2e::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_reach_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let rules = "CREATE STREAM telemetry (device STRING, seq BIGINT, sent_us BIGINT, temp DOUBLE, f1 DOUBLE)\n\
                 WITH (DATASOURCE = 'sensors/+/telemetry');\n\
                 CREATE RULE all_rows INTO disk AS SELECT device, seq, sent_us, temp, f1 FROM telemetry;\n";
    let setup = GatewaySetup::new(
        &dir,
        "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n",
        rules,
    );
    let gw = Gateway::start(&setup);
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let out = Command::new(fieldgate_binary())
        .args([
            "simulate",
            "--broker",
            &format!("127.0.0.1:{}", setup.mqtt_port),
        ])
        .args([
            "--devices",
            "10",
            "--connections",
            "3",
            "--count",
            "2000",
            "--rate",
            "0",
        ])
        .args(["--qos", "1", "--fields", "2", "--duration", "60s", "--json"])
        .output()
        .expect("fieldgate simulate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(
        (report["sent"].as_u64(), report["acknowledged"].as_u64()),
        (Some(2000), Some(2000)),
        "{report}"
    );

    let rows = || -> Vec<Value> {
        std::fs::read_to_string(dir.join("out/all_rows.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(20), || rows().len() == 2000).await,
        "{} of 2000 rows; log:\n{}",
        rows().len(),
        gw.log_text()
    );
    let rows = rows();
    let devices: BTreeSet<&str> = rows.iter().filter_map(|r| r["device"].as_str()).collect();
    assert_eq!(
        devices,
        (0..10)
            .map(|d| format!("dev-{d}"))
            .collect::<BTreeSet<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
    assert!(
        rows.iter()
            .all(|r| r["sent_us"].as_i64().is_some_and(|t| t >= started_us))
    );
    assert!(rows.iter().all(|r| r["temp"].is_f64() && r["f1"].is_f64()));
    // Sequence numbers per connection are distinct: no message twice.
    let distinct: BTreeSet<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap_or("").to_string(),
                r["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(distinct.len(), 2000);
}

#[test]
fn a_simulation_without_an_end_is_refused() {
    let out = Command::new(fieldgate_binary())
        .args(["simulate", "--count", "0", "--duration", "0s"])
        .output()
        .expect("fieldgate simulate runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count or --duration"));
}
