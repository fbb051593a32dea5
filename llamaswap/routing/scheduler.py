"""
Where a swap is decided.

Every request first asks the L{Scheduler} for a L{Lease} on its model.  The
scheduler admits it at once when nothing that conflicts with the model is
running (the conflicts come from the groups, L{llamaswap.routing.groups});
otherwise the request waits in a first-come-first-served queue while the
conflicting models are drained -- they stop accepting new requests, finish
the ones in flight, and are stopped -- and is admitted as soon as they are
gone.

Because admission and draining are decided in one place, on the reactor
thread, a request can never reach a model that is being swapped out, and a
model is never stopped under a request that was admitted to it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from llamaswap.config import Config, ModelConfig
from llamaswap.models.process import (
    READY,
    STARTING,
    STOPPING,
    ModelProcess,
    StartFailed,
)
from llamaswap.observe.logs import Logs
from llamaswap.routing.groups import GroupSwapper
from llamaswap.routing.matrix import MatrixSwapper


class TooManyRequests(Exception):
    """
    The model already has as many requests as its concurrencyLimit allows.
    """


class ShuttingDown(Exception):
    """
    The service is stopping and takes no new requests.
    """


def _port(model: ModelConfig) -> tuple[str, int]:
    parts = urlsplit(model.proxy)
    return (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


class Lease:
    """
    One request's permission to use a model; release it when the response
    is over (releasing twice is harmless).
    """

    def __init__(self, scheduler: Scheduler, process: ModelProcess):
        self._scheduler = scheduler
        self.process = process
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.process.release()
            self._scheduler.released()


def swapper_for(config: Config, log=None) -> GroupSwapper | MatrixSwapper:
    """
    What decides swaps under the configured router.
    """
    if config.router == "matrix":
        return MatrixSwapper(config, log)
    return GroupSwapper(config)


class _Waiter:
    def __init__(self, model_id: str, sequence: int):
        self.model_id = model_id
        self.sequence = sequence
        self.deferred: Deferred = Deferred(self._cancelled)
        self.scheduler: Scheduler | None = None

    def _cancelled(self, _: Deferred) -> None:
        if self.scheduler is not None:
            self.scheduler._forget(self)


class Scheduler:
    """
    Admits requests to models and drains conflicting models first.
    """

    def __init__(
        self,
        config: Config,
        processes: dict[str, ModelProcess],
        logs: Logs,
        on_evict: Callable[[str], None] | None = None,
    ):
        self.processes = processes
        self._on_evict = on_evict
        self._logs = logs
        self._swapper = swapper_for(config, logs.proxy)
        self._priority = dict(config.priority)
        self._arrivals = 0
        self._queue: deque[_Waiter] = deque()
        self._draining: set[str] = set()
        # Processes of an earlier configuration, finishing their requests.
        self._retiring: list[ModelProcess] = []
        self._closed = False
        self._pumping = False
        self._again = False

    def close(self) -> None:
        """
        Refuse new requests and fail the waiting ones (service shutdown).
        """
        self._closed = True
        waiting, self._queue = self._queue, deque()
        for waiter in waiting:
            waiter.scheduler = None
            waiter.deferred.errback(ShuttingDown("llamaswap is shutting down"))

    def request(self, model_id: str) -> Deferred:
        """
        Ask to use C{model_id}.

        @return: a Deferred firing with a L{Lease} once the model may be used
            (cancel it if the client goes away while waiting).
        @raise TooManyRequests: at once, when the model's concurrency limit
            is reached.
        @raise ShuttingDown: when the service is stopping.
        """
        if self._closed:
            raise ShuttingDown("llamaswap is shutting down")
        process = self.processes[model_id]
        waiting = sum(1 for waiter in self._queue if waiter.model_id == model_id)
        if process.inflight + waiting >= process.config.max_concurrency:
            raise TooManyRequests(f"Too many requests for model {model_id}")
        self._arrivals += 1
        waiter = _Waiter(model_id, self._arrivals)
        waiter.scheduler = self
        self._queue.append(waiter)
        self._pump()
        return waiter.deferred

    def admit_now(self, model_id: str) -> Lease | None:
        """
        The fast path of L{request}, for the common case of a ready model
        with nobody waiting and nothing being swapped: a lease at once,
        decided in constant time.  C{None} when the full path has to decide.

        @raise TooManyRequests: at the model's concurrency limit.
        @raise ShuttingDown: when the service is stopping.
        """
        if self._closed:
            raise ShuttingDown("llamaswap is shutting down")
        process = self.processes[model_id]
        if process.state != READY or self._queue or self._draining or self._retiring:
            return None
        if process.inflight >= process.config.max_concurrency:
            raise TooManyRequests(f"Too many requests for model {model_id}")
        if self._swapper.blocked_now(model_id, self._active):
            return None
        process.acquire()
        return Lease(self, process)

    def released(self) -> None:
        """
        A lease was released: that can only matter to waiting requests, to
        a model being drained, or to a retiring process.
        """
        if self._queue or self._draining or self._retiring:
            self._pump()

    def reconfigure(self, config: Config, processes: dict[str, ModelProcess], retiring: list[ModelProcess]) -> None:
        """
        Switch to a new configuration.  C{retiring} processes (of removed or
        changed models) take no new requests; until they have stopped, a
        model with the same id or port is not started.
        """
        self.processes = processes
        self._swapper = swapper_for(config, self._logs.proxy)
        self._priority = dict(config.priority)
        self._retiring.extend(retiring)
        for waiter in list(self._queue):
            if waiter.model_id not in processes:
                self._queue.remove(waiter)
                waiter.scheduler = None
                waiter.deferred.errback(
                    StartFailed(f"model {waiter.model_id} was removed from the configuration")
                )
        self._pump()

    def retired(self, process: ModelProcess) -> None:
        """
        A retiring process has stopped for good.
        """
        if process in self._retiring:
            self._retiring.remove(process)
        self._pump()

    def _held_by_retiring(self, model_id: str) -> bool:
        address = _port(self.processes[model_id].config)
        for old in self._retiring:
            if old.state not in (STARTING, READY, STOPPING) and not old.inflight:
                continue
            if old.id == model_id or _port(old.config) == address:
                return True
        return False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _forget(self, waiter: _Waiter) -> None:
        waiter.scheduler = None
        try:
            self._queue.remove(waiter)
        except ValueError:
            return
        self._pump()

    def process_changed(self, process: ModelProcess, new_state: str) -> None:
        """
        A model process (current or retiring) changed state.  Only one that
        stopped (or is stopping) can unblock a waiting request.
        """
        if new_state not in (STARTING, READY):
            self._pump()

    def _active(self, model_id: str) -> bool:
        process = self.processes[model_id]
        return process.inflight > 0 or process.state in (STARTING, READY, STOPPING)

    def _pump(self) -> None:
        """
        Admit every waiting request that can run now, in arrival order, and
        drain whatever stands in the way of the others.

        Admitting or stopping can call back into the scheduler; such nested
        calls only ask for another round, so every decision is made on a
        consistent view.
        """
        if self._closed:
            return
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again and not self._closed:
                self._again = False
                self._pump_once()
        finally:
            self._pumping = False

    def _blockers(self, model_id: str, pending: list[str], drain: set[str]) -> set[str] | None:
        """
        C{None} when a request for C{model_id} can be admitted now; else the
        running models that must go first (maybe none: it may only have to
        wait for a retiring process, or behind an earlier request).
        """
        active = [other for other in self.processes if other != model_id and self._active(other)]
        blockers = self._swapper.evictions(model_id, active)
        if blockers:
            return blockers
        if self._retiring and self._held_by_retiring(model_id):
            return set()
        if model_id in pending or model_id in drain:
            return set()
        for earlier in pending:
            # Not in the way of a request that came (or ranks) first.
            if model_id in self._swapper.evictions(earlier, [*active, model_id]):
                return set()
        return None

    def _ordered(self) -> list[_Waiter]:
        """
        The waiting requests in the order they are served: higher priority
        first, then first come first served.
        """
        if not self._priority:
            return list(self._queue)
        return sorted(self._queue, key=lambda waiter: (-self._priority.get(waiter.model_id, 0), waiter.sequence))

    def _pump_once(self) -> None:
        pending: list[str] = []  # models that earlier requests wait for
        drain: set[str] = set()
        admitted: list[tuple[_Waiter, ModelProcess]] = []
        # Requests for one model decide alike until something is admitted.
        decided: dict[str, set[str] | None] = {}
        for waiter in self._ordered():
            model_id = waiter.model_id
            if model_id not in decided:
                decided[model_id] = self._blockers(model_id, pending, drain)
            blockers = decided[model_id]
            if blockers is None:
                self._queue.remove(waiter)
                waiter.scheduler = None
                process = self.processes[model_id]
                process.acquire()  # from here on the model counts as active
                admitted.append((waiter, process))
                decided.clear()
                continue
            if model_id not in pending:
                pending.append(model_id)
            drain |= blockers
        for model_id in sorted(drain - self._draining):
            self._logs.proxy.debug(f"<{model_id}> draining: another model needs the machine")
        self._draining = drain
        for model_id in sorted(drain):
            process = self.processes[model_id]
            if process.inflight == 0 and process.state in (STARTING, READY):
                self._logs.proxy.info(f"<{model_id}> stopping to make room for another model")
                process.stop()
                if self._on_evict is not None:
                    self._on_evict(model_id)
        for waiter, process in admitted:
            waiter.deferred.callback(Lease(self, process))

    def is_draining(self, model_id: str) -> bool:
        return model_id in self._draining

    def stop_all(self, models: Iterable[str] | None = None) -> list[Deferred]:
        """
        Stop the given (or all) models right away, in-flight requests or not.
        """
        ids = self.processes if models is None else models
        return [self.processes[model_id].stop() for model_id in ids]
