"""OPC UA end to end: the gateway binary against a real asyncua server (a separate
process, tests/sim/opcua_server.py), results read from the gateway's file sink and
written values read back from the server with asyncua's own client."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
from asyncua import ua
from asyncua.sync import Client

from conftest import ROOT, Gateway, binary, free_port

SIM = ROOT / "tests" / "sim" / "opcua_server.py"


class OpcuaSim:
    """The asyncua test server; restartable on the same port with the same identity."""

    def __init__(self, tmp: pathlib.Path, secure: bool = False, user: str = "", rate: float = 0.0, fast: int = 0):
        self.port = free_port()
        self.args = [sys.executable, str(SIM), "--port", str(self.port)]
        if secure:
            self.args += ["--secure", str(tmp / "server-pki")]
        if user:
            self.args += ["--user", user]
        if rate:
            self.args += ["--rate", str(rate)]
        if fast:
            self.args += ["--fast", str(fast)]
        self.log = tmp / f"opcua-server-{self.port}.log"
        self.start()

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/fieldgate/test/"

    def start(self):
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True
        )
        deadline = time.monotonic() + 60
        line = self.proc.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.proc.kill()
            pytest.fail(f"the asyncua server did not start:\n{self.log.read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self) -> Client:
        c = Client(self.url, timeout=10)
        c.connect()
        return c


def node(c: Client, name: str):
    return c.get_node(f"ns=2;s={name}")


def results(gw: Gateway, rule: str) -> list:
    path = gw.tmp / "out" / f"{rule}.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("_msg_id", None)
    return rows


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def server_toml(name: str, sim: OpcuaSim, body: str, extra: str = "") -> str:
    return (
        f'[[opcua.servers]]\nname = "{name}"\nendpoint = "{sim.url}"\n'
        f'reconnect_min = "200ms"\nreconnect_max = "1s"\nkeepalive = "1s"\n'
        f'request_timeout = "2s"\n{extra}\n{body}'
    )


FILE_SINK = '[sinks.disk]\ntype = "file"\npath = "out/{rule}.jsonl"\n'

ALL_NODES = """
[[opcua.servers.groups]]
name = "all"
publishing_interval = "100ms"
nodes = [
  { name = "b", node_id = "ns=2;s=Bool", type = "boolean" },
  { name = "sb", node_id = "ns=2;s=SByte", type = "sbyte" },
  { name = "by", node_id = "ns=2;s=Byte", type = "byte" },
  { name = "i16", node_id = "ns=2;s=Int16", type = "int16" },
  { name = "u16", node_id = "ns=2;s=UInt16", type = "uint16" },
  { name = "i32", node_id = "ns=2;s=Int32", type = "int32" },
  { name = "u32", node_id = "ns=2;s=UInt32", type = "uint32" },
  { name = "i64", node_id = "ns=2;s=Int64", type = "int64" },
  { name = "u64", node_id = "ns=2;s=UInt64", type = "uint64" },
  { name = "f", node_id = "ns=2;s=Float", type = "float" },
  { name = "d", node_id = "ns=2;s=Double", type = "double" },
  { name = "s", node_id = "ns=2;s=String", type = "string" },
  { name = "t", node_id = "ns=2;s=DateTime", type = "datetime" },
  { name = "da", node_id = "ns=2;s=DoubleArray", type = "double[]" },
  { name = "ia", node_id = "ns=2;s=Int32Array", type = "int32[]" },
  { name = "guid", node_id = "ns=2;s=Guid", type = "string" },
  { name = "ghost", node_id = "ns=2;s=NoSuchNode", type = "double" },
]

[[opcua.servers.groups]]
name = "polled"
mode = "poll"
interval = "200ms"
nodes = [{ name = "d", node_id = "ns=2;s=Double", type = "double" }]
"""

ALL_RULES = """
CREATE STREAM plc (server STRING, b BOOLEAN, sb BIGINT, by BIGINT, i16 BIGINT, u16 BIGINT,
  i32 BIGINT, u32 BIGINT, i64 BIGINT, u64 DOUBLE, f DOUBLE, d DOUBLE, d_quality STRING,
  d_status STRING, d_source_time TIMESTAMP, d_server_time BIGINT, s STRING, t TIMESTAMP,
  da ARRAY(DOUBLE), ia ARRAY(BIGINT), guid STRING, guid_quality STRING, guid_status STRING,
  ghost DOUBLE, ghost_quality STRING, ghost_status STRING)
WITH (TYPE = 'opcua', DATASOURCE = 'sim/all', TIMESTAMP = 'd_source_time');
CREATE RULE every_type INTO disk AS SELECT * FROM plc;

CREATE STREAM polled (d DOUBLE, d_quality STRING) WITH (TYPE = 'opcua', DATASOURCE = 'sim/polled');
CREATE RULE polled_rows INTO disk AS SELECT d, d_quality FROM polled;
"""


def test_every_type_quality_and_timestamps_unknown_nodes_and_types_named(tmp_path):
    sim = OpcuaSim(tmp_path)
    gw = Gateway(tmp_path, extra=FILE_SINK + server_toml("sim", sim, ALL_NODES), rules=ALL_RULES)
    try:
        rows = wait_for(
            "a row of every type",
            lambda: [r for r in results(gw, "every_type") if r["d_quality"] == "good"],
        )
        r = rows[0]
        expected = {
            "server": "sim",
            "b": True,
            "sb": -5,
            "by": 200,
            "i16": -12345,
            "u16": 54321,
            "i32": -2_000_000_000,
            "u32": 4_000_000_000,
            "i64": -9_000_000_000_000_000_000,
            "u64": 18_000_000_000_000_000_000.0,
            "f": 1.1,
            "d": 2.718281828459045,
            "d_quality": "good",
            "d_status": "Good",
            "s": "Grüße, Presse 3",
            "da": [1.5, -2.25, 3.0],
            "ia": [7, -8, 9],
            "guid": None,
            "guid_quality": "bad",
            "guid_status": "BadTypeMismatch",
            "ghost": None,
            "ghost_quality": "bad",
        }
        for k, v in expected.items():
            assert r.get(k) == v, f"{k}: {r.get(k)!r} != {v!r} in {r}"
        assert str(r["t"]).startswith("2026-12-01T08:30:15.250"), r["t"]
        # Server timestamps are the server's clock: within a minute of ours.
        assert abs(r["d_server_time"] / 1000 - time.time()) < 60, r
        assert r["d_source_time"], r
        # The unknown node: refused by the server, named in the log and in its status.
        statuses = {row["ghost_status"] for row in rows}
        assert statuses & {"BadNodeIdUnknown", "BadWaitingForInitialData"}, statuses
        log = gw.log.read_text()
        assert "ns=2;s=NoSuchNode" in log and "BadNodeIdUnknown" in log, log[-3000:]
        # The value of a type the gateway does not read is reported by node and type.
        assert re.search(r"`guid`.*Guid", log), log[-3000:]
        m = gw.metrics()
        assert m['fieldgate_opcua_type_errors_total{server="sim"}'] >= 1
        assert m['fieldgate_opcua_node_errors_total{server="sim"}'] >= 1
        assert m['fieldgate_opcua_server_connected{server="sim"}'] == 1
        # The polled group reads the same node by Read requests.
        polled = wait_for("polled rows", lambda: len(results(gw, "polled_rows")) >= 3 and results(gw, "polled_rows"))
        assert all(p == {"d": 2.718281828459045, "d_quality": "good"} for p in polled), polled[:3]
    finally:
        gw.stop()
        sim.stop()


DEADBAND_NODES = """
[[opcua.servers.groups]]
name = "filtered"
publishing_interval = "50ms"
sampling_interval = "20ms"
deadband = { type = "absolute", value = 1.0 }
nodes = [{ name = "level", node_id = "ns=2;s=Level", type = "double" }]

[[opcua.servers.groups]]
name = "raw"
publishing_interval = "50ms"
sampling_interval = "20ms"
nodes = [{ name = "level", node_id = "ns=2;s=Level", type = "double" }]
"""

DEADBAND_RULES = """
CREATE STREAM filtered (level DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = 'sim/filtered');
CREATE STREAM raw (level DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = 'sim/raw');
CREATE RULE filtered_levels INTO disk AS SELECT level FROM filtered;
CREATE RULE raw_levels INTO disk AS SELECT level FROM raw;
"""


def test_an_absolute_deadband_drops_small_changes_at_the_server(tmp_path):
    sim = OpcuaSim(tmp_path)
    gw = Gateway(tmp_path, extra=FILE_SINK + server_toml("sim", sim, DEADBAND_NODES), rules=DEADBAND_RULES)
    c = sim.client()
    try:
        wait_for("the initial values", lambda: results(gw, "filtered_levels") and results(gw, "raw_levels"))
        # Steps that a deadband of 1.0 filters the same whether the server compares with
        # the last reported value (as the spec says) or with the last sampled one.
        for v in [0.3, 0.6, 2.0, 2.2, 3.5]:
            node(c, "Level").write_value(ua.Variant(v, ua.VariantType.Double))
            time.sleep(0.3)
        raw = wait_for("every change unfiltered", lambda: (r := [x["level"] for x in results(gw, "raw_levels")])[-1:] == [3.5] and r)
        filtered = [x["level"] for x in results(gw, "filtered_levels")]
        assert raw == [0.0, 0.3, 0.6, 2.0, 2.2, 3.5], raw
        assert filtered == [0.0, 2.0, 3.5], filtered
    finally:
        c.disconnect()
        gw.stop()
        sim.stop()


def test_sign_and_encrypt_with_a_user_refuses_an_untrusted_server_until_trusted(tmp_path):
    sim = OpcuaSim(tmp_path, secure=True, user="operator:s3cr3t-Pa55")
    secure = (
        'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
        'identity = { type = "username", user = "operator", password_env = "FG_TEST_OPCUA_PASSWORD" }\n'
    )
    aes = (
        'security_policy = "Aes128_Sha256_RsaOaep"\nsecurity_mode = "Sign"\n'
        'identity = { type = "username", user = "operator", password_env = "FG_TEST_OPCUA_PASSWORD" }\n'
    )
    wrong = (
        'security_policy = "Basic256Sha256"\n'
        'identity = { type = "username", user = "operator", password = "not-the-password" }\n'
    )
    group = 'nodes = [{ name = "d", node_id = "ns=2;s=Double", type = "double" }]\n'
    servers = (
        server_toml("secure", sim, f'[[opcua.servers.groups]]\nname = "g"\npublishing_interval = "100ms"\n{group}', secure)
        + server_toml("aes", sim, f'[[opcua.servers.groups]]\nname = "g"\npublishing_interval = "100ms"\n{group}', aes)
        + server_toml("wrong", sim, f'[[opcua.servers.groups]]\nname = "g"\npublishing_interval = "100ms"\n{group}', wrong)
    )
    rules = "".join(
        f"CREATE STREAM {n} (d DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = '{n}/g');\n"
        f"CREATE RULE {n}_rows INTO disk AS SELECT d FROM {n};\n"
        for n in ["secure", "aes", "wrong"]
    )
    os.environ["FG_TEST_OPCUA_PASSWORD"] = "s3cr3t-Pa55"
    try:
        gw = Gateway(tmp_path, extra=FILE_SINK + servers, rules=rules)
    finally:
        del os.environ["FG_TEST_OPCUA_PASSWORD"]
    try:
        rejected = tmp_path / "data" / "opcua" / "pki" / "rejected"
        files = wait_for("the server certificate in rejected/", lambda: list(rejected.glob("*")))
        wait_for("the refusal logged with the way to trust", lambda: "fieldgate opcua trust" in gw.log.read_text())
        wait_for("the refusal counted", lambda: gw.metrics()['fieldgate_opcua_untrusted_total{server="secure"}'] >= 1)
        m = gw.metrics()
        assert m['fieldgate_opcua_server_connected{server="secure"}'] == 0
        time.sleep(1)
        assert not results(gw, "secure_rows"), "rows from a server whose certificate is not trusted"
        out = subprocess.run(
            [str(binary()), "opcua", "trust", "--config", str(gw.config), files[0].name],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "trusted:" in out.stdout
        # The gateway picks the trusted certificate up at its next attempt.
        for n in ["secure", "aes"]:
            rows = wait_for(f"rows over {n}", lambda: results(gw, f"{n}_rows"))
            assert rows[0] == {"d": 2.718281828459045}
        wait_for("the wrong password refused", lambda: gw.metrics().get('fieldgate_opcua_connect_failures_total{server="wrong"}', 0) >= 1)
        assert not results(gw, "wrong_rows")
        assert gw.metrics()['fieldgate_opcua_server_connected{server="wrong"}'] == 0
        log = gw.log.read_text()
        assert "s3cr3t-Pa55" not in log and "not-the-password" not in log, "a password is in the log"
        own = tmp_path / "data" / "opcua" / "pki" / "own" / "cert.der"
        assert own.exists(), "the gateway's application certificate was not created"
    finally:
        gw.stop()
        sim.stop()


def test_values_resume_after_the_server_restarts_mid_subscription(tmp_path):
    sim = OpcuaSim(tmp_path, rate=20)
    nodes = (
        '[[opcua.servers.groups]]\nname = "g"\npublishing_interval = "100ms"\nsampling_interval = "20ms"\n'
        'queue_size = 20\nnodes = [{ name = "counter", node_id = "ns=2;s=Counter", type = "int64" }]\n'
    )
    rules = (
        "CREATE STREAM c (counter BIGINT) WITH (TYPE = 'opcua', DATASOURCE = 'sim/g');\n"
        "CREATE RULE counts INTO disk AS SELECT counter FROM c;\n"
    )
    gw = Gateway(tmp_path, extra=FILE_SINK + server_toml("sim", sim, nodes), rules=rules)
    try:
        wait_for("counting", lambda: len(results(gw, "counts")) >= 10)
        sim.stop()
        # What was received before the stop reaches the file sink; then nothing more.
        def settled():
            n = len(results(gw, "counts"))
            time.sleep(1)
            return len(results(gw, "counts")) == n
        wait_for("the rows in flight", settled)
        before = [r["counter"] for r in results(gw, "counts")]
        time.sleep(2)
        assert len(results(gw, "counts")) == len(before)
        sim.start()
        # The new server counts from 1 again: rows with small counters after the big ones.
        def resumed():
            after = [r["counter"] for r in results(gw, "counts")][len(before):]
            return len(after) >= 10 and after
        after = wait_for("values after the restart", resumed, timeout=60)
        assert after[-1] < before[-1] + 40 and after[-1] > after[0], (before[-5:], after[:10])
        m = gw.metrics()
        assert m['fieldgate_opcua_connection_lost_total{server="sim"}'] >= 1, m
        assert m['fieldgate_opcua_connects_total{server="sim"}'] >= 2, m
    finally:
        gw.stop()
        sim.stop()


def test_a_publish_of_thousands_of_changes_is_taken_whole(tmp_path):
    # 1200 nodes changing once a second, published every 1.5 s: each publish carries at
    # least 1200 notifications, more than the client library's default decoding limit
    # of 1000, which dropped the connection at every publish.
    sim = OpcuaSim(tmp_path, rate=1, fast=1200)
    nodes = ",\n".join(
        f'  {{ name = "f{i}", node_id = "ns=2;s=Fast{i}", type = "double" }}' for i in range(1200)
    )
    group = (
        '[[opcua.servers.groups]]\nname = "many"\npublishing_interval = "1500ms"\n'
        f'sampling_interval = "0s"\nqueue_size = 10\nnodes = [\n{nodes}\n]\n'
    )
    rules = (
        "CREATE STREAM many (f0 DOUBLE, f1199 DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = 'sim/many');\n"
        "CREATE RULE many_rows INTO disk AS SELECT f0, f1199 FROM many;\n"
    )
    gw = Gateway(tmp_path, extra=FILE_SINK + server_toml("sim", sim, group), rules=rules)
    try:
        key = 'fieldgate_opcua_values_total{server="sim"}'
        wait_for("the first values", lambda: gw.metrics().get(key, 0) >= 1200)
        v0, t0 = gw.metrics()[key], time.monotonic()
        time.sleep(6)
        m, t1 = gw.metrics(), time.monotonic()
        rate = (m[key] - v0) / (t1 - t0)
        assert m['fieldgate_opcua_connection_lost_total{server="sim"}'] == 0, gw.log.read_text()[-3000:]
        assert "exceeds decoding limit" not in gw.log.read_text()
        # The server writes 1200 values a second (when it keeps up).
        assert rate >= 600, f"{rate:.0f} changes/s"
        assert results(gw, "many_rows"), "no rows"
    finally:
        gw.stop()
        sim.stop()


def test_rules_write_to_writable_nodes_and_refused_writes_are_not_delivered(tmp_path):
    sim = OpcuaSim(tmp_path)
    nodes = """
[[opcua.servers.groups]]
name = "g"
publishing_interval = "100ms"
nodes = [
  { name = "level", node_id = "ns=2;s=Level", type = "double" },
  { name = "setpoint", node_id = "ns=2;s=Setpoint", type = "double", writable = true, min = 0, max = 100 },
  { name = "mode", node_id = "ns=2;s=Mode", type = "string", writable = true },
  { name = "fixed", node_id = "ns=2;s=Double", type = "double" },
]
"""
    sink = '[sinks.plc_ctl]\ntype = "opcua"\nserver = "sim"\n'
    rules = """
CREATE STREAM plc (level DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = 'sim/g');
CREATE RULE control INTO plc_ctl AS
  SELECT level * 2 AS setpoint, 'auto' AS mode FROM plc WHERE level > 0 AND level < 50;
CREATE RULE too_high INTO plc_ctl AS SELECT level * 10 AS setpoint FROM plc WHERE level >= 50;
CREATE RULE not_writable INTO plc_ctl AS SELECT level AS fixed FROM plc WHERE level >= 50;
"""
    gw = Gateway(tmp_path, extra=FILE_SINK + sink + server_toml("sim", sim, nodes), rules=rules)
    c = sim.client()
    try:
        wait_for("the session", lambda: gw.metrics().get('fieldgate_opcua_server_connected{server="sim"}') == 1)
        node(c, "Level").write_value(ua.Variant(21.5, ua.VariantType.Double))
        wait_for("the setpoint written", lambda: node(c, "Setpoint").read_value() == 43.0)
        assert node(c, "Mode").read_value() == "auto"
        # The written nodes are in the group too: their change is a row, which the rule
        # writes again (the same values, so no further change). Then it settles.
        def settled():
            key = 'fieldgate_sink_delivered_total{sink="plc_ctl"}'
            m = gw.metrics()
            time.sleep(1)
            return m.get(key, 0) >= 1 and gw.metrics().get(key) == m[key] and m
        delivered = wait_for("the writes to settle", settled)
        node(c, "Level").write_value(ua.Variant(60.0, ua.VariantType.Double))
        wait_for(
            "two refused",
            lambda: gw.metrics().get('fieldgate_sink_dropped_total{sink="plc_ctl",reason="refused"}', 0) >= 2,
        )
        m = gw.metrics()
        assert m['fieldgate_sink_delivered_total{sink="plc_ctl"}'] == delivered['fieldgate_sink_delivered_total{sink="plc_ctl"}'], m
        assert node(c, "Setpoint").read_value() == 43.0, "an out-of-range setpoint was written"
        assert node(c, "Double").read_value() == 2.718281828459045, "a node not marked writable was written"
        log = gw.log.read_text()
        # One line per 5 s about refused writes: the first of the two is logged.
        assert "OPC UA write refused" in log and ("not marked writable" in log or "outside" in log), log[-3000:]
    finally:
        c.disconnect()
        gw.stop()
        sim.stop()


def test_browse_prints_node_ids_types_and_access(tmp_path):
    sim = OpcuaSim(tmp_path)
    try:
        out = subprocess.run(
            [str(binary()), "opcua", "browse", sim.url, "--node", "ns=2;s=PLC", "--depth", "1"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "ns=2;s=PLC", out.stdout
        want = {
            "ns=2;s=Int16": ("type=int16", "read"),
            "ns=2;s=DoubleArray": ("type=double[]", "read"),
            "ns=2;s=Setpoint": ("type=double", "read,write"),
            "ns=2;s=Guid": ("not readable by the gateway", "read"),
        }
        for nid, (ty, access) in want.items():
            line = next((l for l in lines if l.strip().startswith(nid + " ")), None)
            assert line and ty in line and line.endswith(access), (nid, line, out.stdout)
        bad = subprocess.run(
            [str(binary()), "opcua", "browse", sim.url, "--node", "ns=2;s="],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert bad.returncode != 0
    finally:
        sim.stop()
