//! A tiny queue limit through the running gateway, with the cloud down: `drop_oldest`
//! keeps the newest results that fit, `reject_new` the oldest; the drops are counted in
//! the log, the gateway keeps running, and what was kept arrives intact.

use std::collections::BTreeSet;
use std::time::Duration;

use fieldgate_e2e::*;

const MAX_BYTES: u64 = 4096;
const TOTAL: i64 = 400;

/// Bytes reading `n`'s result takes in the queue (the store's own measure, which its
/// limits count in).
fn entry_bytes(n: i64) -> u64 {
    let row = format!(r#"{{"device":"m0","n":{n}}}"#);
    fieldgate::queue::entry_bytes("forward", row.as_bytes())
}

async fn run(policy: &str) -> (BTreeSet<i64>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let sub = MosquittoSub::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward");
    cloud.stop();
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &format!(
            "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n\
             [queue.sinks.cloud]\nmax_bytes = {MAX_BYTES}\non_full = \"{policy}\"\n",
            cloud.port
        ),
        &forward_rules("cloud"),
    );
    let mut gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "dev", &plant_readings(0..TOTAL, 1)).await;
    gw.wait_log(Duration::from_secs(15), &["queue limits dropped results"])
        .await;
    // Still serving: a later reading is taken in (it may or may not fit).
    publish_all(setup.mqtt_port, "dev", &plant_readings(TOTAL..TOTAL + 1, 1)).await;
    // Its result is queued within a few batch and commit delays (5 ms each); only then
    // may the uplink start sending what the queue holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cloud.restart();
    let mut last = 0;
    let mut stable = 0;
    // Wait until deliveries stop growing for a second (30 s at most).
    for _ in 0..600 {
        if stable >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sub.json().len();
        stable = if now == last && now > 0 {
            stable + 1
        } else {
            0
        };
        last = now;
        assert!(
            sub.json().len() <= (TOTAL as usize) * 2,
            "far more arrived than could be held"
        );
    }
    assert!(
        stable >= 20,
        "deliveries did not settle; log:\n{}",
        gw.log_text()
    );
    let arrived: BTreeSet<i64> = sub.json().iter().filter_map(|v| v["n"].as_i64()).collect();
    assert!(gw.terminate(Duration::from_secs(10)).success());
    (arrived, gw.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_results_that_fit() {
    let (arrived, log) = run("drop_oldest").await;
    // The newest readings whose entries fit in MAX_BYTES, counted back from the end.
    let mut want = BTreeSet::new();
    let mut used = 0;
    for n in (0..=TOTAL).rev() {
        used += entry_bytes(n);
        if used > MAX_BYTES {
            break;
        }
        want.insert(n);
    }
    assert_eq!(arrived, want, "log:\n{log}");
    assert!(log.contains("dropped_oldest="), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_new_keeps_the_oldest_results_and_refuses_the_rest() {
    let (arrived, log) = run("reject_new").await;
    // The oldest readings whose entries fit; everything after the first refusal is
    // refused too (each later entry is at least as large).
    let mut want = BTreeSet::new();
    let mut used = 0;
    for n in 0..=TOTAL {
        used += entry_bytes(n);
        if used > MAX_BYTES {
            break;
        }
        want.insert(n);
    }
    assert_eq!(arrived, want, "log:\n{log}");
    assert!(log.contains("rejected_new="), "{log}");
}
