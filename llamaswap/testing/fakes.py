"""
In-memory stand-ins for unit tests: a reactor whose clock is a
L{task.Clock} and whose child processes are recorded instead of spawned,
and a health probe whose answers the test decides.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionRefusedError,
    ProcessDone,
    ProcessTerminated,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure


class FakeProcessTransport:
    """
    What C{spawnProcess} returns: records signals and stdin closing.
    """

    def __init__(self, reactor: FakeReactor, protocol, executable, args, env, pid):
        self.reactor = reactor
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.env = env
        self.pid = pid
        self.signals: list = []
        self.stdin_closed = False
        self.ended = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, number) -> None:
        self.signals.append(number)

    def output(self, data: bytes, fd: int = 1) -> None:
        """
        The child prints something.
        """
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        """
        The child ends and is reaped.
        """
        if self.ended:
            raise RuntimeError("process already ended")
        self.ended = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code if signal is None else None, signal))
        self.protocol.processEnded(reason)


class FakeReactor(Clock):
    """
    A clock that can "spawn" processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcessTransport] = []
        self._next_pid = 1000
        self.spawn_error: Exception | None = None
        # Called with each new process transport: lets a test run it.
        self.spawn_hook = None

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None, gid=None, usePTY=0, childFDs=None):
        if self.spawn_error is not None:
            raise self.spawn_error
        self._next_pid += 1
        transport = FakeProcessTransport(self, protocol, executable, list(args), env, self._next_pid)
        protocol.makeConnection(transport)
        self.spawned.append(transport)
        if self.spawn_hook is not None:
            self.spawn_hook(transport)
        return transport


class FakeKillpg:
    """
    Records C{os.killpg} calls; a test can make the "process group" exit on
    a given signal.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pid: int, number: int) -> None:
        self.calls.append((pid, number))

    def signals_for(self, pid: int) -> list[int]:
        return [number for target, number in self.calls if target == pid]


class ScriptedProbe:
    """
    A health probe answering what the test says: by default "connection
    refused" until L{ready} is set for a URL.
    """

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.statuses: dict[str, int] = {}
        self.calls: list[str] = []
        self.hang = False
        self.pending: list[Deferred] = []

    def __call__(self, url: str) -> Deferred:
        self.calls.append(url)
        if self.hang:
            waiting: Deferred = Deferred()
            self.pending.append(waiting)
            return waiting
        if url in self.ready:
            return succeed(200)
        if url in self.statuses:
            return succeed(self.statuses[url])
        return fail(ConnectionRefusedError("refused"))
