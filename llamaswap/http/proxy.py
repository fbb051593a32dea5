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

from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from llamaswap.http.answers import send_error
from llamaswap.http.client import UpstreamClient
from llamaswap.protocols.client import ResponseHeadTimeout, UpstreamConnection
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
# Request headers we set ourselves rather than copy.
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}


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
        resource = self.resource
        headers = forwarded_request_headers(request)
        self.pending = resource.client.exchange(
            request.method, resource.url, headers, resource.body, head_timeout=resource.head_timeout
        )
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
            send_error(self.request, 504 if failure.check(ResponseHeadTimeout) else 502, message)
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
                request.write(sse_event(error))
                request.finish()
            elif request.channel is not None:
                # Without an end marker the client knows the body is cut short.
                request.channel.transport.loseConnection()
        if self.observer is not None:
            self.observer.response_ended(complete and not self.client_gone)
        if self.resource.on_done is not None:
            self.resource.on_done()


class ReverseProxyResource(Resource):
    """
    Relay the request being rendered to C{url} on a model server.

    @param body: the request body to send (already read and maybe
        rewritten), or a body producer to stream it.
    @param headers_sent: the client already got a status line and headers
        (the loading-state stream); relay only the body.
    @param on_done: called once when the exchange is over, however it ended.
    @param head_timeout: seconds the server has to start its answer once
        the request is sent; then the client gets 504.
    """

    isLeaf = True

    def __init__(
        self,
        client: UpstreamClient,
        model_id: str,
        url: bytes,
        body: bytes | IBodyProducer | None,
        *,
        log_error: Callable[[str], None],
        observer: ResponseObserver | None = None,
        on_done: Callable[[], None] | None = None,
        headers_sent: bool = False,
        head_timeout: float | None = None,
    ):
        super().__init__()
        self.client = client
        self.model_id = model_id
        self.url = url
        self.body = body
        self.log_error = log_error
        self.observer = observer
        self.on_done = on_done
        self.headers_sent = headers_sent
        self.head_timeout = head_timeout

    def render(self, request: Request):
        _ProxiedExchange(self, request).start()
        return NOT_DONE_YET
