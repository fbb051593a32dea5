"""
Immediate sends on real loopback TCP connections: small writes reach the
peer before the reactor runs again, big ones are queued after what the
kernel took, and nothing ever overtakes what is already queued.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from llamaswap.protocols.sending import send_now


class Client(Protocol):
    def __init__(self):
        self.lost = Deferred()

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


@pytest.fixture
def pair():
    """
    A Twisted client connection and the plain socket it is connected to.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = pytest_twisted.blockon(
        TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1]).connect(Factory.forProtocol(Client))
    )
    peer, _ = listener.accept()
    listener.close()
    yield client, peer
    client.lost.addErrback(lambda failure: None)
    client.transport.abortConnection()
    peer.close()


def receive_now(peer: socket.socket) -> bytes:
    """
    What the peer has received so far, without waiting.
    """
    peer.setblocking(False)
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


def receive_all(peer: socket.socket, size: int) -> bytes:
    peer.setblocking(True)
    peer.settimeout(10)
    pieces, received = [], 0
    while received < size:
        piece = peer.recv(1 << 20)
        if not piece:
            break
        pieces.append(piece)
        received += len(piece)
    return b"".join(pieces)


def test_a_small_write_is_sent_before_the_reactor_runs_again(pair):
    client, peer = pair
    send_now(client.transport, b"hello")
    assert receive_now(peer) == b"hello"
    assert client.transport not in reactor.getWriters()  # nothing left for the reactor
    client.transport.write(b"queued")
    assert receive_now(peer) == b""  # what Twisted itself does: wait for the next pass


@pytest_twisted.inlineCallbacks
def test_what_was_queued_before_goes_first(pair):
    client, peer = pair
    client.transport.write(b"first ")
    send_now(client.transport, b"second")
    assert (yield deferToThread(receive_all, peer, 12)) == b"first second"
    assert client.transport not in reactor.getWriters()


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_does_not_take_is_queued_in_order(pair):
    client, peer = pair
    big = bytes(range(256)) * (64 * 1024)  # 16 MB: more than the socket buffers hold
    send_now(client.transport, big)
    assert client.transport in reactor.getWriters()  # the rest waits for the reactor
    send_now(client.transport, b"tail")
    assert (yield deferToThread(receive_all, peer, len(big) + 4)) == big + b"tail"


@pytest_twisted.inlineCallbacks
def test_a_vanished_peer_is_reported_as_a_lost_connection(pair):
    client, peer = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # a reset
    for _ in range(3):
        send_now(client.transport, b"x" * 100_000)
    reason = yield client.lost
    assert isinstance(reason, (ConnectionDone, ConnectionLost))


def test_other_transports_get_an_ordinary_write():
    transport = StringTransport()
    send_now(transport, b"abc")
    assert transport.value() == b"abc"


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.calls: list[str] = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


@pytest_twisted.inlineCallbacks
def test_a_paused_producer_is_resumed_by_the_reactor_not_by_a_write(pair):
    client, peer = pair
    producer = Producer()
    client.transport.registerProducer(producer, True)
    big = b"y" * (16 * 1024 * 1024)
    send_now(client.transport, big)
    assert producer.calls == ["pause"]  # more queued than the transport's buffer size
    send_now(client.transport, b"tail")  # (Twisted says "pause" again: still too much queued)
    assert "resume" not in producer.calls
    assert (yield deferToThread(receive_all, peer, len(big) + 4)) == big + b"tail"
    assert producer.calls[-1] == "resume" and producer.calls.count("resume") == 1
