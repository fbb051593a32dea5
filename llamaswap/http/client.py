"""
How llamaswap reaches model servers (and, later, peers).

There are two clients, each for what it is good at:

  - L{UpstreamClient} relays client requests: a pool of keep-alive
    connections per upstream address, speaking through the lean
    L{llamaswap.protocols.client.UpstreamConnection}, with flow control
    from the first byte to the last.  It is on the hot path of every
    request, so it does nothing else.
  - L{plain_client} is treq, for the ordinary requests llamaswap makes on
    its own behalf (readiness probes, the wol-proxy's event monitor):
    nothing to relay, so the general-purpose client is the right one.

Both connect through L{UpstreamEndpoints}: no DNS round trip for IP
literals and localhost, and any endpoint a test wants to put in their
place.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
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
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from llamaswap.http.bodies import FileProducer
from llamaswap.protocols.client import NoResponse, ResponseHead, UpstreamConnection

POOL_SIZE_PER_UPSTREAM = 64
# Upstream servers close idle keep-alive connections after a few seconds
# (uvicorn and llama-server: 5 s); forgetting them sooner avoids sending a
# request on a connection that is being closed.
IDLE_CONNECTION_SECONDS = 2.0
DEFAULT_CONNECT_TIMEOUT = 10.0


class _QuietFactory(Factory):
    """
    Builds the wrapped factory's protocols without its "Starting factory"
    log line for every connection.
    """

    noisy = False

    def __init__(self, wrapped: Factory):
        self.wrapped = wrapped

    def buildProtocol(self, addr):
        return self.wrapped.buildProtocol(addr)


@implementer(IStreamClientEndpoint)
class _Quietly:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def connect(self, factory):
        return self.endpoint.connect(_QuietFactory(factory))


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

    def __init__(self, reactor, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls_policy = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri):
        return _Quietly(self.endpoint(uri.scheme.decode("ascii"), uri.host.decode("ascii"), uri.port))

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


def plain_client(reactor, endpoints: UpstreamEndpoints | None = None, persistent: bool = False) -> HTTPClient:
    """
    treq over L{UpstreamEndpoints}, for llamaswap's own requests.
    """
    endpoints = endpoints if endpoints is not None else UpstreamEndpoints(reactor)
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    return HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


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

    def exchange(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes | IBodyProducer | None,
        head_timeout: float | None = None,
    ) -> Deferred:
        """
        Send a request and wait for the response head (at most
        C{head_timeout} seconds once it is sent).

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
        path = ((parts.path or "/") + ("?" + parts.query if parts.query else "")).encode("latin-1")
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
                    return connection.send(method, path, host, headers, body=body, head_timeout=head_timeout)
                return connection.send(method, path, host, headers, producer=body, head_timeout=head_timeout)

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
        factory = Factory.forProtocol(lambda: UpstreamConnection(lambda connection: self._park(key, connection), self._reactor))
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
