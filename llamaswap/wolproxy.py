"""
wol-proxy: sits in front of a llamaswap host that suspends itself when idle.

It keeps an eye on the upstream's C{/api/events} stream: while that stream
is connected the upstream is up.  While it is not, every request sends a
Wake-on-LAN magic packet and waits (up to C{--timeout} seconds, then 408)
for the upstream to come back; C{/} and C{/ui/} get a small page that
refreshes itself instead, and C{/api/events} gets 204 so that browsers do
not keep the machine awake.  Everything else is proxied, streaming.
"""

from __future__ import annotations

import re
from importlib import resources
from urllib.parse import urlsplit

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.web import server
from twisted.web.resource import Resource

from llamaswap.http.answers import sized
from llamaswap.http.bodies import spooled_body
from llamaswap.http.client import UpstreamClient, UpstreamEndpoints
from llamaswap.http.listen import ListeningService
from llamaswap.http.proxy import ReverseProxyResource
from llamaswap.http.site import TrackedRequest


class _LeveledLog:
    """
    Twisted's logger, filtered by the --log level.
    """

    def __init__(self):
        self._logger = Logger(namespace="wolproxy")
        self.level = LogLevel.info

    def configure(self, name: str) -> None:
        self.level = LogLevel.levelWithName(name)

    def _emit(self, level, text, **kwargs):
        if level >= self.level:
            self._logger.emit(level, text, **kwargs)

    def debug(self, text, **kwargs):
        self._emit(LogLevel.debug, text, **kwargs)

    def info(self, text, **kwargs):
        self._emit(LogLevel.info, text, **kwargs)

    def warn(self, text, **kwargs):
        self._emit(LogLevel.warn, text, **kwargs)

    def error(self, text, **kwargs):
        self._emit(LogLevel.error, text, **kwargs)


log = _LeveledLog()

READY = "ready"
NOT_READY = "not ready"
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")
IDLE_RETRY_SECONDS = 10.0
CONNECT_TIMEOUT = 5.0
WAKING_RETRY_SECONDS = 1.0
LOG_LEVELS = ("debug", "info", "warn", "error")


def parse_mac(text: str) -> bytes:
    """
    The six bytes of a MAC address written as AA:BB:CC:DD:EE:FF (or with -).

    @raise ValueError: for anything else.
    """
    if not _MAC.match(text.strip()):
        raise ValueError(f"invalid MAC address {text!r}: expected six hex pairs like 00:11:22:33:44:55")
    return bytes(int(part, 16) for part in re.split("[:-]", text.strip()))


def magic_packet(mac: bytes) -> bytes:
    """
    Six 0xFF bytes, then the MAC address sixteen times.
    """
    return b"\xff" * 6 + mac * 16


def parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _Broadcaster(DatagramProtocol):
    pass


class UpstreamMonitor(Service):
    """
    Knows whether the upstream is up by holding its event stream open.
    """

    def __init__(self, reactor, upstream: str):
        self._reactor = reactor
        self.events_url = upstream.rstrip("/") + "/api/events"
        self._client = UpstreamClient(reactor, UpstreamEndpoints(reactor, CONNECT_TIMEOUT))
        self.status = NOT_READY
        self.failures = 0
        self._waiters: list[Deferred] = []
        self._retry = None
        self._attempt: Deferred | None = None
        self._stream = None

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self._stream is not None:
            self._stream.abort()
        self._client.close()

    def when_ready(self) -> Deferred:
        waiter: Deferred = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        self.hurry()
        return waiter

    def hurry(self) -> None:
        """
        Somebody is waiting: check again soon rather than in ten seconds.
        """
        if self._retry is not None and self._retry.active():
            if self._retry.getTime() - self._reactor.seconds() > WAKING_RETRY_SECONDS:
                self._retry.reset(WAKING_RETRY_SECONDS)

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        log.debug("connecting to {url}", url=self.events_url)
        self._attempt = self._client.exchange(
            b"GET", self.events_url.encode("utf-8"), [b"Accept: text/event-stream"], None
        )
        self._attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, result) -> None:
        self._attempt = None
        connection, head = result
        if head.code != 200:
            log.warn("upstream event stream answered {code}", code=head.code)
            connection.abort()
            self._down()
            return
        log.info("connected to the upstream's event stream: upstream ready")
        self.status = READY
        self.failures = 0
        self._stream = connection
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        connection.read_body(self)

    # the event stream's body: only its end matters
    def body_data(self, data: bytes) -> None:
        pass

    def body_done(self, complete: bool, reason: str) -> None:
        self._stream = None
        if self.running:
            if self.status == READY:
                log.info("upstream event stream closed: upstream not ready")
            self._down()

    def _failed(self, failure) -> None:
        self._attempt = None
        if not self.running:
            return
        log.debug("upstream not reachable: {error}", error=failure.getErrorMessage())
        self._down()

    def _down(self) -> None:
        self.status = NOT_READY
        self.failures += 1
        delay = WAKING_RETRY_SECONDS if self._waiters else IDLE_RETRY_SECONDS
        self._retry = self._reactor.callLater(delay, self._connect)


class WakeOnLanResource(Resource):
    isLeaf = True

    def __init__(self, proxy: WolProxyService):
        super().__init__()
        self.proxy = proxy

    def render(self, request):
        proxy = self.proxy
        path = request.path.decode("latin-1")
        if request.method == b"GET" and path == "/status":
            request.setHeader(b"content-type", b"text/plain")
            return f"status: {proxy.monitor.status}\nfailures: {proxy.monitor.failures}\n".encode()
        if proxy.monitor.status == READY:
            return self._forward(request)
        if path.startswith("/api/events"):
            log.debug("not waking the upstream for {path}", path=path)
            request.setResponseCode(204)
            return b""
        client = getattr(request.getClientAddress(), "host", "-")
        log.info("upstream not ready: sending a magic packet for {path} from {client}", path=path, client=client)
        proxy.wake()
        if path == "/" or path.startswith("/ui/"):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return proxy.waking_page
        waiting = proxy.monitor.when_ready()
        timeout = proxy.reactor.callLater(proxy.timeout, waiting.cancel)
        request.notifyFinish().addErrback(lambda _: waiting.cancel())

        def ready(_):
            if timeout.active():
                timeout.cancel()
            if not request.gone:
                request.render(self._forwarder(request))

        def gave_up(failure):
            if request.gone:
                return
            log.info("timed out waiting for the upstream: {path}", path=path)
            # plain text, as the Go wol-proxy answers
            request.setResponseCode(408)
            request.write(sized(request, b"timeout", b"text/plain; charset=utf-8"))
            request.finish()

        waiting.addCallbacks(ready, gave_up)
        return server.NOT_DONE_YET

    def _forwarder(self, request) -> ReverseProxyResource:
        return ReverseProxyResource(
            self.proxy.client,
            "upstream",
            self.proxy.upstream,
            request.uri,
            spooled_body(request.content),
            log_error=lambda message: log.error("{message}", message=message),
        )

    def _forward(self, request):
        return self._forwarder(request).render(request)


class WolProxyService(MultiService):
    def __init__(
        self,
        *,
        reactor,
        mac: str,
        upstream: str,
        listen: str,
        timeout: float = 60,
        broadcast: str = "255.255.255.255:9",
        log_level: str = "info",
    ):
        super().__init__()
        log.configure(log_level)
        self.reactor = reactor
        self.mac = parse_mac(mac)
        self.upstream = upstream
        self.timeout = timeout
        self.broadcast = parse_host_port(broadcast)
        self.client = UpstreamClient(reactor)
        self.waking_page = resources.files("llamaswap").joinpath("waking.html").read_bytes()
        self.monitor = UpstreamMonitor(reactor, upstream)
        self.monitor.setServiceParent(self)
        site = server.Site(WakeOnLanResource(self), requestFactory=TrackedRequest, reactor=reactor)
        site.noisy = False
        self.http = ListeningService(serverFromString(reactor, listen), site)
        self.http.setServiceParent(self)

    def wake(self) -> None:
        """
        Send one magic packet to the broadcast address.
        """
        port = self.reactor.listenUDP(0, _Broadcaster())
        try:
            port.setBroadcastAllowed(True)
            port.write(magic_packet(self.mac), self.broadcast)
        except OSError as error:
            log.warn("failed to send the magic packet to {target}: {error}", target=self.broadcast, error=error)
        finally:
            port.stopListening()

    def stopService(self):
        stopping = super().stopService()
        return stopping.addBoth(lambda result: self.client.close())


def validate_upstream(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid upstream URL {url!r}: expected http://host:port")
    return url

