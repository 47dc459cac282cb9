//! The NATS JetStream sink against a real three-node cluster on loopback: every result
//! the gateway accepted is stored once in a three-replica stream, through a leader
//! killed with -9, the gateway killed with -9, the whole cluster down, and many
//! gateways at once.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use fieldgate_e2e::nats::*;
use fieldgate_e2e::*;

const STREAM: &str = "FIELDGATE";

/// One cluster test at a time: each runs three servers and up to ten gateways, which
/// is what two cores take without the timings of the others suffering.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `[sinks.fleet]` table for the cluster, with `extra` keys.
fn fleet_sink(cluster: &NatsCluster, extra: &str) -> String {
    format!(
        "[sinks.fleet]\ntype = \"nats\"\n{}\nstream = \"{STREAM}\"\n\
         subject = \"fieldgate.{{gateway}}.{{rule}}\"\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"1s\"\nack_timeout = \"2s\"\n{extra}\n",
        cluster.servers_toml()
    )
}

/// A three-node cluster under `dir` with the stream: three replicas, a 10-minute
/// duplicate window.
async fn cluster_with_stream(dir: &std::path::Path) -> (NatsCluster, jetstream::Context) {
    let cluster = NatsCluster::start(&dir.join("nats"), 3, "");
    let js = cluster
        .create_stream(stream_config(
            STREAM,
            &["fieldgate.>"],
            3,
            Duration::from_secs(600),
        ))
        .await;
    (cluster, js)
}

/// A gateway under `dir` whose rule forwards every reading to the `fleet` sink.
fn fleet_gateway(dir: &std::path::Path, cluster: &NatsCluster, extra: &str) -> GatewaySetup {
    GatewaySetup::new(dir, &fleet_sink(cluster, extra), &forward_rules("fleet"))
}

/// Asserts that readings `0..total` are each stored exactly once, under one id each.
fn assert_each_once(contents: &StreamContents, total: i64, what: &str) {
    let readings = contents.readings();
    let missing: Vec<i64> = (0..total).filter(|n| !readings.contains_key(n)).collect();
    let twice: Vec<(&i64, &usize)> = readings.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && readings.len() as i64 == total,
        "{what}: {} of {total} stored; missing e.g. {:?} ({} in all); stored more than once e.g. {:?} ({} in all)",
        readings.len(),
        &missing[..missing.len().min(10)],
        missing.len(),
        &twice[..twice.len().min(10)],
        twice.len()
    );
    let repeated_ids = contents.by_id.values().filter(|c| **c > 1).count();
    assert_eq!(repeated_ids, 0, "{what}: ids stored more than once");
}

/// Waits until the gateway's queue for `fleet` is empty.
async fn drained(setup: &GatewaySetup, timeout: Duration) -> bool {
    eventually(timeout, || {
        let m = scrape(setup.admin_port, None);
        m.get("fieldgate_queue_entries{sink=\"fleet\"}").copied() == Some(0.0)
    })
    .await
}

/// Waits until the running gateway delivered `n` results to `fleet` and its queue is
/// empty (an empty queue alone may be one the rules have not filled yet).
async fn delivered(setup: &GatewaySetup, n: i64, timeout: Duration) -> bool {
    eventually(timeout, || {
        let m = scrape(setup.admin_port, None);
        m.get("fieldgate_sink_delivered_total{sink=\"fleet\"}")
            .copied()
            == Some(n as f64)
            && m.get("fieldgate_queue_entries{sink=\"fleet\"}").copied() == Some(0.0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_results_are_each_stored_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, js) = cluster_with_stream(tmp.path()).await;
    let setup = fleet_gateway(
        &tmp.path().join("gw"),
        &cluster,
        "format = \"json_array\"\nbatch_max = 200",
    );
    let gw = Gateway::start(&setup);
    const TOTAL: i64 = 100_000;
    publish_all_within(
        setup.mqtt_port,
        "devices",
        &plant_readings(0..TOTAL, 20),
        Duration::from_secs(400),
    )
    .await;
    assert!(
        delivered(&setup, TOTAL, Duration::from_secs(180)).await,
        "not all delivered; log:\n{}",
        gw.log_text()
    );
    let contents = read_stream(&js, STREAM).await;
    assert_each_once(&contents, TOTAL, "100k results");
    let m = scrape(setup.admin_port, None);
    assert_eq!(
        m.get("fieldgate_sink_delivered_total{sink=\"fleet\"}")
            .copied(),
        Some(TOTAL as f64)
    );
    assert_eq!(
        m.get("fieldgate_sink_duplicates_total{sink=\"fleet\"}")
            .copied(),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_streams_leader_loses_nothing_and_doubles_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, js) = cluster_with_stream(tmp.path()).await;
    let setup = fleet_gateway(&tmp.path().join("gw"), &cluster, "max_in_flight = 64");
    let gw = Gateway::start(&setup);
    const TOTAL: i64 = 30_000;
    let port = setup.mqtt_port;
    let devices = tokio::spawn(async move {
        publish_all(port, "devices", &plant_readings(0..TOTAL, 20)).await;
    });
    // Once part of the upload is in, the leader of the stream's replicas goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while stream_messages(&js, STREAM).await < 3_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload did not start; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = stream_leader(&js, STREAM).await;
    let killed = cluster.index_of(&leader);
    cluster.kill9(killed);
    devices.await.expect("devices published");
    let survivor = jetstream::new(cluster.client().await);
    assert!(
        delivered(&setup, TOTAL, Duration::from_secs(180)).await,
        "queue not drained after the leader {leader} was killed; log:\n{}\n{}",
        gw.log_text(),
        cluster.logs()
    );
    let new_leader = stream_leader(&survivor, STREAM).await;
    assert_ne!(new_leader, leader, "a new leader was elected");
    let contents = read_stream(&survivor, STREAM).await;
    assert_each_once(&contents, TOTAL, "leader killed");
    // The killed server comes back and catches up: its replica holds the same.
    cluster.start_node(killed);
    let m = scrape(setup.admin_port, None);
    assert_eq!(
        m.get("fieldgate_sink_delivered_total{sink=\"fleet\"}")
            .copied(),
        Some(TOTAL as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_gateway_kill_9s_during_upload_store_every_result_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&tmp.path().join("nats"), 3, "");
    // Batches of 10 from a queue read 16 at a time: the kills land mid-commit.
    let setup = fleet_gateway(
        &tmp.path().join("gw"),
        &cluster,
        "format = \"json_array\"\nbatch_max = 10\nmax_in_flight = 8",
    );
    // No stream yet: the sink says so, and every result stays queued.
    let mut gw = Gateway::start(&setup);
    const TOTAL: i64 = 20_000;
    publish_all(setup.mqtt_port, "devices", &plant_readings(0..TOTAL, 7)).await;
    gw.wait_log(
        Duration::from_secs(30),
        &["stream `FIELDGATE` does not exist"],
    )
    .await;
    assert!(
        gw.terminate(Duration::from_secs(20)).success(),
        "{}",
        gw.log_text()
    );

    let js = cluster
        .create_stream(stream_config(
            STREAM,
            &["fieldgate.>"],
            3,
            Duration::from_secs(600),
        ))
        .await;
    let sub = CoreSubscriber::start(&cluster, "fieldgate.>").await;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(17);
    for _ in 0..10 {
        let mut gw = Gateway::start(&setup);
        let after = Duration::from_millis(rand::Rng::random_range(&mut rng, 30..400));
        tokio::time::sleep(after).await;
        gw.kill9();
    }
    // The last start delivers what is left; its resends are what the server reports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_last = sub.count();
    let gw = Gateway::start(&setup);
    assert!(
        drained(&setup, Duration::from_secs(180)).await,
        "not drained; log:\n{}",
        gw.log_text()
    );
    let contents = read_stream(&js, STREAM).await;
    assert_each_once(&contents, TOTAL, "ten kill -9s");
    let (resent, _) = sub.repeats_since(0);
    assert!(
        resent > 0,
        "the kills caused no resends: the test proved nothing"
    );
    // Every resend of the last run (a message whose id the stream already had) was
    // reported back as a duplicate, and nothing else was.
    let m = scrape(setup.admin_port, None);
    let dups = m
        .get("fieldgate_sink_duplicates_total{sink=\"fleet\"}")
        .copied();
    let (messages, results) = sub.repeats_since(before_last);
    assert_eq!(
        dups,
        Some(results as f64),
        "{messages} messages ({results} results) resent in the last run"
    );
    eprintln!(
        "messages resent in all runs: {resent}; in the last run: {messages} ({results} results)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_holds_while_the_cluster_is_down_a_minute_and_drains_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, js) = cluster_with_stream(tmp.path()).await;
    let setup = fleet_gateway(&tmp.path().join("gw"), &cluster, "");
    let gw = Gateway::start(&setup);
    const FIRST: i64 = 5_000;
    const TOTAL: i64 = 10_000;
    publish_all(setup.mqtt_port, "devices", &plant_readings(0..FIRST, 5)).await;
    assert!(
        delivered(&setup, FIRST, Duration::from_secs(120)).await,
        "log:\n{}",
        gw.log_text()
    );
    for i in 0..3 {
        cluster.kill9(i);
    }
    let down_since = std::time::Instant::now();
    // Devices go on publishing; the gateway takes everything in and queues it.
    publish_all(setup.mqtt_port, "devices", &plant_readings(FIRST..TOTAL, 5)).await;
    let queued =
        |m: &HashMap<String, f64>| m.get("fieldgate_queue_entries{sink=\"fleet\"}").copied();
    assert!(
        eventually(Duration::from_secs(30), || queued(&scrape(
            setup.admin_port,
            None
        )) == Some(
            (TOTAL - FIRST) as f64
        ))
        .await,
        "queued: {:?}",
        queued(&scrape(setup.admin_port, None))
    );
    let m = scrape(setup.admin_port, None);
    assert_eq!(
        m.get("fieldgate_sink_up{sink=\"fleet\"}").copied(),
        Some(0.0)
    );
    assert_eq!(
        http_status(setup.admin_port, "/readyz"),
        Some(200),
        "an outage of the cloud is no reason to refuse devices"
    );
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down_since.elapsed())).await;
    assert_eq!(
        queued(&scrape(setup.admin_port, None)),
        Some((TOTAL - FIRST) as f64),
        "the queue held"
    );
    for i in 0..3 {
        cluster.start_node(i);
    }
    assert!(
        delivered(&setup, TOTAL, Duration::from_secs(180)).await,
        "not drained after the cluster came back; log:\n{}",
        gw.log_text()
    );
    let contents = read_stream(&js, STREAM).await;
    assert_each_once(&contents, TOTAL, "cluster down 60 s");
    let log = gw.log_text();
    assert!(
        log.contains("sink unreachable") && log.contains("sink delivering again"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_gateways_upload_at_once_with_exact_counts_each() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, js) = cluster_with_stream(tmp.path()).await;
    const GATEWAYS: usize = 10;
    const EACH: i64 = 2_000;
    let mut fleet = Vec::new();
    for g in 0..GATEWAYS {
        // Half send one message per result, half batches.
        let format = if g % 2 == 0 {
            "format = \"json_array\"\nbatch_max = 50"
        } else {
            ""
        };
        let setup = fleet_gateway(&tmp.path().join(format!("gw{g}")), &cluster, format);
        let config = std::fs::read_to_string(setup.config()).unwrap();
        std::fs::write(
            setup.config(),
            config.replace(
                "gateway_id = \"gw-test\"",
                &format!("gateway_id = \"site-{g}\""),
            ),
        )
        .unwrap();
        fleet.push(setup);
    }
    let gateways: Vec<Gateway> = fleet.iter().map(Gateway::start).collect();
    let uploads: Vec<_> = fleet
        .iter()
        .map(|s| {
            let port = s.mqtt_port;
            tokio::spawn(
                async move { publish_all(port, "devices", &plant_readings(0..EACH, 4)).await },
            )
        })
        .collect();
    for u in uploads {
        u.await.expect("devices published");
    }
    for (s, gw) in fleet.iter().zip(&gateways) {
        assert!(
            delivered(s, EACH, Duration::from_secs(180)).await,
            "log:\n{}",
            gw.log_text()
        );
    }
    let contents = read_stream(&js, STREAM).await;
    let mut per_gateway: HashMap<String, HashMap<i64, usize>> = HashMap::new();
    for (subject, r) in &contents.results {
        let n = r["n"].as_i64().expect("n");
        *per_gateway
            .entry(subject.clone())
            .or_default()
            .entry(n)
            .or_insert(0) += 1;
    }
    for g in 0..GATEWAYS {
        let subject = format!("fieldgate.site-{g}.forward");
        let got = per_gateway.remove(&subject).unwrap_or_default();
        assert!(
            got.len() as i64 == EACH && got.values().all(|c| *c == 1),
            "{subject}: {} distinct readings, {} stored in all",
            got.len(),
            got.values().sum::<usize>()
        );
        assert!(
            contents
                .results
                .iter()
                .filter(|(s, _)| *s == subject)
                .all(|(_, r)| r["_msg_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("site-{g}/fleet/"))))
        );
    }
    assert!(
        per_gateway.is_empty(),
        "subjects of no gateway: {:?}",
        per_gateway.keys()
    );
}

/// One server with `auth` in its config; the gateway's sink authenticates with
/// `sink_auth`. Returns whether 100 results reached the stream (waiting for them when
/// `expect`, else for the sink to say it cannot deliver), and the gateway's log.
async fn upload_through(
    dir: &std::path::Path,
    server_auth: &str,
    sink_auth: &str,
    expect: bool,
) -> (bool, String) {
    let cluster = NatsCluster::start(&dir.join("nats"), 1, server_auth);
    let setup = fleet_gateway(
        &dir.join("gw"),
        &cluster,
        &format!("create_stream = true\n{sink_auth}"),
    );
    let gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "devices", &plant_readings(0..100, 3)).await;
    if !expect {
        gw.wait_log(Duration::from_secs(20), &["sink unreachable"])
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ok = delivered(
        &setup,
        100,
        Duration::from_secs(if expect { 20 } else { 1 }),
    )
    .await;
    (ok, gw.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_password_nkey_credentials_and_tls_logins_work_and_wrong_ones_are_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    fieldgate_e2e::pki::ca(&pki, "nats-ca");
    fieldgate_e2e::pki::leaf(&pki, "nats-ca", "server");
    fieldgate_e2e::pki::leaf(&pki, "nats-ca", "gateway");
    let p = |f: &str| pki.join(f).display().to_string();
    let tls_server = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        p("server.pem"),
        p("server.key"),
        p("nats-ca.pem")
    );
    let tls_sink = format!(
        "tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
        p("nats-ca.pem"),
        p("gateway.pem"),
        p("gateway.key")
    );
    let token_server = "authorization { token: \"t0ken-s3cret\" }".to_string();
    let password_server =
        "authorization { users = [{ user: gw, password: \"pw-s3cret\" }] }".to_string();
    let cases: Vec<(&str, String, String)> = vec![
        (
            "token",
            token_server.clone(),
            "auth = { method = \"token\", token = \"t0ken-s3cret\" }".into(),
        ),
        (
            "password",
            password_server.clone(),
            "auth = { method = \"user_password\", user = \"gw\", password = \"pw-s3cret\" }".into(),
        ),
        (
            "nkey",
            format!(
                "authorization {{ users = [{{ nkey: {} }}] }}",
                user.public_key()
            ),
            format!("auth = {{ method = \"nkey\", seed = \"{seed}\" }}"),
        ),
        ("tls", tls_server.clone(), tls_sink),
        (
            "credentials",
            operator_mode(&tmp.path().join("gw1.creds")),
            format!(
                "auth = {{ method = \"credentials\", file = \"{}\" }}",
                tmp.path().join("gw1.creds").display()
            ),
        ),
    ];
    for (name, server, sink) in &cases {
        let (ok, log) = upload_through(&tmp.path().join(name), server, sink, true).await;
        assert!(ok, "{name}: results did not reach the stream; log:\n{log}");
        for secret in ["t0ken-s3cret", "pw-s3cret", seed.as_str()] {
            assert!(!log.contains(secret), "{name}: a secret in the log:\n{log}");
        }
    }
    // Wrong ones: nothing stored, the reason logged, no secret in it.
    let refused: Vec<(&str, String, String, &str)> = vec![
        (
            "bad-token",
            token_server,
            "auth = { method = \"token\", token = \"wr0ng-t0ken\" }".into(),
            "authorization",
        ),
        (
            "bad-password",
            password_server,
            "auth = { method = \"user_password\", user = \"gw\", password = \"wr0ng-pw\" }".into(),
            "authorization",
        ),
        (
            "no-client-cert",
            tls_server,
            format!("tls = {{ ca_file = \"{}\" }}", p("nats-ca.pem")),
            "sink unreachable",
        ),
    ];
    for (name, server, sink, says) in &refused {
        let (ok, log) = upload_through(&tmp.path().join(name), server, sink, false).await;
        assert!(!ok, "{name}: delivered with a wrong login");
        assert!(log.contains(says), "{name}: no {says:?} in the log:\n{log}");
        for secret in ["wr0ng-t0ken", "wr0ng-pw"] {
            assert!(!log.contains(secret), "{name}: a secret in the log:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_take_the_subjects_is_named_and_checked_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&tmp.path().join("nats"), 1, "");
    let js = cluster
        .create_stream(stream_config(
            STREAM,
            &["other.>"],
            1,
            Duration::from_secs(120),
        ))
        .await;
    let setup = fleet_gateway(&tmp.path().join("gw"), &cluster, "");
    let gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "devices", &plant_readings(0..50, 2)).await;
    let line = gw
        .wait_log(
            Duration::from_secs(20),
            &["sink unreachable", "not every subject of"],
        )
        .await;
    assert!(
        line.contains("fieldgate.gw-test.*"),
        "the fix is named: {line}"
    );
    // Fixed on the cloud side: the sink finds out by itself.
    let config = stream_config(
        STREAM,
        &["other.>", "fieldgate.>"],
        1,
        Duration::from_secs(120),
    );
    js.update_stream(config).await.expect("stream updated");
    assert!(
        delivered(&setup, 50, Duration::from_secs(30)).await,
        "log:\n{}",
        gw.log_text()
    );
    assert_each_once(&read_stream(&js, STREAM).await, 50, "after the fix");

    // A credentials file that cannot be read stops the gateway at start, naming it.
    let bad = fleet_gateway(
        &tmp.path().join("gw-bad"),
        &cluster,
        "auth = { method = \"credentials\", file = \"missing.creds\" }",
    );
    let out = std::process::Command::new(fieldgate_binary())
        .args(["run", "--config"])
        .arg(bad.config())
        .output()
        .expect("fieldgate runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.creds") && err.contains("fleet"),
        "{err}"
    );
}
