//! What `validate` accepts runs; what cannot run is refused by `validate` and by `run`
//! at start, with a non-zero exit naming the file and the key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldgate_e2e::*;

/// A config around `extra`, with listeners on ports picked free.
fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/r.sql"), forward_rules("disk")).unwrap();
    let text = format!(
        "rules_dir = \"rules\"\ndata_dir = \"data\"\n\
         [sinks.disk]\ntype = \"file\"\npath = \"out/{{rule}}.jsonl\"\n{extra}"
    );
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn ports() -> String {
    format!("listen = \"127.0.0.1:{}\"\n", free_port())
}

fn admin() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port())
}

/// Runs `fieldgate <args>` to its end (at most 20 s): exit code and stderr.
fn fieldgate(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(fieldgate_binary())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldgate runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "fieldgate {args:?} still running after 20 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MODBUS_GROUP: &str = "[[modbus.devices.groups]]\nname = \"g\"\ninterval = \"1s\"\n";

#[test]
fn what_cannot_run_is_refused_by_validate_and_by_run_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let tcp = |name: &str, unit: u8| {
        format!(
            "[[modbus.devices]]\nname = \"{name}\"\nunit_id = {unit}\n\
             transport = {{ type = \"tcp\", host = \"127.0.0.1\", port = 1502 }}\n{MODBUS_GROUP}\
             tags = [{{ name = \"x\", register = 40001 }}]\n"
        )
    };
    let b = ports();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a log level that is no level",
            format!("[log]\nlevel = \"warning\"\n[broker]\n{b}{}", admin()),
            "log.level",
        ),
        (
            "a separate MQTT 5 listener (one port serves both)",
            format!(
                "[broker]\n{b}listen_v5 = \"127.0.0.1:{}\"\n{}",
                free_port(),
                admin()
            ),
            "broker.listen_v5",
        ),
        (
            "a listener off loopback with no way to authenticate",
            format!(
                "[broker]\nlisten = \"0.0.0.0:{}\"\n{}",
                free_port(),
                admin()
            ),
            "broker.password_file",
        ),
        (
            "a password file that is not one",
            {
                let pw = tmp.path().join("passwd");
                std::fs::write(&pw, "alice:plaintext\n").unwrap();
                format!(
                    "[broker]\n{b}password_file = \"{}\"\n{}",
                    pw.display(),
                    admin()
                )
            },
            "passwd:1",
        ),
        (
            "an ACL file with an unknown keyword",
            {
                let acl = tmp.path().join("acl");
                std::fs::write(&acl, "user alice\ntopic read a/#\ngrant all\n").unwrap();
                format!("[broker]\n{b}acl_file = \"{}\"\n{}", acl.display(), admin())
            },
            "acl:3",
        ),
        (
            "a journal smaller than two messages",
            format!("[broker]\n{b}{}[journal]\nmax_bytes = 1000\n", admin()),
            "journal.max_bytes",
        ),
        (
            "packets too small for a CONNECT",
            format!("[broker]\n{b}max_payload_size = 0\n{}", admin()),
            "broker.max_payload_size",
        ),
        (
            "no connections at all",
            format!("[broker]\n{b}max_connections = 0\n{}", admin()),
            "broker.max_connections",
        ),
        (
            "an admin port in use",
            format!("[broker]\n{b}[admin]\nlisten = \"127.0.0.1:{taken_port}\"\n"),
            "admin.listen",
        ),
        (
            "a broker port in use",
            format!("[broker]\nlisten = \"127.0.0.1:{taken_port}\"\n{}", admin()),
            "broker.listen",
        ),
        (
            "overlapping Modbus tags",
            format!(
                "[broker]\n{b}{}[[modbus.devices]]\nname = \"plc\"\n\
             transport = {{ type = \"tcp\", host = \"127.0.0.1\", port = 1502 }}\n{MODBUS_GROUP}\
             tags = [{{ name = \"a\", register = 40001, type = \"f32\" }}, {{ name = \"b\", register = 40002 }}]\n",
                admin()
            ),
            "modbus.devices",
        ),
        (
            "one device configured twice",
            format!(
                "[broker]\n{b}{}{}{}",
                admin(),
                tcp("plc_a", 1),
                tcp("plc_b", 1)
            ),
            "modbus.devices",
        ),
        (
            "a byte order on a coil",
            format!(
                "[broker]\n{b}{}[[modbus.devices]]\nname = \"plc\"\n\
             transport = {{ type = \"tcp\", host = \"127.0.0.1\", port = 1502 }}\n{MODBUS_GROUP}\
             tags = [{{ name = \"run\", register = 1, order = \"CDAB\" }}]\n",
                admin()
            ),
            "modbus.devices",
        ),
        (
            "a serial device that does not exist",
            format!(
                "[broker]\n{b}{}[[modbus.devices]]\nname = \"meter\"\n\
             transport = {{ type = \"rtu\", path = \"/dev/fieldgate-no-such-tty\" }}\n{MODBUS_GROUP}\
             tags = [{{ name = \"kwh\", register = 30001 }}]\n",
                admin()
            ),
            "modbus.devices[0].transport.path",
        ),
        (
            "a NATS credentials file that is not there",
            format!(
                "[broker]\n{b}{}[sinks.fleet]\ntype = \"nats\"\nservers = [\"127.0.0.1:4222\"]\n\
                 stream = \"S\"\nauth = {{ method = \"credentials\", file = \"no-such.creds\" }}\n",
                admin()
            ),
            "no-such.creds",
        ),
        (
            "a cloud broker's CA file that is not there",
            format!(
                "[broker]\n{b}{}[sinks.cloud]\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\n\
                 tls = {{ ca_file = \"no-such-ca.pem\" }}\n",
                admin()
            ),
            "no-such-ca.pem",
        ),
    ];
    for (i, (what, extra, key)) in cases.iter().enumerate() {
        let path = config(&tmp.path().join(format!("c{i}")), extra);
        let p = path.to_str().unwrap();
        let (code, err) = fieldgate(&["validate", "--config", p]);
        assert_eq!(code, Some(1), "validate took {what}:\n{err}");
        assert!(
            err.contains("gw.toml") && err.contains(key),
            "validate, {what}: does not name `{key}`:\n{err}"
        );
        let (code, err) = fieldgate(&["run", "--config", p]);
        assert_eq!(code, Some(1), "run took {what}:\n{err}");
        assert!(
            err.contains(key),
            "run, {what}: does not name `{key}`:\n{err}"
        );
    }
    // The same checks pass a good config, and `--offline` leaves out those of the host.
    let good = config(
        &tmp.path().join("good"),
        &format!("[broker]\n{}{}", ports(), admin()),
    );
    let (code, err) = fieldgate(&["validate", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let elsewhere = config(
        &tmp.path().join("elsewhere"),
        &format!(
            "[broker]\n{}[admin]\nlisten = \"127.0.0.1:{taken_port}\"\n",
            ports()
        ),
    );
    let (code, err) = fieldgate(&[
        "validate",
        "--offline",
        "--config",
        elsewhere.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    drop(taken);
}
