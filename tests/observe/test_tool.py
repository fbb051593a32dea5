"""
Running nvidia-smi-like tools: their output, their failures, and a tool that
hangs killed after the timeout or at once when the run is cancelled --
never left running.
"""

from __future__ import annotations

import os
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.error import ProcessTerminated

from llamaswap.observe.tool import OUTPUT_LIMIT, ToolTimedOut, run_tool
from tests.helpers import sleep, wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest_twisted.inlineCallbacks
def test_output_of_a_tool_that_exits_cleanly():
    output = yield run_tool(sys.executable, ["-c", "print('0, GPU, 81920'); import sys; sys.stderr.write('noise')"])
    assert output == b"0, GPU, 81920\n"  # standard error is not mixed in


@pytest_twisted.inlineCallbacks
def test_a_failing_tool_fails():
    with pytest.raises(ProcessTerminated):
        yield run_tool(sys.executable, ["-c", "import sys; sys.exit(9)"])


@pytest_twisted.inlineCallbacks
def test_output_is_bounded():
    output = yield run_tool(sys.executable, ["-c", f"import sys; sys.stdout.write('x' * {OUTPUT_LIMIT * 3})"])
    assert len(output) == OUTPUT_LIMIT


def hanging(tmp_path, timeout: float):
    """
    Run a tool that writes its pid and then hangs; gives the run and the
    tool's pid once it is running (use with C{yield from}).
    """
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    running = run_tool(sys.executable, ["-c", script], timeout=timeout)
    yield from wait_until(lambda: marker.exists() and marker.read_text())
    return running, int(marker.read_text())


@pytest_twisted.inlineCallbacks
def test_a_hanging_tool_is_killed_and_reaped(tmp_path):
    running, pid = yield from hanging(tmp_path, timeout=1.0)
    assert alive(pid)
    with pytest.raises(ToolTimedOut, match="no answer in 1 s"):
        yield running
    yield from wait_until(lambda: not alive(pid))  # killed, and reaped (no zombie left)


@pytest_twisted.inlineCallbacks
def test_cancelling_a_run_kills_the_tool(tmp_path):
    running, pid = yield from hanging(tmp_path, timeout=60)
    assert alive(pid)
    running.cancel()
    with pytest.raises(CancelledError):
        yield running
    yield from wait_until(lambda: not alive(pid))
    yield sleep(0.1)  # the child's late exit changes nothing
