"""
ttl: a model whose server is ready and has had nothing to do for C{ttl}
seconds is unloaded, freeing its memory for the next model.

The clock only runs while the server is ready and no request is in flight;
every request that starts stops it, and the last one to finish starts it
again from zero.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class IdleTimer:
    """
    Calls C{on_idle} once the model has been idle for C{ttl} seconds
    (C{0}: never).
    """

    def __init__(self, clock: IReactorTime, ttl: float, on_idle: Callable[[], None]):
        self._clock = clock
        self.ttl = ttl
        self._on_idle = on_idle
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def update(self, ready: bool, inflight: int) -> None:
        """
        Restart the countdown if the model is ready and idle, otherwise
        stop it.
        """
        self.cancel()
        if self.ttl > 0 and ready and inflight == 0:
            self._call = self._clock.callLater(self.ttl, self._expired)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expired(self) -> None:
        self._call = None
        self._on_idle()
