"""
Model processes for real: the fake upstream as a child process, started,
health-checked, stopped, killed and swapped through the running service.
"""

from __future__ import annotations

import os

import psutil
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from llamaswap.observe.events import LogData, ProcessStateChanged
from tests.helpers import fake, json_of, sleep
from tests.models.test_manager import GROUPS


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest_twisted.inlineCallbacks
def test_readiness_is_noticed_quickly_after_the_server_listens(llamaswap):
    """
    The server prints "listening" 0.7 s after it starts; the model must be
    ready moments later, not at the next of the original's 5 s polls.
    (The precise figure is measured by the cold-start benchmark.)
    """
    server = llamaswap(
        f"""
        models:
          slow:
            cmd: {fake("slow", "--startup-delay", "0.7")}
        """
    )
    moments = {}

    def on_event(event):
        if isinstance(event, LogData) and b"listening on" in event.data:
            moments.setdefault("listening", reactor.seconds())
        if isinstance(event, ProcessStateChanged) and event.new == "ready":
            moments.setdefault("ready", reactor.seconds())

    server.service.bus.subscribe(on_event, LogData, ProcessStateChanged)
    response = yield server.chat("slow")
    assert response.code == 200
    assert 0 <= moments["ready"] - moments["listening"] < 0.25


@pytest_twisted.inlineCallbacks
def test_unhealthy_period_is_waited_out(llamaswap):
    server = llamaswap(
        f"""
        logLevel: debug
        models:
          warming:
            cmd: {fake("warming", "--unhealthy-for", "0.6")}
        """
    )
    response = yield server.chat("warming")
    assert response.code == 200
    assert "HTTP 503" in server.service.logs.proxy_monitor.history().decode()


@pytest_twisted.inlineCallbacks
def test_crash_while_ready_then_restart(llamaswap):
    server = llamaswap(
        f"""
        models:
          crashy:
            cmd: {fake("crashy", "--crash-after", "0.8", "--exit-code", "7")}
        """
    )
    assert (yield server.chat("crashy")).code == 200
    yield server.wait_for_state("crashy", "stopped", timeout=5)
    assert "exited with code 7 unexpectedly" in server.service.logs.proxy_monitor.history().decode()
    assert (yield server.chat("crashy")).code == 200
    assert server.state("crashy") == "ready"


@pytest_twisted.inlineCallbacks
def test_graceful_stop_lets_requests_finish(llamaswap):
    server = llamaswap(
        f"""
        models:
          m:
            cmd: {fake("m")}
        """
    )
    yield server.chat("m")
    slow = [server.get(f"/upstream/m/slow-respond?echo={key}&delay=0.1") for key in ("12345", "abcde")]
    yield sleep(0.15)
    stopping = server.process("m").stop(graceful=True)
    results = yield gatherResults([response.addCallback(lambda r: r.text()) for response in slow])
    assert results == ["12345", "abcde"]
    yield stopping
    assert server.state("m") == "stopped"


@pytest_twisted.inlineCallbacks
def test_immediate_stop_cuts_requests(llamaswap):
    server = llamaswap(
        f"""
        models:
          m:
            cmd: {fake("m")}
        """
    )
    yield server.chat("m")
    slow = server.get("/upstream/m/slow-respond?echo=1234567890&delay=0.2")
    yield sleep(0.3)
    response_or_error = []
    unload = yield server.get("/unload")
    assert (yield unload.text()) == "OK"
    assert server.state("m") == "stopped"
    try:
        response = yield slow
        text = yield response.text()
        response_or_error.append(text)
    except Exception as error:  # the connection was cut: that is the point
        response_or_error.append(error)
    assert response_or_error[0] != "1234567890"


@pytest_twisted.inlineCallbacks
def test_sigkill_when_sigterm_is_ignored(llamaswap):
    server = llamaswap(
        f"""
        stopTimeout: 0.5
        models:
          stubborn:
            cmd: {fake("stubborn", "--ignore-sigterm")}
        """
    )
    yield server.chat("stubborn")
    pid = server.process("stubborn").pid
    started = reactor.seconds()
    yield server.process("stubborn").stop()
    elapsed = reactor.seconds() - started
    assert 0.45 <= elapsed < 3
    assert server.process("stubborn").last_exit == "was killed by signal 9"
    assert not alive(pid)
    history = server.service.logs.upstream.history().decode()
    assert "ignoring SIGTERM" in history


@pytest_twisted.inlineCallbacks
def test_cmd_stop_with_pid(llamaswap):
    server = llamaswap(
        f"""
        models:
          m:
            cmd: {fake("m")}
            cmdStop: kill -TERM ${{PID}}
        """
    )
    yield server.chat("m")
    pid = server.process("m").pid
    yield server.process("m").stop()
    assert server.process("m").last_exit in ("exited with code 0", "was killed by signal 15")
    assert not alive(pid)
    assert f"running stop command: kill -TERM {pid}" in server.service.logs.proxy_monitor.history().decode()


@pytest_twisted.inlineCallbacks
def test_environment_is_inherited_plus_model_env(llamaswap, monkeypatch):
    monkeypatch.setenv("LLAMASWAP_TEST_INHERITED", "from-parent")
    server = llamaswap(
        f"""
        models:
          m:
            cmd: {fake("m")}
            env: ["CUDA_VISIBLE_DEVICES=0,1", "LLAMASWAP_TEST_INHERITED=overridden-by-model"]
          plain:
            cmd: {fake("plain")}
        """
    )
    env = (yield json_of((yield server.get("/upstream/m/env"))))["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["LLAMASWAP_TEST_INHERITED"] == "overridden-by-model"
    assert env["PATH"] == os.environ["PATH"]
    env = (yield json_of((yield server.get("/upstream/plain/env"))))["env"]
    assert env["LLAMASWAP_TEST_INHERITED"] == "from-parent"
    assert "CUDA_VISIBLE_DEVICES" not in env or env["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest_twisted.inlineCallbacks
def test_clean_shutdown_reaps_every_model(llamaswap):
    server = llamaswap(GROUPS)
    for model in ("x", "y", "p", "a"):
        yield server.chat(model)
    pids = [process.pid for process in server.service.manager.processes.values() if process.pid]
    assert len(pids) == 2  # a and the persistent p
    starting = server.chat("b")  # still starting when the service stops
    yield sleep(0.05)
    yield server.service.stopService()
    assert all(not alive(pid) for pid in pids)
    assert {process.state for process in server.service.manager.processes.values()} == {"shutdown"}
    response = yield starting
    assert response.code in (502, 503)
