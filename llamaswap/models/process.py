"""
One model server process: start, readiness, idle timeout, stop.

The lifecycle is an explicit state machine (the table is at the bottom of
L{ModelProcess}): C{stopped -> starting -> ready -> stopping -> stopped},
plus C{shutdown}, which is final.  Every transition is reported to the one
C{on_state_change} callback the owner gives (the model manager, which tells
the scheduler and then the observers).

A model process does not decide I{when} it runs -- that is the job of the
scheduler in L{llamaswap.routing.scheduler} -- but it counts the requests in
flight so that a graceful stop can wait for them and the idle timer
(L{llamaswap.models.ttl}) only runs while nothing is in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Callable, Mapping

from automat import MethodicalMachine
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from llamaswap.config import ModelConfig
from llamaswap.models import launcher
from llamaswap.models.readiness import NotReady, Probes, wait_until_ready
from llamaswap.models.supervisor import Supervisor
from llamaswap.models.ttl import IdleTimer
from llamaswap.observe.logs import Logs
from llamaswap.protocols.process import UpstreamProcessProtocol, describe_exit

StateCallback = Callable[["ModelProcess", str, str], None]

# CPU time a starting server's processes must use between two checks to
# count as progress (a sleeping server uses none).
CPU_PROGRESS_SECONDS = 0.02


def process_tree_cpu(pid: int) -> float | None:
    """
    CPU seconds used so far by a process and everything it started (read
    from /proc through psutil); C{None} when that cannot be read.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in (root, *root.children(recursive=True)):
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total
    except psutil.Error:
        return None

STOPPED = "stopped"
STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
SHUTDOWN = "shutdown"
# Not a state of the process: what is shown for a stopped model whose
# starts keep failing (see llamaswap.models.supervisor).
FAILED = "failed"


class StartFailed(Exception):
    """
    The model's server could not be brought to the ready state.
    """


class ProcessShutdown(StartFailed):
    """
    The service is shutting down; the model will not be started again.
    """


def launcher_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """
    Wrap a model's command in L{llamaswap.launcher} so the server dies with
    llamaswap and gets a process group of its own.
    """
    return [sys.executable, "-I", "-S", launcher.__file__, str(os.getpid()), "--", *argv]


class ModelProcess:
    """
    The server process of one model.

    @ivar state: one of stopped, starting, ready, stopping, shutdown.
    @ivar inflight: requests currently using this model.
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        config: ModelConfig,
        *,
        reactor,
        logs: Logs,
        probe: Probes,
        health_check_timeout: float | None = None,
        on_state_change: StateCallback | None = None,
        environ: Mapping[str, str] | None = None,
        killpg: Callable[[int, int], None] = os.killpg,
        wrap_command: Callable[[tuple[str, ...]], list[str]] = launcher_argv,
        cpu_time: Callable[[int], float | None] = process_tree_cpu,
    ):
        self.config = config
        self.id = config.id
        self.state = STOPPED
        self.inflight = 0
        self.pid: int | None = None
        self._reactor = reactor
        self._logs = logs
        self._probe = probe
        self.on_state_change = on_state_change
        if health_check_timeout is None:
            health_check_timeout = config.supervision.health_check_timeout
        self.health_check_timeout = health_check_timeout
        self._cpu_time = cpu_time
        self._cpu_seen = 0.0
        self._cpu_moved_at = 0.0
        self.supervisor = Supervisor(self.id, config.supervision, reactor, logs.proxy.warn)
        self._environ = os.environ if environ is None else environ
        self._killpg = killpg
        self._wrap_command = wrap_command
        self._transport = None
        self._protocol: UpstreamProcessProtocol | None = None
        self._readiness: Deferred | None = None
        self._start_waiters: list[Deferred] = []
        self._stop_waiters: list[Deferred] = []
        self._idle_waiters: list[Deferred] = []
        self._kill_call: IDelayedCall | None = None
        self._idle_timer = IdleTimer(reactor, config.ttl, self._ttl_expired)
        self._restart_requested = False
        self._shutdown_requested = False
        self._started_at = 0.0
        self.last_exit: str | None = None
        self.exits = 0  # how many times the server process ended
        self.last_line = ""  # the server's latest output line (kept after it exits)

    def __repr__(self) -> str:
        return f"<ModelProcess {self.id} {self.state} inflight={self.inflight}>"

    # ------------------------------------------------------------ public API

    def ensure_ready(self) -> Deferred:
        """
        Start the server if needed.

        @return: a Deferred that fires when the server is ready (at once if
            it already is) or fails with L{StartFailed}.  Every caller waits
            on the same start; cancelling only stops this caller's wait.
        """
        if self.state == READY:
            return succeed(None)
        waiter = Deferred(self._start_waiters.remove)
        self._start_waiters.append(waiter)
        self._request_start()
        return waiter

    def stop(self, graceful: bool = False) -> Deferred:
        """
        Stop the server: SIGTERM (or C{cmdStop}), then SIGKILL once the
        grace period is over.  A graceful stop first waits for the requests
        in flight to finish.

        @return: a Deferred that fires once the process has exited and been
            reaped (at once if it is not running).
        """
        if graceful and self.inflight:
            return self.when_idle().addCallback(lambda _: self.stop())
        waiter: Deferred = Deferred()
        self._stop_waiters.append(waiter)
        self._stop_requested()
        return waiter

    def shutdown(self) -> Deferred:
        """
        Stop for good: the process ends up in the final shutdown state and
        refuses to start again.
        """
        waiter: Deferred = Deferred()
        if self.state == SHUTDOWN:
            waiter.callback(None)
            return waiter
        self._stop_waiters.append(waiter)
        self._shutdown_requested_input()
        return waiter

    def acquire(self) -> None:
        """
        A request starts using this model.
        """
        self.inflight += 1
        self._idle_timer.cancel()

    def release(self) -> None:
        """
        A request is done with this model.
        """
        self.inflight -= 1
        if self.inflight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            self._arm_ttl()

    def when_idle(self) -> Deferred:
        if self.inflight == 0:
            return succeed(None)
        waiter: Deferred = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(waiter)
        return waiter

    # ------------------------------------------------------------ the machine

    @_machine.state(initial=True)
    def _stopped(self):
        "No server is running."

    @_machine.state()
    def _starting(self):
        "The server was spawned and is being polled for readiness."

    @_machine.state()
    def _ready(self):
        "The server answers requests."

    @_machine.state()
    def _stopping(self):
        "The server was asked to exit and has not been reaped yet."

    @_machine.state()
    def _shutdown(self):
        "Final: the service is shutting down."

    @_machine.input()
    def _request_start(self):
        "Somebody needs the server ready."

    @_machine.input()
    def _became_ready(self):
        "The health check answered 200."

    @_machine.input()
    def _start_failed(self, reason: str):
        "The server could not be spawned or did not become ready in time."

    @_machine.input()
    def _stop_requested(self):
        "Stop the server."

    @_machine.input()
    def _exited(self, description: str):
        "The server process ended and was reaped."

    @_machine.input()
    def _shutdown_requested_input(self):
        "The service is shutting down."

    # ------------------------------------------------------------ outputs

    def _enter(self, new: str) -> None:
        old, self.state = self.state, new
        self._logs.proxy.debug(f"<{self.id}> state {old} -> {new}")
        if self.on_state_change is not None:
            self.on_state_change(self, old, new)

    @_machine.output()
    def _enter_starting(self):
        self._enter(STARTING)

    @_machine.output()
    def _enter_ready(self):
        self._enter(READY)

    @_machine.output()
    def _enter_stopping(self):
        self._enter(STOPPING)

    @_machine.output()
    def _enter_stopped(self):
        self._enter(STOPPED)

    @_machine.output()
    def _enter_shutdown(self):
        self._enter(SHUTDOWN)

    @_machine.output()
    def _spawn(self):
        self._restart_requested = False
        argv = self.config.argv
        environment = self.config.environment(self._environ)
        if shutil.which(argv[0], path=environment.get("PATH", os.defpath)) is None:
            reason = (
                f"start() failed for command '{' '.join(argv)}': "
                f"'{argv[0]}' was not found or is not executable"
            )
            self._reactor.callLater(0, self._start_failed, reason)
            return
        command = self._wrap_command(argv)
        self._logs.proxy.info(
            f"<{self.id}> starting: {' '.join(argv)}"
            + (f" (env: {', '.join(self.config.env)})" if self.config.env else "")
        )
        self._protocol = UpstreamProcessProtocol(self._logs.for_model(self.id), self._process_ended, self._reactor.seconds)
        self._started_at = self._reactor.seconds()
        self._cpu_seen, self._cpu_moved_at = 0.0, self._started_at
        try:
            self._transport = self._reactor.spawnProcess(
                self._protocol,
                command[0],
                command,
                env=environment,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as error:
            self._protocol = None
            reason = f"start() failed for command '{' '.join(argv)}': {error}"
            self._reactor.callLater(0, self._start_failed, reason)
            return
        self.pid = self._transport.pid
        url = self.config.health_url
        probe = self._probe.http
        if url is None:
            # No health check: ready once it accepts connections.
            url, probe = self.config.proxy, self._probe.connect
        self._readiness = wait_until_ready(
            self._reactor,
            probe,
            url,
            self.health_check_timeout,
            on_attempt=lambda why: self._logs.proxy.debug(
                f"<{self.id}> not ready yet ({why}) on {url}"
            ),
            progress=self._last_progress,
            hard_timeout=self.config.supervision.start_timeout,
        )
        self._readiness.addCallbacks(self._readiness_passed, self._readiness_failed)

    def _last_progress(self) -> float:
        """
        When the starting server last showed a sign of life: a new line of
        output, or CPU time used by its process tree.
        """
        output = self._protocol.last_output_at if self._protocol is not None else 0.0
        if self.pid is not None:
            used = self._cpu_time(self.pid)
            if used is not None and used > self._cpu_seen + CPU_PROGRESS_SECONDS:
                self._cpu_seen = used
                self._cpu_moved_at = self._reactor.seconds()
        return max(output, self._cpu_moved_at)

    @property
    def loading_line(self) -> str:
        """
        The starting server's latest output line, for the loading messages.
        """
        return self._protocol.last_line if self._protocol is not None else ""

    def _readiness_passed(self, seconds: float) -> None:
        self._readiness = None
        check = (
            f"health check passed on {self.config.health_url}"
            if self.config.health_url
            else f"accepting connections on {self.config.proxy}"
        )
        self._logs.proxy.info(f"<{self.id}> ready after {self._reactor.seconds() - self._started_at:.2f}s ({check})")
        self._became_ready()

    def _readiness_failed(self, failure: Failure) -> None:
        self._readiness = None
        if failure.check(NotReady):
            self._start_failed(str(failure.value))
        # Cancelled: the process exited or a stop was requested meanwhile.

    def _cancel_readiness(self) -> None:
        if self._readiness is not None:
            readiness, self._readiness = self._readiness, None
            readiness.cancel()
            readiness.addErrback(lambda _: None)

    @_machine.output()
    def _stop_readiness(self):
        self._cancel_readiness()

    def _failure_reason(self, reason: str) -> str:
        line = self._protocol.last_line if self._protocol is not None else self.last_line
        return f"{reason}; last output: {line}" if line and line not in reason else reason

    @_machine.output()
    def _note_ready(self):
        self.supervisor.became_ready()

    @_machine.output()
    def _notify_ready(self):
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._arm_ttl()

    def _fail_start_waiters(self, error: StartFailed) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.errback(error)

    @_machine.output()
    def _notify_start_failed(self, reason: str):
        self._logs.proxy.error(f"<{self.id}> failed to start: {reason}")
        self.supervisor.start_failed(self._failure_reason(reason))
        self._fail_start_waiters(StartFailed(reason))

    @_machine.output()
    def _notify_exit_while_starting(self, description: str):
        tail = list(self._protocol.tail)[-10:] if self._protocol else []
        reason = f"upstream command {description} before it became ready"
        if tail:
            reason += "; last output:\n" + "\n".join(f"  {line}" for line in tail)
        self._logs.proxy.error(f"<{self.id}> {reason}")
        self._fail_start_waiters(StartFailed(reason))

    @_machine.output()
    def _count_exit_while_starting(self, description: str):
        # before the state change is told, so that watchers see "failed"
        self.supervisor.start_failed(self._failure_reason(f"upstream command {description} before it became ready"))

    @_machine.output()
    def _notify_start_aborted(self):
        error_type = ProcessShutdown if self._shutdown_requested else StartFailed
        why = "shutdown" if self._shutdown_requested else "a stop request"
        self._fail_start_waiters(error_type(f"health check interrupted due to {why}"))

    @_machine.output()
    def _refuse_start(self):
        self._fail_start_waiters(ProcessShutdown(f"model {self.id} is shutting down"))

    @_machine.output()
    def _note_restart(self):
        self._restart_requested = True

    @_machine.output()
    def _note_shutdown(self):
        self._shutdown_requested = True
        self._restart_requested = False

    @_machine.output()
    def _terminate(self):
        self._cancel_readiness()
        self._cancel_ttl()
        if self._transport is None or self.pid is None:
            # Spawning failed: nothing to stop, the exit is reported at once.
            self._reactor.callLater(0, self._exited, "was never started")
            return
        stop_argv = self.config.stop_argv(self.pid)
        if stop_argv:
            self._run_stop_command(stop_argv)
        else:
            self._logs.proxy.debug(f"<{self.id}> sending SIGTERM to {self.pid}")
            self._signal(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(self.config.stop_timeout, self._kill)

    def _run_stop_command(self, argv: list[str]) -> None:
        self._logs.proxy.info(f"<{self.id}> running stop command: {' '.join(argv)}")

        def stop_command_ended(reason: Failure) -> None:
            code, description = describe_exit(reason)
            if code != 0:
                self._logs.proxy.warn(f"<{self.id}> stop command {description}")

        protocol = UpstreamProcessProtocol(self._logs.for_model(self.id), stop_command_ended)
        try:
            self._reactor.spawnProcess(
                protocol,
                argv[0],
                argv,
                env=self.config.environment(self._environ),
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as error:
            self._logs.proxy.error(f"<{self.id}> cannot run stop command: {error}; sending SIGTERM")
            self._signal(signal.SIGTERM)

    def _kill(self) -> None:
        self._kill_call = None
        self._logs.proxy.warn(
            f"<{self.id}> still running {self.config.stop_timeout:g}s after the stop request; sending SIGKILL"
        )
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        if self.pid is None:
            return
        try:
            self._killpg(self.pid, number)
        except ProcessLookupError:
            pass
        except PermissionError:
            # Not a process group leader after all: signal the process.
            try:
                self._transport.signalProcess(number)
            except Exception:
                pass

    def _process_ended(self, reason: Failure) -> None:
        code, description = describe_exit(reason)
        self.last_exit = description
        self.exits += 1
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        # Anything the server left behind in its process group goes too.
        pid, self.pid = self.pid, None
        if pid is not None:
            try:
                self._killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._transport = None
        self._exited(description)

    @_machine.output()
    def _report_crash(self, description: str):
        tail = list(self._protocol.tail)[-5:] if self._protocol else []
        last = "; last output:\n" + "\n".join(f"  {line}" for line in tail) if tail else ""
        if self.supervisor.crashed(self._failure_reason(f"upstream {description} just after it became ready")):
            self._logs.proxy.error(
                f"<{self.id}> upstream {description} unexpectedly, right after becoming ready: "
                f"counted as a failed start{last}"
            )
        else:
            self._logs.proxy.warn(f"<{self.id}> upstream {description} unexpectedly; it will restart on the next request{last}")

    @_machine.output()
    def _report_stopped(self, description: str):
        self._logs.proxy.debug(f"<{self.id}> upstream {description}")

    @_machine.output()
    def _cleanup(self):
        self._cancel_ttl()
        if self._protocol is not None:
            self.last_line = self._protocol.last_line or self.last_line
        self._protocol = None

    @_machine.output()
    def _notify_stopped(self):
        if self._shutdown_requested and self.state != SHUTDOWN:
            return  # the waiters want the final state; it follows at once
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @_machine.output()
    def _continue_after_stop(self):
        # Last output of a transition: it may feed the machine again.
        if self._shutdown_requested:
            self._shutdown_requested_input()
        elif self._restart_requested:
            self._request_start()

    # ------------------------------------------------------------ ttl

    def _arm_ttl(self) -> None:
        self._idle_timer.update(self.state == READY, self.inflight)

    def _cancel_ttl(self) -> None:
        self._idle_timer.cancel()

    def _ttl_expired(self) -> None:
        self._logs.proxy.info(f"<{self.id}> unloading model: idle for its ttl of {self.config.ttl}s")
        self.stop()

    # ------------------------------------------------------------ transitions

    _stopped.upon(_request_start, enter=_starting, outputs=[_enter_starting, _spawn])
    _stopped.upon(_stop_requested, enter=_stopped, outputs=[_notify_stopped])
    _stopped.upon(_shutdown_requested_input, enter=_shutdown, outputs=[_enter_shutdown, _notify_stopped])
    # Late news from a start that already ended: nothing to do.
    _stopped.upon(_became_ready, enter=_stopped, outputs=[])
    _stopped.upon(_start_failed, enter=_stopped, outputs=[])

    _starting.upon(_request_start, enter=_starting, outputs=[])
    _starting.upon(_became_ready, enter=_ready, outputs=[_enter_ready, _note_ready, _notify_ready])
    _starting.upon(
        _start_failed,
        enter=_stopping,
        outputs=[_enter_stopping, _notify_start_failed, _terminate],
    )
    _starting.upon(
        _exited,
        enter=_stopped,
        outputs=[
            _stop_readiness,
            _count_exit_while_starting,
            _enter_stopped,
            _notify_exit_while_starting,
            _cleanup,
            _notify_stopped,
        ],
    )
    _starting.upon(
        _stop_requested, enter=_stopping, outputs=[_enter_stopping, _notify_start_aborted, _terminate]
    )
    _starting.upon(
        _shutdown_requested_input,
        enter=_stopping,
        outputs=[_note_shutdown, _enter_stopping, _notify_start_aborted, _terminate],
    )

    _ready.upon(_request_start, enter=_ready, outputs=[_notify_ready])
    _ready.upon(_stop_requested, enter=_stopping, outputs=[_enter_stopping, _terminate])
    _ready.upon(
        _exited,
        enter=_stopped,
        outputs=[_enter_stopped, _report_crash, _cleanup, _notify_stopped],
    )
    _ready.upon(
        _shutdown_requested_input, enter=_stopping, outputs=[_note_shutdown, _enter_stopping, _terminate]
    )

    _stopping.upon(_request_start, enter=_stopping, outputs=[_note_restart])
    _stopping.upon(_stop_requested, enter=_stopping, outputs=[])
    _stopping.upon(_became_ready, enter=_stopping, outputs=[])
    _stopping.upon(_start_failed, enter=_stopping, outputs=[])
    _stopping.upon(_shutdown_requested_input, enter=_stopping, outputs=[_note_shutdown, _refuse_start])
    _stopping.upon(
        _exited,
        enter=_stopped,
        outputs=[_enter_stopped, _report_stopped, _cleanup, _notify_stopped, _continue_after_stop],
    )

    _shutdown.upon(_request_start, enter=_shutdown, outputs=[_refuse_start])
    _shutdown.upon(_stop_requested, enter=_shutdown, outputs=[_notify_stopped])
    _shutdown.upon(_shutdown_requested_input, enter=_shutdown, outputs=[_notify_stopped])
    _shutdown.upon(_became_ready, enter=_shutdown, outputs=[])
    _shutdown.upon(_start_failed, enter=_shutdown, outputs=[])
