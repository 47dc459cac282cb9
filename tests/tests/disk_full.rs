//! A full disk under the queues, on a real (small) file system: the gateway reports it,
//! holds devices back or applies its on-full policy, recovers by itself when space
//! returns, and every result it acknowledged is delivered or counted as dropped by the
//! policy. Loss is counted where the user sees it: from the device's PUBACK to the
//! arrival in the cloud, by the device's own sequence numbers.

use std::collections::BTreeSet;
use std::time::Duration;

use fieldgate_e2e::*;

const STREAM: &str = "CREATE STREAM readings (device STRING, n BIGINT, pad STRING)\n\
    WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n\
    CREATE RULE forward INTO cloud AS SELECT device, n, pad FROM readings;\n";

/// Readings `n` in `range` from one device, padded so that a few MiB of queue take
/// some tens of thousands of them.
fn readings(range: std::ops::Range<i64>) -> Vec<(String, Vec<u8>)> {
    let pad = "x".repeat(200);
    range
        .map(|n| {
            (
                "plant/m1/reading".to_string(),
                format!(r#"{{"device":"m1","n":{n},"pad":"{pad}"}}"#).into_bytes(),
            )
        })
        .collect()
}

fn metric(port: u16, key: &str) -> f64 {
    scrape(port, None).get(key).copied().unwrap_or(f64::NAN)
}

/// A gateway whose `data` directory is a `mib` MiB disk and whose cloud sink points at
/// `cloud_port`.
fn setup(
    dir: &std::path::Path,
    mib: u64,
    cloud_port: u16,
    queue: &str,
) -> (GatewaySetup, SmallDisk) {
    let setup = GatewaySetup::new(
        dir,
        &format!(
            "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {cloud_port}\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\nmax_in_flight = 200\n"
        ),
        STREAM,
    );
    setup.add_to_table("queue", queue);
    // A small journal: backpressure reaches the devices after a few thousand messages.
    setup.add_to_table("journal", "max_bytes = 1048576\nsegment_bytes = 65536");
    setup.add_to_table("ingest", "batch_rows = 128");
    let disk = SmallDisk::mount(&dir.join("data"), mib);
    (setup, disk)
}

/// A cloud broker with the cloud application's persistent session, stopped: the
/// gateway starts with its link down, and what it sends once the cloud is back reaches
/// the application.
fn cloud_down(dir: &std::path::Path) -> (Mosquitto, MosquittoSub) {
    let mut cloud = Mosquitto::start(free_port(), dir);
    let sub = MosquittoSub::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward");
    cloud.stop();
    (cloud, sub)
}

/// The `n`s the cloud received.
fn arrived(sub: &MosquittoSub) -> BTreeSet<i64> {
    sub.json().iter().filter_map(|v| v["n"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_something_else_holds_devices_back_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cloud, sub) = cloud_down(&tmp.path().join("cloud"));
    // No reserve: the queue meets the full disk as a failing write.
    let (setup, disk) = setup(&tmp.path().join("gw"), 16, cloud.port, "min_free_bytes = 0");
    let gw = Gateway::start(&setup);
    let first = 2_000;
    publish_all(setup.mqtt_port, "dev", &readings(0..first)).await;
    assert!(
        eventually(Duration::from_secs(20), || {
            metric(setup.admin_port, "fieldgate_queue_entries{sink=\"cloud\"}") == first as f64
        })
        .await,
        "{}",
        gw.log_text()
    );

    // Something else fills the disk; the device goes on publishing.
    let filler = disk.fill();
    let total: i64 = 40_000;
    let device = CountingPublisher::start(setup.mqtt_port, "dev2", readings(first..total));
    // Whichever writes first meets the full disk: the sink's queue, or the ingest
    // journal in front of it.
    let queue_failed = || {
        metric(
            setup.admin_port,
            "fieldgate_queue_storage_errors_total{sink=\"cloud\"}",
        ) > 0.0
    };
    let journal_failed = || metric(setup.admin_port, "fieldgate_journal_write_errors_total") > 0.0;
    let failing = eventually(Duration::from_secs(30), || {
        queue_failed() || journal_failed()
    })
    .await;
    assert!(failing, "no storage error counted; log:\n{}", gw.log_text());
    let (status, body) = http(setup.admin_port, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("journal") || (body.contains("cloud") && body.contains("durable")),
        "{body}"
    );
    // Held back: the device gets no more acknowledgements while the disk stays full.
    let mut stalled = false;
    for _ in 0..15 {
        let before = device.acked();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if device.acked() == before {
            stalled = true;
            break;
        }
    }
    let held_at = device.acked();
    assert!(
        stalled && held_at < (total - first) as usize,
        "the device was never held back ({held_at} acknowledged)"
    );
    assert!(
        metric(
            setup.admin_port,
            "fieldgate_stream_queue_waits_total{stream=\"readings\"}"
        ) > 0.0
            || journal_failed()
    );

    // Space returns: the same process takes everything, then delivers it.
    std::fs::remove_file(filler).unwrap();
    assert!(
        device.finish(Duration::from_secs(120)).await,
        "the device was not let go on; log:\n{}",
        gw.log_text()
    );
    assert!(
        eventually(Duration::from_secs(30), || http_status(
            setup.admin_port,
            "/readyz"
        ) == Some(200))
        .await,
        "not ready again; log:\n{}",
        gw.log_text()
    );
    cloud.restart();
    let all: BTreeSet<i64> = (0..total).collect();
    let ok = eventually(Duration::from_secs(180), || arrived(&sub) == all).await;
    let got = arrived(&sub);
    assert!(
        ok,
        "{} of {total} acknowledged readings arrived; missing e.g. {:?}",
        got.len(),
        all.difference(&got).take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        metric(
            setup.admin_port,
            "fieldgate_stream_results_lost_total{stream=\"readings\"}"
        ),
        0.0
    );
    // The failures were logged, at a bounded rate.
    let log = gw.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("queue storage failed") || l.contains("journal write failed"))
        .count();
    assert!(
        (1..=20).contains(&lines),
        "{lines} log lines about the failing disk"
    );
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_reserve_the_oldest_results_go_counted_and_the_rest_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cloud, sub) = cloud_down(&tmp.path().join("cloud"));
    let (setup, disk) = setup(
        &tmp.path().join("gw"),
        32,
        cloud.port,
        "min_free_bytes = 12582912",
    );
    let mut gw = Gateway::start(&setup);
    let warned = gw.log_text();
    assert!(
        warned.contains("may hold more than its disk has free"),
        "{warned}"
    );
    // The cloud is down: readings pile up until the disk is down to its reserve, and go
    // on for a while after.
    let mut sent = 0;
    while metric(setup.admin_port, "fieldgate_queue_writable{sink=\"cloud\"}") != 0.0 {
        publish_all(setup.mqtt_port, "dev", &readings(sent..sent + 2_000)).await;
        sent += 2_000;
        assert!(
            sent <= 200_000,
            "the reserve was never reached; log:\n{}",
            gw.log_text()
        );
    }
    publish_all(setup.mqtt_port, "dev", &readings(sent..sent + 10_000)).await;
    sent += 10_000;
    // Every acknowledged reading has been through the rule and the queue (an entry the
    // policy drops while it is being delivered may still arrive, so the drops are
    // over before the cloud comes back).
    let through = eventually(Duration::from_secs(60), || {
        let m = scrape(setup.admin_port, None);
        let held = m["fieldgate_queue_entries{sink=\"cloud\"}"];
        let dropped = m["fieldgate_queue_dropped_total{sink=\"cloud\",reason=\"oldest\"}"];
        held + dropped == sent as f64
    })
    .await;
    assert!(
        through,
        "not every reading went through; log:\n{}",
        gw.log_text()
    );
    let (status, body) = http(setup.admin_port, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reserve"), "{body}");
    assert!(
        disk.free() > 8 << 20,
        "the reserve was not kept: {} bytes free",
        disk.free()
    );
    assert_eq!(
        metric(
            setup.admin_port,
            "fieldgate_queue_storage_errors_total{sink=\"cloud\"}"
        ),
        0.0
    );

    // Back online: what was not dropped, counted, arrives: the newest readings.
    cloud.restart();
    let drained = eventually(Duration::from_secs(180), || {
        metric(setup.admin_port, "fieldgate_queue_entries{sink=\"cloud\"}") == 0.0
    })
    .await;
    assert!(drained, "not drained; log:\n{}", gw.log_text());
    let dropped = metric(
        setup.admin_port,
        "fieldgate_queue_dropped_total{sink=\"cloud\",reason=\"oldest\"}",
    ) as i64;
    assert!(dropped > 0, "nothing was dropped at the reserve");
    let want: BTreeSet<i64> = (dropped..sent).collect();
    let ok = eventually(Duration::from_secs(30), || arrived(&sub) == want).await;
    let got = arrived(&sub);
    assert!(
        ok,
        "{} arrived, {dropped} dropped, {sent} acknowledged; arrived though older: {:?}; missing: {:?}",
        got.len(),
        got.difference(&want).take(20).collect::<Vec<_>>(),
        want.difference(&got).take(20).collect::<Vec<_>>()
    );
    assert_eq!(
        metric(
            setup.admin_port,
            "fieldgate_stream_results_lost_total{stream=\"readings\"}"
        ),
        0.0
    );
    // A drained backlog gives the disk back: ready again, without a restart.
    assert!(
        eventually(Duration::from_secs(90), || http_status(
            setup.admin_port,
            "/readyz"
        ) == Some(200))
        .await,
        "not ready again after the drain; log:\n{}",
        gw.log_text()
    );
    assert!(gw.terminate(Duration::from_secs(20)).success());
    drop(disk);
}
