"""
The model manager: the set of model processes of the current configuration
and the scheduler that decides which of them run.  It is a Twisted service:
starting it preloads the configured models, stopping it stops every model
server (SIGTERM, then SIGKILL) before the reactor goes away.

It is also where a process's state changes go: first, as a plain call, to
the scheduler (which must see every one of them), then to the event bus for
the observers (UI, logs, metrics).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks

from llamaswap.config import Config, changed_models
from llamaswap.models.process import FAILED, READY, SHUTDOWN, STOPPED, ModelProcess
from llamaswap.models.readiness import Probes
from llamaswap.observe.events import (
    EventBus,
    ModelEvicted,
    ModelHealthChanged,
    ModelPreloaded,
    ProcessStateChanged,
    QueueChanged,
)
from llamaswap.observe.logs import Logs
from llamaswap.routing.scheduler import Lease, ModelFailed, Scheduler


class ModelManager(Service):
    name = "models"

    def __init__(
        self,
        config: Config,
        *,
        reactor,
        logs: Logs,
        bus: EventBus,
        probe: Probes,
        process_factory: Callable[..., ModelProcess] = ModelProcess,
    ):
        self.config = config
        self._reactor = reactor
        self._logs = logs
        self._bus = bus
        self._probe = probe
        self._process_factory = process_factory
        self.processes = {
            model_id: self._new_process(model_id) for model_id in sorted(config.models)
        }
        self.scheduler = Scheduler(
            config,
            self.processes,
            logs,
            on_evict=lambda model: bus.publish(ModelEvicted(model)),
            clock=reactor,
            on_queue=self._queue_changed,
        )
        self._preloading: Deferred | None = None
        self._queued: dict[str, int] = {}

    def _new_process(self, model_id: str, config: Config | None = None) -> ModelProcess:
        config = config or self.config
        return self._process_factory(
            config.models[model_id],
            reactor=self._reactor,
            logs=self._logs,
            probe=self._probe,
            on_state_change=self._state_changed,
        )

    def _queue_changed(self) -> None:
        """
        Tell watchers (the UI) when a model's queue grew or shrank.
        """
        if not self._bus.listening(QueueChanged):
            return
        queued = {model_id: count for model_id, count in self.scheduler.queued_by_model().items() if count}
        if queued != self._queued:
            self._queued = queued
            self._bus.publish(QueueChanged(queued))

    def _state_changed(self, process: ModelProcess, old: str, new: str) -> None:
        self.scheduler.process_changed(process, new)
        self._bus.publish(ProcessStateChanged(process.id, old, new))

    def reconfigure(self, config: Config) -> tuple[set[str], set[str], set[str]]:
        """
        Switch to a new configuration without disturbing what did not
        change: unchanged models keep their running server and their
        requests; removed and changed ones finish their requests and stop;
        changed and added ones start on demand with their new settings.

        @return: the (added, removed, changed) model ids.
        """
        added, removed, changed = changed_models(self.config, config)
        old = self.processes
        processes = {
            model_id: old[model_id] if model_id in old and model_id not in changed else self._new_process(model_id, config)
            for model_id in sorted(config.models)
        }
        for process in processes.values():
            process.health_check_timeout = config.health_check_timeout
        retiring = [old[model_id] for model_id in sorted(removed | changed)]
        self.config = config
        self.processes = processes
        self.scheduler.reconfigure(config, processes, retiring)
        for process in retiring:
            process.stop(graceful=True).addBoth(lambda _, process=process: self.scheduler.retired(process))
        fresh = [model_id for model_id in config.preload if model_id in added | changed]
        if fresh and self.running:
            self._preloading = self._preload(fresh)
        return added, removed, changed

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        if self.config.preload:
            self._preloading = self._preload(self.config.preload)

    @inlineCallbacks
    def _preload(self, models):
        for model_id in models:
            self._logs.proxy.info(f"preloading model: {model_id}")
            try:
                lease = yield self.use(model_id)
            except Exception as error:  # any failure is reported, never raised
                self._logs.proxy.error(f"failed to preload model {model_id}: {error}")
                self._bus.publish(ModelPreloaded(model_id, False))
                continue
            lease.release()
            self._bus.publish(ModelPreloaded(model_id, True))

    def stopService(self) -> Deferred:
        super().stopService()
        self.scheduler.close()
        if self._preloading is not None:
            self._preloading.cancel()
            self._preloading.addErrback(lambda _: None)
        running = [p for p in self.processes.values() if p.state != STOPPED]
        if running:
            self._logs.proxy.info(f"stopping {len(running)} model(s) before exiting")
        return DeferredList([process.shutdown() for process in self.processes.values()])

    # ------------------------------------------------------------ requests

    def use(self, model_id: str) -> Deferred:
        """
        Wait until C{model_id} may be used and its server is ready.

        @return: a Deferred firing with a L{Lease} to release when done;
            it fails with L{StartFailed} when the server cannot be started.
        @raise TooManyRequests: over the model's concurrency limit.
        @raise ShuttingDown: the service is stopping.
        """
        self._refuse_if_failed(model_id)
        admitted = self.scheduler.request(model_id)

        def start(lease: Lease) -> Deferred:
            def failed(failure):
                lease.release()
                return failure

            return lease.process.ensure_ready().addCallbacks(lambda _: lease, failed)

        return admitted.addCallback(start)

    def use_now(self, model_id: str) -> Lease | None:
        """
        A lease on a ready model at once, when nothing stands in the way
        (the common case); C{None} when L{use} must wait for it.
        """
        self._refuse_if_failed(model_id)
        return self.scheduler.admit_now(model_id)

    def _refuse_if_failed(self, model_id: str) -> None:
        supervisor = self.processes[model_id].supervisor
        wait = supervisor.refusal()
        if wait is not None:
            raise ModelFailed(
                f"model {model_id} failed to start {supervisor.failures} times in a row and is not tried again "
                f"for {wait}s: {supervisor.reason}",
                wait,
            )

    def state_shown(self, model_id: str) -> str:
        """
        The state the UI and /running show: C{failed} for a stopped model
        that is failed.
        """
        process = self.processes[model_id]
        if process.state == STOPPED and process.supervisor.failed:
            return FAILED
        return process.state

    def state_of(self, model_id: str) -> str:
        process = self.processes.get(model_id)
        return process.state if process is not None else STOPPED

    def states(self) -> dict[str, str]:
        return {model_id: process.state for model_id, process in self.processes.items()}

    def is_ready(self, model_id: str) -> bool:
        return self.processes[model_id].state == READY

    # ------------------------------------------------------------ control

    def unload_all(self) -> Deferred:
        self._logs.proxy.info("unloading all models")
        return DeferredList(self.scheduler.stop_all())

    def unload(self, model_id: str) -> Deferred:
        self._logs.proxy.info(f"<{model_id}> unloading on request")
        process = self.processes[model_id]
        if process.supervisor.failed:
            process.supervisor.reset()  # an operator's unload also clears a failed state
            self._bus.publish(ModelHealthChanged(model_id))
        else:
            process.supervisor.reset()
        return process.stop()

    def running_models(self) -> list[dict[str, Any]]:
        """
        Every model that is not stopped, or has requests queued, with what
        the newest llama-swap lists and how many requests are queued.
        """
        listed = []
        for model_id in sorted(self.processes):
            process = self.processes[model_id]
            queued = self.scheduler.queued(model_id)
            state = self.state_shown(model_id)
            if state in (STOPPED, SHUTDOWN) and not queued:
                continue
            model = process.config
            entry = {
                "model": model_id,
                "state": state,
                "cmd": model.cmd,
                "proxy": model.proxy,
                "ttl": model.ttl,
                "name": model.name,
                "description": model.description,
                "queued": queued,
            }
            if state == FAILED:
                entry["reason"] = process.supervisor.reason
            listed.append(entry)
        return listed

    def statuses(self) -> list[dict[str, Any]]:
        """
        Every model with its state, for the UI.
        """
        result = []
        for model_id in sorted(self.config.models):
            model = self.config.models[model_id]
            process = self.processes.get(model_id)
            result.append(
                {
                    "id": model_id,
                    "name": model.name,
                    "description": model.description,
                    "state": self.state_shown(model_id) if process is not None else "unknown",
                    "unlisted": model.unlisted,
                    "queued": self.scheduler.queued(model_id) if process is not None else 0,
                }
            )
            if result[-1]["state"] == FAILED:
                result[-1]["reason"] = process.supervisor.reason
        return result

