"""A few MQTT 3.1.1 and 5 packets written and read by hand, so that tests see the exact
reason codes the broker puts on the wire (client libraries translate them)."""

import socket
import ssl
from typing import Optional


def _str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _varint(n: int) -> bytes:
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


class Conn:
    """One connection; `version` is 4 (MQTT 3.1.1) or 5."""

    def __init__(self, port: int, version: int, tls: Optional[ssl.SSLContext] = None, timeout=10):
        self.version = version
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s = tls.wrap_socket(s, server_hostname="127.0.0.1") if tls else s
        self.next_id = 1

    def _read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the broker")
            out += chunk
        return out

    def read(self):
        """The next packet: (type, flags, body)."""
        first = self._read_exact(1)[0]
        length, shift = 0, 0
        while True:
            b = self._read_exact(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first >> 4, first & 0x0F, self._read_exact(length)

    def read_type(self, want: int):
        """Skips packets until one of type `want` (e.g. retained PUBLISHes before a SUBACK)."""
        while True:
            t, flags, body = self.read()
            if t == want:
                return flags, body

    def _props(self) -> bytes:
        return b"\x00" if self.version == 5 else b""

    def connect(self, client_id: str, user=None, password=None, clean=True, keepalive=30,
                session_expiry=None) -> int:
        """Sends CONNECT; returns the CONNACK's return / reason code and keeps its
        session present flag in `session_present`. `session_expiry` (seconds) is the
        MQTT 5 property."""
        flags = 0x02 if clean else 0
        if user is not None:
            flags |= 0x80
        if password is not None:
            flags |= 0x40
        body = _str(b"MQTT") + bytes([self.version, flags]) + keepalive.to_bytes(2, "big")
        if self.version == 5 and session_expiry is not None:
            body += b"\x05\x11" + session_expiry.to_bytes(4, "big")
        else:
            body += self._props()
        body += _str(client_id.encode())
        if user is not None:
            body += _str(user.encode())
        if password is not None:
            body += _str(password.encode())
        self.s.sendall(_packet(0x10, body))
        _, body = self.read_type(2)
        self.session_present = bool(body[0] & 1)
        return body[1]

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Sends SUBSCRIBE; returns the SUBACK's code for the filter."""
        pid = self.next_id
        self.next_id += 1
        body = pid.to_bytes(2, "big") + self._props() + _str(topic_filter.encode()) + bytes([qos])
        self.s.sendall(_packet(0x82, body))
        _, body = self.read_type(9)
        rest = body[2:]
        if self.version == 5:
            plen, i = self._varint_at(rest)
            rest = rest[i + plen:]
        return rest[0]

    def unsubscribe(self, topic_filter: str):
        """Sends UNSUBSCRIBE and waits for its UNSUBACK."""
        pid = self.next_id
        self.next_id += 1
        body = pid.to_bytes(2, "big") + self._props() + _str(topic_filter.encode())
        self.s.sendall(_packet(0xA2, body))
        self.read_type(11)

    @staticmethod
    def _varint_at(b: bytes):
        n, shift, i = 0, 0, 0
        while True:
            n |= (b[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not b[i - 1] & 0x80:
                return n, i

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain=False) -> Optional[int]:
        """Sends PUBLISH; for QoS 1 returns the PUBACK's reason code (0 on MQTT 3.1.1)."""
        first = 0x30 | (qos << 1) | (1 if retain else 0)
        body = _str(topic.encode())
        if qos:
            pid = self.next_id
            self.next_id += 1
            body += pid.to_bytes(2, "big")
        body += self._props() + payload
        self.s.sendall(_packet(first, body))
        if not qos:
            return None
        _, body = self.read_type(4)
        return body[2] if len(body) > 2 else 0

    def receive(self):
        """The next PUBLISH: (topic, payload, retain); acknowledges QoS 1."""
        flags, body = self.read_type(3)
        tlen = int.from_bytes(body[:2], "big")
        topic = body[2:2 + tlen].decode()
        rest = body[2 + tlen:]
        qos = (flags >> 1) & 3
        if qos:
            pid, rest = rest[:2], rest[2:]
            self.s.sendall(_packet(0x40, pid))
        if self.version == 5:
            plen, i = self._varint_at(rest)
            rest = rest[i + plen:]
        return topic, rest, bool(flags & 1)

    def disconnect(self):
        try:
            self.s.sendall(b"\xe0\x00")
        finally:
            self.s.close()

    def close(self):
        self.s.close()
