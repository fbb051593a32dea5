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
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

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
        host = uri.host.decode("ascii")
        bare = host.strip("[]")
        reactor, timeout = self._reactor, self._timeout
        if isIPAddress(bare):
            endpoint = TCP4ClientEndpoint(reactor, bare, uri.port, timeout=timeout)
        elif isIPv6Address(bare):
            endpoint = TCP6ClientEndpoint(reactor, bare, uri.port, timeout=timeout)
        elif bare == "localhost":
            endpoint = _FirstThatAnswers(
                [
                    TCP4ClientEndpoint(reactor, "127.0.0.1", uri.port, timeout=timeout),
                    TCP6ClientEndpoint(reactor, "::1", uri.port, timeout=timeout),
                ]
            )
        else:
            endpoint = HostnameEndpoint(reactor, uri.host, uri.port, timeout=timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def upstream_agent(reactor, pool: HTTPConnectionPool, connect_timeout: float = 10) -> Agent:
    return Agent.usingEndpointFactory(reactor, UpstreamEndpoints(reactor, connect_timeout), pool=pool)


class UpstreamClient:
    """
    The HTTP client for model servers: one pool of keep-alive connections
    shared by every request.
    """

    def __init__(self, reactor, agent=None):
        self._reactor = reactor
        if agent is None:
            pool = quiet_pool(reactor, persistent=True)
            pool.maxPersistentPerHost = POOL_SIZE_PER_UPSTREAM
            pool.cachedConnectionTimeout = IDLE_CONNECTION_SECONDS
            self.pool = pool
            agent = upstream_agent(reactor, pool)
        else:
            self.pool = None
        self.agent = agent

    def request(
        self, method: bytes, url: bytes, headers: Headers, body: bytes | IBodyProducer | None
    ) -> Deferred:
        """
        Send a request; a request with an in-memory body that fails before
        any answer (typically a kept-alive connection the server had just
        closed) is sent once more on a new connection.
        """
        if isinstance(body, bytes):
            payload = body

            def send(_=None) -> Deferred:
                return self.agent.request(method, url, headers, BytesProducer(payload))

            first = send()

            def retry(failure: Failure) -> Deferred | Failure:
                if failure.check(ResponseNeverReceived) and not _cancelled(failure):
                    return send()
                return failure

            return first.addErrback(retry)
        return self.agent.request(method, url, headers, body)

    def close(self) -> Deferred | None:
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return None


def _cancelled(failure: Failure) -> bool:
    reasons = getattr(failure.value, "reasons", [])
    return any(reason.check(CancelledError) for reason in reasons)


@implementer(IPushProducer)
class _RelayBody(Protocol):
    """
    Receives the upstream body and writes it to the client, passing the
    client's flow control back to the upstream connection.
    """

    def __init__(self, proxy: _ProxiedExchange):
        self.proxy = proxy

    # upstream side
    def dataReceived(self, data: bytes) -> None:
        self.proxy.relay(data)

    def connectionLost(self, reason: Failure) -> None:
        self.proxy.upstream_body_ended(reason)

    # client side: IPushProducer registered on the client request
    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class _ProxiedExchange:
    """
    One client request relayed to one upstream request.
    """

    def __init__(self, resource: ReverseProxyResource, request: Request):
        self.resource = resource
        self.request = request
        self.observer = resource.observer
        self.relay_body: _RelayBody | None = None
        self.pending: Deferred | None = None
        self.client_gone = False
        self.done = False
        self.sse = False

    def start(self) -> None:
        request = self.request
        request.notifyFinish().addErrback(self.client_lost)
        headers = forwarded_request_headers(request)
        for name, value in self.resource.header_overrides.items():
            headers.setRawHeaders(name, [value])
        self.pending = self.resource.client.request(
            request.method, self.resource.url, headers, self.resource.body
        )
        self.pending.addCallbacks(self.got_response, self.request_failed)

    def got_response(self, response) -> None:
        self.pending = None
        if self.client_gone:
            response.deliverBody(Protocol())  # discard; the connection is closed below
            return
        request = self.request
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0].lower()
        self.sse = b"text/event-stream" in content_type
        if not self.resource.headers_sent:
            request.setResponseCode(response.code, response.phrase)
            copy_response_headers(response.headers, request)
        if self.observer is not None:
            self.observer.response_started(response.code, response.headers)
        self.relay_body = _RelayBody(self)
        request.registerProducer(self.relay_body, True)
        response.deliverBody(self.relay_body)

    def relay(self, data: bytes) -> None:
        if self.client_gone:
            return
        self.request.write(data)
        if self.observer is not None:
            self.observer.data_received(data)

    def upstream_body_ended(self, reason: Failure) -> None:
        # PotentialDataLoss: no length and no chunking, so the server marked
        # the end by closing the connection; that is a complete answer.
        self.finish(reason.check(ResponseDone, PotentialDataLoss) is not None, reason)

    def request_failed(self, failure: Failure) -> None:
        self.pending = None
        if self.client_gone or _cancelled(failure) or failure.check(CancelledError):
            self.finish(False, failure)
            return
        message = f"error proxying request to {self.resource.model_id}: {describe_failure(failure)}"
        self.resource.log_error(message)
        if not self.resource.headers_sent:
            self.resource.send_error(self.request, 502, message)
            self.finish(False, failure, already_finished=True)
        else:
            self.finish(False, failure)

    def client_lost(self, failure: Failure) -> None:
        if self.done:
            return
        self.client_gone = True
        if self.pending is not None:
            self.pending.cancel()
        if self.relay_body is not None and self.relay_body.transport is not None:
            self.relay_body.transport.stopProducing()

    def finish(self, complete: bool, reason: Failure | None, already_finished: bool = False) -> None:
        if self.done:
            return
        self.done = True
        request = self.request
        if self.relay_body is not None and request.channel is not None:
            request.unregisterProducer()
        if not self.client_gone and not already_finished and not request.finished:
            if complete:
                request.finish()
            elif self.sse:
                # Tell a streaming client why its stream stops here.
                why = describe_failure(reason) if reason is not None else "connection lost"
                error = {"error": {"message": f"upstream {self.resource.model_id} stopped responding: {why}", "type": "upstream_error"}}
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
