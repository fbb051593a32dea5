"""
How llamaswap reaches model servers: endpoints without DNS round trips for
loopback addresses, a pool of keep-alive connections per upstream, and the
request-body producers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
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
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from llamaswap.protocols.client import NoResponse, ResponseHead, UpstreamConnection

POOL_SIZE_PER_UPSTREAM = 64
# Upstream servers close idle keep-alive connections after a few seconds
# (uvicorn and llama-server: 5 s); forgetting them sooner avoids sending a
# request on a connection that is being closed.
IDLE_CONNECTION_SECONDS = 2.0


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.

    (Twisted's FileBodyProducer hands data over through a cooperator
    whose timer rounds up to a whole millisecond per step: too slow for a
    proxy that should add nothing.)
    """

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class FileProducer:
    """
    A request body in a (spooled) file, written as fast as the upstream
    connection takes it and paused when it does not.
    """

    CHUNK = 256 * 1024

    def __init__(self, file, length: int):
        self.file = file
        self.length = length
        self._consumer = None
        self._paused = False
        self._writing = False
        self._finished: Deferred | None = None

    def startProducing(self, consumer) -> Deferred:
        self._consumer = consumer
        self._finished = Deferred()
        self._write()
        return self._finished

    def _write(self) -> None:
        if self._writing:
            return  # a write below resumed us; the loop goes on
        self._writing = True
        try:
            while not self._paused and self._finished is not None and not self._finished.called:
                chunk = self.file.read(self.CHUNK)
                if not chunk:
                    self._finished.callback(None)
                    return
                self._consumer.write(chunk)
        finally:
            self._writing = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        if self._finished is not None and not self._finished.called:
            self._finished.errback(CancelledError("the upstream request was aborted"))
            self._finished.addErrback(lambda _: None)


def spooled_body(content) -> FileProducer | None:
    """
    A producer for a request body Twisted spooled (memory or a temporary
    file), or C{None} when there is no body.
    """
    if content is None:
        return None
    content.seek(0, 2)
    length = content.tell()
    content.seek(0)
    return FileProducer(content, length) if length else None


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" line per upstream connection


def quiet_pool(reactor, persistent: bool) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool


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


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """
    Endpoints for model server URLs, with no DNS round trip for IP
    literals and localhost.
    """

    def __init__(self, reactor, connect_timeout: float = 10):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls_policy = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        return self.endpoint(uri.scheme.decode("ascii"), uri.host.decode("ascii"), uri.port)

    def endpoint(self, scheme: str, host: str, port: int):
        bare = host.strip("[]")
        reactor, timeout = self._reactor, self._timeout
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
            endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(bare.encode("idna"), port), endpoint)
        return endpoint


def upstream_agent(reactor, pool: HTTPConnectionPool, connect_timeout: float = 10) -> Agent:
    return Agent.usingEndpointFactory(reactor, UpstreamEndpoints(reactor, connect_timeout), pool=pool)


class UpstreamClient:
    """
    The HTTP client for model servers: pools of keep-alive connections (one
    per upstream address) shared by every request.
    """

    def __init__(self, reactor, endpoints: UpstreamEndpoints | None = None):
        self._reactor = reactor
        self._endpoints = endpoints or UpstreamEndpoints(reactor)
        self._idle: dict[tuple, list[UpstreamConnection]] = {}
        self._timers: dict[UpstreamConnection, object] = {}

    def exchange(self, method: bytes, url: bytes, headers: Headers, body: bytes | IBodyProducer | None) -> Deferred:
        """
        Send a request and wait for the response head.

        @return: a Deferred firing with (connection, L{ResponseHead}); read
            the body with C{connection.read_body(sink)}.  Cancelling it
            aborts the connection.  A request with an in-memory body that
            gets no answer on a reused connection (the server had just
            closed it) is sent once more on a new one.
        """
        parts = urlsplit(url.decode("latin-1"))
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname or "", port)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        host = parts.netloc.encode("latin-1")
        state: dict = {"connection": None, "attempt": None}

        def cancel(_):
            if state["attempt"] is not None:
                state["attempt"].cancel()
            if state["connection"] is not None:
                state["connection"].abort()

        result: Deferred = Deferred(cancel)

        def attempt(fresh: bool) -> None:
            connection = None if fresh else self._take(key)
            connecting = self._connect(key) if connection is None else succeed(connection)
            reused = connection is not None
            state["attempt"] = connecting

            def connected(connection: UpstreamConnection):
                state["attempt"] = None
                state["connection"] = connection
                if isinstance(body, bytes):
                    return connection.send(method, target.encode("latin-1"), host, headers, body=body)
                return connection.send(method, target.encode("latin-1"), host, headers, producer=body)

            def answered(head: ResponseHead) -> None:
                result.callback((state["connection"], head))

            def failed(failure: Failure) -> None:
                state["attempt"] = None
                if result.called:
                    return
                if failure.check(NoResponse) and reused and not isinstance(body, FileProducer):
                    state["connection"] = None
                    attempt(fresh=True)
                    return
                result.errback(failure)

            connecting.addCallback(connected).addCallbacks(answered, failed)

        attempt(fresh=False)
        return result

    def _connect(self, key: tuple) -> Deferred:
        scheme, host, port = key
        factory = Factory.forProtocol(lambda: UpstreamConnection(lambda connection: self._park(key, connection)))
        factory.noisy = False
        return self._endpoints.endpoint(scheme, host, port).connect(factory)

    def _take(self, key: tuple) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            timer = self._timers.pop(connection, None)
            if timer is not None and timer.active():
                timer.cancel()
            if not connection.lost and not connection.busy:
                return connection
        return None

    def _park(self, key: tuple, connection: UpstreamConnection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= POOL_SIZE_PER_UPSTREAM:
            connection.transport.loseConnection()
            return
        idle.append(connection)

        def expire():
            self._timers.pop(connection, None)
            if connection in idle:
                idle.remove(connection)
            connection.transport.loseConnection()

        self._timers[connection] = self._reactor.callLater(IDLE_CONNECTION_SECONDS, expire)

    def close(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for idle in self._idle.values():
            for connection in idle:
                if not connection.lost:
                    connection.transport.loseConnection()
        self._idle.clear()
