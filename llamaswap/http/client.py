"""
How llamaswap reaches model servers (and, later, peers): the one HTTP
client of the service.

L{UpstreamClient} keeps a pool of keep-alive connections per server address
and speaks through the lean L{llamaswap.protocols.client.UpstreamConnection},
with flow control from the first byte to the last.  It relays client
requests on the hot path, and also makes llamaswap's own few requests
(readiness probes, the wol-proxy's event monitor) through L{exchange}.  Why
not Agent or treq for those: see the "HTTP client" note in
benchmarks/README.md -- in short, the lean client halves the proxy's CPU per
request, and treq would load TLS into every process.

Connections are made through L{UpstreamEndpoints}: no DNS round trip for IP
literals and localhost, TLS for https URLs, and any endpoint a test wants
to put in their place.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from llamaswap.http.bodies import FileProducer
from llamaswap.http.listen import TLS_MISSING, tls_available
from llamaswap.protocols.client import NoResponse, ResponseHead, UpstreamConnection

POOL_SIZE_PER_UPSTREAM = 64
# Upstream servers close idle keep-alive connections after a few seconds
# (uvicorn and llama-server: 5 s); forgetting them sooner avoids sending a
# request on a connection that is being closed.
IDLE_CONNECTION_SECONDS = 2.0
DEFAULT_CONNECT_TIMEOUT = 10.0


@implementer(IStreamClientEndpoint)
class _FirstThatAnswers:
    """
    Try endpoints in order, moving on when a connection is refused: for
    "localhost", IPv4 first, then IPv6 -- without a resolver thread and
    without the staggered delays of a general-purpose resolver.
    """

    def __init__(self, endpoints):
        self.endpoints = endpoints

    def connect(self, factory):
        attempts = iter(self.endpoints)

        def attempt(failure=None):
            try:
                endpoint = next(attempts)
            except StopIteration:
                return failure
            return endpoint.connect(factory).addErrback(retry)

        def retry(failure):
            failure.trap(ConnectionRefusedError)
            return attempt(failure)

        return attempt()


class TLSUnavailable(Exception):
    """
    An https URL, and no TLS support installed.
    """


class UpstreamEndpoints:
    """
    Endpoints for model server URLs, with no DNS round trip for IP
    literals and localhost.
    """

    def __init__(self, reactor, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self._reactor = reactor
        self._timeout = connect_timeout

    def endpoint(self, scheme: str, host: str, port: int, timeout: float | None = None):
        bare = host.strip("[]")
        reactor, timeout = self._reactor, (timeout or self._timeout)
        if isIPAddress(bare):
            endpoint = TCP4ClientEndpoint(reactor, bare, port, timeout=timeout)
        elif isIPv6Address(bare):
            endpoint = TCP6ClientEndpoint(reactor, bare, port, timeout=timeout)
        elif bare == "localhost":
            endpoint = _FirstThatAnswers(
                [
                    TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout),
                    TCP6ClientEndpoint(reactor, "::1", port, timeout=timeout),
                ]
            )
        else:
            endpoint = HostnameEndpoint(reactor, bare.encode("idna"), port, timeout=timeout)
        if scheme == "https":
            if not tls_available():
                raise TLSUnavailable(f"cannot reach https://{host}:{port}: {TLS_MISSING}")
            from twisted.internet.ssl import optionsForClientTLS, platformTrust

            endpoint = wrapClientTLS(optionsForClientTLS(bare, trustRoot=platformTrust()), endpoint)
        return endpoint


class ResponseReceiver(TypingProtocol):
    """
    Told how an L{UpstreamRequest} ended: with a response head (read the
    body from the connection), or a failure.
    """

    def head_received(self, connection: UpstreamConnection, head: ResponseHead) -> None: ...

    def request_failed(self, failure: Failure) -> None: ...


@frozen
class ConnectionOptions:
    """
    How the connections of one model or peer behave (its C{timeouts}).

    @ivar connect: seconds to establish a connection (0: the default).
    @ivar idle: the longest a connection waits idle in the pool (at most
        L{IDLE_CONNECTION_SECONDS}; 0: that).
    @ivar keepalive: turn on TCP keep-alive probes.
    @ivar tls_handshake: seconds for an https connection's handshake (0: no
        limit).
    """

    connect: float = 0
    idle: float = 0
    keepalive: bool = False
    tls_handshake: float = 0

    @classmethod
    def from_timeouts(cls, timeouts) -> ConnectionOptions:
        return cls(
            connect=timeouts.connect,
            idle=timeouts.idle_conn,
            keepalive=timeouts.keepalive > 0,
            tls_handshake=timeouts.tls_handshake,
        )

    @property
    def idle_limit(self) -> float:
        return min(self.idle, IDLE_CONNECTION_SECONDS) if self.idle > 0 else IDLE_CONNECTION_SECONDS


DEFAULT_OPTIONS = ConnectionOptions()


@frozen
class Origin:
    """
    A server's base URL, taken apart once: the pool key, the Host header
    and the path the request targets are appended to.
    """

    key: tuple[str, str, int]
    host: bytes
    prefix: bytes

    @classmethod
    def parse(cls, base: str) -> Origin:
        parts = urlsplit(base)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls((scheme, parts.hostname or "", port), parts.netloc.encode("latin-1"), parts.path.rstrip("/").encode("latin-1"))


class UpstreamRequest:
    """
    One request on its way to a server: it takes an idle keep-alive
    connection (or makes one), sends, and tells its receiver.  A request
    whose body is in memory and that gets no answer at all on a reused
    connection (the server had just closed it) is sent once more on a new
    one.
    """

    def __init__(self, client: UpstreamClient, origin: Origin, method: bytes, target: bytes, headers, body,
                 receiver: ResponseReceiver, head_timeout: float | None, options: ConnectionOptions):
        self.client = client
        self.options = options
        self.origin = origin
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.receiver = receiver
        self.head_timeout = head_timeout
        self.connection: UpstreamConnection | None = None
        self._connecting: Deferred | None = None
        self._reused = False
        self._done = False

    def start(self, fresh: bool = False) -> None:
        connection = None if fresh else self.client._take(self.origin.key)
        if connection is not None:
            self._send(connection, reused=True)
            return
        self._connecting = self.client._connect(self.origin.key, self.options)
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def cancel(self) -> None:
        """
        Give up: the client went away.
        """
        self._done = True
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.connection is not None:
            self.connection.abort()

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        if self._done:
            connection.abort()
            return
        self._send(connection, reused=False)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self._done:
            self._done = True
            self._told().request_failed(failure)

    def _send(self, connection: UpstreamConnection, reused: bool) -> None:
        self.connection = connection
        self._reused = reused
        body = self.body
        path = self.origin.prefix + self.target
        if isinstance(body, bytes) or body is None:
            connection.send(self.method, path, self.origin.host, self.headers, body=body,
                            head_timeout=self.head_timeout, receiver=self)
        else:
            connection.send(self.method, path, self.origin.host, self.headers, producer=body,
                            head_timeout=self.head_timeout, receiver=self)

    # HeadReceiver
    def head_received(self, head: ResponseHead) -> None:
        if not self._done:
            self._done = True
            self._told().head_received(self.connection, head)

    def head_failed(self, error: Exception) -> None:
        if self._done:
            return
        if isinstance(error, NoResponse) and self._reused and not isinstance(self.body, FileProducer):
            self.connection = None
            self.start(fresh=True)
            return
        self._done = True
        self._told().request_failed(Failure(error))

    def _told(self) -> ResponseReceiver:
        """
        The receiver, for the one thing it is told; this request lets go of
        it (receivers keep their request to cancel it: no cycle is left).
        """
        receiver, self.receiver = self.receiver, None
        return receiver


class _DeferredResponse:
    def __init__(self) -> None:
        self.deferred: Deferred = Deferred(lambda _: self.pending.cancel())
        self.pending: UpstreamRequest | None = None

    def head_received(self, connection: UpstreamConnection, head: ResponseHead) -> None:
        self.deferred.callback((connection, head))

    def request_failed(self, failure: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(failure)


class UpstreamClient:
    """
    The HTTP client for model servers: pools of keep-alive connections (one
    per server address) shared by every request.  Idle connections are
    closed after L{IDLE_CONNECTION_SECONDS} by one sweep timer, not a timer
    per connection.
    """

    def __init__(self, reactor, endpoints: UpstreamEndpoints | None = None):
        self._reactor = reactor
        self._endpoints = endpoints or UpstreamEndpoints(reactor)
        self._idle: dict[tuple, list[tuple[UpstreamConnection, float]]] = {}
        self._origins: dict[str, Origin] = {}
        self._sweep = None

    def origin(self, base: str) -> Origin:
        origin = self._origins.get(base)
        if origin is None:
            if len(self._origins) > 1024:
                self._origins.clear()
            origin = self._origins[base] = Origin.parse(base)
        return origin

    def request(
        self,
        method: bytes,
        base: str,
        target: bytes,
        headers: Headers | list[bytes],
        body: bytes | IBodyProducer | None,
        receiver: ResponseReceiver,
        head_timeout: float | None = None,
        options: ConnectionOptions = DEFAULT_OPTIONS,
    ) -> UpstreamRequest:
        """
        Send C{method target} to the server at C{base} (its URL, maybe with
        a path prefix); C{receiver} hears how it went.
        """
        pending = UpstreamRequest(
            self, self.origin(base), method, target, headers, body, receiver, head_timeout, options
        )
        pending.start()
        return pending

    def exchange(
        self,
        method: bytes,
        url: bytes,
        headers: Headers | list[bytes],
        body: bytes | IBodyProducer | None,
        head_timeout: float | None = None,
    ) -> Deferred:
        """
        L{request} with a whole URL and a Deferred: it fires with
        (connection, L{ResponseHead}); read the body with
        C{connection.read_body(sink)}.  Cancelling it aborts the request.
        """
        parts = urlsplit(url.decode("latin-1"))
        base = f"{parts.scheme}://{parts.netloc}"
        target = ((parts.path or "/") + ("?" + parts.query if parts.query else "")).encode("latin-1")
        receiver = _DeferredResponse()
        receiver.pending = self.request(method, base, target, headers, body, receiver, head_timeout)
        return receiver.deferred

    def _connect(self, key: tuple, options: ConnectionOptions = DEFAULT_OPTIONS) -> Deferred:
        scheme, host, port = key
        factory = Factory.forProtocol(
            lambda: UpstreamConnection(
                lambda connection: self._park(key, connection, options.idle_limit),
                self._reactor,
                keepalive=options.keepalive,
                tls_handshake=options.tls_handshake if scheme == "https" else 0,
            )
        )
        factory.noisy = False
        try:
            endpoint = self._endpoints.endpoint(scheme, host, port, options.connect or None)
        except Exception:
            return fail()
        return endpoint.connect(factory)

    def _take(self, key: tuple) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        now = self._reactor.seconds()
        while idle:
            connection, expires = idle.pop()
            if expires <= now:
                self._close(connection)
            elif not connection.lost and not connection.busy:
                return connection
        return None

    def _park(self, key: tuple, connection: UpstreamConnection, limit: float = IDLE_CONNECTION_SECONDS) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= POOL_SIZE_PER_UPSTREAM:
            self._close(connection)
            return
        idle.append((connection, self._reactor.seconds() + limit))
        if self._sweep is None:
            self._sweep = self._reactor.callLater(limit, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        now = self._reactor.seconds()
        for key, idle in list(self._idle.items()):
            for connection, expires in idle:
                if expires <= now:
                    self._close(connection)
            keep = [(connection, expires) for connection, expires in idle if expires > now and not connection.lost]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            soonest = min(expires for idle in self._idle.values() for _, expires in idle)
            self._sweep = self._reactor.callLater(max(0.0, soonest - now), self._expire)

    @staticmethod
    def _close(connection: UpstreamConnection) -> None:
        if not connection.lost:
            connection.transport.loseConnection()

    def close(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for idle in self._idle.values():
            for connection, _ in idle:
                self._close(connection)
        self._idle.clear()
