"""kill -9 during a QoS 1 load from devices: every message a device got its PUBACK for
arrives at a real mosquitto cloud, counted by the devices' own sequence numbers."""

import json
import random
import os
import shutil
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import Gateway, free_port
from mqtt_raw import Conn

KILLS = 20
DEVICES = 4

RULES = (
    "CREATE STREAM readings (device STRING, n BIGINT)\n"
    "WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n"
    "CREATE RULE forward INTO cloud AS SELECT device, n FROM readings;\n"
)


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(path):
        pytest.fail("mosquitto is not installed (scripts/test.sh installs it)")
    return path


class Cloud:
    """A real mosquitto as the cloud broker, and an application subscribed to it."""

    def __init__(self, tmp):
        self.port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.received = set()
        self.lock = threading.Lock()
        self.app = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-app",
                               protocol=mqtt.MQTTv311, clean_session=False)
        self.app.on_message = self._on_message
        subscribed = threading.Event()
        self.app.on_subscribe = lambda *a: subscribed.set()
        self.app.on_connect = lambda c, u, f, rc, p: c.subscribe("fieldgate/gw-test/forward", 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.app.connect("127.0.0.1", self.port, keepalive=30)
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        self.app.loop_start()
        assert subscribed.wait(10), "the cloud application could not subscribe"

    def _on_message(self, client, userdata, m):
        n = json.loads(m.payload)["n"]
        with self.lock:
            self.received.add(n)

    def got(self):
        with self.lock:
            return set(self.received)

    def stop(self):
        self.app.loop_stop()
        self.proc.kill()
        self.proc.wait()


class Device(threading.Thread):
    """Publishes its sequence numbers with QoS 1, one at a time, reconnecting whenever
    the gateway goes away; a number counts as acknowledged once its PUBACK came."""

    def __init__(self, port: int, index: int):
        super().__init__(daemon=True)
        self.port, self.index = port, index
        self.acked = []
        self.reconnects = 0
        self.running = True

    def run(self):
        n = self.index * 10_000_000
        conn = None
        while self.running:
            try:
                if conn is None:
                    conn = Conn(self.port, 5 if self.index % 2 else 4, timeout=5)
                    assert conn.connect(f"device-{self.index}") == 0
                payload = json.dumps({"device": f"d{self.index}", "n": n}).encode()
                if conn.publish(f"plant/d{self.index}/reading", payload, qos=1) == 0:
                    self.acked.append(n)
                    n += 1
            except (OSError, ConnectionError, AssertionError, IndexError):
                if conn is not None:
                    conn.close()
                conn = None
                self.reconnects += 1
                time.sleep(0.02)
        if conn is not None:
            conn.disconnect()


def test_nothing_acknowledged_is_lost_across_twenty_kill_9s(tmp_path):
    cloud = Cloud(tmp_path)
    g = Gateway(
        tmp_path,
        extra=(
            f'[sinks.cloud]\ntype = "mqtt"\nhost = "127.0.0.1"\nport = {cloud.port}\n'
            'reconnect_min = "20ms"\nreconnect_max = "200ms"\nmax_in_flight = 200\n'
        ),
        rules=RULES,
    )
    devices = [Device(g.port, i) for i in range(DEVICES)]
    try:
        for d in devices:
            d.start()
        rng = random.Random(7)
        acked_between = []
        for _ in range(KILLS):
            before = sum(len(d.acked) for d in devices)
            time.sleep(rng.uniform(0.3, 0.8))
            g.kill9()
            acked_between.append(sum(len(d.acked) for d in devices) - before)
            g.start()
        time.sleep(1)
        for d in devices:
            d.running = False
        for d in devices:
            d.join(10)
        acked = {n for d in devices for n in d.acked}
        deadline = time.monotonic() + 90
        while not acked <= cloud.got() and time.monotonic() < deadline:
            time.sleep(0.2)
        lost = sorted(acked - cloud.got())
        assert not lost, (
            f"{len(lost)} of {len(acked)} acknowledged readings never reached the cloud, "
            f"e.g. {lost[:10]}"
        )
        # The kills fell into the load: devices were acknowledged between them, and
        # reconnected after them.
        assert sum(1 for a in acked_between if a > 0) >= KILLS - 2, acked_between
        assert all(d.reconnects >= KILLS // 2 for d in devices), [d.reconnects for d in devices]
        assert len(acked) > 1000, len(acked)
    finally:
        for d in devices:
            d.running = False
        g.stop()
        cloud.stop()


def test_a_flooding_device_is_slowed_while_another_stays_responsive(tmp_path):
    """The broker reads a connection's next packet only after the last one is on disk,
    so a device that floods is held back by its own acknowledgements (TCP fills up),
    while another device's PUBACKs keep coming within a few journal commits."""
    g = Gateway(
        tmp_path,
        rules=(
            "CREATE STREAM readings (device STRING, n BIGINT)\n"
            "WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');\n"
        ),
    )
    try:
        flood = Conn(g.port, 4)
        assert flood.connect("flooder") == 0
        sent, acked, stop = [0], [0], threading.Event()

        def send():
            pid = 0
            payload = b'{"device":"f","n":1}'
            topic = b"plant/f/reading"
            body_fixed = len(topic).to_bytes(2, "big") + topic
            try:
                while not stop.is_set():
                    burst = b""
                    for _ in range(100):
                        pid = pid % 65535 + 1
                        body = body_fixed + pid.to_bytes(2, "big") + payload
                        burst += bytes([0x32, len(body)]) + body
                    flood.s.sendall(burst)
                    sent[0] += 100
            except OSError:
                pass

        def read():
            try:
                while not stop.is_set():
                    t, _, _ = flood.read()
                    if t == 4:
                        acked[0] += 1
            except (OSError, ConnectionError):
                pass

        threads = [threading.Thread(target=send, daemon=True), threading.Thread(target=read, daemon=True)]
        for t in threads:
            t.start()
        time.sleep(1)
        other = Conn(g.port, 5)
        assert other.connect("steady") == 0
        latencies = []
        for i in range(60):
            t0 = time.monotonic()
            assert other.publish("plant/s/reading", b'{"device":"s","n":%d}' % i, qos=1) == 0
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
        in_flight = sent[0] - acked[0]
        stop.set()
        other.disconnect()
        flood.close()
        latencies.sort()
        p95 = latencies[int(len(latencies) * 0.95)]
        assert acked[0] > 1000, f"the flood was not acknowledged at all: {acked[0]}"
        # Held back: what it wrote waits in its socket, unacknowledged.
        assert in_flight >= 100, f"the flooder was never held back ({sent[0]} sent, {acked[0]} acked)"
        assert p95 < 0.5, f"the steady device waited {p95 * 1000:.0f} ms (p95) for its PUBACKs"
    finally:
        g.stop()
