"""
The ProcessProtocol of a model server: its output goes, line by line, to the
upstream log, and its exit is reported with a readable description.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from llamaswap.observe.logs import ModelLog

MAX_LINE_BYTES = 16 * 1024
TAIL_LINES = 20


def describe_exit(reason: Failure) -> tuple[int | None, str]:
    """
    The exit code (or C{None} when killed by a signal) and a description
    such as "exited with code 1" or "was killed by signal 9".
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0, "exited with code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return None, f"was killed by signal {value.signal}"
        return value.exitCode, f"exited with code {value.exitCode}"
    return None, f"ended: {value}"


class UpstreamProcessProtocol(ProcessProtocol):
    """
    Relays a model server's stdout and stderr to a log monitor in whole
    lines (a partial line waits for its end, up to L{MAX_LINE_BYTES}) and
    remembers the last few lines to explain a failed start.
    """

    def __init__(self, monitor: ModelLog, on_exit: Callable[[Failure], None], clock: Callable[[], float] | None = None):
        self.monitor = monitor
        self.on_exit = on_exit
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = {1: b"", 2: b""}
        self._clock = clock
        self.last_output_at = 0.0  # when the last line came (a sign of progress)

    def connectionMade(self) -> None:
        # Like running with stdin from /dev/null: the server reads EOF.
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._received(1, data)

    def errReceived(self, data: bytes) -> None:
        self._received(2, data)

    def _received(self, fd: int, data: bytes) -> None:
        data = self._partial[fd] + data
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        if len(rest) > MAX_LINE_BYTES:
            complete, rest = complete + rest + b"\n", b""
        self._partial[fd] = rest
        if complete:
            self._emit(complete)

    def _emit(self, lines: bytes) -> None:
        for line in lines.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]:
            if line.strip():
                self.tail.append(line)
        if self._clock is not None:
            self.last_output_at = self._clock()
        self.monitor.write(lines)

    @property
    def last_line(self) -> str:
        return self.tail[-1].strip() if self.tail else ""

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._partial[fd] = b""
                self._emit(rest + b"\n")
        self.on_exit(reason)
