"""
The streaming reverse proxy between clients and model servers.

Unlike C{twisted.web.proxy.ReverseProxyResource}, which buffers, this relays
each piece of the upstream's answer to the client as soon as it arrives, and
ties the two connections together with producer/consumer flow control: when
a client reads slowly, Twisted pauses us and we pause the upstream
connection, so memory stays bounded whatever the response size.  A client
that goes away aborts the upstream request (so the model stops generating);
an upstream that dies mid-answer ends the client's response without leaving
it hanging.
"""

from __future__ import annotations

import json
from typing import Callable, Protocol as TypingProtocol
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
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from llamaswap.protocols.client import NoResponse, ResponseHead, UpstreamConnection

log = Logger()

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers we set ourselves rather than copy.
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
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


class ResponseObserver(TypingProtocol):
    """
    Sees a proxied response pass (used for token metrics).
    """

    def response_started(self, code: int, headers: Headers) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def response_ended(self, complete: bool) -> None: ...


def connection_tokens(headers: Headers) -> set[bytes]:
    """
    Header names listed in C{Connection}: hop-by-hop for this message too.
    """
    tokens = set()
    for value in headers.getRawHeaders(b"connection", []):
        tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return tokens


def forwarded_request_headers(request: Request) -> Headers:
    headers = Headers()
    skip = NOT_FORWARDED | connection_tokens(request.requestHeaders)
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in skip:
            headers.setRawHeaders(name, values)
    client = request.getClientAddress()
    host = getattr(client, "host", None)
    if host:
        prior = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        chain = b", ".join(prior + [host.encode()]) if prior else host.encode()
        headers.setRawHeaders(b"x-forwarded-for", [chain])
    return headers


def copy_response_headers(upstream: Headers, request: Request) -> None:
    skip = HOP_BY_HOP | connection_tokens(upstream)
    for name, values in upstream.getAllRawHeaders():
        if name.lower() not in skip:
            request.responseHeaders.setRawHeaders(name, values)
    content_type = upstream.getRawHeaders(b"content-type", [b""])[0].lower()
    if b"text/event-stream" in content_type:
        # Tell nginx & co. not to buffer the stream.
        request.responseHeaders.setRawHeaders(b"x-accel-buffering", [b"no"])


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


@implementer(IPushProducer)
class _ProxiedExchange:
    """
    One client request relayed to one upstream request.  It is the body
    sink of the upstream connection and the producer feeding the client,
    so the client's flow control reaches the upstream connection.
    """

    def __init__(self, resource: ReverseProxyResource, request: Request):
        self.resource = resource
        self.request = request
        self.observer = resource.observer
        self.connection: UpstreamConnection | None = None
        self.pending: Deferred | None = None
        self.client_gone = False
        self.done = False
        self.sse = False
        self.streaming = False

    def start(self) -> None:
        request = self.request
        request.notifyFinish().addErrback(self.client_lost)
        headers = forwarded_request_headers(request)
        for name, value in self.resource.header_overrides.items():
            headers.setRawHeaders(name, [value])
        self.pending = self.resource.client.exchange(request.method, self.resource.url, headers, self.resource.body)
        self.pending.addCallbacks(self.got_head, self.request_failed)

    def got_head(self, result) -> None:
        self.pending = None
        connection, head = result
        self.connection = connection
        if self.client_gone:
            connection.abort()
            return
        request = self.request
        content_type = head.headers.getRawHeaders(b"content-type", [b""])[0].lower()
        self.sse = b"text/event-stream" in content_type
        if not self.resource.headers_sent:
            request.setResponseCode(head.code, head.phrase)
            copy_response_headers(head.headers, request)
        if self.observer is not None:
            self.observer.response_started(head.code, head.headers)
        self.streaming = True
        request.registerProducer(self, True)
        connection.read_body(self)

    # the upstream body
    def body_data(self, data: bytes) -> None:
        if self.client_gone:
            return
        self.request.write(data)
        if self.observer is not None:
            self.observer.data_received(data)

    def body_done(self, complete: bool, reason: str) -> None:
        self.finish(complete, reason)

    # flow control from the client side
    def pauseProducing(self) -> None:
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self) -> None:
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:
        if self.connection is not None:
            self.connection.abort()

    def request_failed(self, failure: Failure) -> None:
        self.pending = None
        if self.client_gone or failure.check(CancelledError):
            self.finish(False, "cancelled")
            return
        message = f"error proxying request to {self.resource.model_id}: {describe_failure(failure)}"
        self.resource.log_error(message)
        if not self.resource.headers_sent:
            self.resource.send_error(self.request, 502, message)
            self.finish(False, message, already_finished=True)
        else:
            self.finish(False, message)

    def client_lost(self, failure: Failure) -> None:
        if self.done:
            return
        self.client_gone = True
        if self.pending is not None:
            self.pending.cancel()
        if self.connection is not None:
            self.connection.abort()

    def finish(self, complete: bool, reason: str, already_finished: bool = False) -> None:
        if self.done:
            return
        self.done = True
        request = self.request
        if self.streaming and request.channel is not None:
            request.unregisterProducer()
        if not self.client_gone and not already_finished and not request.finished:
            if complete:
                request.finish()
            elif self.sse:
                # Tell a streaming client why its stream stops here.
                error = {
                    "error": {
                        "message": f"upstream {self.resource.model_id} stopped responding: {reason}",
                        "type": "upstream_error",
                    }
                }
                request.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                request.finish()
            elif request.channel is not None:
                # Without an end marker the client knows the body is cut short.
                request.channel.transport.loseConnection()
        if self.observer is not None:
            self.observer.response_ended(complete and not self.client_gone)
        if self.resource.on_done is not None:
            self.resource.on_done()


def describe_failure(failure: Failure | None) -> str:
    if failure is None:
        return "unknown error"
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(reason) for reason in reasons)
    text = str(value).strip()
    name = type(value).__name__
    if "ConnectionRefused" in name:
        return "connection refused"
    return text or name


class ReverseProxyResource(Resource):
    """
    Relay the request being rendered to C{url} on a model server.

    @param body: the request body to send (already read and maybe
        rewritten), or a body producer to stream it.
    @param headers_sent: the client already got a status line and headers
        (the loading-state stream); relay only the body.
    @param on_done: called once when the exchange is over, however it ended.
    """

    isLeaf = True

    def __init__(
        self,
        client: UpstreamClient,
        model_id: str,
        url: bytes,
        body: bytes | IBodyProducer | None,
        *,
        send_error: Callable[[Request, int, str], None],
        log_error: Callable[[str], None],
        observer: ResponseObserver | None = None,
        on_done: Callable[[], None] | None = None,
        headers_sent: bool = False,
        header_overrides: dict[bytes, bytes] | None = None,
    ):
        super().__init__()
        self.client = client
        self.model_id = model_id
        self.url = url
        self.body = body
        self.send_error = send_error
        self.log_error = log_error
        self.observer = observer
        self.on_done = on_done
        self.headers_sent = headers_sent
        self.header_overrides = header_overrides or {}

    def render(self, request: Request):
        _ProxiedExchange(self, request).start()
        return NOT_DONE_YET
