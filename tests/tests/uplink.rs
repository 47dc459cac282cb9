//! Store-and-forward with a real mosquitto as the cloud: results survive a cloud
//! outage and a gateway restart.

use std::collections::BTreeSet;
use std::time::Duration;

use fieldgate_e2e::*;

const RULES: &str = r#"
CREATE STREAM readings (device STRING, n BIGINT)
WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');

CREATE RULE forward INTO cloud AS
SELECT device, n FROM readings WHERE n >= 0;
"#;

fn sink(port: u16) -> String {
    format!(
        "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n"
    )
}

fn arrived(sub: &Subscriber) -> BTreeSet<i64> {
    sub.json()
        .into_iter()
        .filter_map(|(_, v)| v["n"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_arrives_across_a_cloud_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    let setup = GatewaySetup::new(&tmp.path().join("gw"), &sink(cloud.port), RULES);
    let mut gw = Gateway::start(&setup);
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward").await;

    publish_all(setup.mqtt_port, "dev-a", &plant_readings(0..1000, 4)).await;
    assert!(
        eventually(Duration::from_secs(20), || !arrived(&sub).is_empty()).await,
        "nothing arrived before the outage; log:\n{}",
        gw.log_text()
    );
    cloud.stop();
    // Published while the cloud is down: accepted by the gateway, held in its queue.
    publish_all(setup.mqtt_port, "dev-b", &plant_readings(1000..2000, 4)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cloud.restart();
    publish_all(setup.mqtt_port, "dev-c", &plant_readings(2000..3000, 4)).await;

    let all: BTreeSet<i64> = (0..3000).collect();
    let ok = eventually(Duration::from_secs(60), || arrived(&sub) == all).await;
    let got = arrived(&sub);
    let missing: Vec<_> = all.difference(&got).take(20).collect();
    assert!(
        ok,
        "{} of 3000 arrived, missing e.g. {missing:?}; log:\n{}",
        got.len(),
        gw.log_text()
    );
    assert_stable_ids(&sub);
    assert!(gw.terminate(Duration::from_secs(10)).success());
}

/// Every message carries `_msg_id` = `gw-test/cloud/<16 hex digits>-<sequence>`; a
/// result sent twice (resent after the outage) carries the same id both times, and
/// different results never share one, so the cloud can drop duplicates by id.
fn assert_stable_ids(sub: &Subscriber) {
    let mut id_of: std::collections::HashMap<i64, String> = Default::default();
    let mut n_of: std::collections::HashMap<String, i64> = Default::default();
    for (_, v) in sub.json() {
        let n = v["n"].as_i64().expect("n");
        let id = v["_msg_id"]
            .as_str()
            .expect("every message has _msg_id")
            .to_string();
        let rest = id
            .strip_prefix("gw-test/cloud/")
            .unwrap_or_else(|| panic!("id {id:?} names gateway and sink"));
        let (epoch, seq) = rest.split_once('-').expect("epoch-sequence");
        assert!(
            epoch.len() == 16 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(seq.parse::<u64>().is_ok(), "{id}");
        if let Some(prev) = id_of.insert(n, id.clone()) {
            assert_eq!(prev, id, "result {n} resent under another id");
        }
        if let Some(prev) = n_of.insert(id.clone(), n) {
            assert_eq!(prev, n, "id {id} used for two results");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_results_are_sent_after_a_gateway_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cloud = Mosquitto::start(free_port(), &tmp.path().join("cloud"));
    // The cloud application's persistent session exists before the outage.
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward").await;
    cloud.stop();

    let setup = GatewaySetup::new(&tmp.path().join("gw"), &sink(cloud.port), RULES);
    let mut gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "dev-a", &plant_readings(0..500, 4)).await;
    // SIGTERM with the cloud down: the gateway stops ingest, makes what it accepted
    // durable and exits 0 within a few seconds, leaving the results queued.
    let status = gw.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}; log:\n{}", gw.log_text());
    assert!(arrived(&sub).is_empty());

    let mut gw = Gateway::start(&setup);
    cloud.restart();
    let all: BTreeSet<i64> = (0..500).collect();
    let ok = eventually(Duration::from_secs(60), || arrived(&sub) == all).await;
    assert!(
        ok,
        "{} of 500 arrived after the restart; log:\n{}",
        arrived(&sub).len(),
        gw.log_text()
    );
    assert_stable_ids(&sub);
    assert!(gw.terminate(Duration::from_secs(10)).success());
}
