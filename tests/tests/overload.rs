//! Devices publishing faster than the rules keep up, with a small ingest journal: the
//! broker holds the devices back (their PUBACKs wait for room) instead of dropping what
//! it acknowledged, so every message is processed.

use std::time::Duration;

use fieldgate_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_holds_devices_back_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    // Rules slow enough per batch that ingest falls behind the devices, with a margin
    // for a busy machine, where the devices slow down too.
    let mut rules = forward_rules("disk");
    for i in 0..80 {
        rules.push_str(&format!(
            "CREATE RULE slow{i} INTO disk AS SELECT device, n FROM readings WHERE n < 0;\n"
        ));
    }
    let setup = GatewaySetup::new(
        &dir,
        "[sinks.disk]\ntype = \"file\"\npath = \"out/{rule}.jsonl\"\n",
        &rules,
    );
    // A journal of 160 KiB: 5000 readings of ~100 bytes fill it many times over.
    setup.add_to_table("broker", "max_payload_size = 1024");
    setup.add_to_table("journal", "max_bytes = 163840");
    // Small batches: every 8 messages pay for all 81 rules.
    setup.add_to_table("ingest", "batch_rows = 8");
    let gw = Gateway::start(&setup);

    let total = 5000.0;
    // From sixteen devices at once; every one of these got its PUBACK.
    let msgs = plant_readings(0..5000, 50);
    let port = setup.mqtt_port;
    let devices: Vec<_> = msgs
        .chunks(313)
        .enumerate()
        .map(|(i, part)| {
            let part = part.to_vec();
            tokio::spawn(async move { publish_all(port, &format!("dev{i}"), &part).await })
        })
        .collect();
    for d in devices {
        d.await.expect("device");
    }
    let received = || scrape(setup.admin_port, None)["fieldgate_mqtt_messages_received_total"];
    assert!(
        eventually(Duration::from_secs(30), || received() >= total).await,
        "received {} of {total}; log {}",
        received(),
        gw.log_text()
    );
    let m = scrape(setup.admin_port, None);
    assert_eq!(m["fieldgate_mqtt_messages_received_total"], total);
    assert!(
        m["fieldgate_journal_waits_total"] > 0.0 && m["fieldgate_journal_wait_seconds_total"] > 0.0,
        "no publish waited for the journal: the test did not overload ingest; {:?}",
        m.iter()
            .filter(|(k, _)| k.starts_with("fieldgate_journal"))
            .collect::<Vec<_>>()
    );
    let rows = || {
        std::fs::read_to_string(dir.join("out/forward.jsonl"))
            .unwrap_or_default()
            .lines()
            .count() as f64
    };
    assert!(
        eventually(Duration::from_secs(20), || rows() == total).await,
        "{} rows for {total} acknowledged messages",
        rows()
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            scrape(setup.admin_port, None)["fieldgate_journal_entries"] == 0.0
        })
        .await,
        "the journal releases what was processed"
    );
}
