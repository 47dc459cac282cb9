//! Sinks side by side: one rule sending to a dead cloud, the embedded broker (local
//! republish) and a file, where the dead one holds up nothing; and the MQTT sink's
//! JSON-array-per-publish format against a real mosquitto.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use fieldgate_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn ns(values: impl IntoIterator<Item = Value>) -> BTreeSet<i64> {
    values.into_iter().filter_map(|v| v["n"].as_i64()).collect()
}

fn file_rows(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out/forward.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sink_holds_up_none_of_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    // The cloud app's session is set up, then the cloud goes down before the gateway
    // starts; the session outlives the restart.
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let cloud_port = cloud.port;
    let sub = Subscriber::start(cloud_port, "cloud-app", "fieldgate/gw-test/forward").await;
    cloud.stop();
    let sinks = format!(
        "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {cloud_port}\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\n\
         [sinks.bus]\ntype = \"republish\"\ntopic = \"results/{{rule}}/{{device}}\"\n\
         [sinks.disk]\ntype = \"file\"\npath = \"out/{{rule}}.jsonl\"\n"
    );
    let rules = "CREATE STREAM readings (device STRING, n BIGINT)\n\
                 WITH (DATASOURCE = 'plant/+/reading');\n\
                 CREATE RULE forward INTO cloud, bus, disk AS SELECT device, n FROM readings;\n";
    let gw_dir = tmp.path().join("gw");
    let setup = GatewaySetup::new(&gw_dir, &sinks, rules);
    let gw = Gateway::start(&setup);
    let local = Subscriber::start(setup.mqtt_port, "hmi", "results/#").await;

    publish_all(setup.mqtt_port, "dev", &plant_readings(0..300, 3)).await;
    let all: BTreeSet<i64> = (0..300).collect();
    assert!(
        eventually(WAIT, || ns(local.json().into_iter().map(|(_, v)| v)) == all).await,
        "the local bus got {} of 300 while the cloud was down; log:\n{}",
        local.json().len(),
        gw.log_text()
    );
    assert!(eventually(WAIT, || ns(file_rows(&gw_dir)) == all).await);
    // Topics from the template; ids name the sink.
    for (topic, v) in local.json() {
        let device = v["device"].as_str().expect("device");
        assert_eq!(topic, format!("results/forward/{device}"));
        let id = v["_msg_id"].as_str().expect("_msg_id");
        assert!(id.starts_with("gw-test/bus/"), "{id}");
    }

    // The cloud comes up: its queue held everything.
    assert!(sub.json().is_empty());
    cloud.restart();
    assert!(
        eventually(WAIT, || ns(sub.json().into_iter().map(|(_, v)| v)) == all).await,
        "the cloud got {} of 300 after coming up; log:\n{}",
        sub.json().len(),
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_go_out_as_json_arrays_per_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let sinks = format!(
        "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n\
         format = \"json_array\"\nbatch_max = 50\nmax_packet_size = 2048\n",
        cloud.port
    );
    let setup = GatewaySetup::new(&tmp.path().join("gw"), &sinks, &forward_rules("cloud"));
    let gw = Gateway::start(&setup);
    let sub = MosquittoSub::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward");

    publish_all(setup.mqtt_port, "dev", &plant_readings(0..2000, 4)).await;
    let arrays = || -> Vec<Vec<Value>> {
        sub.lines()
            .iter()
            .filter(|l| l.starts_with('['))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON array ({e}): {l}"))
            })
            .collect()
    };
    let all: BTreeSet<i64> = (0..2000).collect();
    assert!(
        eventually(WAIT, || ns(arrays().into_iter().flatten()) == all).await,
        "{} results arrived; log:\n{}",
        arrays().iter().map(Vec::len).sum::<usize>(),
        gw.log_text()
    );
    // No packet above the limit: arrays are cut by size before `batch_max`.
    let longest = sub.lines().iter().map(String::len).max().unwrap_or(0);
    assert!(longest <= 2048 - 50, "a {longest}-byte payload");
    let publishes = arrays();
    assert!(
        publishes.iter().all(|a| (1..=50).contains(&a.len())),
        "array sizes {:?}",
        publishes.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        publishes.len() < 2000,
        "{} publishes: no batching",
        publishes.len()
    );
    // Every result keeps its own id, in queue order.
    let seqs: Vec<u64> = publishes
        .iter()
        .flatten()
        .map(|v| {
            let id = v["_msg_id"].as_str().expect("_msg_id");
            id.rsplit('-')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("sequence")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ids out of order");
}
