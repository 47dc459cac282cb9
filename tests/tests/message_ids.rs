//! Message ids never repeat: a receiver that drops duplicates by `_msg_id`, as the docs
//! advise, must never drop a new result. Restarts with a drained queue, after SIGTERM
//! and after kill -9, must keep every id unique.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fieldgate_e2e::*;

const ROUNDS: i64 = 6;
const PER_ROUND: i64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_unique_across_restarts_with_a_drained_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let sub = MosquittoSub::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward");
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &format!(
            "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n",
            cloud.port
        ),
        &forward_rules("cloud"),
    );
    for round in 0..ROUNDS {
        let mut gw = Gateway::start(&setup);
        let first = round * PER_ROUND;
        publish_all(
            setup.mqtt_port,
            "devices",
            &plant_readings(first..first + PER_ROUND, 3),
        )
        .await;
        // Delivered: the queue is empty when the gateway stops.
        let want = (first + PER_ROUND) as usize;
        let delivered = eventually(Duration::from_secs(60), || {
            sub.json()
                .iter()
                .filter_map(|v| v["n"].as_i64())
                .collect::<BTreeSet<_>>()
                .len()
                >= want
        })
        .await;
        assert!(
            delivered,
            "round {round}: not delivered; log:\n{}",
            gw.log_text()
        );
        if round % 2 == 0 {
            assert!(
                gw.terminate(Duration::from_secs(20)).success(),
                "{}",
                gw.log_text()
            );
        } else {
            // Past the once-a-second sync of deletes, so the queue restarts empty.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            gw.kill9();
        }
    }
    // Every result arrived, and under an id of its own: a deduplicating receiver keeps
    // exactly one copy of each.
    let mut results_of: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for v in sub.json() {
        let id = v["_msg_id"].as_str().expect("_msg_id").to_string();
        results_of
            .entry(id)
            .or_default()
            .insert(v["n"].as_i64().expect("n"));
    }
    let shared: Vec<_> = results_of
        .iter()
        .filter(|(_, ns)| ns.len() > 1)
        .take(5)
        .collect();
    assert!(
        shared.is_empty(),
        "ids carried by more than one result: {shared:?}"
    );
    let kept: BTreeSet<i64> = results_of.values().flatten().copied().collect();
    assert_eq!(kept, (0..ROUNDS * PER_ROUND).collect::<BTreeSet<_>>());
}
