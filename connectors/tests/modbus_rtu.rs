//! The Modbus source over a serial line: `socat` makes a virtual serial pair, pymodbus
//! serves units 1 and 2 on one end, and two devices share the other end through one line.
//!
//! Needs `socat` and `python3` with `pymodbus[serial]` (installed by `scripts/test.sh`);
//! fails when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, UInt16Type};
use fieldgate_connectors::modbus::{ModbusConfig, pollers};
use fieldgate_e2e::ModbusSim;

/// A virtual serial pair; killed on drop.
struct Pty {
    child: Child,
}

impl Pty {
    fn start(a: &Path, b: &Path) -> Pty {
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("socat is needed for the Modbus RTU tests (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.exists() && b.exists()) {
            assert!(Instant::now() < deadline, "socat made no serial pair");
            std::thread::sleep(Duration::from_millis(20));
        }
        Pty { child }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(path: &Path, baud: u32) -> ModbusConfig {
    let device = |name: &str, unit: u8| {
        format!(
            r#"
            [[devices]]
            name = "{name}"
            unit_id = {unit}
            transport = {{ type = "rtu", path = "{path}", baud = {baud} }}
            timeout = "500ms"
            retries = 0
            reconnect_min = "50ms"
            reconnect_max = "300ms"
            [[devices.groups]]
            name = "g"
            interval = "100ms"
            tags = [
              {{ name = "u16", register = 40001 }},
              {{ name = "f64", register = 40023, type = "f64" }},
              {{ name = "unit", register = 40200 }},
              {{ name = "broken", register = 40101 }},
            ]
            "#,
            path = path.display()
        )
    };
    toml::from_str(&(device("meter1", 1) + &device("meter2", 2))).expect("test config parses")
}

fn quality(b: &RecordBatch, tag: &str) -> String {
    b.column_by_name(&format!("{tag}_quality"))
        .expect("quality column")
        .as_string::<i32>()
        .value(0)
        .to_string()
}

fn u16_of(b: &RecordBatch, tag: &str) -> u16 {
    b.column_by_name(tag)
        .expect("column")
        .as_primitive::<UInt16Type>()
        .value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_units_share_one_serial_line_and_survive_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("sim"), dir.path().join("gw"));
    let baud = 115_200;
    let pty = Pty::start(&a, &b);
    let sim_args = [
        "--rtu".to_string(),
        a.display().to_string(),
        baud.to_string(),
    ];
    let sim = ModbusSim::start(&sim_args);

    let cfg = config(&b, baud);
    let ps = pollers(&cfg).unwrap();
    assert_eq!(ps.len(), 2);
    let (m1, m2) = (&ps[0], &ps[1]);

    // Both polled at once: the shared line makes them take turns.
    for _ in 0..3 {
        let (r1, r2) = tokio::join!(m1.poll(0), m2.poll(0));
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        for (r, unit) in [(&r1, 1), (&r2, 2)] {
            assert_eq!(quality(r, "u16"), "ok");
            assert_eq!(u16_of(r, "u16"), 54321);
            assert_eq!(u16_of(r, "unit"), unit);
            let f = r
                .column_by_name("f64")
                .unwrap()
                .as_primitive::<Float64Type>();
            assert_eq!(f.value(0), std::f64::consts::PI);
            assert_eq!(quality(r, "broken"), "exception:2");
        }
    }
    // Holding 0, 22..=25, 100 and 199 with no gap allowed: 4 reads per poll and unit, and
    // a unit's poll is never interleaved with the other's on the line.
    assert_eq!(m1.groups()[0].reads.len(), 4);
    let log = sim.take_requests(24);
    assert_eq!(log.len(), 24, "{log:?}");
    for poll in log.chunks(4) {
        let unit = &poll[0][poll[0].len() - 6..];
        assert!(poll.iter().all(|l| l.ends_with(unit)), "{poll:?}");
    }
    assert_eq!(log.iter().filter(|l| l.ends_with("unit=2")).count(), 12);

    // The adapter disappears: rows keep coming, with failure qualities.
    sim.stop();
    drop(pty);
    for _ in 0..3 {
        let r = m1.poll(0).await.unwrap();
        let q = quality(&r, "u16");
        assert!(q == "io_error" || q == "timeout", "{q}");
        assert!(r.column_by_name("u16").unwrap().is_null(0));
    }
    assert!(m1.is_degraded());

    // ...and comes back at the same path: the port is reopened.
    let _pty = Pty::start(&a, &b);
    let sim = ModbusSim::start(&sim_args);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = m2.poll(0).await.unwrap();
        if quality(&r, "u16") == "ok" {
            assert_eq!(u16_of(&r, "unit"), 2);
            break;
        }
        assert!(Instant::now() < deadline, "serial line did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = m1.poll(0).await.unwrap();
    assert_eq!(quality(&r, "u16"), "ok");
    assert!(!m1.is_degraded());
    sim.stop();
}

#[test]
fn devices_on_one_port_must_agree_on_its_settings() {
    let mut cfg = config(Path::new("/dev/ttyFAKE0"), 9600);
    if let fieldgate_connectors::modbus::config::Transport::Rtu { baud, .. } =
        &mut cfg.devices[1].transport
    {
        *baud = 19200;
    }
    let e = pollers(&cfg).unwrap_err().to_string();
    assert!(e.contains("configured differently"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_bad_crc_is_a_bad_frame_not_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("dev"), dir.path().join("gw"));
    let baud = 115_200;
    let _pty = Pty::start(&a, &b);
    let sim = ModbusSim::start(&[
        "--rtu-bad-crc".to_string(),
        a.display().to_string(),
        baud.to_string(),
    ]);
    let mut cfg = config(&b, baud);
    cfg.devices.truncate(1);
    cfg.devices[0].groups[0].tags.truncate(1);
    let ps = pollers(&cfg).unwrap();
    let r = ps[0].poll(0).await.unwrap();
    assert_eq!(quality(&r, "u16"), "bad_frame");
    assert!(r.column_by_name("u16").unwrap().is_null(0));
    assert_eq!(sim.take_requests(1), ["REQ fc=3 addr=0 unit=1"]);
    use std::sync::atomic::Ordering::Relaxed;
    let c = ps[0].counters();
    assert_eq!(c.errors_frame.load(Relaxed), 1);
    assert_eq!(c.errors_timeout.load(Relaxed), 0);
    sim.stop();
}
