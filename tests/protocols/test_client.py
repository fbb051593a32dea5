"""
The lean upstream HTTP/1.1 client, byte by byte on an in-memory transport.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from llamaswap.protocols.client import NoResponse, UpstreamConnection, UpstreamError


class Sink:
    def __init__(self):
        self.data = []
        self.done = []

    def body_data(self, data):
        self.data.append(data)

    def body_done(self, complete, reason):
        self.done.append((complete, reason))

    @property
    def body(self):
        return b"".join(self.data)


def connection():
    parked = []
    protocol = UpstreamConnection(parked.append)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, parked


def exchange(protocol, method=b"POST", body=b'{"a":1}', headers=None):
    heads = []
    failures = []
    protocol.send(method, b"/v1/chat/completions", b"127.0.0.1:8080", headers or Headers({b"x-test": [b"1"]}), body=body).addCallbacks(heads.append, failures.append)
    return heads, failures


def feed(protocol, data: bytes, step: int | None = None):
    step = step or len(data) or 1
    for start in range(0, len(data), step):
        protocol.dataReceived(data[start : start + step])


def test_request_is_written_in_one_piece():
    protocol, transport, _ = connection()
    exchange(protocol)
    assert transport.value() == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Test: 1\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )


def test_get_without_body_has_no_content_length():
    protocol, transport, _ = connection()
    exchange(protocol, method=b"GET", body=None)
    assert b"Content-Length" not in transport.value()


@pytest.mark.parametrize("step", [None, 1, 7])
def test_content_length_response_and_reuse(step):
    protocol, transport, parked = connection()
    heads, _ = exchange(protocol)
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\nhello world", step)
    assert heads[0].code == 200 and heads[0].phrase == b"OK"
    assert heads[0].headers.getRawHeaders(b"content-type") == [b"application/json"]
    sink = Sink()
    protocol.read_body(sink)
    assert sink.body == b"hello world"
    assert sink.done == [(True, "")]
    assert parked == [protocol] and protocol.reusable and not transport.disconnecting
    # and a second exchange on the same connection
    transport.clear()
    heads, _ = exchange(protocol)
    feed(protocol, b"HTTP/1.1 204 No Content\r\n\r\n")
    sink = Sink()
    protocol.read_body(sink)
    assert sink.done == [(True, "")]
    assert protocol.used == 2


@pytest.mark.parametrize("step", [None, 1, 3])
def test_chunked_response_is_dechunked(step):
    protocol, transport, parked = connection()
    heads, _ = exchange(protocol)
    sink = Sink()
    feed(protocol, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.read_body(sink)
    feed(protocol, b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n", step)
    assert sink.body == b"hello world"
    assert sink.done == [(True, "")]
    assert parked == [protocol]


def test_body_before_read_body_is_kept():
    protocol, _, _ = connection()
    heads, _ = exchange(protocol)
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    sink = Sink()
    protocol.read_body(sink)
    assert sink.body == b"abc" and sink.done == [(True, "")]


def test_interim_100_continue_is_skipped():
    protocol, _, _ = connection()
    heads, _ = exchange(protocol)
    feed(protocol, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert heads[0].code == 201


def test_body_until_close():
    protocol, transport, parked = connection()
    heads, _ = exchange(protocol)
    sink = Sink()
    feed(protocol, b"HTTP/1.0 200 OK\r\n\r\npart one ")
    protocol.read_body(sink)
    feed(protocol, b"part two")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert sink.body == b"part one part two"
    assert sink.done == [(True, "")]
    assert parked == []


def test_connection_close_response_is_not_reused():
    protocol, transport, parked = connection()
    exchange(protocol)
    feed(protocol, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    protocol.read_body(Sink())
    assert parked == [] and transport.disconnecting


def test_lost_mid_body_is_incomplete():
    protocol, _, _ = connection()
    exchange(protocol)
    sink = Sink()
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some")
    protocol.read_body(sink)
    protocol.connectionLost(Failure(ConnectionLost()))
    assert sink.body == b"only some"
    assert sink.done[0][0] is False
    assert "connection lost mid-response" in sink.done[0][1]


def test_lost_mid_chunked_body_is_incomplete():
    protocol, _, _ = connection()
    exchange(protocol)
    sink = Sink()
    feed(protocol, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    protocol.read_body(sink)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert sink.done[0][0] is False


def test_no_response_at_all():
    protocol, _, _ = connection()
    heads, failures = exchange(protocol)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert failures[0].check(NoResponse)


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_malformed_heads_fail_and_close(head):
    protocol, transport, _ = connection()
    heads, failures = exchange(protocol)
    feed(protocol, head)
    assert heads == []
    assert failures[0].check(UpstreamError)
    assert transport.disconnecting or transport.disconnected


def test_malformed_chunk_size():
    protocol, transport, _ = connection()
    exchange(protocol)
    sink = Sink()
    feed(protocol, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    protocol.read_body(sink)
    assert sink.done[0][0] is False


def test_head_response_has_no_body():
    protocol, _, parked = connection()
    heads, _ = exchange(protocol, method=b"HEAD", body=None)
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
    sink = Sink()
    protocol.read_body(sink)
    assert sink.done == [(True, "")]
    assert parked == [protocol]


def test_flow_control_reaches_the_transport():
    protocol, transport, _ = connection()
    exchange(protocol)
    protocol.pause()
    assert transport.producerState == "paused"
    protocol.resume()
    assert transport.producerState == "producing"


def test_extra_bytes_after_response_prevent_reuse():
    protocol, transport, parked = connection()
    exchange(protocol)
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    protocol.read_body(Sink())
    assert parked == []
    assert transport.disconnecting


def test_huge_head_is_refused():
    protocol, transport, _ = connection()
    heads, failures = exchange(protocol)
    feed(protocol, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000)
    assert failures[0].check(UpstreamError)


def test_no_response_head_in_time_fails_with_a_timeout():
    from twisted.internet.task import Clock

    from llamaswap.protocols.client import ResponseHeadTimeout

    clock = Clock()
    protocol = UpstreamConnection(None, clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    heads, failures = [], []
    protocol.send(b"GET", b"/", b"h", Headers(), head_timeout=3).addCallbacks(heads.append, failures.append)
    clock.advance(2.9)
    assert failures == [] and not transport.disconnecting
    clock.advance(0.2)
    assert failures[0].check(ResponseHeadTimeout)
    assert "within 3s" in failures[0].getErrorMessage()
    assert transport.disconnecting or transport.disconnected


def test_a_head_in_time_cancels_the_timeout():
    from twisted.internet.task import Clock

    clock = Clock()
    protocol = UpstreamConnection(None, clock)
    protocol.makeConnection(StringTransport())
    heads = []
    protocol.send(b"GET", b"/", b"h", Headers(), head_timeout=3).addCallback(heads.append)
    feed(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert heads[0].code == 200
    assert clock.getDelayedCalls() == []


def test_switching_protocols_turns_the_connection_into_a_tunnel():
    protocol, transport, parked = connection()
    heads, _ = exchange(protocol, method=b"GET", body=None, headers=[b"Upgrade: websocket", b"Connection: Upgrade"])
    with pytest.raises(UpstreamError):
        protocol.write(b"too early")  # raw bytes only once the server switched
    feed(protocol, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n\x81\x02hi")
    assert heads[0].code == 101
    sink = Sink()
    protocol.read_body(sink)
    feed(protocol, b"\x81\x03you")
    transport.clear()
    protocol.write(b"\x81\x82abcd")
    assert transport.value() == b"\x81\x82abcd"
    assert sink.body == b"\x81\x02hi\x81\x03you"  # no framing: Content-Length means nothing here
    protocol.close()
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert sink.done == [(True, "")]
    assert parked == []  # never reused


@pytest_twisted.inlineCallbacks
def test_connections_to_servers_do_not_wait_to_fill_packets():
    # Nagle's algorithm held a body written after its head until the
    # server's delayed acknowledgement: uploads took 40 ms more, now and then.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1])
        protocol = yield endpoint.connect(Factory.forProtocol(lambda: UpstreamConnection(lambda connection: None)))
        assert protocol.transport.getTcpNoDelay()
        protocol.transport.abortConnection()
    finally:
        listener.close()
