"""
The HTTP server side: the Site and Request classes, the access log, the
request body size limit, CORS pre-flight answers, and the dispatch of the
inference endpoints (the hot path) ahead of the router.
"""

from __future__ import annotations

import string
from typing import Callable

from twisted.internet import reactor as default_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from llamaswap.http.answers import send_error
from llamaswap.http.channel import JoinedHeadRequest, LlamaswapChannel
from llamaswap.observe.backlog import Backlog
from llamaswap.observe.logs import ProxyLog

log = Logger()

# Base64-encoded images make 50 MB chat requests ordinary; anything beyond
# this is refused before it is read.
MAX_REQUEST_BODY = 256 * 1024 * 1024

_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
DEFAULT_ALLOWED_HEADERS = "Content-Type, Authorization, Accept, X-Requested-With"
# Polled all day by monitors and the UI: left out of the access log, as the
# newest llama-swap does (path prefixes).
UNLOGGED_PREFIXES = (b"/wol-health", b"/api/performance", b"/metrics")


def sanitize_cors_headers(value: str) -> str:
    """
    Keep the header names of an Access-Control-Request-Headers value that
    are valid HTTP tokens, comma separated.
    """
    names = (part.strip() for part in value.split(","))
    return ", ".join(name for name in names if name and set(name) <= _TOKEN_CHARACTERS)


def format_duration(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.1f}µs"
    if seconds < 1:
        return f"{seconds * 1000:.2f}ms"
    return f"{seconds:.3f}s"


class TrackedRequest(JoinedHeadRequest):
    """
    A request that remembers whether its client went away, so that code
    holding it can ask (C{request.gone}) before writing.
    """

    gone = False

    def connectionLost(self, reason):
        self.gone = True
        super().connectionLost(reason)


class LlamaswapRequest(TrackedRequest):
    """
    A request that knows when it started, refuses oversized bodies before
    reading them, and is logged even when the client disconnects.
    """

    max_body = MAX_REQUEST_BODY
    # Set by the gateway for relayed requests, read for /metrics: the model
    # (or peer model) and how long the request waited for it.
    metrics_model: str | None = None
    waited: float | None = None
    first_byte_at: float | None = None
    error_message: str | None = None  # what llamaswap told the client went wrong

    def __init__(self, channel, queued=None):
        # Bodies are ours to read: no form parsing into request.args (it
        # would hold a whole multipart upload in memory a second time).
        super().__init__(channel, parsePOSTFormSubmission=False)
        self.started = self._clock().seconds()
        self._body_received = 0
        self._logged = False

    def _clock(self):
        site = getattr(self.channel, "site", None)
        return getattr(site, "clock", default_reactor)

    def write(self, data):
        if not self.startedWriting and self.metrics_model is not None:
            self.first_byte_at = self._clock().seconds()
        super().write(data)

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        self._body_received += len(data)
        if self._body_received > self.max_body:
            self._refuse_body()
            return
        if self.content is not None:
            super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        if self.content is not None:
            self.content.close()
            self.content = None
        transport = self.channel.transport if self.channel else None
        if transport is None or getattr(self, "_refused", False):
            return
        self._refused = True
        message = f"request body larger than {self.max_body} bytes\n".encode()
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(message)).encode() + b"\r\n\r\n" + message
        )
        transport.loseConnection()

    def connectionLost(self, reason):
        if not self.finished and not self._logged and self.method is not None:
            site = getattr(self.channel, "site", None) if self.channel else None
            if site is not None:
                site.log(self, disconnected=True)
        super().connectionLost(reason)


class LlamaswapSite(server.Site):
    """
    The site: one access-log line per request in the proxy log.
    """

    protocol = LlamaswapChannel
    requestFactory = LlamaswapRequest
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        resource: IResource,
        proxy_log: ProxyLog,
        clock=None,
        backlog: Backlog | None = None,
        telemetry=None,
    ):
        clock = clock if clock is not None else default_reactor
        super().__init__(resource, reactor=clock)
        self.proxy_log = proxy_log
        self.clock = clock
        self.backlog = backlog if backlog is not None else Backlog(clock)
        self.telemetry = telemetry  # llamaswap.observe.prometheus.Telemetry: counts relayed requests

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.site = self
        return channel

    def log(self, request, disconnected: bool = False):
        if getattr(request, "_logged", True) or request.path is None or request.path.startswith(UNLOGGED_PREFIXES):
            return
        request._logged = True
        now = self.clock.seconds()
        model = getattr(request, "metrics_model", None)
        if model is not None and self.telemetry is not None:
            self._count(request, model, now)
        if not self.proxy_log.enabled("info"):
            return
        entry = (
            getattr(request.getClientAddress(), "host", None) or "-",
            request.method,
            request.path,
            request.clientproto,
            request.code,
            request.sentLength,
            request.getHeader(b"user-agent") or b"",
            now - getattr(request, "started", now),
            disconnected,
        )
        self.backlog.later(lambda: self._write_log_line(*entry))

    def _count(self, request, model: str, now: float) -> None:
        started = getattr(request, "started", now)
        first_byte = request.first_byte_at - started if request.first_byte_at is not None else None
        entry = (model, request.code, now - started, first_byte, request.waited)
        telemetry = self.telemetry
        self.backlog.later(lambda: telemetry.request_done(*entry))

    def _write_log_line(self, host, method, path, protocol, code, length, agent, duration, disconnected) -> None:
        note = " (client disconnected)" if disconnected else ""
        self.proxy_log.info(
            f'Request {host} "{method.decode("latin-1")} {path.decode("utf-8", "replace")} '
            f'{protocol.decode("latin-1")}" {code} {length} "{agent.decode("utf-8", "replace")}" '
            f"{format_duration(duration)}{note}"
        )


@implementer(IResource)
class RootResource:
    """
    The site's root: answers every OPTIONS request with permissive CORS
    headers (browsers ask before cross-origin API calls), refuses requests
    without a valid API key (C{refuse}), sends the
    inference endpoints -- the hot path -- straight to their handlers, and
    everything else to the Klein application.

    A fast route's handler returns bytes, a resource to render, or a
    Deferred of either; a client that disconnects cancels the Deferred.
    """

    isLeaf = True

    def __init__(
        self,
        app: Resource,
        fast_routes: dict[tuple[bytes, bytes], Callable] | None = None,
        refuse: Callable[[object], bytes | None] | None = None,
    ):
        self.app = app
        self.fast_routes = fast_routes or {}
        self.refuse = refuse

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        if request.method == b"OPTIONS":
            return self._preflight(request)
        if self.refuse is not None:
            refused = self.refuse(request)
            if refused is not None:
                return refused
        handler = self.fast_routes.get((request.method, request.path))
        if handler is None:
            return self.app.render(request)
        try:
            result = handler(request)
        except Exception:
            self._failed(Failure(), request)  # a bug: logged, and a plain 500
            return NOT_DONE_YET
        if isinstance(result, Deferred):
            request.notifyFinish().addErrback(lambda _: result.cancel())
            result.addCallback(self._respond, request)
            result.addErrback(self._failed, request)
            return NOT_DONE_YET
        return self._render(result, request)

    @staticmethod
    def _render(result, request):
        if IResource.providedBy(result):
            return result.render(request)
        return result if result is not None else b""

    def _respond(self, result, request) -> None:
        if request.finished or request.gone:
            return
        body = self._render(result, request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _failed(self, failure: Failure, request) -> None:
        if failure.check(CancelledError) or request.finished or request.gone:
            return
        log.failure("error handling {path}", failure, path=request.path)
        send_error(request, 500, "internal error")

    @staticmethod
    def _preflight(request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS")
        asked = request.getHeader(b"access-control-request-headers")
        allowed = sanitize_cors_headers(asked.decode("latin-1")) if asked else DEFAULT_ALLOWED_HEADERS
        request.setHeader(b"access-control-allow-headers", allowed.encode("latin-1"))
        request.setHeader(b"access-control-max-age", b"86400")
        return b""
