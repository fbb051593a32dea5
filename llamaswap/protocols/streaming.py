"""
Bounded, backpressure-aware streaming of server-generated data (log tails,
event streams) to one HTTP client.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

DEFAULT_BUFFER_BYTES = 256 * 1024


@implementer(IPushProducer)
class BoundedStream:
    """
    Write pieces of data to a request as they are produced.

    While the client's connection cannot take more (the transport paused
    us), pieces wait in a buffer of at most C{max_bytes}; beyond that the
    oldest are dropped, and once the client catches up it is told how many
    it missed with C{dropped_notice(count)}.  The publisher never waits.
    """

    def __init__(
        self,
        request: Request,
        max_bytes: int = DEFAULT_BUFFER_BYTES,
        dropped_notice: Callable[[int], bytes] | None = None,
        on_close: Callable[[], None] | None = None,
    ):
        self.request = request
        self.max_bytes = max_bytes
        self.dropped_notice = dropped_notice
        self.on_close = on_close
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self.dropped = 0
        self.paused = False
        self.closed = False
        # Fires once the stream is over; cancelling it ends the stream.
        self.done: Deferred = Deferred(lambda _: self._close(finish=False))
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)

    def send(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self.paused and not self._pending:
            self.request.write(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        while self._pending_bytes > self.max_bytes and len(self._pending) > 1:
            self._pending_bytes -= len(self._pending.popleft())
            self.dropped += 1

    @property
    def buffered_bytes(self) -> int:
        return self._pending_bytes

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.dropped and self.dropped_notice is not None and not self.closed:
            self.request.write(self.dropped_notice(self.dropped))
        self.dropped = 0
        while self._pending and not self.paused and not self.closed:
            data = self._pending.popleft()
            self._pending_bytes -= len(data)
            self.request.write(data)

    def stopProducing(self) -> None:
        self._close(finish=False)

    def close(self) -> None:
        """
        End the response (the server is shutting down or the stream is done).
        """
        self._close(finish=True)

    def _finished(self, result: object) -> None:
        # The client went away or the response ended.
        self._close(finish=False)

    def _close(self, finish: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._pending_bytes = 0
        if not self.request.gone:
            self.request.unregisterProducer()
            if finish and not self.request.finished:
                self.request.finish()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()
        if not self.done.called:
            self.done.callback(None)
