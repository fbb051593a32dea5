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

A request that asks to upgrade the connection (a WebSocket, on the
C{/upstream} and C{/comfyui} routes) is sent with its upgrade headers; if
the server switches protocols, the two connections are spliced and bytes
flow both ways, with the same flow control, until either side closes.
"""

from __future__ import annotations

from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from llamaswap.http.answers import send_error
from llamaswap.http.client import DEFAULT_OPTIONS, ConnectionOptions, UpstreamClient, UpstreamRequest
from llamaswap.protocols.client import ResponseHead, ResponseHeadTimeout, UpstreamConnection, UpstreamError
from llamaswap.protocols.failures import describe_failure
from llamaswap.protocols.sse import sse_event

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
# What a client may send before the server agreed to switch protocols,
# before we stop reading from it.
EARLY_DATA_LIMIT = 64 * 1024
# How long a broken relay waits to learn how the server's process ended.
EXIT_GRACE = 0.5
EXIT_POLL = 0.02
# Request headers we set ourselves rather than copy.
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}


class ResponseObserver(TypingProtocol):
    """
    Sees a proxied response pass (used for token metrics).
    """

    def response_started(self, head: ResponseHead) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def response_ended(self, complete: bool) -> None: ...


def upgrade_requested(request: Request) -> bytes | None:
    """
    The protocol a request asks to switch to (C{Upgrade}, when
    C{Connection} lists C{upgrade}), or C{None}.
    """
    headers = request.requestHeaders
    if b"upgrade" not in connection_tokens(headers.getRawHeaders(b"connection")):
        return None
    values = headers.getRawHeaders(b"upgrade")
    return b", ".join(values) if values else None


def is_websocket(upgrade: bytes | None) -> bool:
    return upgrade is not None and any(token.strip().lower() == b"websocket" for token in upgrade.split(b","))


def connection_tokens(values: list[bytes] | None) -> frozenset[bytes]:
    """
    Header names listed in C{Connection}: hop-by-hop for this message too.
    """
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(b",") if token.strip())


def forwarded_header_lines(request: Request, replace: tuple[tuple[bytes, bytes], ...] = ()) -> list[bytes]:
    """
    The client's request headers as they go to the server: without the
    hop-by-hop ones, with the client added to X-Forwarded-For, and with the
    C{replace} headers instead of the client's own of those names.
    """
    headers = request.requestHeaders
    skip = NOT_FORWARDED | connection_tokens(headers.getRawHeaders(b"connection"))
    if replace:
        skip = skip | {name.lower() for name, _ in replace}
    lines = []
    prior = None
    for name, values in headers.getAllRawHeaders():
        lowered = name.lower()
        if lowered == b"x-forwarded-for":
            prior = values
        elif lowered not in skip:
            lines.extend(name + b": " + value for value in values)
    host = getattr(request.getClientAddress(), "host", None)
    if host:
        chain = b", ".join([*prior, host.encode()]) if prior else host.encode()
        lines.append(b"X-Forwarded-For: " + chain)
    elif prior:
        lines.extend(b"X-Forwarded-For: " + value for value in prior)
    lines.extend(name + b": " + value for name, value in replace)
    return lines


def copy_response_headers(head: ResponseHead, request: Request) -> None:
    skip = HOP_BY_HOP | connection_tokens([value for name, value in head.raw_headers if name.lower() == b"connection"])
    response_headers = request.responseHeaders
    for name, value in head.raw_headers:
        if name.lower() not in skip:
            response_headers.addRawHeader(name, value)


class AnswerTranslator(TypingProtocol):
    """
    Turns a server's answer into another API's shape as it streams past
    (the Ollama API's answers from OpenAI ones): it chooses the status and
    headers, and each piece of body becomes what the client is sent.
    """

    def head(self, head: ResponseHead) -> tuple[int, list[tuple[bytes, bytes]]]: ...

    def data(self, data: bytes) -> bytes: ...

    def end(self, complete: bool) -> bytes: ...


@implementer(IPushProducer)
class _ProxiedExchange:
    """
    One client request relayed to one upstream request.  It hears how the
    upstream request went, is the body sink of the upstream connection and
    the producer feeding the client, so the client's flow control reaches
    the upstream connection.
    """

    def __init__(self, resource: ReverseProxyResource, request: Request):
        self.resource = resource
        self.request = request
        self.observers = resource.observers
        self.connection: UpstreamConnection | None = None
        self.pending: UpstreamRequest | None = None
        self.client_gone = False
        self.done = False
        self.sse = False
        self.streaming = False
        self.tunnel = False
        self.early: list[bytes] = []  # what the client sent before the switch
        self.early_size = 0
        self._awaited = False

    def start(self) -> None:
        request = self.request
        request.notifyFinish().addErrback(self.client_lost)
        resource = self.resource
        headers = resource.set_headers
        if resource.upgrade is not None:
            headers = ((b"Connection", b"Upgrade"), (b"Upgrade", resource.upgrade), *headers)
            request.channel.divert_input(self.client_data)
        self.pending = resource.client.request(
            request.method,
            resource.base,
            resource.target,
            forwarded_header_lines(request, headers),
            resource.body,
            self,
            head_timeout=resource.head_timeout,
            options=resource.options,
        )

    # ResponseReceiver
    def head_received(self, connection: UpstreamConnection, head: ResponseHead) -> None:
        self.pending = None
        self.connection = connection
        if self.client_gone:
            connection.abort()
            return
        request = self.request
        if head.code == 101:
            self.switch_protocols(connection, head)
            return
        self.sse = b"text/event-stream" in (head.header(b"content-type") or b"").lower()
        translate = self.resource.translate
        if translate is not None:
            code, headers = translate.head(head)
            request.setResponseCode(code)
            for name, value in headers:
                request.responseHeaders.setRawHeaders(name, [value])
            self.sse = False  # the client reads the translation, not the server's events
        elif not self.resource.headers_sent:
            request.setResponseCode(head.code, head.phrase)
            copy_response_headers(head, request)
            if self.sse:
                # Tell nginx & co. not to buffer the stream.
                request.responseHeaders.setRawHeaders(b"x-accel-buffering", [b"no"])
        for observer in self.observers:
            observer.response_started(head)
        self.streaming = True
        request.registerProducer(self, True)
        connection.read_body(self)

    def switch_protocols(self, connection: UpstreamConnection, head: ResponseHead) -> None:
        """
        The server accepted the upgrade: send its 101 on, then splice.
        """
        request = self.request
        if self.resource.upgrade is None:
            connection.abort()
            self.request_failed(Failure(UpstreamError("the server switched protocols without being asked")))
            return
        self.tunnel = True
        self.streaming = True
        request.setResponseCode(101)  # for the access log; the head is written here
        lines = [b"HTTP/1.1 101 " + (head.phrase or b"Switching Protocols")]
        lines.extend(name + b": " + value for name, value in head.raw_headers)
        client = request.channel.transport
        client.write(b"\r\n".join(lines) + b"\r\n\r\n")
        early, self.early = self.early, []
        for data in early:
            connection.write(data)
        # flow control both ways: a slow reader pauses the other side
        request.registerProducer(self, True)
        connection.transport.registerProducer(client, True)
        if self.early_size > EARLY_DATA_LIMIT:
            client.resumeProducing()
        connection.read_body(self)

    def client_data(self, data: bytes) -> None:
        """
        Bytes from a client whose connection asked to upgrade.
        """
        if self.tunnel:
            self.connection.write(data)
            return
        if self.done:
            return
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > EARLY_DATA_LIMIT:
            self.request.channel.transport.pauseProducing()

    # the upstream body
    def body_data(self, data: bytes) -> None:
        if self.client_gone:
            return
        if self.tunnel:
            self.request.channel.transport.write(data)
            return
        translate = self.resource.translate
        if translate is None:
            self.request.write(data)
        else:
            translated = translate.data(data)
            if translated:
                self.request.write(translated)
        for observer in self.observers:
            observer.data_received(data)

    def body_done(self, complete: bool, reason: str) -> None:
        if not complete and self._await_exit(lambda: self.finish(complete, reason)):
            return
        self.finish(complete, reason)

    def _await_exit(self, then: Callable[[], None]) -> bool:
        """
        The server's connection broke: if its process is about to be
        reported dead, wait a moment (at most L{EXIT_GRACE} seconds) so
        that the error can say how it ended; C{then} runs after.  Whether
        it waits.
        """
        resource = self.resource
        if self.done or resource.explain is None or resource.clock is None or self.client_gone or self._awaited:
            return False
        if resource.explain() is not None:
            return False
        self._awaited = True
        resource.clock.callLater(EXIT_POLL, self._check_exit, then, resource.clock.seconds() + EXIT_GRACE)
        return True

    def _check_exit(self, then: Callable[[], None], deadline: float) -> None:
        if self.done:
            return
        resource = self.resource
        if resource.explain() is None and resource.clock.seconds() < deadline and not self.client_gone:
            resource.clock.callLater(EXIT_POLL, self._check_exit, then, deadline)
            return
        then()

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
        if not failure.check(ResponseHeadTimeout) and self._await_exit(lambda: self._request_failed(failure)):
            return
        self._request_failed(failure)

    def _request_failed(self, failure: Failure) -> None:
        if self.done:
            return
        message = f"error proxying request to {self.resource.name}: {describe_failure(failure)}{self._explained()}"
        self.resource.log_error(message)
        if not self.resource.headers_sent:
            send_error(self.request, 504 if failure.check(ResponseHeadTimeout) else 502, message)
            self.finish(False, message, already_finished=True)
        else:
            self.finish(False, message)

    def _explained(self) -> str:
        explain = self.resource.explain
        note = explain() if explain is not None else None
        return f" ({note})" if note else ""

    def client_lost(self, failure: Failure) -> None:
        if self.done:
            return
        self.client_gone = True
        if self.pending is not None:
            self.pending.cancel()
        if self.connection is not None:
            if self.tunnel:
                self.connection.close()  # let what the client sent last reach the server
            else:
                self.connection.abort()

    def cancel(self, message: str) -> None:
        """
        Stop this exchange at an operator's request: the server's
        connection is closed, and the client gets an error answer if
        nothing was sent yet, an error event if it is reading a stream
        (otherwise its connection is cut, the only way to say "incomplete").
        """
        if self.done:
            return
        pending, connection = self.pending, self.connection
        self.pending = None
        request = self.request
        request.error_message = message
        if not (request.startedWriting or self.resource.headers_sent or self.tunnel or self.client_gone):
            send_error(request, 503, message)
            self.finish(False, message, already_finished=True)
        else:
            self.finish(False, message, told=message)
        if pending is not None:
            pending.cancel()
        if connection is not None:
            connection.abort()

    def finish(self, complete: bool, reason: str, already_finished: bool = False, told: str | None = None) -> None:
        """
        @param told: what to tell a streaming client, when not that the
            server stopped responding.
        """
        if self.done:
            return
        self.done = True
        request = self.request
        if self.streaming:
            if request.channel is not None:
                request.unregisterProducer()
            else:
                request.producer = None  # the client left: let go of this exchange all the same
        if self.tunnel:
            if self.connection is not None and not self.connection.lost:
                self.connection.transport.unregisterProducer()
            if request.channel is not None:
                request.channel.transport.loseConnection()
        elif not self.client_gone and not already_finished and not request.finished:
            translate = self.resource.translate
            if translate is not None and self.streaming:
                tail = translate.end(complete)
                if tail:
                    request.write(tail)
                request.finish()  # the translation says how it ended
            elif complete:
                request.finish()
            elif self.sse:
                # Tell a streaming client why its stream stops here.
                message = request.error_message = (
                    told or f"upstream {self.resource.name} stopped responding: {reason}{self._explained()}"
                )
                error = {"error": {"message": message, "type": "upstream_error"}}
                request.write(sse_event(error))
                request.finish()
            elif request.channel is not None:
                # Without an end marker the client knows the body is cut short.
                request.channel.transport.loseConnection()
        for observer in self.observers:
            observer.response_ended(complete and not self.client_gone)
        if self.resource.on_done is not None:
            self.resource.on_done()
        self.resource.exchange = None  # no cycle left to the garbage collector


class ReverseProxyResource(Resource):
    """
    Relay the request being rendered to C{target} (path and query) on the
    server at C{base} (a model's or peer's proxy URL, which may carry a path
    prefix); C{name} says who that is in error messages.

    @param body: the request body to send (already read and maybe
        rewritten), or a body producer to stream it.
    @param headers_sent: the client already got a status line and headers
        (the loading-state stream); relay only the body.
    @param on_done: called once when the exchange is over, however it ended.
    @param head_timeout: seconds the server has to start its answer once
        the request is sent; then the client gets 504.
    @param options: how connections to that server are made and kept.
    @param set_headers: request headers to send instead of the client's.
    @param upgrade: the protocol the client asked to switch to (its
        C{Upgrade} header), to be asked of the server too; C{None} to
        relay a plain request.
    """

    isLeaf = True

    def __init__(
        self,
        client: UpstreamClient,
        name: str,
        base: str,
        target: bytes,
        body: bytes | IBodyProducer | None,
        *,
        log_error: Callable[[str], None],
        observers: tuple[ResponseObserver, ...] = (),
        on_done: Callable[[], None] | None = None,
        headers_sent: bool = False,
        head_timeout: float | None = None,
        options: ConnectionOptions = DEFAULT_OPTIONS,
        set_headers: tuple[tuple[bytes, bytes], ...] = (),
        upgrade: bytes | None = None,
        explain: Callable[[], str | None] | None = None,
        clock: IReactorTime | None = None,
        translate: AnswerTranslator | None = None,
    ):
        super().__init__()
        self.client = client
        self.explain = explain  # what became of the server, for error messages (a crash, with its exit status)
        self.clock = clock
        self.translate = translate  # the answer in another API's shape (Ollama's)
        self.name = name
        self.base = base
        self.target = target
        self.body = body
        self.log_error = log_error
        self.observers = observers
        self.exchange: _ProxiedExchange | None = None
        self.on_done = on_done
        self.headers_sent = headers_sent
        self.head_timeout = head_timeout
        self.options = options
        self.set_headers = set_headers
        self.upgrade = upgrade

    def render(self, request: Request):
        self.exchange = _ProxiedExchange(self, request)
        self.exchange.start()
        return NOT_DONE_YET

    def cancel(self, message: str) -> None:
        if self.exchange is not None:
            self.exchange.cancel(message)
