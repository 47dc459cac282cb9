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

    // The adapter disappears: rows keep coming, with failure qualities (`offline` while
    // the silent unit waits for its next probe).
    sim.stop();
    drop(pty);
    for _ in 0..3 {
        let r = m1.poll(0).await.unwrap();
        let q = quality(&r, "u16");
        assert!(q == "io_error" || q == "timeout" || q == "offline", "{q}");
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
    // The other unit is read again at its own next probe, within its backoff.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = m1.poll(0).await.unwrap();
        if quality(&r, "u16") == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "unit 1 was not probed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// The rows each (device, group) produced between `from` and `to` after the start.
fn rows_per_group(
    rows: &[(Duration, String, String)],
    from: Duration,
    to: Duration,
) -> std::collections::BTreeMap<(String, String), usize> {
    let mut out = std::collections::BTreeMap::new();
    for (at, device, group) in rows {
        if *at >= from && *at < to {
            *out.entry((device.clone(), group.clone())).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_on_a_shared_line_does_not_starve_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("sim"), dir.path().join("gw"));
    let baud = 115_200;
    let _pty = Pty::start(&a, &b);
    let sim = ModbusSim::start(&[
        "--rtu".to_string(),
        a.display().to_string(),
        baud.to_string(),
    ]);
    // Unit 1 answers, with three 200 ms groups (5 rows/s each); unit 12 is not on the
    // line, polled as configs/factory.toml polls its meters (timeout 300 ms, one retry).
    let path = b.display();
    let text = format!(
        r#"
        [[devices]]
        name = "live"
        unit_id = 1
        transport = {{ type = "rtu", path = "{path}", baud = {baud} }}
        timeout = "300ms"
        retries = 1
        {groups}

        [[devices]]
        name = "dead"
        unit_id = 12
        transport = {{ type = "rtu", path = "{path}", baud = {baud} }}
        timeout = "300ms"
        retries = 1
        [[devices.groups]]
        name = "power"
        interval = "1s"
        tags = [{{ name = "p", register = 40001 }}, {{ name = "q", register = 40101 }}]
        {groups}
        "#,
        groups = ["a", "b", "c"]
            .map(|g| format!(
                "[[devices.groups]]\nname = \"{g}\"\ninterval = \"200ms\"\n\
                 tags = [{{ name = \"u16\", register = 40001 }}, {{ name = \"unit\", register = 40200 }}]\n"
            ))
            .join("\n")
    );
    let cfg: ModbusConfig = toml::from_str(&text).expect("test config parses");
    let ps: Vec<_> = pollers(&cfg)
        .unwrap()
        .into_iter()
        .map(std::sync::Arc::new)
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = ps
        .iter()
        .map(|p| tokio::spawn(p.clone().run(tx.clone(), stop_rx.clone())))
        .collect();
    drop(tx);
    let start = Instant::now();
    let run_for = Duration::from_secs(12);
    let mut rows = Vec::new();
    let mut dead_qualities = std::collections::BTreeSet::new();
    while let Ok(Some(row)) = tokio::time::timeout_at((start + run_for).into(), rx.recv()).await {
        if &*row.device == "live" {
            assert_eq!(
                quality(&row.batch, "u16"),
                "ok",
                "the live unit failed a poll"
            );
        } else {
            let tag = if &*row.group == "power" { "p" } else { "u16" };
            dead_qualities.insert(quality(&row.batch, tag));
        }
        rows.push((
            start.elapsed(),
            row.device.to_string(),
            row.group.to_string(),
        ));
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    sim.stop();
    // After the first seconds (the dead unit's probes back off), every live group keeps
    // its configured rate within 10%.
    let (from, to) = (Duration::from_secs(4), run_for);
    let counts = rows_per_group(&rows, from, to);
    let want = (to - from).as_secs_f64() / 0.2;
    for g in ["a", "b", "c"] {
        let n = counts.get(&("live".into(), g.into())).copied().unwrap_or(0) as f64;
        assert!(
            n >= 0.9 * want,
            "live/{g}: {n} rows in {:?}, want {want} (counts {counts:?})",
            to - from
        );
    }
    // The dead unit's rows keep coming too, at their own rate, saying why they are empty.
    let dead = counts
        .get(&("dead".into(), "power".into()))
        .copied()
        .unwrap_or(0) as f64;
    assert!(
        dead >= 0.9 * (to - from).as_secs_f64(),
        "dead/power: {dead} rows"
    );
    assert!(dead_qualities.contains("offline"), "{dead_qualities:?}");
    assert!(dead_qualities.contains("timeout"), "{dead_qualities:?}");
    // It was probed, not polled: far fewer requests than polls.
    let c = ps[1].counters();
    let requests = c.requests.load(std::sync::atomic::Ordering::Relaxed);
    let skipped = c.skipped_polls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        skipped > 0 && requests < 20,
        "dead unit: {requests} requests, {skipped} polls skipped"
    );
    assert_eq!(
        c.errors_timeout.load(std::sync::atomic::Ordering::Relaxed),
        requests,
        "every request to the dead unit is a counted timeout"
    );
}
