"""
Where a swap is decided.

Every request first asks the L{Scheduler} for a L{Lease} on its model.  The
scheduler admits it at once when nothing that conflicts with the model is
running (the conflicts come from the router: groups,
L{llamaswap.routing.groups}, or the matrix, L{llamaswap.routing.matrix});
otherwise the request waits while the conflicting models are drained --
they stop accepting new requests, finish the ones in flight, and are
stopped -- and is admitted as soon as they are gone.

Two policies decide the order:

  - C{swap-aware} (the default) wastes no loads: while a model is loaded,
    its requests keep being admitted as long as the oldest request of a
    conflicting model has waited less than C{maxWait}; then the loaded
    model takes no new requests, drains and stops, and the other model's
    whole queue is served as one batch.  The next model to swap to is the
    one with the highest priority, then the oldest waiting request.
    C{maxQueue} and C{queueTimeout} bound the queue.
  - C{fifo} serves requests in arrival order (priority first), as the
    newest llama-swap does: a swap for nearly every request when two
    clients alternate between two models.

Because admission and draining are decided in one place, on the reactor
thread, a request can never reach a model that is being swapped out, and a
model is never stopped under a request that was admitted to it.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Iterable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

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

# What Retry-After assumes before a model's load and answer times are known.
DEFAULT_LOAD_SECONDS = 10.0
DEFAULT_ANSWER_SECONDS = 2.0


class Refused(Exception):
    """
    Admission said no; C{retry_after} is when trying again makes sense, in
    whole seconds (at least one), estimated from the queue and the model's
    measured load and answer times.
    """

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(Refused):
    """
    The model already has as many requests as its concurrencyLimit allows.
    """

    status = 429
    code = "concurrency_limit"


class ModelFailed(Refused):
    """
    The model failed to start too many times in a row and is cooling down.
    """

    code = "model_failed"


class QueueFull(Refused):
    """
    As many requests wait for the model as C{maxQueue} allows.
    """

    code = "queue_full"


class QueueTimeout(Refused):
    """
    The request waited C{queueTimeout} seconds without being admitted.
    """

    code = "queue_timeout"


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
        self.granted = scheduler.now() if process.state == READY else None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.process.release()
            self._scheduler.released(self)


def swapper_for(config: Config, log=None) -> GroupSwapper | MatrixSwapper:
    """
    What decides swaps under the configured router.
    """
    if config.router == "matrix":
        return MatrixSwapper(config, log)
    return GroupSwapper(config)


class _Waiter:
    def __init__(self, model_id: str, sequence: int, arrived: float):
        self.model_id = model_id
        self.sequence = sequence
        self.arrived = arrived
        self.deferred: Deferred = Deferred(self._cancelled)
        self.scheduler: Scheduler | None = None
        self.timeout: IDelayedCall | None = None

    def _cancelled(self, _: Deferred) -> None:
        if self.scheduler is not None:
            self.scheduler._forget(self)


class Scheduler:
    """
    Admits requests to models and drains conflicting models first.

    @param clock: times the queue (C{maxWait}, C{queueTimeout}) and
        measures loads and answers for the C{Retry-After} estimates.
    @param on_queue: told when the number of requests queued for a model
        may have changed (so that watchers can be updated).
    """

    def __init__(
        self,
        config: Config,
        processes: dict[str, ModelProcess],
        logs: Logs,
        on_evict: Callable[[str], None] | None = None,
        clock: IReactorTime | None = None,
        on_queue: Callable[[], None] | None = None,
    ):
        self.processes = processes
        self._on_evict = on_evict
        self._on_queue = on_queue
        self._logs = logs
        self._clock = clock
        self._configure(config)
        self._arrivals = 0
        self._queue: deque[_Waiter] = deque()
        self._waiting: dict[str, int] = {}
        self._draining: set[str] = set()
        # Processes of an earlier configuration, finishing their requests.
        self._retiring: list[ModelProcess] = []
        self._closed = False
        self._pumping = False
        self._again = False
        self._wake: IDelayedCall | None = None
        # what Retry-After is estimated from: seconds per load, per answer
        self._load_seconds: dict[str, float] = {}
        self._answer_seconds: dict[str, float] = {}
        self._starting_since: dict[str, float] = {}

    def _configure(self, config: Config) -> None:
        self._swapper = swapper_for(config, self._logs.proxy)
        self._priority = dict(config.priority)
        self._swap_aware = config.scheduler == "swap-aware"
        self._limits = config.queue

    def now(self) -> float:
        return self._clock.seconds() if self._clock is not None else 0.0

    def close(self) -> None:
        """
        Refuse new requests and fail the waiting ones (service shutdown).
        """
        self._closed = True
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        waiting, self._queue = self._queue, deque()
        self._waiting.clear()
        for waiter in waiting:
            self._unqueued(waiter)
            waiter.deferred.errback(ShuttingDown("llamaswap is shutting down"))

    # ------------------------------------------------------------ asking

    def request(self, model_id: str) -> Deferred:
        """
        Ask to use C{model_id}.

        @return: a Deferred firing with a L{Lease} once the model may be used
            (cancel it if the client goes away while waiting); it fails with
            L{QueueTimeout} after C{queueTimeout}.
        @raise TooManyRequests: at once, when the model's concurrency limit
            is reached.
        @raise QueueFull: at once, when C{maxQueue} requests already wait.
        @raise ShuttingDown: when the service is stopping.
        """
        if self._closed:
            raise ShuttingDown("llamaswap is shutting down")
        process = self.processes[model_id]
        waiting = self._waiting.get(model_id, 0)
        if process.inflight + waiting >= process.config.max_concurrency:
            raise TooManyRequests(f"Too many requests for model {model_id}", self.retry_after(model_id))
        limits = self._limits
        if self._swap_aware and limits.max_queue and self.queued(model_id) >= limits.max_queue:
            raise QueueFull(
                f"too many requests are queued for model {model_id} ({limits.max_queue}, routing.scheduler maxQueue)",
                self.retry_after(model_id),
            )
        self._arrivals += 1
        waiter = _Waiter(model_id, self._arrivals, self.now())
        waiter.scheduler = self
        if self._swap_aware and limits.queue_timeout and self._clock is not None:
            waiter.timeout = self._clock.callLater(limits.queue_timeout, self._timed_out, waiter)
        self._queue.append(waiter)
        self._waiting[model_id] = waiting + 1
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
            raise TooManyRequests(f"Too many requests for model {model_id}", self.retry_after(model_id))
        if self._swapper.blocked_now(model_id, self._active):
            return None
        process.acquire()
        return Lease(self, process)

    def released(self, lease: Lease | None = None) -> None:
        """
        A lease was released: that can only matter to waiting requests, to
        a model being drained, or to a retiring process.
        """
        if lease is not None and lease.granted is not None:
            model_id = lease.process.id
            took = self.now() - lease.granted
            before = self._answer_seconds.get(model_id)
            self._answer_seconds[model_id] = took if before is None else 0.8 * before + 0.2 * took
        if self._queue or self._draining or self._retiring:
            self._pump()

    # ------------------------------------------------------------ the queue

    def queued(self, model_id: str) -> int:
        """
        Requests for C{model_id} not yet sent to its server: waiting for
        their turn, or admitted and waiting for the model to load.
        """
        process = self.processes.get(model_id)
        loading = process.inflight if process is not None and process.state != READY else 0
        return self._waiting.get(model_id, 0) + loading

    def queued_by_model(self) -> dict[str, int]:
        return {model_id: self.queued(model_id) for model_id in self.processes}

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def retry_after(self, model_id: str) -> int:
        """
        Whole seconds (at least one) until a request for C{model_id} could
        be served, from what is ahead of it and how long the model took to
        load and to answer lately.
        """
        process = self.processes[model_id]
        load = 0.0 if process.state == READY else self._load_seconds.get(model_id, DEFAULT_LOAD_SECONDS)
        answer = self._answer_seconds.get(model_id, DEFAULT_ANSWER_SECONDS)
        ahead = self._waiting.get(model_id, 0) + process.inflight  # everything not yet answered
        rounds = math.ceil(ahead / max(1, process.config.max_concurrency))
        return max(1, math.ceil(load + rounds * answer))

    def _unqueued(self, waiter: _Waiter) -> None:
        waiter.scheduler = None
        if waiter.timeout is not None and waiter.timeout.active():
            waiter.timeout.cancel()
        waiter.timeout = None

    def _remove(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self._waiting[waiter.model_id] -= 1
        self._unqueued(waiter)

    def _forget(self, waiter: _Waiter) -> None:
        try:
            self._remove(waiter)
        except ValueError:
            return
        self._pump()

    def _timed_out(self, waiter: _Waiter) -> None:
        waiter.timeout = None
        if waiter.scheduler is None:
            return
        self._remove(waiter)
        waited = self.now() - waiter.arrived
        waiter.deferred.errback(
            QueueTimeout(
                f"the request for model {waiter.model_id} waited {waited:.0f}s without its turn "
                "(routing.scheduler queueTimeout)",
                self.retry_after(waiter.model_id),
            )
        )
        self._pump()

    # ------------------------------------------------------------ changes

    def reconfigure(self, config: Config, processes: dict[str, ModelProcess], retiring: list[ModelProcess]) -> None:
        """
        Switch to a new configuration.  C{retiring} processes (of removed or
        changed models) take no new requests; until they have stopped, a
        model with the same id or port is not started.
        """
        self.processes = processes
        self._configure(config)
        self._retiring.extend(retiring)
        for waiter in list(self._queue):
            if waiter.model_id not in processes:
                self._remove(waiter)
                waiter.deferred.errback(StartFailed(f"model {waiter.model_id} was removed from the configuration"))
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

    def process_changed(self, process: ModelProcess, new_state: str) -> None:
        """
        A model process (current or retiring) changed state.  Only one that
        stopped (or is stopping) can unblock a waiting request.
        """
        if new_state == STARTING:
            self._starting_since[process.id] = self.now()
        elif new_state == READY and process.id in self._starting_since:
            self._load_seconds[process.id] = self.now() - self._starting_since.pop(process.id)
        if new_state not in (STARTING, READY):
            self._starting_since.pop(process.id, None)
            self._pump()
        elif self._on_queue is not None and self._waiting.get(process.id) is not None:
            self._on_queue()  # its queue moves from "loading" to served

    def _active(self, model_id: str) -> bool:
        process = self.processes[model_id]
        return process.inflight > 0 or process.state in (STARTING, READY, STOPPING)

    # ------------------------------------------------------------ deciding

    def _pump(self) -> None:
        """
        Admit every waiting request that can run now and drain whatever
        stands in the way of the others.

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
                admitted, drain = self._decide_swap_aware() if self._swap_aware else self._decide_fifo()
                self._apply(admitted, drain)
        finally:
            self._pumping = False
        if self._on_queue is not None:
            self._on_queue()

    def _apply(self, admitted: list[_Waiter], drain: set[str]) -> None:
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
        leases = []
        for waiter in admitted:
            process = self.processes[waiter.model_id]
            leases.append((waiter, Lease(self, process)))
        for waiter, lease in leases:
            waiter.deferred.callback(lease)

    def _admit(self, waiter: _Waiter, admitted: list[_Waiter]) -> None:
        self._remove(waiter)
        self.processes[waiter.model_id].acquire()  # from here on the model counts as active
        admitted.append(waiter)

    def _ordered(self) -> list[_Waiter]:
        """
        The waiting requests in the order they are served: higher priority
        first, then first come first served.
        """
        if not self._priority:
            return list(self._queue)
        return sorted(self._queue, key=lambda waiter: (-self._priority.get(waiter.model_id, 0), waiter.sequence))

    # fifo

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

    def _decide_fifo(self) -> tuple[list[_Waiter], set[str]]:
        pending: list[str] = []  # models that earlier requests wait for
        drain: set[str] = set()
        admitted: list[_Waiter] = []
        # Requests for one model decide alike until something is admitted.
        decided: dict[str, set[str] | None] = {}
        for waiter in self._ordered():
            model_id = waiter.model_id
            if model_id not in decided:
                decided[model_id] = self._blockers(model_id, pending, drain)
            blockers = decided[model_id]
            if blockers is None:
                self._admit(waiter, admitted)
                decided.clear()
                continue
            if model_id not in pending:
                pending.append(model_id)
            drain |= blockers
        return admitted, drain

    # swap-aware

    def _decide_swap_aware(self) -> tuple[list[_Waiter], set[str]]:
        """
        Batch by model: the loaded models keep their requests flowing until
        a conflicting model's oldest request has waited C{maxWait} (or they
        have nothing left to do); then they drain, and the model chosen
        next -- highest priority, then oldest request -- gets its whole
        queue admitted at once.
        """
        queues: dict[str, list[_Waiter]] = {}
        for waiter in self._queue:
            queues.setdefault(waiter.model_id, []).append(waiter)
        order = sorted(queues, key=lambda model_id: (-self._priority.get(model_id, 0), queues[model_id][0].sequence))
        active = {model_id for model_id in self.processes if self._active(model_id)}
        now = self.now()
        # The model to swap to next: the first in order that running models block.
        drain: set[str] = set()
        wake_at = None
        for model_id in order:
            blockers = self._swapper.evictions(model_id, [other for other in active if other != model_id])
            if not blockers:
                continue
            oldest = queues[model_id][0]
            aged = now - oldest.arrived >= self._limits.max_wait
            idle = all(not self.processes[other].inflight and other not in queues for other in blockers)
            if aged or idle or blockers & self._draining:
                drain = set(blockers)  # once closing, a model stays closed until it stopped
            else:
                wake_at = oldest.arrived + self._limits.max_wait
            break
        self._wake_at(wake_at)
        admitted: list[_Waiter] = []
        for index, model_id in enumerate(order):
            if model_id in drain:
                continue  # closing: its requests wait for its next turn
            others = [other for other in active if other != model_id]
            if self._swapper.evictions(model_id, others):
                continue
            if self._retiring and self._held_by_retiring(model_id):
                continue
            if model_id not in active and any(
                model_id in self._swapper.evictions(earlier, [*others, model_id]) for earlier in order[:index]
            ):
                continue  # starting it would stand in the way of a model served before it
            for waiter in queues[model_id]:
                self._admit(waiter, admitted)
            active.add(model_id)
        return admitted, drain

    def _wake_at(self, when: float | None) -> None:
        """
        Decide again at C{when} (when the oldest request held back for a
        batch reaches C{maxWait}).
        """
        if self._wake is not None and self._wake.active():
            if when is not None and abs(self._wake.getTime() - when) < 1e-9:
                return
            self._wake.cancel()
        self._wake = None
        if when is not None and self._clock is not None:
            self._wake = self._clock.callLater(max(0.0, when - self.now()), self._pump)

    def is_draining(self, model_id: str) -> bool:
        return model_id in self._draining

    def stop_all(self, models: Iterable[str] | None = None) -> list[Deferred]:
        """
        Stop the given (or all) models right away, in-flight requests or not.
        """
        ids = self.processes if models is None else models
        return [self.processes[model_id].stop() for model_id in ids]
