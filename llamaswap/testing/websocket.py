"""
Just enough of RFC 6455 to test WebSocket relaying: the handshake's accept
key, frames written and read, an echoing server end for the fake upstream,
and a client for tests.

Not a WebSocket library: no extensions, no fragmentation of what it sends,
and frames are checked only as far as a test needs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA


def accept_key(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} answer to a C{Sec-WebSocket-Key}.
    """
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def encode_frame(payload: bytes, opcode: int = TEXT, masked: bool = False) -> bytes:
    """
    One final frame; clients mask what they send, servers do not.
    """
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(payload, key)


def _unmask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class FrameReader:
    """
    Splits a byte stream into C{(opcode, payload)} frames.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> tuple[int, bytes] | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        opcode = buffer[0] & 0x0F
        masked = buffer[1] & 0x80
        length = buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack("!H", buffer[2:4])
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack("!Q", buffer[2:10])
            offset = 10
        key = b""
        if masked:
            key = buffer[offset : offset + 4]
            offset += 4
        if len(buffer) < offset + length:
            return None
        payload = buffer[offset : offset + length]
        self.buffer = buffer[offset + length :]
        return opcode, _unmask(payload, key) if masked else payload


class EchoSocket:
    """
    The fake upstream's end of a WebSocket: each text message comes back
    as C{"<name>: <message>"}; C{"burst N"} sends N messages at once (for
    flow control tests); a close is answered and ends the connection.
    """

    def __init__(self, name: str, transport, on_close: Callable[[], None] = lambda: None):
        self.name = name.encode()
        self.transport = transport
        self.reader = FrameReader()
        self.on_close = on_close
        self.closed = False

    def data_received(self, data: bytes) -> None:
        for opcode, payload in self.reader.feed(data):
            if self.closed:
                return
            if opcode == CLOSE:
                self.closed = True
                self.transport.write(encode_frame(payload[:2], CLOSE))
                self.transport.loseConnection()
                self.on_close()
            elif opcode == PING:
                self.transport.write(encode_frame(payload, PONG))
            elif payload.startswith(b"burst "):
                count = int(payload[6:])
                for index in range(count):
                    self.transport.write(encode_frame(b"%d " % index + b"x" * 1000, BINARY))
            elif opcode in (TEXT, BINARY):
                self.transport.write(encode_frame(self.name + b": " + payload, opcode))


class WebSocketClient(Protocol):
    """
    A test client: sends the upgrade request for C{path}, then collects
    the messages it gets.

    @ivar head: the server's response head, once it arrived.
    @ivar messages: C{(opcode, payload)} of every frame received.
    """

    def __init__(self, path: bytes, host: bytes = b"localhost", headers: tuple[bytes, ...] = ()):
        self.path = path
        self.host = host
        self.extra = headers
        self.key = base64.b64encode(os.urandom(16))
        self.head: bytes | None = None
        self.rest = b""
        self.body = b""  # what followed a head other than 101
        self.reader = FrameReader()
        self.messages: list[tuple[int, bytes]] = []
        self.open = Deferred()  # fires with the response head
        self.closed = Deferred()
        self.is_closed = False
        self._waiting: list[tuple[int, Deferred]] = []

    def connectionMade(self) -> None:
        lines = [
            b"GET " + self.path + b" HTTP/1.1",
            b"Host: " + self.host,
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + self.key,
            b"Sec-WebSocket-Version: 13",
            *self.extra,
        ]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.rest += data
            end = self.rest.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, data = self.rest[: end + 4], self.rest[end + 4 :]
            self.rest = b""
            self.open.callback(self.head)
        if self.status != 101:
            self.body += data
            return
        self.messages.extend(self.reader.feed(data))
        self._notify()

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1]) if self.head else 0

    def header(self, name: bytes) -> bytes | None:
        for line in (self.head or b"").split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def accepted(self) -> bool:
        """
        The server switched to WebSocket and proved it read our key.
        """
        return self.status == 101 and self.header(b"sec-websocket-accept") == accept_key(self.key)

    def send(self, payload: bytes, opcode: int = TEXT) -> None:
        self.transport.write(encode_frame(payload, opcode, masked=True))

    def close(self) -> None:
        self.transport.write(encode_frame(struct.pack("!H", 1000), CLOSE, masked=True))

    def wait_for(self, count: int) -> Deferred:
        """
        Fires once C{count} messages have arrived (or the connection closed).
        """
        waiting = Deferred()
        self._waiting.append((count, waiting))
        self._notify()
        return waiting

    def _notify(self) -> None:
        for entry in list(self._waiting):
            count, waiting = entry
            if len(self.messages) >= count or self.is_closed:
                self._waiting.remove(entry)
                waiting.callback(self.messages[:count])

    def connectionLost(self, reason) -> None:
        self.is_closed = True
        if not self.open.called:
            self.open.callback(self.rest)
        self._notify()
        self.closed.callback(None)
