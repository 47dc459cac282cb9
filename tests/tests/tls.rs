//! The cloud MQTT sink over TLS with a client certificate, against a real mosquitto
//! that requires one; certificates are made here with openssl.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fieldgate_e2e::pki::{ca, leaf};
use fieldgate_e2e::*;

fn sink(tls_port: u16, pki: &Path, ca: &str) -> String {
    format!(
        "[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {tls_port}\n\
         reconnect_min = \"50ms\"\nreconnect_max = \"300ms\"\n\
         [sinks.cloud.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.join(format!("{ca}.pem")).display(),
        pki.join("gateway.pem").display(),
        pki.join("gateway.key").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_a_broker_that_requires_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    ca(&pki, "cloud-ca");
    ca(&pki, "other-ca");
    leaf(&pki, "cloud-ca", "broker");
    leaf(&pki, "cloud-ca", "gateway");
    let tls_port = free_port();
    let cloud = Mosquitto::start_with(
        free_port(),
        &tmp.path().join("cloud"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {0}/cloud-ca.pem\ncertfile {0}/broker.pem\n\
             keyfile {0}/broker.key\nrequire_certificate true\n",
            pki.display()
        ),
    );
    wait_listening(tls_port, "mosquitto's TLS listener");
    // The cloud application reads on the plain listener.
    let sub = Subscriber::start(cloud.port, "cloud-app", "fieldgate/gw-test/forward").await;

    // The right CA and a client certificate: every result arrives.
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &sink(tls_port, &pki, "cloud-ca"),
        &forward_rules("cloud"),
    );
    let mut gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "dev", &plant_readings(0..200, 1)).await;
    let ok = eventually(Duration::from_secs(30), || sub.count() >= 200).await;
    assert!(
        ok,
        "{} of 200 arrived over TLS; log:\n{}",
        sub.count(),
        gw.log_text()
    );
    assert!(gw.terminate(Duration::from_secs(10)).success());

    // A CA that did not sign the broker's certificate: refused, said clearly, and the
    // results stay queued.
    let setup = GatewaySetup::new(
        &tmp.path().join("gw-wrong-ca"),
        &sink(tls_port, &pki, "other-ca"),
        &forward_rules("cloud"),
    );
    let mut gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "dev", &plant_readings(1000..1010, 1)).await;
    gw.wait_log(
        Duration::from_secs(15),
        &[
            "sink unreachable",
            "invalid peer certificate",
            "UnknownIssuer",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sub.count(),
        200,
        "nothing may pass a broker the gateway does not trust"
    );
    assert!(gw.terminate(Duration::from_secs(10)).success());
    assert!(
        gw.log_text().contains("queued=10"),
        "the refused results stay queued; log:\n{}",
        gw.log_text()
    );

    // A key file that is not there: the gateway does not start, and says which sink.
    let setup = GatewaySetup::new(
        &tmp.path().join("gw-no-key"),
        &sink(tls_port, &pki, "cloud-ca").replace("gateway.key", "missing.key"),
        &forward_rules("cloud"),
    );
    let out = Command::new(fieldgate_binary())
        .args(["run", "--config"])
        .arg(setup.config())
        .output()
        .expect("fieldgate runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without its key; stderr:\n{err}"
    );
    assert!(
        err.contains("sink `cloud`") && err.contains("missing.key"),
        "unclear error:\n{err}"
    );
}
