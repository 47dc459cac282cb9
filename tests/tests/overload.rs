//! Devices publishing faster than the rules keep up, with a tiny broker log: the broker
//! holds the devices back instead of dropping what it acknowledged, so every message
//! is processed.

use std::time::Duration;

use fieldgate_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_held_back_rather_than_messages_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    // A rule slow enough per batch that ingest falls behind the broker's 2 KiB log
    // (without backpressure, the broker skips hundreds of these 5000 messages).
    let mut rules = forward_rules("disk");
    for i in 0..40 {
        rules.push_str(&format!(
            "CREATE RULE slow{i} INTO disk AS SELECT device, n FROM readings WHERE n < 0;\n"
        ));
    }
    let setup = GatewaySetup::new(
        &dir,
        "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n",
        &rules,
    );
    let cfg = std::fs::read_to_string(setup.config()).unwrap();
    let cfg = cfg.replacen(
        "[admin]",
        "segment_size = 1024\nsegment_count = 2\n[admin]",
        1,
    );
    std::fs::write(setup.config(), cfg).unwrap();
    let gw = Gateway::start(&setup);

    let total = 5000.0;
    publish_all(setup.mqtt_port, "dev", &plant_readings(0..5000, 50)).await;
    let counted = || {
        let m = scrape(setup.admin_port, None);
        let got = m["fieldgate_mqtt_messages_received_total"];
        let skipped = m["fieldgate_mqtt_messages_skipped_total"];
        (got, skipped)
    };
    let settled = eventually(Duration::from_secs(30), || {
        let (got, skipped) = counted();
        got + skipped >= total
    })
    .await;
    let (got, skipped) = counted();
    assert!(
        settled && got == total && skipped == 0.0,
        "received {got} and skipped {skipped} of {total}; log {} metrics {:?}",
        gw.log_text(),
        scrape(setup.admin_port, None)
            .into_iter()
            .filter(|(k, _)| k.starts_with("fieldgate_broker")
                || k.starts_with("fieldgate_mqtt")
                || k.starts_with("fieldgate_stream"))
            .collect::<Vec<_>>()
    );
    let m = scrape(setup.admin_port, None);
    assert!(
        m["fieldgate_broker_backpressure_pauses_total"] > 0.0
            && m["fieldgate_broker_backpressure_seconds_total"] > 0.0,
        "the broker never paused: the test did not overload ingest"
    );
    let rows = std::fs::read_to_string(dir.join("out/forward.jsonl"))
        .unwrap_or_default()
        .lines()
        .count() as f64;
    assert!(
        eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(dir.join("out/forward.jsonl"))
                .unwrap_or_default()
                .lines()
                .count() as f64
                == got
        })
        .await,
        "{rows} rows for {got} messages received"
    );
    assert!(
        !gw.log_text().contains("skipped messages"),
        "{}",
        gw.log_text()
    );
}
