"""
The upstream connection pool: reuse, a stale connection retried, idle
connections forgotten, cancellation.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from llamaswap.http.client import IDLE_CONNECTION_SECONDS, UpstreamClient
from tests.protocols.test_client import Sink, feed


class FakeEndpoints:
    """
    Connects to in-memory transports and remembers every connection.
    """

    def __init__(self):
        self.connections = []

    def endpoint(self, scheme, host, port, timeout=None):
        endpoints = self

        class Endpoint:
            def connect(self, factory):
                from twisted.internet.defer import succeed

                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                endpoints.connections.append(protocol)
                return succeed(protocol)

        return Endpoint()


def pool_exchange(client, body=b"{}"):
    results, failures = [], []
    client.exchange(b"POST", b"http://127.0.0.1:9/v1/x?y=1", Headers(), body).addCallbacks(results.append, failures.append)
    return results, failures


def test_pool_reuses_connections_and_retries_a_stale_one():
    endpoints = FakeEndpoints()
    client = UpstreamClient(Clock(), endpoints)
    results, _ = pool_exchange(client)
    first = endpoints.connections[0]
    assert first.transport.value().startswith(b"POST /v1/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    feed(first, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    connection, head = results[0]
    connection.read_body(Sink())
    # the next request reuses the parked connection...
    results, failures = pool_exchange(client)
    assert len(endpoints.connections) == 1
    # ...which the server had closed: the request goes out again on a new one
    first.connectionLost(Failure(ConnectionDone()))
    assert len(endpoints.connections) == 2
    second = endpoints.connections[1]
    assert second.transport.value().endswith(b"\r\n\r\n{}")
    feed(second, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert results[0][1].code == 200 and failures == []


def test_pool_forgets_idle_connections_after_a_while():
    clock = Clock()
    endpoints = FakeEndpoints()
    client = UpstreamClient(clock, endpoints)
    results, _ = pool_exchange(client)
    feed(endpoints.connections[0], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    results[0][0].read_body(Sink())
    clock.advance(IDLE_CONNECTION_SECONDS + 0.1)
    assert endpoints.connections[0].transport.disconnecting
    pool_exchange(client)
    assert len(endpoints.connections) == 2


def test_cancelling_an_exchange_aborts_its_connection():
    endpoints = FakeEndpoints()
    client = UpstreamClient(Clock(), endpoints)
    deferred = client.exchange(b"GET", b"http://127.0.0.1:9/", Headers(), None)
    deferred.addErrback(lambda failure: None)
    deferred.cancel()
    assert endpoints.connections[0].transport.disconnecting or endpoints.connections[0].transport.disconnected


class Receiver:
    def __init__(self):
        self.heads, self.failures = [], []

    def head_received(self, connection, head):
        self.heads.append((connection, head))

    def request_failed(self, failure):
        self.failures.append(failure)


class RecordingEndpoints(FakeEndpoints):
    """
    Also remembers the scheme and connect timeout each endpoint was made
    with, and gives transports that can switch TCP keepalive.
    """

    def __init__(self):
        super().__init__()
        self.made = []

    def endpoint(self, scheme, host, port, timeout=None):
        self.made.append((scheme, host, port, timeout))
        endpoints = self

        class KeepaliveTransport(StringTransport):
            keepalive = False

            def setTcpKeepAlive(self, enabled):
                self.keepalive = enabled

        class Endpoint:
            def connect(self, factory):
                from twisted.internet.defer import succeed

                protocol = factory.buildProtocol(None)
                protocol.makeConnection(KeepaliveTransport())
                endpoints.connections.append(protocol)
                return succeed(protocol)

        return Endpoint()


def test_a_models_timeouts_shape_its_connections():
    from llamaswap.config.records import Timeouts
    from llamaswap.http.client import ConnectionOptions

    clock = Clock()
    endpoints = RecordingEndpoints()
    client = UpstreamClient(clock, endpoints)
    options = ConnectionOptions.from_timeouts(Timeouts(connect=4, keepalive=30, idle_conn=0.5))
    receiver = Receiver()
    client.request(b"GET", "http://127.0.0.1:9", b"/", Headers(), None, receiver, options=options)
    assert endpoints.made == [("http", "127.0.0.1", 9, 4)]  # the connect timeout
    connection = endpoints.connections[0]
    assert connection.transport.keepalive is True
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    receiver.heads[0][0].read_body(Sink())
    clock.advance(0.6)  # idleConn, when shorter than the pool's own limit
    assert connection.transport.disconnecting
    # keepalive 0 turns it off
    off = ConnectionOptions.from_timeouts(Timeouts(keepalive=0))
    client.request(b"GET", "http://127.0.0.1:10", b"/", Headers(), None, Receiver(), options=off)
    assert endpoints.connections[1].transport.keepalive is False
    # a long idleConn is capped by the pool's limit
    assert ConnectionOptions.from_timeouts(Timeouts(idle_conn=90)).idle_limit == IDLE_CONNECTION_SECONDS


def test_a_tls_handshake_that_does_not_finish_in_time_fails_the_request():
    from llamaswap.protocols.client import UpstreamConnection

    clock = Clock()
    connection = UpstreamConnection(None, clock, tls_handshake=3)
    transport = StringTransport()
    connection.makeConnection(transport)
    failures = []
    connection.send(b"GET", b"/", b"h", Headers()).addErrback(failures.append)
    clock.advance(3)
    assert "TLS handshake not done within 3s" in failures[0].getErrorMessage()
    assert transport.disconnecting  # aborted
    # in time: nothing happens
    connection = UpstreamConnection(None, clock, tls_handshake=3)
    connection.makeConnection(StringTransport())
    connection.handshakeCompleted()
    assert clock.getDelayedCalls() == []
