//! The Modbus source against a real device simulator: pymodbus serving the register map of
//! `tests/sim/modbus_sim.py` on a free loopback port. The expected values here are the
//! numbers the simulator encodes, decoded independently by Rust's own conversions.
//!
//! Needs `python3` with `pymodbus` (installed by `scripts/test.sh`); fails when missing.

use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, UInt16Type, UInt32Type, UInt64Type,
};
use fieldgate_connectors::modbus::{DevicePoller, ModbusConfig, ModbusError, Value};
use fieldgate_e2e::ModbusSim;

/// The device: one group with every type and order, `max_gap = 10`; tags given in both
/// address notations.
fn config(port: u16) -> ModbusConfig {
    let text = format!(
        r#"
        [[devices]]
        name = "plc1"
        transport = {{ type = "tcp", host = "127.0.0.1", port = {port} }}
        unit_id = 1
        timeout = "500ms"
        retries = 1
        reconnect_min = "50ms"
        reconnect_max = "400ms"
        degraded_after = 2
        max_gap = 10

        [[devices.groups]]
        name = "all"
        interval = "100ms"
        tags = [
          {{ name = "u16", area = "holding_register", address = 0, type = "u16" }},
          {{ name = "i16", register = 40002, type = "i16" }},
          {{ name = "u32_abcd", area = "holding_register", address = 2, type = "u32" }},
          {{ name = "i32_cdab", register = 40005, type = "i32", order = "CDAB" }},
          {{ name = "f32_abcd", register = 40007, type = "f32", order = "ABCD", writable = true }},
          {{ name = "f32_cdab", register = 40009, type = "f32", order = "CDAB", writable = true }},
          {{ name = "f32_badc", register = 40011, type = "f32", order = "BADC" }},
          {{ name = "f32_dcba", register = 40013, type = "f32", order = "DCBA" }},
          {{ name = "u64_abcd", register = 40015, type = "u64" }},
          {{ name = "i64_dcba", register = 40019, type = "i64", order = "DCBA" }},
          {{ name = "f64_abcd", register = 40023, type = "f64" }},
          {{ name = "f64_cdab", register = 40027, type = "f64", order = "CDAB" }},
          {{ name = "f64_badc", register = 40031, type = "f64", order = "BADC" }},
          {{ name = "f64_dcba", register = 40035, type = "f64", order = "DCBA" }},
          {{ name = "i32_badc", register = 40039, type = "i32", order = "BADC" }},
          {{ name = "u32_dcba", register = 40041, type = "u32", order = "DCBA" }},
          {{ name = "temp", register = 40043, type = "u16", scale = 0.1, offset = -10.0, unit = "degC", writable = true }},
          {{ name = "run", register = 40044, type = "bit", bit = 0, writable = true }},
          {{ name = "fault", register = 40044, type = "bit", bit = 1, writable = true }},
          {{ name = "alarm", register = 40044, type = "bit", bit = 15 }},
          {{ name = "label", register = 40045, type = "string", length = 4 }},
          {{ name = "far", area = "holding_register", address = 60, type = "u32" }},
          {{ name = "broken", area = "holding_register", address = 100 }},
          {{ name = "in_i16", register = 30001, type = "i16" }},
          {{ name = "in_f32", register = 30002, type = "f32", order = "CDAB" }},
          {{ name = "pump", area = "coil", address = 0, writable = true }},
          {{ name = "valve", register = 2, writable = true }},
          {{ name = "fan", area = "coil", address = 2 }},
          {{ name = "spare", area = "coil", address = 5 }},
          {{ name = "door", register = 10001 }},
          {{ name = "smoke", area = "discrete_input", address = 3 }},
        ]
        "#
    );
    toml::from_str(&text).expect("test config parses")
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_ref()
}

fn quality(b: &RecordBatch, tag: &str) -> String {
    col(b, &format!("{tag}_quality"))
        .as_string::<i32>()
        .value(0)
        .to_string()
}

fn f32_of(b: &RecordBatch, name: &str) -> f32 {
    col(b, name).as_primitive::<Float32Type>().value(0)
}

fn f64_of(b: &RecordBatch, name: &str) -> f64 {
    col(b, name).as_primitive::<Float64Type>().value(0)
}

fn bool_of(b: &RecordBatch, name: &str) -> bool {
    col(b, name).as_boolean().value(0)
}

/// The plan for the map, in the order the poller sends it: coils 0..=5, discrete inputs
/// 0..=3, input registers 0..=2, holding 0..=47 (one read), holding 60 (gap 12 > 10),
/// holding 100 (the exception).
const EXPECTED_FCS: [&str; 6] = [
    "REQ fc=1 addr=0 unit=1",
    "REQ fc=2 addr=0 unit=1",
    "REQ fc=4 addr=0 unit=1",
    "REQ fc=3 addr=0 unit=1",
    "REQ fc=3 addr=60 unit=1",
    "REQ fc=3 addr=100 unit=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_every_type_and_order_in_the_planned_requests() {
    let (sim, port) = ModbusSim::start_tcp();
    let poller = DevicePoller::standalone(&config(port).devices[0]).unwrap();
    let plan = &poller.groups()[0].reads;
    assert_eq!(plan.len(), EXPECTED_FCS.len(), "{plan:?}");

    let b = poller.poll(0).await.unwrap();
    let reqs = sim.take_requests(EXPECTED_FCS.len());
    assert_eq!(reqs, EXPECTED_FCS, "requests of one poll");
    assert_eq!(b.num_rows(), 1);
    assert_eq!(col(&b, "device").as_string::<i32>().value(0), "plc1");
    assert_eq!(col(&b, "group").as_string::<i32>().value(0), "all");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = col(&b, "timestamp").as_primitive::<Int64Type>().value(0);
    assert!(
        (now_ms - ts).abs() < 10_000,
        "timestamp {ts} vs now {now_ms}"
    );

    for tag in poller.groups()[0]
        .tags
        .iter()
        .filter(|t| t.name != "broken")
    {
        assert_eq!(quality(&b, &tag.name), "ok", "quality of {}", tag.name);
    }
    assert_eq!(col(&b, "u16").as_primitive::<UInt16Type>().value(0), 54321);
    assert_eq!(col(&b, "i16").as_primitive::<Int16Type>().value(0), -1234);
    assert_eq!(
        col(&b, "u32_abcd").as_primitive::<UInt32Type>().value(0),
        3_000_000_000
    );
    assert_eq!(
        col(&b, "i32_cdab").as_primitive::<Int32Type>().value(0),
        -2_000_000_000
    );
    for name in ["f32_abcd", "f32_cdab", "f32_badc", "f32_dcba"] {
        assert_eq!(f32_of(&b, name), 1234.5678f32, "{name}");
    }
    assert_eq!(
        col(&b, "u64_abcd").as_primitive::<UInt64Type>().value(0),
        0x0123_4567_89AB_CDEF
    );
    assert_eq!(
        col(&b, "i64_dcba").as_primitive::<Int64Type>().value(0),
        -1_234_567_890_123
    );
    assert_eq!(f64_of(&b, "f64_abcd"), std::f64::consts::PI);
    assert_eq!(f64_of(&b, "f64_cdab"), -2.718281828459045e10);
    assert_eq!(f64_of(&b, "f64_badc"), 6.02214076e23);
    assert_eq!(f64_of(&b, "f64_dcba"), 1.0e-7);
    assert_eq!(
        col(&b, "i32_badc").as_primitive::<Int32Type>().value(0),
        123_456_789
    );
    assert_eq!(
        col(&b, "u32_dcba").as_primitive::<UInt32Type>().value(0),
        0xDEAD_BEEF
    );
    // 2315 * 0.1 - 10
    assert!((f64_of(&b, "temp") - 221.5).abs() < 1e-9);
    assert!(bool_of(&b, "run") && !bool_of(&b, "fault") && bool_of(&b, "alarm"));
    assert_eq!(col(&b, "label").as_string::<i32>().value(0), "PUMP-7");
    assert_eq!(col(&b, "far").as_primitive::<UInt32Type>().value(0), 77);
    assert_eq!(col(&b, "in_i16").as_primitive::<Int16Type>().value(0), -5);
    assert_eq!(f32_of(&b, "in_f32"), 0.25);
    assert!(bool_of(&b, "pump") && !bool_of(&b, "valve") && bool_of(&b, "fan"));
    assert!(bool_of(&b, "spare"));
    assert!(bool_of(&b, "door") && bool_of(&b, "smoke"));

    // The exception: quality says which, the value is null, the rest of the row is fine.
    assert_eq!(quality(&b, "broken"), "exception:2");
    assert!(col(&b, "broken").is_null(0));

    let c = poller.counters();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(c.polls.load(Relaxed), 1);
    assert_eq!(c.requests.load(Relaxed), 6);
    assert_eq!(c.errors_exception.load(Relaxed), 1);
    assert_eq!(
        c.errors_timeout.load(Relaxed) + c.errors_io.load(Relaxed),
        0
    );
    assert_eq!(c.latency_count.load(Relaxed), 6);
    assert!(!poller.is_degraded());
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_round_trip_and_refusals() {
    let (sim, port) = ModbusSim::start_tcp();
    let poller = DevicePoller::standalone(&config(port).devices[0]).unwrap();

    poller.write("f32_cdab", &Value::F32(-42.25)).await.unwrap();
    poller.write("temp", &Value::F64(25.0)).await.unwrap();
    poller.write("valve", &Value::Bool(true)).await.unwrap();
    poller.write("pump", &Value::Bool(false)).await.unwrap();
    // `valve` is Modicon coil 00002: protocol address 1.
    assert_eq!(
        sim.take_requests(4),
        [
            "REQ fc=16 addr=8 unit=1",
            "REQ fc=6 addr=42 unit=1",
            "REQ fc=5 addr=1 unit=1",
            "REQ fc=5 addr=0 unit=1"
        ]
    );

    let b = poller.poll(0).await.unwrap();
    assert_eq!(f32_of(&b, "f32_cdab"), -42.25);
    assert!((f64_of(&b, "temp") - 25.0).abs() < 1e-9);
    assert!(bool_of(&b, "valve") && !bool_of(&b, "pump"));
    // Neighbours untouched.
    assert_eq!(f32_of(&b, "f32_abcd"), 1234.5678f32);
    assert!(bool_of(&b, "fan"));
    sim.take_requests(EXPECTED_FCS.len());

    // Refused before anything is sent.
    let e = poller.write("u16", &Value::U16(1)).await.unwrap_err();
    assert!(e.to_string().contains("not writable"), "{e}");
    let e = poller.write("temp", &Value::F64(7000.0)).await.unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = poller.write("nope", &Value::U16(1)).await.unwrap_err();
    assert!(matches!(e, ModbusError::UnknownTag { .. }), "{e}");
    assert!(
        sim.take_requests(0).is_empty(),
        "refused writes reached the device"
    );
    // One row's writes in the fewest requests: adjacent coils in one FC15, adjacent
    // registers in one FC16, two bits of one register by read-modify-write.
    poller
        .write_all(&[
            ("valve", Value::Bool(false)),
            ("pump", Value::Bool(true)),
            ("f32_cdab", Value::F64(-1.5)),
            ("f32_abcd", Value::F64(99.0)),
            ("run", Value::Bool(false)),
            ("fault", Value::Bool(true)),
        ])
        .await
        .unwrap();
    assert_eq!(
        sim.take_requests(4),
        [
            "REQ fc=15 addr=0 unit=1",
            "REQ fc=16 addr=6 unit=1",
            "REQ fc=3 addr=43 unit=1",
            "REQ fc=6 addr=43 unit=1",
        ]
    );
    let b = poller.poll(0).await.unwrap();
    assert!(bool_of(&b, "pump") && !bool_of(&b, "valve"));
    assert_eq!(
        (f32_of(&b, "f32_abcd"), f32_of(&b, "f32_cdab")),
        (99.0, -1.5)
    );
    // Bit 0 cleared, bit 1 set, bit 15 (and bit 2, not a tag) kept.
    assert!(!bool_of(&b, "run") && bool_of(&b, "fault") && bool_of(&b, "alarm"));
    sim.take_requests(EXPECTED_FCS.len());
    // A row that sets one bit twice is refused whole.
    let e = poller
        .write_all(&[
            ("pump", Value::Bool(false)),
            ("run", Value::Bool(true)),
            ("run", Value::Bool(false)),
        ])
        .await
        .unwrap_err();
    assert!(matches!(e, ModbusError::Overlap(..)), "{e}");
    assert!(
        sim.take_requests(0).is_empty(),
        "a refused row reached the device"
    );

    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(poller.counters().writes.load(Relaxed), 10);
    assert_eq!(poller.counters().write_errors.load(Relaxed), 6);
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_goes_away_and_comes_back() {
    let (sim, port) = ModbusSim::start_tcp();
    let poller = DevicePoller::standalone(&config(port).devices[0]).unwrap();
    let b = poller.poll(0).await.unwrap();
    assert_eq!(quality(&b, "u16"), "ok");
    sim.stop();

    // Away: every poll still yields a row, quickly, with a failure quality and no value
    // (`offline` between the probes of the silent device).
    for _ in 0..3 {
        let started = Instant::now();
        let b = poller.poll(0).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(b.num_rows(), 1);
        for tag in ["u16", "f64_abcd", "pump", "broken"] {
            let q = quality(&b, tag);
            assert!(
                q == "io_error" || q == "timeout" || q == "offline",
                "{tag}: {q}"
            );
            assert!(col(&b, tag).is_null(0), "{tag} has a value while away");
        }
    }
    assert!(poller.is_degraded(), "degraded after 2 failed cycles");

    // Back on the same port: values return within the reconnect backoff.
    let sim = ModbusSim::start(&[port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let b = loop {
        let b = poller.poll(0).await.unwrap();
        if quality(&b, "u16") == "ok" {
            break b;
        }
        assert!(Instant::now() < deadline, "device did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(col(&b, "u16").as_primitive::<UInt16Type>().value(0), 54321);
    assert_eq!(f64_of(&b, "f64_abcd"), std::f64::consts::PI);
    assert_eq!(quality(&b, "broken"), "exception:2");
    assert!(!poller.is_degraded());
    use std::sync::atomic::Ordering::Relaxed;
    let c = poller.counters();
    assert!(c.errors_io.load(Relaxed) + c.errors_timeout.load(Relaxed) >= 1);
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_polls_at_the_interval_until_shutdown() {
    let (sim, port) = ModbusSim::start_tcp();
    let poller = std::sync::Arc::new(DevicePoller::standalone(&config(port).devices[0]).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(poller.clone().run(tx, stopped));
    let started = Instant::now();
    for _ in 0..3 {
        let row = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a row within 5 s")
            .expect("poller running");
        assert_eq!((&*row.device, &*row.group), ("plc1", "all"));
        assert_eq!(quality(&row.batch, "u16"), "ok");
    }
    // Interval 100 ms: the first poll is immediate, the third 200 ms later.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops within 5 s")
        .unwrap();
    sim.stop();
}
