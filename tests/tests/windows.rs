//! A few thousand readings from several devices, out of order within the allowed
//! lateness, go through the gateway's tumbling-window rule to a real mosquitto; the
//! per-device window count, average and maximum that arrive must equal what this test
//! computes from what it sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fieldgate_e2e::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const RULES: &str = r#"
CREATE STREAM telemetry (device STRING, ts BIGINT, temp DOUBLE)
WITH (DATASOURCE = 'sensors/+/telemetry', FORMAT = 'json',
      TIMESTAMP = 'ts', TIMESTAMP_FORMAT = 'epoch_ms', LATENESS = '5s');

CREATE RULE temp_10s INTO cloud AS
SELECT device, window_start, window_end,
       count(*) AS readings, avg(temp) AS avg_temp, max(temp) AS max_temp
FROM telemetry
GROUP BY device, TUMBLINGWINDOW(ss, 10);
"#;

const T0: i64 = 1_764_000_000_000;

#[derive(Debug, Default, Clone)]
struct Agg {
    n: u64,
    sum: f64,
    max: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_reach_the_cloud_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &format!(
            "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n",
            cloud.port
        ),
        RULES,
    );
    let mut gw = Gateway::start(&setup);
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/temp_10s").await;

    // 4000 readings 10 ms apart over 8 devices (40 s of event time), shuffled in blocks
    // of 300 readings: events arrive up to 3 s out of order, within the 5 s lateness.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let devices = 8;
    let mut readings: Vec<(String, i64, f64)> = (0..4000)
        .map(|i| {
            let device = format!("dev{}", i % devices);
            let temp = f64::from(rng.random_range(-2000..6000)) / 100.0;
            (device, T0 + i * 10, temp)
        })
        .collect();
    for block in readings.chunks_mut(300) {
        block.shuffle(&mut rng);
    }
    let mut expected: BTreeMap<(String, i64), Agg> = BTreeMap::new();
    for (d, ts, t) in &readings {
        let start = ts - ts.rem_euclid(10_000);
        let a = expected.entry((d.clone(), start)).or_default();
        a.n += 1;
        a.sum += t;
        a.max = if a.n == 1 { *t } else { a.max.max(*t) };
    }
    let mut msgs: Vec<(String, Vec<u8>)> = readings
        .iter()
        .map(|(d, ts, t)| {
            (
                format!("sensors/{d}/telemetry"),
                format!(r#"{{"device":"{d}","ts":{ts},"temp":{t}}}"#).into_bytes(),
            )
        })
        .collect();
    // One reading far ahead moves the watermark past every window above...
    msgs.push((
        "sensors/clock/telemetry".into(),
        format!(r#"{{"device":"clock","ts":{},"temp":0}}"#, T0 + 100_000).into_bytes(),
    ));
    // ...after which a reading for a closed window is late and must change nothing.
    msgs.push((
        "sensors/dev0/telemetry".into(),
        format!(r#"{{"device":"dev0","ts":{},"temp":999}}"#, T0 + 5).into_bytes(),
    ));
    publish_all(setup.mqtt_port, "devices", &msgs).await;

    let want = expected.len();
    let arrived = eventually(Duration::from_secs(30), || {
        let got: std::collections::HashSet<(String, i64)> = sub
            .json()
            .into_iter()
            .map(|(_, v)| {
                (
                    v["device"].as_str().unwrap_or("").to_string(),
                    v["window_start"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        got.len() >= want
    })
    .await;
    assert!(
        arrived,
        "{} of {want} windows arrived; log:\n{}",
        sub.count(),
        gw.log_text()
    );

    let mut got: HashMap<(String, i64), serde_json::Value> = HashMap::new();
    for (_, v) in sub.json() {
        let key = (
            v["device"].as_str().unwrap().to_string(),
            v["window_start"].as_i64().unwrap(),
        );
        if let Some(prev) = got.insert(key.clone(), v.clone()) {
            assert_eq!(prev, v, "a resent window must be identical: {key:?}");
        }
    }
    assert!(
        !got.keys().any(|(d, _)| d == "clock"),
        "the clock window is still open"
    );
    assert_eq!(
        got.len(),
        want,
        "unexpected windows: {:?}",
        got.keys()
            .filter(|k| !expected.contains_key(*k))
            .collect::<Vec<_>>()
    );
    for (key, a) in &expected {
        let v = got
            .get(key)
            .unwrap_or_else(|| panic!("window {key:?} missing"));
        assert_eq!(v["window_end"].as_i64(), Some(key.1 + 10_000), "{key:?}");
        assert_eq!(v["readings"].as_u64(), Some(a.n), "count of {key:?}");
        assert_eq!(v["max_temp"].as_f64(), Some(a.max), "max of {key:?}");
        let avg = v["avg_temp"].as_f64().unwrap();
        let want_avg = a.sum / a.n as f64;
        assert!(
            (avg - want_avg).abs() <= 1e-9 * want_avg.abs().max(1.0),
            "avg of {key:?}: {avg} != {want_avg}"
        );
    }
    let status = gw.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.log_text()
    );
    cloud.stop();
}
