//! kill -9 during upload: results the gateway accepted survive any number of crashes
//! and arrive at the real cloud broker at least once, each under one stable id.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fieldgate_e2e::*;
use rand::{Rng, SeedableRng};

const TOTAL: i64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_results_survive_ten_kill_9s_during_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let sub = MosquittoSub::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward");
    cloud.stop();

    // With the cloud down, every result stays queued; SIGTERM right after the last
    // PUBACK must still take in everything the broker acknowledged and make it durable
    // before the crashes start.
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &format!(
            "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n\
             reconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\nmax_in_flight = 200\n",
            cloud.port
        ),
        &forward_rules("cloud"),
    );
    let mut gw = Gateway::start(&setup);
    let msgs = plant_readings(0..TOTAL, 7);
    publish_all(setup.mqtt_port, "devices", &msgs).await;
    assert!(
        gw.terminate(Duration::from_secs(20)).success(),
        "{}",
        gw.log_text()
    );

    // The cloud comes back; the gateway is killed at random moments while it uploads.
    cloud.restart();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut delivered_before_last_kill = 0;
    for round in 0..10 {
        let mut gw = Gateway::start(&setup);
        let after = Duration::from_millis(rng.random_range(30..400));
        tokio::time::sleep(after).await;
        gw.kill9();
        let now = sub.json().len();
        assert!(
            now >= delivered_before_last_kill,
            "round {round}: the cloud lost messages"
        );
        delivered_before_last_kill = now;
    }

    // A last start delivers whatever is left.
    let mut gw = Gateway::start(&setup);
    let all: BTreeSet<i64> = (0..TOTAL).collect();
    let arrived =
        || -> BTreeSet<i64> { sub.json().iter().filter_map(|v| v["n"].as_i64()).collect() };
    let ok = eventually(Duration::from_secs(120), || arrived() == all).await;
    let got = arrived();
    if !ok {
        // Its closing log line tells what it still holds.
        gw.terminate(Duration::from_secs(20));
        let cloud_log =
            std::fs::read_to_string(tmp.path().join("cloud/mosquitto.log")).unwrap_or_default();
        eprintln!("cloud broker log:\n{cloud_log}");
    }
    assert!(
        ok,
        "{} of {TOTAL} arrived; missing e.g. {:?}; log:\n{}",
        got.len(),
        all.difference(&got).take(10).collect::<Vec<_>>(),
        gw.log_text()
    );
    // Duplicates come only from resends, and a resend carries the original id.
    let mut id_of: HashMap<i64, String> = HashMap::new();
    for v in sub.json() {
        let n = v["n"].as_i64().unwrap();
        let id = v["_msg_id"].as_str().expect("_msg_id").to_string();
        if let Some(prev) = id_of.insert(n, id.clone()) {
            assert_eq!(prev, id, "result {n} arrived under two ids");
        }
    }
    let ids: BTreeSet<&String> = id_of.values().collect();
    assert_eq!(ids.len(), TOTAL as usize, "an id was used for two results");
    assert!(gw.terminate(Duration::from_secs(20)).success());
}
