"""
Running a short-lived tool (C{nvidia-smi}) for its output without trusting
it to finish: a tool that hangs -- a wedged GPU driver does that -- is
killed after a timeout, a cancelled run kills it at once, and the child is
always reaped.
"""

from __future__ import annotations

import os
from typing import Sequence

from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

# More than any tool we ask says; the rest is dropped.
OUTPUT_LIMIT = 1024 * 1024


class ToolTimedOut(Exception):
    """
    The tool did not finish in time and was killed.
    """


class _Output(ProcessProtocol):
    def __init__(self, finished: Deferred):
        self.finished = finished
        self.chunks: list[bytes] = []
        self.size = 0
        self.timer = None
        self.timed_out: float | None = None

    def outReceived(self, data: bytes) -> None:
        if self.size < OUTPUT_LIMIT:
            self.chunks.append(data[: OUTPUT_LIMIT - self.size])
            self.size += len(data)

    def kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.finished.called:  # cancelled
            return
        if self.timed_out is not None:
            self.finished.errback(ToolTimedOut(f"no answer in {self.timed_out:g} s"))
        elif reason.check(ProcessDone):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(reason)


def run_tool(executable: str, arguments: Sequence[str], timeout: float = 10.0, reactor=None) -> Deferred:
    """
    Run C{executable} with C{arguments}; a Deferred of its standard output
    when it exits with 0, failing otherwise (L{ToolTimedOut} when it took
    longer than C{timeout} seconds and was killed).
    """
    reactor = reactor if reactor is not None else default_reactor
    protocol = _Output(Deferred(lambda finished: protocol.kill()))
    reactor.spawnProcess(
        protocol, executable, [executable, *arguments], env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
    )
    protocol.transport.closeStdin()

    def expire() -> None:
        protocol.timed_out = timeout
        protocol.kill()

    protocol.timer = reactor.callLater(timeout, expire)
    return protocol.finished
