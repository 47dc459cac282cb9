"""The gateway gives memory back: 2,000 MQTT clients connect, subscribe and publish, then
leave, and the process's resident memory returns to near where it was before they came.

A broker on an edge box serves bursts of clients (a shift change, a fleet reconnecting
after an outage); memory those clients took and that stays taken after they leave is
memory the rules and the queue no longer have.
"""

import time

from conftest import Gateway
from mqtt_raw import Conn

CLIENTS = 2000
# What may stay after the clients left: the broker's own caches and the allocator's
# retained pages. Measured with the debug build: the clients take about 35 MB; without
# the heap trim (gateway/src/heap.rs) all of it stays, with it none.
SLACK_BYTES = 16 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def connections(gw: Gateway) -> float:
    return gw.metrics().get("fieldgate_broker_connections", -1)


def wait_for(what: str, cond, seconds: float):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.2)


def open_clients(port: int, round_no: int, count: int = CLIENTS) -> list:
    conns = []
    for i in range(count):
        c = Conn(port, 4 if i % 2 else 5, timeout=30)
        c.connect(f"mem-{round_no}-{i}")
        c.subscribe(f"mem/{i}/cmd", qos=1)
        c.publish(f"mem/{i}/state", b'{"seq":%d,"pad":"%s"}' % (i, b"x" * 200), qos=1)
        conns.append(c)
    return conns


def close_clients(conns: list):
    for c in conns:
        try:
            c.disconnect()
        except OSError:
            pass
        c.close()


def test_memory_returns_after_2000_connections_close(tmp_path):
    gw = Gateway(tmp_path, broker=f"max_connections = {CLIENTS + 100}")
    try:
        pid = gw.proc.pid
        # One small round first, so that what the first clients of a run allocate once
        # (thread stacks, pools, the journal's first pages) counts in the baseline.
        close_clients(open_clients(gw.port, 0, count=100))
        wait_for("the first clients to close", lambda: connections(gw) == 0, 60)
        time.sleep(1)
        before = rss_bytes(pid)
        conns = open_clients(gw.port, 1)
        wait_for("2,000 connections", lambda: connections(gw) >= CLIENTS, 60)
        during = rss_bytes(pid)
        close_clients(conns)
        wait_for("the connections to close", lambda: connections(gw) == 0, 60)
        # The allocator hands pages back within seconds, not at once.
        after = rss_bytes(pid)
        deadline = time.monotonic() + 20
        while after > before + SLACK_BYTES and time.monotonic() < deadline:
            time.sleep(0.5)
            after = rss_bytes(pid)
        mib = lambda b: f"{b / 1048576:.1f} MiB"
        print(f"RSS before {mib(before)}, with {CLIENTS} clients {mib(during)}, after {mib(after)}")
        assert during > before, "2,000 clients took no memory: the measurement measures nothing"
        assert after <= before + SLACK_BYTES, (
            f"RSS stayed at {mib(after)} after the clients left "
            f"(before {mib(before)}, with them {mib(during)})"
        )
        # The gateway still serves.
        c = Conn(gw.port, 5)
        c.connect("mem-after")
        c.disconnect()
        c.close()
    finally:
        gw.stop()
