"""
The model process lifecycle, driven entirely by a fake clock and fake
child processes.
"""

import signal
import sys

import pytest
from automat import NoTransition
from twisted.internet.defer import CancelledError

from llamaswap.models.process import ProcessShutdown, StartFailed, launcher_argv
from llamaswap.models.readiness import next_interval
from tests.helpers import ProcessHarness

CONFIG = """
healthCheckTimeout: 20
models:
  m1:
    cmd: sleep --port ${PORT}
    env: ["EXTRA=1"]
  ttl:
    cmd: sleep --port ${PORT}
    ttl: 30
  stopcmd:
    cmd: sleep --port ${PORT}
    cmdStop: kill -TERM ${PID}
    stopTimeout: 2
  nocheck:
    cmd: sleep --port ${PORT}
    checkEndpoint: none
  missing:
    cmd: /nonexistent/server --port ${PORT}
"""


@pytest.fixture
def harness():
    return ProcessHarness(CONFIG)


def results(deferred):
    outcome = []
    deferred.addBoth(outcome.append)
    return outcome


def start_and_ready(harness, model_id="m1"):
    harness.make_ready(model_id)
    ready = results(harness.processes[model_id].ensure_ready())
    harness.reactor.advance(0)
    assert ready == [None]
    return harness.processes[model_id]


def test_start_spawns_through_the_launcher_with_environment(harness):
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    assert process.state == "starting"
    transport = harness.transport("m1")
    assert transport.args == launcher_argv(("sleep", "--port", process.config.proxy.rsplit(":", 1)[1]))
    assert transport.args[:3] == [sys.executable, "-I", "-S"]
    assert transport.env["EXTRA"] == "1"
    assert transport.env["HOME"] == "/root"  # inherited
    assert transport.stdin_closed
    assert waiting == []
    harness.make_ready("m1")
    harness.reactor.advance(0.02)
    assert waiting == [None]
    assert process.state == "ready"
    assert harness.transitions("m1") == ["starting", "ready"]


def test_concurrent_starts_share_one_spawn(harness):
    process = harness.processes["m1"]
    first, second = results(process.ensure_ready()), results(process.ensure_ready())
    assert len(harness.reactor.spawned) == 1
    harness.make_ready("m1")
    harness.reactor.advance(0.05)
    assert first == second == [None]
    assert len(harness.reactor.spawned) == 1
    assert results(process.ensure_ready()) == [None]  # already ready: immediate


def test_readiness_is_noticed_quickly(harness):
    """
    A server ready 300 ms after spawn is noticed within 100 ms (the
    original needs 5.25 s).
    """
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    harness.reactor.advance(0.3)
    harness.make_ready("m1")
    elapsed = 0.3
    while not waiting:
        harness.reactor.advance(0.005)
        elapsed += 0.005
    assert elapsed - 0.3 <= 0.1
    assert process.state == "ready"


def test_poll_interval_backs_off_to_one_second():
    assert next_interval(0) == 0.02
    assert next_interval(1.0) == 0.05
    assert next_interval(2.0) == pytest.approx(0.1)
    assert next_interval(60) == 1.0


def test_probe_is_polled_until_200(harness):
    process = harness.processes["m1"]
    url = process.config.health_url
    harness.probe.statuses[url] = 503  # llama-server while loading
    waiting = results(process.ensure_ready())
    harness.reactor.pump([0.05] * 20)
    assert waiting == []
    assert len(harness.probe.calls) > 5
    harness.probe.statuses.pop(url)
    harness.make_ready("m1")
    harness.reactor.pump([0.1] * 3)
    assert waiting == [None]


def test_health_check_timeout_fails_start_and_kills(harness):
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    harness.reactor.pump([0.5] * 41)
    assert len(waiting) == 1
    error = waiting[0].value
    assert isinstance(error, StartFailed)
    assert "health check timed out after 20s" in str(error)
    assert "connection refused" in str(error)
    assert process.state == "stopping"
    pid = harness.transport("m1").pid
    assert harness.killpg.signals_for(pid) == [signal.SIGTERM]
    harness.transport("m1").exit(signal=15)
    assert process.state == "stopped"
    assert harness.transitions("m1") == ["starting", "stopping", "stopped"]


def test_exit_while_starting_fails_at_once_with_output(harness):
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    transport = harness.transport("m1")
    transport.output(b"loading model...\n")
    transport.output(b"error: out of memory", fd=2)
    transport.exit(code=1)
    assert process.state == "stopped"
    error = waiting[0].value
    assert isinstance(error, StartFailed)
    assert "exited with code 1" in str(error)
    assert "loading model..." in str(error)
    assert "error: out of memory" in str(error)
    assert b"error: out of memory\n" in harness.logs.upstream.history()


def test_failed_start_is_retried_by_the_next_request(harness):
    process = harness.processes["m1"]
    first = results(process.ensure_ready())
    harness.transport("m1").exit(code=2)
    assert isinstance(first[0].value, StartFailed)
    second = results(process.ensure_ready())
    assert len(harness.reactor.spawned) == 2
    harness.make_ready("m1")
    harness.reactor.advance(0.02)
    assert second == [None]


def test_missing_command_fails_with_clear_error(harness):
    process = harness.processes["missing"]
    waiting = results(process.ensure_ready())
    harness.reactor.advance(0)
    harness.reactor.advance(0)
    error = waiting[0].value
    assert isinstance(error, StartFailed)
    assert "start() failed for command '/nonexistent/server" in str(error)
    assert "not found" in str(error)
    assert harness.reactor.spawned == []
    assert process.state == "stopped"


def test_checkendpoint_none_is_ready_once_the_server_accepts_connections(harness):
    process = harness.processes["nocheck"]
    waiting = results(process.ensure_ready())
    harness.reactor.advance(0.5)
    assert waiting == [] and process.state == "starting"  # connection refused: still starting
    assert set(harness.probe.calls) == {process.config.proxy}  # no HTTP request, only connections
    harness.probe.ready.add(process.config.proxy)
    harness.reactor.advance(0.1)
    assert waiting == [None] and process.state == "ready"
    assert "accepting connections on http://localhost:" in harness.logs.proxy_monitor.history().decode()


def test_checkendpoint_none_gives_up_after_the_health_check_timeout(harness):
    process = harness.processes["nocheck"]
    waiting = results(process.ensure_ready())
    harness.reactor.advance(harness.config.health_check_timeout + 1)
    assert waiting[0].check(StartFailed)
    assert "timed out" in waiting[0].getErrorMessage()


def test_crash_while_ready_returns_to_stopped_and_restarts(harness):
    process = start_and_ready(harness)
    harness.transport("m1").exit(signal=9)
    assert process.state == "stopped"
    assert "unexpectedly" in harness.logs.proxy_monitor.history().decode()
    again = results(process.ensure_ready())
    assert process.state == "starting"
    harness.reactor.advance(0.02)
    assert again == [None]


def test_stop_sends_sigterm_and_waits_for_reaping(harness):
    process = start_and_ready(harness)
    pid = harness.transport("m1").pid
    stopped = results(process.stop())
    assert process.state == "stopping"
    assert harness.killpg.signals_for(pid) == [signal.SIGTERM]
    assert stopped == []
    harness.transport("m1").exit(signal=15)
    assert stopped == [None]
    assert process.state == "stopped"
    # the process group is swept once the leader is gone
    assert harness.killpg.signals_for(pid) == [signal.SIGTERM, signal.SIGKILL]


def test_sigkill_after_grace_period(harness):
    process = start_and_ready(harness)
    pid = harness.transport("m1").pid
    stopped = results(process.stop())
    harness.reactor.advance(9.9)  # unloadTimeout: 10 s by default
    assert harness.killpg.signals_for(pid) == [signal.SIGTERM]
    harness.reactor.advance(0.2)
    assert harness.killpg.signals_for(pid) == [signal.SIGTERM, signal.SIGKILL]
    assert process.state == "stopping"
    harness.transport("m1").exit(signal=9)
    assert stopped == [None]
    assert process.state == "stopped"


def test_cmd_stop_runs_with_pid(harness):
    process = start_and_ready(harness, "stopcmd")
    server = harness.transport("stopcmd")
    process.stop()
    stop_command = harness.reactor.spawned[-1]
    assert stop_command is not server
    assert stop_command.args == ["kill", "-TERM", str(server.pid)]
    assert harness.killpg.signals_for(server.pid) == []
    stop_command.exit(0)
    harness.reactor.advance(2.1)  # the server ignored it: SIGKILL after stopTimeout
    assert harness.killpg.signals_for(server.pid) == [signal.SIGKILL]
    server.exit(signal=9)
    assert process.state == "stopped"


def test_graceful_stop_waits_for_inflight_requests(harness):
    process = start_and_ready(harness)
    process.acquire()
    stopped = results(process.stop(graceful=True))
    assert process.state == "ready"
    assert harness.killpg.calls == []
    process.release()
    assert process.state == "stopping"
    harness.transport("m1").exit(signal=15)
    assert stopped == [None]


def test_immediate_stop_ignores_inflight_requests(harness):
    process = start_and_ready(harness)
    process.acquire()
    process.stop()
    assert process.state == "stopping"


def test_stop_while_starting_fails_waiters(harness):
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    process.stop()
    assert isinstance(waiting[0].value, StartFailed)
    assert "interrupted" in str(waiting[0].value)
    harness.transport("m1").exit(signal=15)
    assert process.state == "stopped"
    harness.make_ready("m1")
    harness.reactor.advance(1)  # the cancelled readiness loop stays quiet
    assert process.state == "stopped"


def test_start_requested_while_stopping_restarts_after_exit(harness):
    process = start_and_ready(harness)
    process.stop()
    waiting = results(process.ensure_ready())
    assert len(harness.reactor.spawned) == 1
    harness.transport("m1").exit(signal=15)
    assert process.state == "starting"
    assert len(harness.reactor.spawned) == 2
    harness.reactor.advance(0.02)
    assert waiting == [None]


def test_cancelling_a_start_wait_keeps_the_start(harness):
    process = harness.processes["m1"]
    first = process.ensure_ready()
    second = results(process.ensure_ready())
    first.cancel()
    first.addErrback(lambda failure: failure.trap(CancelledError))
    harness.make_ready("m1")
    harness.reactor.advance(0.02)
    assert second == [None]
    assert process.state == "ready"


def test_ttl_unloads_idle_model(harness):
    process = start_and_ready(harness, "ttl")
    process.acquire()
    harness.reactor.advance(100)
    assert process.state == "ready"  # never while a request is in flight
    process.release()
    harness.reactor.advance(29)
    assert process.state == "ready"
    process.acquire()  # a new request re-arms the timer
    process.release()
    harness.reactor.advance(29)
    assert process.state == "ready"
    harness.reactor.advance(1.5)
    assert process.state == "stopping"
    harness.transport("ttl").exit(signal=15)
    assert process.state == "stopped"
    assert "ttl of 30s" in harness.logs.proxy_monitor.history().decode()


def test_ttl_counts_from_ready_when_nothing_is_in_flight(harness):
    process = start_and_ready(harness, "ttl")  # a preload: no request
    harness.reactor.advance(30.1)
    assert process.state == "stopping"


def test_ttl_timer_is_cancelled_by_stop(harness):
    process = start_and_ready(harness, "ttl")
    process.stop()
    harness.transport("ttl").exit(signal=15)
    assert harness.reactor.getDelayedCalls() == []


def test_shutdown_is_final(harness):
    process = start_and_ready(harness)
    done = results(process.shutdown())
    assert process.state == "stopping"
    harness.transport("m1").exit(signal=15)
    assert done == [None]
    assert process.state == "shutdown"
    refused = results(process.ensure_ready())
    assert isinstance(refused[0].value, ProcessShutdown)
    assert harness.transitions("m1") == ["starting", "ready", "stopping", "stopped", "shutdown"]


def test_shutdown_while_starting(harness):
    process = harness.processes["m1"]
    waiting = results(process.ensure_ready())
    done = results(process.shutdown())
    assert isinstance(waiting[0].value, ProcessShutdown)
    assert "health check interrupted due to shutdown" in str(waiting[0].value)
    harness.transport("m1").exit(signal=15)
    assert done == [None]
    assert process.state == "shutdown"


def test_shutdown_of_a_stopped_process(harness):
    process = harness.processes["m1"]
    assert results(process.shutdown()) == [None]
    assert process.state == "shutdown"
    assert results(process.shutdown()) == [None]


def test_illegal_transitions_are_refused(harness):
    process = harness.processes["m1"]
    with pytest.raises(NoTransition):
        process._exited("impossible")
    start_and_ready(harness)
    with pytest.raises(NoTransition):
        process._became_ready()


def test_output_is_line_buffered(harness):
    process = harness.processes["m1"]
    process.ensure_ready()
    transport = harness.transport("m1")
    transport.output(b"hello ")
    assert harness.logs.upstream.history() == b""
    transport.output(b"world\nsecond")
    assert harness.logs.upstream.history() == b"hello world\n"
    transport.exit(0)
    assert harness.logs.upstream.history() == b"hello world\nsecond\n"
