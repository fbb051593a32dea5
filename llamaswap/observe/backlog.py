"""
Work that must not hold up an answer: access-log lines and token metrics.

Anything done in the same turn as the end of a response -- formatting a
log line, parsing usage -- delays whatever else the reactor has to do in
that turn: the other answers under load, and this one's last bytes where
they wait for the reactor's next pass (TLS, a slow client; over plain TCP
they leave as they are written, see L{llamaswap.protocols.sending}).  Jobs
queued here run shortly after, in one batch.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

# Long enough that the reactor writes pending answers first (its timers run
# before its I/O, so a zero delay would not do), short enough that nobody
# notices a log line or a metric arriving late.
DELAY_SECONDS = 0.002


class Backlog:
    def __init__(self, clock: IReactorTime, delay: float = DELAY_SECONDS):
        self._clock = clock
        self._delay = delay
        self._jobs: list[Callable[[], None]] = []
        self._call: IDelayedCall | None = None

    def later(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        if self._call is None:
            self._call = self._clock.callLater(self._delay, self.run)

    def run(self) -> None:
        """
        Run every queued job now (also at shutdown, so nothing is lost).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                job()
            except Exception:
                log.failure("background job {job!r} failed", job=job)
