//! A running `tests/sim/modbus_sim.py` (pymodbus): the Modbus device of the connector
//! tests and the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A running simulator; killed on drop.
pub struct ModbusSim {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ModbusSim {
    /// Starts `modbus_sim.py` as a Modbus TCP device on a free loopback port, and returns
    /// it with the port. A port picked free may be taken by another process before the
    /// simulator binds it (a client's ephemeral port, say): then it tries another, five
    /// times at most.
    pub fn start_tcp() -> (ModbusSim, u16) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = crate::free_port();
            match ModbusSim::try_start(&[port.to_string()]) {
                Ok(sim) => return (sim, port),
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port for the Modbus simulator in five tries; the last:\n{last}")
    }

    /// Starts `modbus_sim.py` with `args` and waits (bounded) for its ready line.
    pub fn start(args: &[String]) -> ModbusSim {
        ModbusSim::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the simulator, or says why it did not start.
    fn try_start(args: &[String]) -> Result<ModbusSim, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sim/modbus_sim.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the Modbus tests (scripts/test.sh installs pymodbus)");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY") {
                    let _ = ready_tx.send(());
                } else {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        let errors = Arc::new(Mutex::new(String::new()));
        let err_sink = errors.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = err_sink.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            return Err(format!(
                "the Modbus simulator did not start with {args:?} (is pymodbus >= 3.16 installed? \
                 scripts/test.sh installs it); its stderr:\n{}",
                errors.lock().unwrap()
            ));
        }
        Ok(ModbusSim { child, log })
    }

    /// Function codes of the requests logged since the last call, waiting until at least
    /// `expected` arrived (bounded) and a moment longer to catch extra ones.
    pub fn take_requests(&self, expected: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log.lock().unwrap().len() < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Stops the simulator now (the device goes away).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
