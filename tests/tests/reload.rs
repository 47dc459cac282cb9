//! Live reload of rule files under a running gateway: a ConfigMap-style update seen by
//! the file watch, a change only SIGHUP can reveal, and an edit with a syntax error.
//! Results go through the real MQTT sink to a real mosquitto.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use fieldgate_e2e::*;

const T0: i64 = 1_764_000_000_000;

const STREAM: &str = "CREATE STREAM telemetry (device STRING, ts BIGINT, temp DOUBLE)
WITH (DATASOURCE = 'sensors/+/telemetry', FORMAT = 'json',
      TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '1s');
";

/// Rule A: one 10-second window over every reading.
const RULE_A: &str = "CREATE RULE a INTO cloud AS
SELECT window_start, count(*) AS n, sum(temp) AS total
FROM telemetry GROUP BY TUMBLINGWINDOW(ss, 10);
";

/// Rule B, first version: hot readings.
const RULE_B1: &str =
    "CREATE RULE b INTO cloud AS SELECT device, temp FROM telemetry WHERE temp > 50;\n";

/// Rule B, second version: a lower threshold and one more column.
const RULE_B2: &str = "CREATE RULE b INTO cloud AS
SELECT device, temp, 'v2' AS version FROM telemetry WHERE temp > 20;
";

const WAIT: Duration = Duration::from_secs(20);

fn readings(device: &str, rows: &[(i64, f64)]) -> Vec<(String, Vec<u8>)> {
    rows.iter()
        .map(|(ts, t)| {
            (
                format!("sensors/{device}/telemetry"),
                format!(r#"{{"device":"{device}","ts":{ts},"temp":{t}}}"#).into_bytes(),
            )
        })
        .collect()
}

/// Results of `rule` that arrived, deduplicated (delivery is at least once).
fn results(sub: &Subscriber, rule: &str) -> Vec<serde_json::Value> {
    let topic = format!("fieldgate/gw-test/{rule}");
    let mut out: Vec<serde_json::Value> = Vec::new();
    for (t, v) in sub.json() {
        if t == topic && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

async fn wait_results(
    sub: &Subscriber,
    gw: &Gateway,
    rule: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let arrived = eventually(WAIT, || results(sub, rule).len() >= n).await;
    assert!(
        arrived,
        "{} of {n} results of `{rule}` arrived: {:?}; log:\n{}",
        results(sub, rule).len(),
        results(sub, rule),
        gw.log_text()
    );
    results(sub, rule)
}

fn temps(rows: &[serde_json::Value], with_version: bool) -> BTreeSet<i64> {
    rows.iter()
        .filter(|v| v.get("version").is_some() == with_version)
        .map(|v| v["temp"].as_f64().expect("temp") as i64)
        .collect()
}

fn cloud_sink(port: u16) -> String {
    format!("[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\n")
}

/// Lays the rules directory out as Kubernetes mounts a ConfigMap: the files are
/// symlinks through `..data`, itself a symlink to a timestamped directory.
fn configmap_write(rules: &Path, version: &str, text: &str) {
    let dir = rules.join(format!("..{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.sql"), text).unwrap();
    let tmp = rules.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    // The swap is one rename, as the kubelet does it.
    std::fs::rename(&tmp, rules.join("..data")).unwrap();
    let file = rules.join("rules.sql");
    if std::fs::symlink_metadata(&file).is_ok_and(|m| !m.file_type().is_symlink()) {
        std::fs::remove_file(&file).unwrap();
    }
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/rules.sql", &file).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_switches_the_changed_rule_and_keeps_the_other_window() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &cloud_sink(cloud.port),
        &format!("{STREAM}{RULE_A}{RULE_B1}"),
    );
    let rules = setup.dir.join("rules");
    configmap_write(&rules, "v1", &format!("{STREAM}{RULE_A}{RULE_B1}"));
    let mut gw = Gateway::start(&setup);
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/#").await;

    // First half of A's window [T0, T0 + 10 s): temps 10, 20, ..., 100.
    let first: Vec<(i64, f64)> = (0..10)
        .map(|i| (T0 + i * 400, 10.0 * (i + 1) as f64))
        .collect();
    publish_all(setup.mqtt_port, "dev-a", &readings("d1", &first)).await;
    // B's first version passes 60..=100; the last reading passes, so once its result
    // is here every reading of the first half went through both rules.
    let b = wait_results(&sub, &gw, "b", 5).await;
    assert_eq!(temps(&b, false), BTreeSet::from([60, 70, 80, 90, 100]));

    // The update changes only B.
    configmap_write(&rules, "v2", &format!("{STREAM}{RULE_A}{RULE_B2}"));
    std::fs::remove_dir_all(rules.join("..v1")).unwrap();
    let line = gw
        .wait_log(WAIT, &["rules reloaded", "trigger=file change"])
        .await;
    assert!(line.contains(r#"rules_changed=["b"]"#), "{line}");
    assert!(line.contains("rules_unchanged=1"), "{line}");
    assert!(line.contains("errors=0"), "{line}");

    // Second half of the same window: temps 15, 25, ..., 105; then a reading far
    // ahead (not hot for either version) closes the window.
    let mut second: Vec<(i64, f64)> = (0..10)
        .map(|i| (T0 + 5_000 + i * 400, 10.0 * i as f64 + 15.0))
        .collect();
    second.push((T0 + 30_000, 0.0));
    publish_all(setup.mqtt_port, "dev-b", &readings("d2", &second)).await;

    let a = wait_results(&sub, &gw, "a", 1).await;
    let sum_first: f64 = first.iter().map(|r| r.1).sum();
    let sum_second: f64 = second[..10].iter().map(|r| r.1).sum();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["window_start"].as_i64(), Some(T0 - T0 % 10_000));
    assert_eq!(
        a[0]["n"].as_i64(),
        Some(20),
        "A's window must count the rows from before and after the reload: {a:?}"
    );
    assert_eq!(a[0]["total"].as_f64(), Some(sum_first + sum_second));

    // B switched over exactly at the reload: old version before, new version after.
    let b = wait_results(&sub, &gw, "b", 5 + 9).await;
    assert_eq!(temps(&b, false), BTreeSet::from([60, 70, 80, 90, 100]));
    assert_eq!(
        temps(&b, true),
        (2..=10).map(|i| i * 10 + 5).collect::<BTreeSet<i64>>()
    );
    assert_eq!(b.len(), 14, "{b:?}");
    assert!(
        b.iter()
            .filter(|v| v.get("version").is_some())
            .all(|v| v["version"] == "v2" && v["device"] == "d2"),
        "{b:?}"
    );
    assert!(gw.terminate(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_file_watch_cannot_see() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &cloud_sink(cloud.port),
        &format!("{STREAM}{RULE_B1}"),
    );
    // A rule file that links outside the watched directory: editing its target
    // changes no entry of the directory, so only SIGHUP reloads it.
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("extra.sql"), "-- nothing yet\n").unwrap();
    std::os::unix::fs::symlink(outside.join("extra.sql"), setup.dir.join("rules/extra.sql"))
        .unwrap();
    let mut gw = Gateway::start(&setup);
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/#").await;

    std::fs::write(
        outside.join("extra.sql"),
        "CREATE RULE c INTO cloud AS SELECT device, temp * 10 AS deci FROM telemetry;\n",
    )
    .unwrap();
    // Longer than the watch's debounce: nothing reloads on its own (reading the files
    // at start did not trigger a reload either).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !gw.log_text().contains("rules reloaded"),
        "reloaded without SIGHUP:\n{}",
        gw.log_text()
    );

    gw.signal("HUP");
    let line = gw
        .wait_log(WAIT, &["rules reloaded", "trigger=SIGHUP"])
        .await;
    assert!(line.contains(r#"rules_added=["c"]"#), "{line}");
    assert!(line.contains("rules_unchanged=1"), "{line}");

    let rows = [(T0, 30.0), (T0 + 100, 60.0), (T0 + 200, 70.0)];
    publish_all(setup.mqtt_port, "dev", &readings("d1", &rows)).await;
    let c = wait_results(&sub, &gw, "c", 3).await;
    let deci: BTreeSet<i64> = c
        .iter()
        .map(|v| v["deci"].as_f64().unwrap() as i64)
        .collect();
    assert_eq!(deci, BTreeSet::from([300, 600, 700]));
    let b = wait_results(&sub, &gw, "b", 2).await;
    assert_eq!(temps(&b, false), BTreeSet::from([60, 70]));

    // A second SIGHUP with nothing changed restarts nothing.
    gw.signal("HUP");
    gw.wait_log(WAIT, &["rules reloaded; nothing changed", "trigger=SIGHUP"])
        .await;
    assert!(gw.terminate(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_keeps_the_previous_version_running() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let rule_c1 = "CREATE RULE c INTO cloud AS SELECT device FROM telemetry WHERE temp > 0;\n";
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &cloud_sink(cloud.port),
        &format!("{STREAM}{RULE_B1}{rule_c1}"),
    );
    let mut gw = Gateway::start(&setup);
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/#").await;

    // B gets a typo on line 5, C a valid change, in one edit of the file.
    let broken = format!(
        "{STREAM}\nCREATE RULE b INTO cloud AS SELEC device, temp FROM telemetry WHERE temp > 20;\n\
         CREATE RULE c INTO cloud AS SELECT device, temp FROM telemetry WHERE temp > 0;\n"
    );
    std::fs::write(setup.dir.join("rules/rules.sql"), broken).unwrap();
    let error = gw
        .wait_log(WAIT, &["rule file error", "rules.sql:5:"])
        .await;
    assert!(error.contains("SELEC"), "{error}");
    let line = gw
        .wait_log(WAIT, &["rules reloaded", "trigger=file change"])
        .await;
    assert!(line.contains("errors=1"), "{line}");
    assert!(line.contains(r#"rules_changed=["c"]"#), "{line}");
    assert!(line.contains("rules_removed=[]"), "{line}");
    gw.wait_log(WAIT, &["previous versions keep running", "rule b"])
        .await;

    // B's previous version (above 50) still runs; C's new one shows the temperature.
    let rows = [(T0, 30.0), (T0 + 100, 60.0)];
    publish_all(setup.mqtt_port, "dev", &readings("d1", &rows)).await;
    let c = wait_results(&sub, &gw, "c", 2).await;
    assert!(c.iter().all(|v| v.get("temp").is_some()), "{c:?}");
    let b = wait_results(&sub, &gw, "b", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_now = results(&sub, "b");
    assert_eq!(b_now, b, "B's broken version must not run");
    assert_eq!(temps(&b, false), BTreeSet::from([60]));
    assert!(gw.terminate(Duration::from_secs(20)).success());
}
