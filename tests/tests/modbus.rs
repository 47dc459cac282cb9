//! The gateway polling Modbus devices: a pymodbus simulator (`tests/sim/modbus_sim.py`)
//! as a PLC over TCP, and a second device that never answers. Poll rows go through a
//! Modbus stream and its rules to a file sink, and out to the embedded broker as JSON;
//! a rule writes coils back, and pymodbus's own client reads them from the simulator.
//!
//! Needs `python3` with `pymodbus` and `mosquitto-clients` (installed by
//! `scripts/test.sh`); fails when missing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fieldgate_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn modbus_toml(sim_port: u16, dead_port: u16) -> String {
    format!(
        r#"
[modbus]
republish = true

[[modbus.devices]]
name = "plc1"
transport = {{ type = "tcp", host = "127.0.0.1", port = {sim_port} }}
timeout = "300ms"
retries = 0
reconnect_min = "100ms"
reconnect_max = "500ms"

[[modbus.devices.groups]]
name = "line"
interval = "100ms"
tags = [
  {{ name = "speed", register = 40001, type = "u16" }},
  {{ name = "temp", register = 40043, type = "u16", scale = 0.1, offset = -10.0, unit = "degC" }},
  {{ name = "level", register = 40009, type = "f32", order = "CDAB" }},
  {{ name = "broken", register = 40101 }},
  {{ name = "pump", area = "coil", address = 0, writable = true }},
  {{ name = "valve", area = "coil", address = 1, writable = true }},
]

[[modbus.devices]]
name = "ghost"
transport = {{ type = "tcp", host = "127.0.0.1", port = {dead_port} }}
timeout = "300ms"
retries = 0
reconnect_min = "100ms"
reconnect_max = "500ms"
degraded_after = 2

[[modbus.devices.groups]]
name = "g"
interval = "100ms"
tags = [{{ name = "x", register = 40001, writable = true }}]

[[modbus.devices.groups]]
name = "line"
interval = "100ms"
tags = [{{ name = "speed", register = 40001 }}]

[sinks.local]
type = "file"
path = "out/{{rule}}.jsonl"

[sinks.plc]
type = "modbus"
device = "plc1"

[sinks.ghost_ctl]
type = "modbus"
device = "ghost"
"#
    )
}

const RULES: &str = "
CREATE STREAM line (device STRING, timestamp BIGINT, speed BIGINT, temp DOUBLE,
                    temp_quality STRING, level DOUBLE, broken_quality STRING, pump BOOLEAN)
WITH (TYPE = 'modbus', DATASOURCE = 'plc1/line', TIMESTAMP = 'timestamp');

CREATE STREAM ghost (device STRING, x BIGINT, x_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = 'ghost/g');

CREATE RULE readings INTO local AS
SELECT device, speed, temp, temp_quality, level, broken_quality, pump FROM line;

CREATE RULE ghost_rows INTO local AS SELECT device, x, x_quality FROM ghost;
CREATE RULE poke_ghost INTO ghost_ctl AS SELECT 1 AS x FROM ghost;

-- The `line` group of every device that has one.
CREATE STREAM every_line (device STRING, speed BIGINT, speed_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = '+/line');
CREATE RULE line_devices INTO local AS SELECT device, speed, speed_quality FROM every_line;

-- Too hot: stop the pump, open the valve (two adjacent coils: one FC15 request).
CREATE RULE cool_down INTO plc AS
SELECT false AS pump, true AS valve FROM line WHERE temp > 200 AND pump;
";

/// The result rows a rule wrote to the file sink so far.
fn rows(dir: &Path, rule: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("out/{rule}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}

/// The simulator's coils read by pymodbus's client.
fn coils(port: u16, address: u16, count: u16) -> Vec<bool> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sim/modbus_read.py");
    let out = Command::new("python3")
        .args([script, &port.to_string(), "coils"])
        .args([address.to_string(), count.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "modbus_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list of coils")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_rows_feed_rules_and_a_rule_writes_coils_back() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = ModbusSim::start_tcp();
    assert_eq!(
        coils(sim_port, 0, 2),
        [true, false],
        "the simulator's initial coils"
    );
    // A device that accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let setup = GatewaySetup::new(dir.path(), &modbus_toml(sim_port, silent_port), RULES);
    let gw = Gateway::start(&setup);
    let sub = Subscriber::start(setup.mqtt_port, "modbus-watcher", "modbus/#").await;

    // The values the simulator encodes, computed here: u16 2315 scaled by 0.1 less 10;
    // 1234.5678 as an f32, read back as its shortest decimal form.
    let expected_temp = 2315.0 * 0.1 - 10.0;
    let expected_level: f64 = format!("{}", 1234.5678f32).parse().unwrap();
    assert!(
        eventually(WAIT, || !rows(dir.path(), "readings").is_empty()).await,
        "no poll row reached the rule; log:\n{}",
        gw.log_text()
    );
    let first = &rows(dir.path(), "readings")[0];
    assert_eq!(first["device"], "plc1");
    assert_eq!(first["speed"], 54321);
    assert!(
        (first["temp"].as_f64().unwrap() - expected_temp).abs() < 1e-9,
        "{first}"
    );
    assert_eq!(first["temp_quality"], "ok");
    assert_eq!(first["level"].as_f64(), Some(expected_level), "{first}");
    assert_eq!(first["broken_quality"], "exception:2");

    // temp > 200 with the pump on: the rule switches both coils in one request.
    assert!(
        eventually(WAIT, || coils(sim_port, 0, 2) == [false, true]).await,
        "the coils were not written; log:\n{}",
        gw.log_text()
    );
    let writes: Vec<String> = sim
        .take_requests(0)
        .into_iter()
        .filter(|r| !r.starts_with("REQ fc=1 ") && !r.starts_with("REQ fc=3 "))
        .collect();
    assert!(
        !writes.is_empty() && writes.iter().all(|r| r == "REQ fc=15 addr=0 unit=1"),
        "{writes:?}"
    );
    // Once the pump reads off, the rule stops asking.
    assert!(
        eventually(WAIT, || rows(dir.path(), "readings")
            .iter()
            .any(|r| r["pump"] == false))
        .await
    );

    // The silent device's rows keep coming: `timeout` when it was probed, `offline`
    // between its probes; it never holds up plc1 (polled every 100 ms): plc1 has many
    // more rows.
    assert!(eventually(WAIT, || rows(dir.path(), "ghost_rows").len() >= 8).await);
    let ghost = rows(dir.path(), "ghost_rows");
    assert!(
        ghost
            .iter()
            .all(|r| r["x"].is_null()
                && (r["x_quality"] == "timeout" || r["x_quality"] == "offline")),
        "{ghost:?}"
    );

    // `+/line`: one stream reads the `line` group of both devices, the device a column.
    let every_line = rows(dir.path(), "line_devices");
    let devices: std::collections::BTreeSet<&str> = every_line
        .iter()
        .filter_map(|r| r["device"].as_str())
        .collect();
    assert_eq!(devices, ["ghost", "plc1"].into(), "{every_line:?}");
    assert!(
        every_line
            .iter()
            .any(|r| r["device"] == "plc1" && r["speed"] == 54321)
    );
    // The silent device was probed (a `timeout` in one of its groups), not polled.
    assert!(
        ghost
            .iter()
            .map(|r| &r["x_quality"])
            .chain(
                every_line
                    .iter()
                    .filter(|r| r["device"] == "ghost")
                    .map(|r| &r["speed_quality"])
            )
            .any(|q| q == "timeout"),
        "{ghost:?} {every_line:?}"
    );
    let plc1 = rows(dir.path(), "readings").len();
    assert!(
        plc1 >= ghost.len() * 3 / 2,
        "plc1 polled {plc1} times while the silent device was polled {}",
        ghost.len()
    );
    gw.wait_log(WAIT, &["Modbus device degraded", "ghost"])
        .await;
    // Writes to the silent device stay queued and are retried every second; that it is
    // unreachable is logged once, not at every retry.
    gw.wait_log(WAIT, &["sink unreachable", "ghost_ctl"]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let warnings = gw
        .log_text()
        .lines()
        .filter(|l| l.contains("sink unreachable") && l.contains("ghost_ctl"))
        .count();
    assert_eq!(warnings, 1, "log:\n{}", gw.log_text());

    // Every poll also goes to the embedded broker as JSON.
    let published = sub.json();
    let (_, line) = published
        .iter()
        .find(|(t, _)| t == "modbus/plc1/line")
        .unwrap_or_else(|| panic!("no republished row of plc1/line: {published:?}"));
    assert_eq!(line["device"], "plc1");
    assert_eq!(line["speed"], 54321);
    assert!(
        line["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    assert!(
        published
            .iter()
            .any(|(t, v)| t == "modbus/ghost/g" && v["device"] == "ghost")
    );
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_an_unknown_group_or_tag_is_reported_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = ModbusSim::start_tcp();
    let rules = format!(
        "{RULES}
CREATE STREAM typo (device STRING)
WITH (TYPE = 'modbus', DATASOURCE = 'plc1/lin');
CREATE STREAM wrong_tag (speed BIGINT, sped BIGINT)
WITH (TYPE = 'modbus', DATASOURCE = 'plc1/line');
CREATE STREAM no_group (x BIGINT) WITH (TYPE = 'modbus', DATASOURCE = '+/nosuch');
"
    );
    let setup = GatewaySetup::new(dir.path(), &modbus_toml(sim_port, free_port()), &rules);
    let gw = Gateway::start(&setup);
    gw.wait_log(
        WAIT,
        &[
            "rules/rules.sql:25:37",
            "plc1/lin",
            "not configured",
            "plc1/line",
        ],
    )
    .await;
    gw.wait_log(WAIT, &["rules/rules.sql:27:37", "`sped`", "speed_quality"])
        .await;
    gw.wait_log(
        WAIT,
        &["rules/rules.sql:28:71", "+/nosuch", "no device has a group"],
    )
    .await;
    assert!(
        eventually(WAIT, || !rows(dir.path(), "readings").is_empty()).await,
        "the valid rules did not run; log:\n{}",
        gw.log_text()
    );
    sim.stop();
}

#[test]
fn the_factory_example_config_and_its_rules_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(fieldgate_binary())
        .current_dir(&root)
        .args(["rules", "check", "--config", "configs/factory.toml"])
        .arg("configs/factory/rules")
        .output()
        .expect("fieldgate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: 3 streams, 5 rules"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
