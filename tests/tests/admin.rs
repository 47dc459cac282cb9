//! The operations surface of a running gateway: `/metrics` after real traffic, the
//! REST API (rules stopped and started, a rule file changed on disk), the bearer token,
//! secrets kept out of the log, and `fieldgate validate`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fieldgate_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

const SINKS: &str = "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n";

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in /metrics; samples: {:?}", m.keys()))
}

fn lines(dir: &Path, rule: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("out/{rule}.jsonl")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn api(port: u16, method: &str, path: &str) -> Value {
    let (status, body) = http(port, method, path, None);
    assert_eq!(status, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

fn rule<'a>(rules: &'a Value, name: &str) -> &'a Value {
    rules["rules"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no rule {name} in {rules}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_was_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let setup = GatewaySetup::new(&dir, SINKS, &forward_rules("disk"));
    let gw = Gateway::start(&setup);

    let mut msgs = plant_readings(0..500, 5);
    for i in 0..7 {
        msgs.push((format!("plant/m{i}/reading"), b"{not json".to_vec()));
    }
    msgs.push(("elsewhere/x".into(), b"{}".to_vec()));
    publish_all(setup.mqtt_port, "dev", &msgs).await;
    assert!(
        eventually(WAIT, || {
            let m = scrape(setup.admin_port, None);
            m.get("fieldgate_sink_delivered_total{sink=\"disk\"}") == Some(&500.0)
                && m.get("fieldgate_stream_decode_errors_total{stream=\"readings\"}") == Some(&7.0)
        })
        .await,
        "not all results delivered; log:\n{}",
        gw.log_text()
    );
    let m = scrape(setup.admin_port, None);
    let rule = "{rule=\"forward\",stream=\"readings\"}";
    for (key, expected) in [
        ("fieldgate_mqtt_messages_received_total".to_string(), 508.0),
        ("fieldgate_mqtt_messages_unrouted_total".into(), 1.0),
        (
            "fieldgate_stream_rows_total{stream=\"readings\"}".into(),
            500.0,
        ),
        (
            "fieldgate_stream_decode_errors_total{stream=\"readings\"}".into(),
            7.0,
        ),
        (format!("fieldgate_rule_records_in_total{rule}"), 500.0),
        (format!("fieldgate_rule_records_out_total{rule}"), 500.0),
        (format!("fieldgate_rule_late_records_total{rule}"), 0.0),
        (format!("fieldgate_rule_running{rule}"), 1.0),
        ("fieldgate_queue_entries{sink=\"disk\"}".into(), 0.0),
        (
            "fieldgate_queue_dropped_total{sink=\"disk\",reason=\"oldest\"}".into(),
            0.0,
        ),
        ("fieldgate_sink_up{sink=\"disk\"}".into(), 1.0),
        ("fieldgate_ready".into(), 1.0),
    ] {
        assert_eq!(value(&m, &key), expected, "{key}");
    }
    assert_eq!(lines(&dir, "forward"), 500);
    // Bytes in are the payloads the stream decoded, good and bad. Bytes out are the
    // results' payloads, before a sink adds its own framing (the file sink stamps an id
    // into each line): the rule forwards both fields as they came, so each result is
    // byte for byte its reading's payload.
    let bytes_in: usize = msgs
        .iter()
        .filter(|(t, _)| t.starts_with("plant/"))
        .map(|(_, p)| p.len())
        .sum();
    let readings = &msgs[..500];
    let bytes_out: usize = readings.iter().map(|(_, p)| p.len()).sum();
    let written = std::fs::read_to_string(dir.join("out/forward.jsonl")).unwrap();
    for (_, p) in readings {
        let body = String::from_utf8_lossy(&p[1..p.len() - 1]).into_owned();
        assert!(written.contains(&body), "{body} not written");
    }
    assert_eq!(
        value(&m, "fieldgate_stream_bytes_in_total{stream=\"readings\"}"),
        bytes_in as f64
    );
    assert_eq!(
        value(&m, "fieldgate_sink_delivered_bytes_total{sink=\"disk\"}"),
        bytes_out as f64
    );
    // One histogram observation per batch the rule ran, the +Inf bucket holding them all.
    let count = value(
        &m,
        &format!("fieldgate_rule_batch_duration_seconds_count{rule}"),
    );
    let inf = value(
        &m,
        "fieldgate_rule_batch_duration_seconds_bucket{rule=\"forward\",stream=\"readings\",le=\"+Inf\"}",
    );
    assert!(count >= 1.0 && inf == count, "count {count}, +Inf {inf}");
    assert!(value(&m, "fieldgate_broker_connections_accepted_total") >= 1.0);
    assert!(value(&m, "process_resident_memory_bytes") > 1e6);
    assert!(m.contains_key("fieldgate_build_info{version=\"0.1.0\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_listed_stopped_started_and_reloaded_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let setup = GatewaySetup::new(&dir, SINKS, &forward_rules("disk"));
    let mut gw = Gateway::start(&setup);
    let port = setup.admin_port;

    publish_all(setup.mqtt_port, "dev", &plant_readings(0..50, 2)).await;
    assert!(eventually(WAIT, || lines(&dir, "forward") == 50).await);
    let rules = api(port, "GET", "/api/rules");
    let forward = rule(&rules, "forward");
    assert_eq!(forward["status"], "running");
    assert_eq!(forward["records_in"], 50);
    assert_eq!(forward["sinks"], serde_json::json!(["disk"]));
    assert_eq!(rules["streams"][0]["rows"], 50);

    // Stopped: offered nothing while stopped.
    assert_eq!(
        api(port, "POST", "/api/rules/forward/stop")["status"],
        "stopped"
    );
    publish_all(setup.mqtt_port, "dev", &plant_readings(50..80, 2)).await;
    assert!(
        eventually(
            WAIT,
            || api(port, "GET", "/api/rules")["streams"][0]["rows"] == 80
        )
        .await
    );
    let forward = api(port, "GET", "/api/rules/forward");
    assert_eq!(
        (forward["status"].clone(), forward["records_in"].clone()),
        ("stopped".into(), 50.into())
    );
    assert_eq!(lines(&dir, "forward"), 50);
    let m = scrape(port, None);
    assert_eq!(
        value(
            &m,
            "fieldgate_rule_running{rule=\"forward\",stream=\"readings\"}"
        ),
        0.0
    );

    // Started again: new rows go through.
    assert_eq!(
        api(port, "POST", "/api/rules/forward/start")["status"],
        "running"
    );
    publish_all(setup.mqtt_port, "dev", &plant_readings(80..90, 2)).await;
    assert!(eventually(WAIT, || lines(&dir, "forward") == 60).await);
    let (status, _) = http(port, "POST", "/api/rules/nope/stop", None);
    assert_eq!(status, 404);

    // A rule file changed on disk: the API reload reports it and lists the new rule.
    std::fs::write(
        dir.join("rules/extra.sql"),
        "CREATE RULE big INTO disk AS SELECT device, n FROM readings WHERE n >= 1000;\n",
    )
    .unwrap();
    let report = api(port, "POST", "/api/rules/reload");
    assert!(
        report["rules_added"] == serde_json::json!(["big"])
            || rule(&api(port, "GET", "/api/rules"), "big")["status"] == "running",
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(
        rule(&api(port, "GET", "/api/rules"), "big")["status"],
        "running"
    );
    // A broken file: the error comes back with file:line:col; the rules keep running.
    std::fs::write(
        dir.join("rules/broken.sql"),
        "CREATE RULE x INTO disk AS SELEC 1;\n",
    )
    .unwrap();
    let report = api(port, "POST", "/api/rules/reload");
    let errors = report["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("broken.sql:1:"))),
        "{report}"
    );
    assert_eq!(
        rule(&api(port, "GET", "/api/rules"), "forward")["status"],
        "running"
    );
    let m = scrape(port, None);
    assert!(value(&m, "fieldgate_rules_reloads_total{result=\"error\"}") >= 1.0);
    let sinks = api(port, "GET", "/api/sinks");
    assert_eq!(sinks["sinks"][0]["name"], "disk");
    assert_eq!(sinks["sinks"][0]["type"], "file");
    assert_eq!(sinks["sinks"][0]["up"], true);
    assert!(gw.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_metrics_and_the_api_and_secrets_stay_out_of_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let token = "tok-3f9a-never-logged";
    let password = "pw-77c1-never-logged";
    let sinks = format!(
        "{SINKS}[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n\
         username = \"gw\"\npassword = \"{password}\"\n",
        free_port()
    );
    let setup = GatewaySetup::with_admin(
        &tmp.path().join("gw"),
        &format!("token = \"{token}\""),
        &sinks,
        &forward_rules("disk"),
    );
    let mut gw = Gateway::start(&setup);
    let port = setup.admin_port;
    for path in ["/metrics", "/api/rules", "/api/sinks"] {
        assert_eq!(
            http(port, "GET", path, None).0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            http(port, "GET", path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            http(port, "GET", path, Some(token)).0,
            200,
            "{path} with the token"
        );
    }
    assert_eq!(http(port, "POST", "/api/rules/forward/stop", None).0, 401);
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    assert_eq!(http(port, "GET", "/readyz", None).0, 200);
    assert!(scrape(port, Some(token)).contains_key("fieldgate_ready"));
    assert!(gw.terminate(Duration::from_secs(10)).success());
    let log = gw.log_text();
    assert!(
        !log.contains(token) && !log.contains(password),
        "a secret in the log:\n{log}"
    );
}

#[test]
fn validate_reports_config_and_rule_errors_precisely() {
    let tmp = tempfile::tempdir().unwrap();
    let setup = GatewaySetup::new(tmp.path(), SINKS, &forward_rules("disk"));
    let validate = || {
        Command::new(fieldgate_binary())
            .args(["validate", "--config"])
            .arg(setup.config())
            .output()
            .expect("fieldgate runs")
    };
    let out = validate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: config"));

    // A rule naming a sink the config does not have, and a syntax error.
    std::fs::write(
        tmp.path().join("rules/more.sql"),
        "CREATE RULE up INTO cloud AS SELECT n FROM readings;\n\nCREATE RULE y INTO disk AS\n  SELECT n FRM readings;\n",
    )
    .unwrap();
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("more.sql:1:") && err.contains("cloud"),
        "{err}"
    );
    assert!(err.contains("more.sql:4:"), "{err}");

    // A bad config key names the file and the key.
    let cfg = std::fs::read_to_string(setup.config()).unwrap();
    std::fs::write(
        setup.config(),
        format!("{cfg}\n[sinks.other]\ntype = \"file\"\npaht = \"x\"\n"),
    )
    .unwrap();
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fieldgate.toml") && err.contains("paht"),
        "{err}"
    );
}
