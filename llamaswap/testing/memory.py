"""
A loopback network in memory, for tests that drive HTTP end to end without
a socket or a real clock.

Servers listen on (host, port); clients connect through endpoints from
L{MemoryNetwork.endpoint} (which also serves as llamaswap's
C{UpstreamEndpoints} and as an Agent's endpoint factory); L{flush} moves
bytes until nothing moves.  Unlike Twisted's C{iosim}, connections honour
flow control end to end: a transport whose buffer passes the high-water
mark pauses the producer registered on it and resumes it once drained, and
a protocol that pauses its transport (a client that stopped reading) gets
nothing until it resumes -- so a stalled reader backs up all the way to
whoever produces the data, as on a real network.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IPushProducer,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

HIGH_WATER = 64 * 1024
READ_SIZE = 64 * 1024


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """
    One end of an in-memory connection.

    @ivar reading: whether incoming bytes are delivered to the protocol
        (C{pauseProducing} clears it, as a real transport stops reading).
    @ivar outgoing_bytes: written and not yet read by the other end.
    """

    def __init__(self, network: MemoryNetwork, protocol, host: IPv4Address, peer: IPv4Address):
        self.network = network
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.other: MemoryTransport | None = None
        self.outgoing: deque[bytes] = deque()
        self._offset = 0
        self.outgoing_bytes = 0
        self.reading = True
        self.closing = False
        self.aborting = False
        self.closed = False
        self.dead = False
        self.producer = None
        self.streaming = False
        self.producer_paused = False
        self.written = 0

    # ITransport
    def write(self, data: bytes) -> None:
        if self.closed or self.closing or self.dead or not data:
            return
        self.outgoing.append(data)
        self.outgoing_bytes += len(data)
        self.written += len(data)
        if self.producer is not None and self.streaming and not self.producer_paused:
            if self.outgoing_bytes > HIGH_WATER:
                self.producer_paused = True
                self.producer.pauseProducing()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.closing = True

    def abortConnection(self) -> None:
        self.aborting = True

    @property
    def disconnecting(self) -> bool:
        return self.closing or self.aborting or self.closed

    @property
    def disconnected(self) -> bool:
        return self.closed

    def getPeer(self):
        return self.peer

    def getHost(self):
        return self.host

    # ITCPTransport odds and ends
    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpNoDelay(self, enabled) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled) -> None:
        pass

    # IPushProducer: the protocol controls our reading
    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    # IConsumer
    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.streaming = streaming
        self.producer_paused = False
        if streaming and self.outgoing_bytes > HIGH_WATER:
            self.producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False

    # what the network does
    def take(self, limit: int) -> bytes:
        """
        Up to C{limit} bytes from the front of the buffer, as one read
        (without copying what stays behind: C{_offset} marks how much of
        the first piece was already read).
        """
        pieces, size = [], 0
        outgoing = self.outgoing
        while outgoing and size < limit:
            first = outgoing[0]
            end = min(len(first), self._offset + limit - size)
            pieces.append(first[self._offset : end])
            size += end - self._offset
            if end == len(first):
                outgoing.popleft()
                self._offset = 0
            else:
                self._offset = end
        self.outgoing_bytes -= size
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def drained(self) -> bool:
        """
        Resume a paused producer (or ask a pull producer for more) once the
        buffer is low; returns whether that could produce more bytes.
        """
        if self.producer is None or self.closed or self.outgoing_bytes > HIGH_WATER // 2:
            return False
        if self.streaming:
            if self.producer_paused:
                self.producer_paused = False
                self.producer.resumeProducing()
                return True
            return False
        self.producer.resumeProducing()
        return True

    def kill(self) -> None:
        """
        The process owning this end died: no more writes, no more reads,
        and the connection closes once what was already sent is read.
        """
        self.dead = True
        self.reading = False
        self.closing = True


class _Connection:
    def __init__(self, client: MemoryTransport, server: MemoryTransport, owner: object):
        self.client = client
        self.server = server
        self.owner = owner
        self.open = True

    def ends(self) -> Iterator[tuple[MemoryTransport, MemoryTransport]]:
        yield self.client, self.server
        yield self.server, self.client


@implementer(IListeningPort)
class MemoryPort:
    def __init__(self, network: MemoryNetwork, address: IPv4Address, factory, owner: object):
        self.network = network
        self.address = address
        self.factory = factory
        self.owner = owner

    def startListening(self) -> None:
        pass

    def stopListening(self):
        self.network._ports.pop((self.address.host, self.address.port), None)
        return succeed(None)

    def getHost(self):
        return self.address


@implementer(IStreamClientEndpoint)
class _ClientEndpoint:
    def __init__(self, network: MemoryNetwork, host: str, port: int):
        self.network = network
        self.host = host
        self.port = port

    def connect(self, factory):
        return self.network.connect(self.host, self.port, factory)


@implementer(IAgentEndpointFactory)
class MemoryNetwork:
    """
    Hosts and connections in memory, on C{clock}.
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        self._ports: dict[tuple[str, int], MemoryPort] = {}
        self.connections: list[_Connection] = []
        self._next_client_port = 40000

    # ------------------------------------------------------------ servers

    def listen(self, host: str, port: int, factory, owner: object = None) -> MemoryPort:
        key = (_canonical(host), port)
        if key in self._ports:
            raise OSError(f"address {host}:{port} already in use")
        listening = MemoryPort(self, IPv4Address("TCP", key[0], port), factory, owner)
        self._ports[key] = listening
        return listening

    def kill(self, owner: object) -> None:
        """
        Everything C{owner} listened on goes away, and its connections are
        cut (what it already sent is still delivered).
        """
        for key, port in list(self._ports.items()):
            if port.owner is owner:
                del self._ports[key]
        for connection in self.connections:
            if connection.owner is owner:
                connection.server.kill()

    # ------------------------------------------------------------ clients

    def endpoint(self, scheme: str, host: str, port: int, timeout: float | None = None) -> _ClientEndpoint:
        return _ClientEndpoint(self, host, port)

    def endpointForURI(self, uri) -> _ClientEndpoint:
        return _ClientEndpoint(self, uri.host.decode("ascii"), uri.port)

    def connect(self, host: str, port: int, factory):
        listening = self._ports.get((_canonical(host), port))
        if listening is None:
            return fail(ConnectionRefusedError(f"nothing listens on {host}:{port}"))
        self._next_client_port += 1
        client_address = IPv4Address("TCP", "127.0.0.1", self._next_client_port)
        client_protocol = factory.buildProtocol(listening.address)
        server_protocol = listening.factory.buildProtocol(client_address)
        if client_protocol is None or server_protocol is None:
            return fail(ConnectionRefusedError("the factory refused the connection"))
        client = MemoryTransport(self, client_protocol, client_address, listening.address)
        server = MemoryTransport(self, server_protocol, listening.address, client_address)
        client.other, server.other = server, client
        self.connections.append(_Connection(client, server, listening.owner))
        server_protocol.makeConnection(server)
        client_protocol.makeConnection(client)
        return succeed(client_protocol)

    # ------------------------------------------------------------ moving bytes

    def flush(self, limit: int = 100_000) -> None:
        """
        Deliver bytes (and due zero-delay calls) until nothing moves.
        """
        for _ in range(limit):
            self.clock.advance(0)
            if not self._step():
                return
        raise AssertionError("the in-memory network never went quiet")

    def _step(self) -> bool:
        moved = False
        for connection in list(self.connections):
            if not connection.open:
                continue
            for sender, receiver in connection.ends():
                if sender.outgoing and receiver.reading and not receiver.closed:
                    receiver.protocol.dataReceived(sender.take(READ_SIZE))
                    moved = True
                if not connection.open:
                    break
                if sender.drained():
                    moved = True
            if connection.open and self._closing(connection):
                moved = True
        self.connections = [connection for connection in self.connections if connection.open]
        return moved

    def _closing(self, connection: _Connection) -> bool:
        for sender, _ in connection.ends():
            if sender.aborting or (sender.closing and not sender.outgoing):
                clean = not sender.aborting
                self._disconnect(connection, clean)
                return True
        return False

    def _disconnect(self, connection: _Connection, clean: bool) -> None:
        connection.open = False
        reason = Failure(ConnectionDone("closed")) if clean else Failure(ConnectionLost("aborted"))
        for end, _ in connection.ends():
            end.closed = True
            end.outgoing.clear()
            end._offset = 0
            end.outgoing_bytes = 0
            producer, end.producer = end.producer, None
            if producer is not None:
                producer.stopProducing()
            # as Twisted's transports do: the closed transport lets go of its
            # protocol, so the two are not left in a cycle
            protocol, end.protocol = end.protocol, None
            protocol.connectionLost(reason)


def _canonical(host: str) -> str:
    host = host.strip("[]")
    return "127.0.0.1" if host in ("localhost", "::1") else host
