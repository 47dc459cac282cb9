"""Who may connect to the embedded broker and what they may do, with the exact codes of
MQTT 3.1.1 and 5 on the wire; TLS with client certificates made by openssl here;
retained messages and persistent sessions across a restart; immediate reconnects with the
same client id."""

import signal
import ssl
import subprocess
import time
import uuid

import pytest

from conftest import Gateway, binary
from mqtt_raw import Conn

ACL = """\
# anonymous clients: none of these apply to a logged-in user
user alice
topic readwrite plant/#
topic deny plant/secret/#
pattern write devices/%c/#
user sensor-7
topic write sensors/#
user carol
topic write plant/#
"""


def passwd(path, user, password):
    """`fieldgate passwd`, fed the password on standard input."""
    subprocess.run(
        [str(binary()), "passwd", str(path), user],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A gateway that refuses anonymous clients, with a password file and an ACL."""
    tmp = tmp_path_factory.mktemp("locked")
    passwd(tmp / "passwd", "alice", "correct horse")
    passwd(tmp / "passwd", "bob", "battery staple")
    passwd(tmp / "passwd", "carol", "tr0ub4dor")
    (tmp / "acl").write_text(ACL)
    g = Gateway(
        tmp,
        broker='allow_anonymous = false\npassword_file = "passwd"\nacl_file = "acl"\n',
        rules="CREATE STREAM s (n BIGINT) WITH (DATASOURCE = '#', FORMAT = 'json');\n",
    )
    yield g
    g.stop()


def cid():
    return f"t-{uuid.uuid4().hex[:10]}"


def wait_for(condition, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("version,bad_password,not_authorized", [(4, 4, 5), (5, 0x86, 0x87)])
def test_credentials_are_checked_with_each_versions_codes(locked, version, bad_password, not_authorized):
    before = locked.metrics()
    c = Conn(locked.port, version)
    assert c.connect(cid(), "alice", "wrong") == bad_password
    c.close()
    c = Conn(locked.port, version)
    assert c.connect(cid(), "mallory", "anything") == bad_password
    c.close()
    c = Conn(locked.port, version)
    assert c.connect(cid()) == not_authorized, "anonymous clients are refused"
    c.close()
    c = Conn(locked.port, version)
    assert c.connect(cid(), "alice", "correct horse") == 0
    c.disconnect()
    after = locked.metrics()
    key = 'fieldgate_broker_refused_total{reason="%s"}'
    assert after[key % "bad_credentials"] - before[key % "bad_credentials"] == 2
    assert after[key % "anonymous"] - before[key % "anonymous"] == 1
    assert "correct horse" not in locked.log.read_text(), "no password in the log"


@pytest.mark.parametrize("version,sub_denied,pub_denied", [(4, 0x80, None), (5, 0x87, 0x87)])
def test_the_acl_refuses_subscribes_and_publishes(locked, version, sub_denied, pub_denied):
    alice = Conn(locked.port, version)
    assert alice.connect(cid(), "alice", "correct horse") == 0
    assert alice.subscribe("plant/line1/+", 1) == 1
    assert alice.subscribe("other/#", 1) == sub_denied
    assert alice.subscribe("plant/secret/key", 1) == sub_denied
    assert alice.subscribe("plant/secret/#", 1) == sub_denied
    received = locked.metrics()["fieldgate_mqtt_messages_received_total"]
    # Refused publishes reach neither the rules nor subscribers.
    for topic in ["other/x", "plant/secret/key", "$SYS/broker/uptime"]:
        code = alice.publish(topic, b'{"n": -1}', qos=1)
        if pub_denied is not None:
            assert code == pub_denied, topic
    assert alice.publish("plant/line1/temp", b'{"n": 1}', qos=1) == 0
    topic, payload, _ = alice.receive()
    assert (topic, payload) == ("plant/line1/temp", b'{"n": 1}')
    wait_for(lambda: locked.metrics()["fieldgate_mqtt_messages_received_total"] >= received + 1,
             "the allowed message did not reach ingest")
    time.sleep(0.3)
    assert locked.metrics()["fieldgate_mqtt_messages_received_total"] == received + 1
    alice.disconnect()
    # A subscription that covers a denied topic is granted; the denied messages are
    # held back from it, message by message.
    alice = Conn(locked.port, version)
    assert alice.connect(cid(), "alice", "correct horse") == 0
    assert alice.subscribe("plant/#", 1) == 1
    carol = Conn(locked.port, version)
    assert carol.connect(cid(), "carol", "tr0ub4dor") == 0
    assert carol.publish("plant/secret/key", b'{"n": 2}', qos=1) == 0
    assert carol.publish("plant/line2/temp", b'{"n": 3}', qos=1) == 0
    carol.disconnect()
    topic, payload, _ = alice.receive()
    assert (topic, payload) == ("plant/line2/temp", b'{"n": 3}'), "the secret was held back"
    alice.disconnect()
    # The pattern grants each client its own devices/<client id>/ topics.
    bob = Conn(locked.port, version)
    assert bob.connect("press-3", "bob", "battery staple") == 0
    if pub_denied is not None:
        assert bob.publish("devices/press-3/t", b"{}", qos=1) == 0
        assert bob.publish("devices/press-4/t", b"{}", qos=1) == pub_denied
    bob.disconnect()
    m = locked.metrics()
    assert m['fieldgate_broker_refused_total{reason="subscribe_denied"}'] >= 3
    assert m['fieldgate_broker_refused_total{reason="system_topic"}'] >= 1


def test_the_acl_is_reloaded_on_sighup(locked):
    def bob_subscribes() -> int:
        c = Conn(locked.port, 5)
        assert c.connect(cid(), "bob", "battery staple") == 0
        code = c.subscribe("reports/#", 1)
        c.disconnect()
        return code

    def reloaded(result: str, what: str):
        key = 'fieldgate_broker_access_reloads_total{result="%s"}' % result
        before = locked.metrics()[key]
        locked.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: locked.metrics()[key] > before, what)

    assert bob_subscribes() == 0x87
    (locked.tmp / "acl").write_text(ACL + "user bob\ntopic read reports/#\n")
    reloaded("ok", "no reload")
    assert bob_subscribes() == 1
    # A broken file keeps the rules in force.
    (locked.tmp / "acl").write_text("grant everything\n")
    reloaded("error", "the broken file was not reported")
    assert bob_subscribes() == 1
    (locked.tmp / "acl").write_text(ACL)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a device certificate, by openssl."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, cn, ext in [("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                          ("device", "sensor-7", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


def test_a_tls_listener_with_client_certificates(tmp_path, certs):
    tls_port = __import__("conftest").free_port()
    (tmp_path / "acl").write_text(ACL)
    g = Gateway(
        tmp_path,
        broker=(
            f'acl_file = "acl"\n'
            f'tls = {{ listen = "127.0.0.1:{tls_port}", cert = "{certs}/server.pem", '
            f'key = "{certs}/server.key", client_ca = "{certs}/ca.pem" }}\n'
        ),
        rules="CREATE STREAM s (n BIGINT) WITH (DATASOURCE = 'sensors/#', FORMAT = 'json');\n",
    )
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        ctx.load_cert_chain(str(certs / "device.pem"), str(certs / "device.key"))
        for version in (4, 5):
            c = Conn(tls_port, version, tls=ctx)
            # No username: the certificate's common name is the username.
            assert c.connect(cid()) == 0
            if version == 5:
                assert c.publish("sensors/t1", b'{"n": 7}', qos=1) == 0
                assert c.publish("plant/line1/x", b'{"n": 8}', qos=1) == 0x87, "sensor-7 may not"
            c.disconnect()
        wait_for(lambda: g.metrics()["fieldgate_mqtt_messages_received_total"] >= 1,
                 "the reading over TLS did not reach ingest")
        # Without a client certificate the handshake fails.
        bare = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            c = Conn(tls_port, 4, tls=bare)
            c.connect(cid())
        # A server certificate the client does not trust fails too.
        with pytest.raises(ssl.SSLError):
            Conn(tls_port, 4, tls=ssl.create_default_context())
    finally:
        g.stop()


def test_retained_messages_survive_a_restart(tmp_path):
    g = Gateway(tmp_path)
    try:
        for version, topic in [(4, "status/press-1"), (5, "status/press-2")]:
            c = Conn(g.port, version)
            assert c.connect(cid()) == 0
            assert c.publish(topic, f"online {version}".encode(), qos=1, retain=True) == 0
            c.disconnect()
        c = Conn(g.port, 4)
        assert c.connect(cid()) == 0
        assert c.publish("status/press-3", b"gone", qos=1, retain=True) == 0
        assert c.publish("status/press-3", b"", qos=1, retain=True) == 0, "cleared again"
        c.disconnect()
        g.stop()
        g.start()
        got = {}
        c = Conn(g.port, 5)
        assert c.connect(cid()) == 0
        c.s.settimeout(3)
        pid = c.next_id
        c.subscribe("status/#", 1)
        try:
            while len(got) < 3:
                topic, payload, retain = c.receive()
                assert retain
                got[topic] = payload
        except (TimeoutError, OSError):
            pass
        assert got == {"status/press-1": b"online 4", "status/press-2": b"online 5"}, pid
        c.disconnect()
    finally:
        g.stop()


def test_limits_refuse_with_each_versions_codes_and_are_counted(tmp_path):
    g = Gateway(tmp_path, broker="max_connections = 3\nmax_subscriptions = 2\nmax_client_id_length = 23")
    key = 'fieldgate_broker_refused_total{reason="%s"}'
    try:
        for version, code in [(4, 2), (5, 0x85)]:
            assert Conn(g.port, version).connect("x" * 24) == code, "client id too long"
        for version, code in [(4, 0x80), (5, 0x97)]:
            c = Conn(g.port, version)
            assert c.connect(cid()) == 0
            assert c.subscribe("a/#", 1) == 1
            assert c.subscribe("b/#", 1) == 1
            assert c.subscribe("a/#", 0) == 0, "subscribing again replaces, it is not one more"
            assert c.subscribe("c/#", 1) == code, "third subscription"
            c.disconnect()
        held = []

        def held_one_more() -> bool:
            c = Conn(g.port, 4)
            if c.connect(cid()) == 0:
                held.append(c)
                return True
            c.close()
            return False
        for _ in range(3):  # once the sessions of the clients above have ended
            wait_for(held_one_more, "three connections are allowed")
        for version, code in [(4, 3), (5, 0x88)]:
            assert Conn(g.port, version).connect(cid()) == code, "a fourth connection"
        held.pop().disconnect()
        wait_for(held_one_more, "a connection closed makes room")
        m = g.metrics()
        assert m[key % "client_id"] == 2
        assert m[key % "subscription_limit"] == 2
        assert m[key % "unavailable"] >= 2
        for c in held:
            c.disconnect()
    finally:
        g.stop()


def drain(c: Conn, seconds: float = 2) -> list:
    """(topic, payload) of the PUBLISHes that arrive until `seconds` pass without one."""
    c.s.settimeout(seconds)
    got = []
    try:
        while True:
            got.append(c.receive()[:2])
    except (TimeoutError, OSError):
        pass
    return got


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill9"])
def test_persistent_sessions_keep_their_subscriptions_across_a_restart(tmp_path, crash):
    g = Gateway(tmp_path, broker="session_expiry = '1h'")
    try:
        # Persistent: 3.1.1 with clean session 0, MQTT 5 with an expiry. Each also
        # subscribes to a filter it drops again, and one drops its connection without
        # DISCONNECT. Not persistent: a clean 3.1.1 session, an MQTT 5 one without expiry.
        kept = {"keeper-4": 4, "keeper-5": 5, "keeper-lost": 4}
        for client, version in kept.items():
            c = Conn(g.port, version)
            assert c.connect(client, clean=False, session_expiry=600) == 0
            assert c.subscribe(f"alerts/{client}/#", 1) == 1
            assert c.subscribe(f"alerts/{client}-dropped/#", 1) == 1
            c.unsubscribe(f"alerts/{client}-dropped/#")
            c.close() if client == "keeper-lost" else c.disconnect()
        for client, version, clean in [("transient-4", 4, True), ("transient-5", 5, False)]:
            c = Conn(g.port, version)
            assert c.connect(client, clean=clean, session_expiry=0) == 0
            assert c.subscribe(f"alerts/{client}/#", 1) == 1
            c.disconnect()
        # Taken over by a clean session: the persistent one it replaced is gone.
        c = Conn(g.port, 4)
        assert c.connect("replaced", clean=False) == 0
        assert c.subscribe("alerts/replaced/#", 1) == 1
        c.disconnect()
        c = Conn(g.port, 4)
        assert c.connect("replaced", clean=True) == 0
        c.disconnect()
        time.sleep(0.5)  # the disconnects are handled
        g.kill9() if crash else g.stop()
        g.start()

        # Published while every subscriber is offline, after the restart.
        pub = Conn(g.port, 5)
        assert pub.connect(cid()) == 0
        clients = [*kept, "transient-4", "transient-5", "replaced"]
        for client in clients:
            for sub in ("", "-dropped"):
                assert pub.publish(f"alerts/{client}{sub}/x", b"hello", qos=1) == 0
        pub.disconnect()

        for client, version in kept.items():
            c = Conn(g.port, version)
            assert c.connect(client, clean=False, session_expiry=600) == 0
            assert c.session_present, f"{client}: session present after the restart"
            assert [t for t, _ in drain(c)] == [f"alerts/{client}/x"], client
            c.disconnect()
        for client, version in [("transient-4", 4), ("transient-5", 5), ("replaced", 4)]:
            c = Conn(g.port, version)
            assert c.connect(client, clean=False, session_expiry=600) == 0
            assert not c.session_present, f"{client} had no persistent session"
            assert drain(c, 0.5) == [], client
            c.disconnect()
    finally:
        g.stop()


def test_a_persistent_session_expires_across_a_restart(tmp_path):
    g = Gateway(tmp_path, broker="session_expiry = '2s'")
    try:
        c = Conn(g.port, 4)
        assert c.connect("short-lived", clean=False) == 0
        assert c.subscribe("alerts/short/#", 1) == 1
        c.disconnect()
        g.stop()
        time.sleep(2.5)
        g.start()
        c = Conn(g.port, 4)
        assert c.connect("short-lived", clean=False) == 0
        assert not c.session_present, "expired while the gateway was down"
        c.disconnect()
    finally:
        g.stop()


def test_immediate_reconnects_with_the_same_client_id_are_accepted(gateway):
    refused = []
    for i in range(500):
        c = Conn(gateway.port, 4 if i % 2 else 5)
        code = c.connect("same-device")
        if code != 0:
            refused.append((i, code))
        if i % 3 == 0:
            c.close()  # without DISCONNECT, as a device losing its link
        else:
            c.disconnect()
    assert not refused, f"{len(refused)} of 500 reconnects refused: {refused[:10]}"


def test_two_connects_of_one_client_id_at_once_are_both_accepted(gateway):
    """The second handshake waits for the first and then takes the session over."""
    import threading
    refused = []
    for i in range(50):
        version = 4 if i % 2 else 5
        conns = [Conn(gateway.port, version), Conn(gateway.port, version)]
        start = threading.Barrier(2)
        codes = []

        def connect(c):
            start.wait()
            try:
                codes.append(c.connect("racing-device"))
            except OSError as e:
                codes.append(repr(e))
        threads = [threading.Thread(target=connect, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        if codes != [0, 0]:
            refused.append((i, codes))
        for c in conns:
            c.close()
    assert not refused, f"{len(refused)} of 50 pairs not both accepted: {refused[:5]}"


def test_a_v5_client_taken_over_is_told_why(gateway):
    first = Conn(gateway.port, 5)
    assert first.connect("twin") == 0
    second = Conn(gateway.port, 5)
    assert second.connect("twin") == 0
    t, _, body = first.read()
    assert (t, body[0]) == (14, 0x8E), "DISCONNECT with reason Session taken over"
    second.disconnect()


def test_shared_subscriptions_deliver_each_message_to_one_member(gateway):
    topic = f"shared/{uuid.uuid4().hex[:8]}"
    members = []
    for version in (4, 5):
        m = Conn(gateway.port, version)
        assert m.connect(cid()) == 0
        assert m.subscribe(f"$share/workers/{topic}", 1) == 1
        m.s.settimeout(1)
        members.append(m)
    pub = Conn(gateway.port, 5)
    assert pub.connect(cid()) == 0
    for i in range(10):
        assert pub.publish(topic, b"%d" % i, qos=1) == 0
    pub.disconnect()
    got = []
    for m in members:
        got.append([payload for _, payload in drain(m, 1)])
        m.disconnect()
    assert sorted(got[0] + got[1], key=int) == [b"%d" % i for i in range(10)], got
    assert got[0] and got[1], f"one member got everything: {got}"
