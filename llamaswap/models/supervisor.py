"""
Telling "broken" from "busy": consecutive failed starts of one model, and
the cool-down of a model marked failed.

A start fails when the server exits before it is ready, shows no sign of
progress for C{healthCheckTimeout}, or is not ready within C{startTimeout};
a ready server that dies within L{CRASH_LOOP_SECONDS} of becoming ready
counts too (a crash loop).  After C{maxStartFailures} of them in a row the
model is failed: its requests are refused at once (503 with Retry-After)
for C{failureCooldown} seconds, and nothing is spawned.  Then one request
may try again: failing doubles the cool-down (up to an hour), succeeding
makes the model normal again.  An unload of the model, a change of its
configuration (a new supervisor) or a start that lasts resets everything.
"""

from __future__ import annotations

import math
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from llamaswap.config.records import Supervision

CRASH_LOOP_SECONDS = 10.0
MAX_COOLDOWN = 3600.0


class Supervisor:
    def __init__(
        self,
        model_id: str,
        settings: Supervision,
        clock: IReactorTime,
        log: Callable[[str], None] | None = None,
    ):
        self.model_id = model_id
        self.settings = settings
        self._clock = clock
        self._log = log
        self.failures = 0
        self.reason = ""
        self.failed_until: float | None = None
        self.cooldown = settings.failure_cooldown
        self.ready_at: float | None = None
        self._confirm: IDelayedCall | None = None

    @property
    def failed(self) -> bool:
        return self.failed_until is not None

    def refusal(self) -> int | None:
        """
        Whole seconds left of the cool-down while the model is failed and
        must not be tried; C{None} when a start may be attempted.
        """
        if self.failed_until is None:
            return None
        left = self.failed_until - self._clock.seconds()
        return max(1, math.ceil(left)) if left > 0 else None

    def start_failed(self, reason: str) -> None:
        """
        A start (or a server that had just become ready) failed.
        """
        self._cancel_confirm()
        self.ready_at = None
        self.failures += 1
        self.reason = reason
        if self.failed_until is not None:
            self.cooldown = min(self.cooldown * 2, MAX_COOLDOWN)  # the retry after a cool-down failed too
        elif self.failures < self.settings.max_start_failures:
            return
        self.failed_until = self._clock.seconds() + self.cooldown
        if self._log is not None:
            self._log(
                f"<{self.model_id}> marked failed after {self.failures} failed start(s) in a row; "
                f"requests are refused for {self.cooldown:g}s"
            )

    def became_ready(self) -> None:
        """
        The server is ready; the start counts as a success once it has
        stayed up for L{CRASH_LOOP_SECONDS}.
        """
        self.ready_at = self._clock.seconds()
        self._cancel_confirm()
        if self.failures or self.failed_until is not None:
            self._confirm = self._clock.callLater(CRASH_LOOP_SECONDS, self.reset)

    def crashed(self, reason: str) -> bool:
        """
        The ready server exited on its own; return whether that counts as a
        failed start (it died within L{CRASH_LOOP_SECONDS} of being ready).
        """
        ready_at, self.ready_at = self.ready_at, None
        if ready_at is not None and self._clock.seconds() - ready_at < CRASH_LOOP_SECONDS:
            self.start_failed(reason)
            return True
        return False

    def reset(self) -> None:
        self._confirm = None
        self._cancel_confirm()
        self.failures = 0
        self.reason = ""
        self.failed_until = None
        self.cooldown = self.settings.failure_cooldown

    def _cancel_confirm(self) -> None:
        if self._confirm is not None and self._confirm.active():
            self._confirm.cancel()
        self._confirm = None
