"""Starts the built fieldgate binary on free loopback ports for the Python client tests."""

import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FIELDGATE_BIN", ROOT / "target" / "debug" / "fieldgate"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build -p fieldgate` (scripts/test.sh does)")
    return path


class Gateway:
    """One fieldgate process; `broker` holds extra keys of its [broker] table, `extra`
    whole tables (sinks, journal) appended to the config."""

    def __init__(self, tmp: pathlib.Path, broker: str = "", extra: str = "", rules: str = ""):
        self.tmp = tmp
        self.port = free_port()
        # One port serves MQTT 3.1.1 and 5.
        self.v4 = self.v5 = self.port
        self.admin = free_port()
        (tmp / "rules").mkdir(exist_ok=True)
        (tmp / "rules" / "r.sql").write_text(
            rules or "CREATE STREAM s (v BIGINT) WITH (DATASOURCE = 'unused/#', FORMAT = 'json');\n"
        )
        self.config = tmp / "fieldgate.toml"
        self.config.write_text(
            f'gateway_id = "gw-test"\ndata_dir = "data"\nrules_dir = "rules"\n'
            f'[broker]\nlisten = "127.0.0.1:{self.port}"\n{broker}\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n{extra}\n'
        )
        self.log = tmp / "fieldgate.log"
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [str(binary()), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fieldgate did not become ready:\n{self.log.read_text()}")
            time.sleep(0.05)

    def metrics(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("fieldgate did not exit within 10 s of SIGTERM")
        assert code == 0, self.log.read_text()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("gw"))
    yield g
    g.stop()
