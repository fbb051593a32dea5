"""
Readiness: poll a model server's health URL until it answers 200 -- or,
with C{checkEndpoint: none}, until it accepts a connection at all.

The original polls every 5 seconds after a fixed 250 ms pause, so a server
that is ready after 300 ms costs more than 5 seconds.  Here the interval
grows with the time already spent -- one twentieth of it, between 20 ms and
1 s -- so readiness is noticed within 100 ms for anything that starts within
2 seconds, and the delay never adds more than 5% (or 1 s) to a slow load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from llamaswap.protocols.failures import describe_failure

if TYPE_CHECKING:
    from llamaswap.http.client import UpstreamClient, UpstreamEndpoints

MIN_INTERVAL = 0.02
MAX_INTERVAL = 1.0
PROBE_CONNECT_TIMEOUT = 0.5
PROBE_RESPONSE_TIMEOUT = 5.0

Probe = Callable[[str], Deferred]  # fires with the HTTP status code


@frozen
class Probes:
    """
    The two ways of asking a server whether it is ready: C{http} GETs its
    health URL; C{connect}, for models without a health check, only opens
    a connection to it (a refused connection means "still starting").
    """

    http: Probe
    connect: Probe


class NotReady(Exception):
    """
    The server did not become ready in time.
    """


def next_interval(elapsed: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, elapsed / 20))


def wait_until_ready(
    clock: IReactorTime,
    probe: Probe,
    url: str,
    timeout: float,
    on_attempt: Callable[[str], None] | None = None,
    progress: Callable[[], float] | None = None,
    hard_timeout: float = 0,
) -> Deferred:
    """
    Poll C{url} with C{probe} until it answers 200.

    @param progress: when the server last showed a sign of progress (a
        clock time); then C{timeout} is the longest it may show none, so a
        slow but busy start is not cut short.
    @param hard_timeout: the longest the whole start may take, progress or
        not (0: no cap).
    @return: a Deferred that fires with the seconds it took, fails with
        L{NotReady} when a timeout is reached, and stops polling when
        cancelled.
    """
    started = clock.seconds()
    state: dict = {"call": None, "probe": None, "last": "no answer yet"}

    def cancel(_: Deferred) -> None:
        if state["call"] is not None and state["call"].active():
            state["call"].cancel()
        if state["probe"] is not None:
            state["probe"].cancel()

    result = Deferred(cancel)

    def attempt() -> None:
        state["call"] = None
        probing = maybeDeferred(probe, url)
        state["probe"] = probing
        probing.addCallbacks(answered, failed)

    def answered(status: int) -> None:
        state["probe"] = None
        if result.called:
            return
        if status == 200:
            result.callback(clock.seconds() - started)
            return
        again(f"HTTP {status}")

    def failed(failure: Failure) -> None:
        state["probe"] = None
        if result.called:
            return
        again(describe_failure(failure))

    def again(why: str) -> None:
        state["last"] = why
        if on_attempt is not None:
            on_attempt(why)
        now = clock.seconds()
        elapsed = now - started
        quiet = now - max(started, progress()) if progress is not None else elapsed
        if hard_timeout and elapsed >= hard_timeout:
            result.errback(
                NotReady(f"not ready within the start timeout of {hard_timeout:g}s (last check of {url}: {why})")
            )
            return
        if quiet >= timeout:
            if progress is None:
                message = f"health check timed out after {timeout:g}s (last check of {url}: {why})"
            else:
                message = (
                    f"health check timed out after {timeout:g}s without a sign of progress "
                    f"(no output, no CPU time; last check of {url}: {why})"
                )
            result.errback(NotReady(message))
            return
        delay = min(next_interval(elapsed), max(0.0, timeout - quiet))
        if hard_timeout:
            delay = min(delay, max(0.0, hard_timeout - elapsed))
        state["call"] = clock.callLater(delay, attempt)

    state["call"] = clock.callLater(0, attempt)
    return result


class _Discard:
    def body_data(self, data: bytes) -> None:
        pass

    def body_done(self, complete: bool, reason: str) -> None:
        pass


def http_probe(client: UpstreamClient, reactor) -> Probe:
    """
    A probe that GETs the URL through C{client} (whose endpoints should
    have a short connect timeout) and reports the status code.
    """

    def probe(url: str) -> Deferred:
        requesting = client.exchange(b"GET", url.encode("utf-8"), [], None)

        def answered(result):
            connection, head = result
            connection.read_body(_Discard())  # the status is all we need
            return head.code

        requesting.addCallback(answered)
        requesting.addTimeout(PROBE_RESPONSE_TIMEOUT, reactor)
        return requesting

    return probe


def connect_probe(endpoints: UpstreamEndpoints, on_other_error: Callable[[str, str], None] | None = None) -> Probe:
    """
    A probe that only opens a TCP connection to the server (and closes it):
    200 once it is accepted.  A refused connection is the one failure that
    means "not listening yet"; any other error is not waited out -- the
    probe answers 200 too, and the request that follows meets the error.
    """

    def probe(url: str) -> Deferred:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        connecting = endpoints.endpoint("http", parts.hostname or "", port).connect(Factory.forProtocol(Protocol))

        def connected(protocol) -> int:
            protocol.transport.loseConnection()
            return 200

        def failed(failure):
            if failure.check(ConnectionRefusedError):
                return failure
            if on_other_error is not None:
                on_other_error(url, describe_failure(failure))
            return 200

        return connecting.addCallbacks(connected, failed)

    return probe
