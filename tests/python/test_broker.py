"""The embedded broker as an independent MQTT client (Eclipse Paho) sees it."""

import queue
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

TIMEOUT = 30


class Client:
    """A paho client whose connection and messages can be awaited."""

    def __init__(self, port: int, protocol, keepalive: int, client_id: str = "", clean=True, will=None):
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.connected: "queue.Queue[object]" = queue.Queue()
        self.subscribed: "queue.Queue[object]" = queue.Queue()
        kwargs = {"client_id": client_id or f"paho-{uuid.uuid4().hex[:8]}", "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connected.put((flags, rc))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subscribed.put(rcs)
        if will:
            self.c.will_set(*will)
        connect = {"keepalive": keepalive}
        if protocol == mqtt.MQTTv5:
            connect["clean_start"] = clean
        self.c.connect("127.0.0.1", port, **connect)
        self.c.loop_start()
        flags, rc = self.connected.get(timeout=TIMEOUT)
        assert not rc.is_failure, f"CONNECT refused: {rc}"
        self.flags = flags

    def subscribe(self, topic: str, qos: int):
        self.c.subscribe(topic, qos)
        rcs = self.subscribed.get(timeout=TIMEOUT)
        assert not rcs[0].is_failure, f"SUBSCRIBE refused: {rcs}"

    def publish(self, topic: str, payload: bytes, qos: int, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), f"publish of {topic} QoS {qos} not completed"

    def receive(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_keepalive_zero_client_publishes_and_receives(gateway, qos):
    """MQTT 3.1.1 allows keepalive 0; the embedded broker must accept it."""
    c = Client(gateway.v4, mqtt.MQTTv311, keepalive=0)
    topic = f"t/ka0/{uuid.uuid4().hex}"
    c.subscribe(topic, qos)
    c.publish(topic, b"hello-%d" % qos, qos)
    m = c.receive()
    assert (m.topic, m.payload, m.qos) == (topic, b"hello-%d" % qos, qos)
    c.close()


def test_keepalive_zero_connection_stays_up_while_idle(gateway):
    c = Client(gateway.v4, mqtt.MQTTv311, keepalive=0)
    topic = f"t/idle/{uuid.uuid4().hex}"
    c.subscribe(topic, 1)
    time.sleep(2)
    other = Client(gateway.v4, mqtt.MQTTv311, keepalive=30)
    other.publish(topic, b"still there", 1)
    assert c.receive().payload == b"still there"
    other.close()
    c.close()


@pytest.mark.parametrize("protocol,port_attr", [(mqtt.MQTTv311, "v4"), (mqtt.MQTTv5, "v5")])
def test_retained_message_is_delivered_to_a_later_subscriber(gateway, protocol, port_attr):
    port = getattr(gateway, port_attr)
    topic = f"t/retained/{uuid.uuid4().hex}"
    pub = Client(port, protocol, keepalive=30)
    pub.publish(topic, b"last known value", 1, retain=True)
    pub.close()
    sub = Client(port, protocol, keepalive=30)
    sub.subscribe(topic, 1)
    m = sub.receive()
    assert (m.payload, m.retain) == (b"last known value", True)
    sub.close()


@pytest.mark.parametrize("qos", [1, 2])
def test_mqtt5_client_round_trip_with_properties(gateway, qos):
    c = Client(gateway.v5, mqtt.MQTTv5, keepalive=30)
    topic = f"t/v5/{uuid.uuid4().hex}"
    c.subscribe(topic, qos)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("site", "plant-7")]
    c.publish(topic, b"v5 payload", qos, properties=props)
    m = c.receive()
    assert (m.topic, m.payload, m.qos) == (topic, b"v5 payload", qos)
    c.close()


def test_mqtt311_and_mqtt5_clients_share_topics(gateway):
    v5 = Client(gateway.v5, mqtt.MQTTv5, keepalive=30)
    topic = f"t/mixed/{uuid.uuid4().hex}"
    v5.subscribe(topic, 1)
    v4 = Client(gateway.v4, mqtt.MQTTv311, keepalive=0)
    v4.publish(topic, b"from 3.1.1", 1)
    assert v5.receive().payload == b"from 3.1.1"
    v4.close()
    v5.close()


def test_last_will_is_published_when_a_client_vanishes(gateway):
    topic = f"t/will/{uuid.uuid4().hex}"
    watcher = Client(gateway.v4, mqtt.MQTTv311, keepalive=30)
    watcher.subscribe(topic, 1)
    dying = Client(gateway.v4, mqtt.MQTTv311, keepalive=30, will=(topic, b"offline", 1, False))
    # Drop the TCP connection without DISCONNECT, as a device losing power would.
    dying.c.loop_stop()
    dying.c.socket().close()
    assert watcher.receive().payload == b"offline"
    watcher.close()


def test_persistent_session_keeps_qos1_messages_while_offline(gateway):
    topic = f"t/session/{uuid.uuid4().hex}"
    cid = f"persistent-{uuid.uuid4().hex[:8]}"
    sub = Client(gateway.v4, mqtt.MQTTv311, keepalive=30, client_id=cid, clean=False)
    sub.subscribe(topic, 1)
    sub.close()
    pub = Client(gateway.v4, mqtt.MQTTv311, keepalive=30)
    pub.publish(topic, b"while you were away", 1)
    pub.close()
    back = Client(gateway.v4, mqtt.MQTTv311, keepalive=30, client_id=cid, clean=False)
    assert back.flags.session_present
    assert back.receive().payload == b"while you were away"
    back.close()
