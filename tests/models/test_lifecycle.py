"""
Model processes for real: the fake upstream as a child process, started,
health-checked, stopped, killed and swapped through the running service.
"""

from __future__ import annotations

import os
import random

import psutil
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from llamaswap.observe.events import LogData, ModelPreloaded, ProcessStateChanged
from tests.helpers import fake, json_of, sleep


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
def test_ttl_unloads_an_idle_model(llamaswap):
    server = llamaswap(
        f"""
        models:
          brief:
            cmd: {fake("brief")}
            ttl: 1
        """
    )
    slow = server.post("/v1/chat/completions?wait=1.5", json={"model": "brief"})
    yield sleep(1.2)
    assert server.state("brief") == "ready"  # busy longer than its ttl
    assert (yield slow).code == 200
    yield sleep(0.6)
    assert server.state("brief") == "ready"
    yield server.wait_for_state("brief", "stopped", timeout=3)


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


GROUPS = f"""
models:
  a:
    cmd: {fake("a")}
  b:
    cmd: {fake("b")}
  x:
    cmd: {fake("x")}
  y:
    cmd: {fake("y")}
  p:
    cmd: {fake("p")}
groups:
  swapping:
    swap: true
    exclusive: true
    members: [a, b]
  together:
    swap: false
    exclusive: false
    members: [x, y]
  forever:
    swap: false
    exclusive: false
    persistent: true
    members: [p]
"""


def ready_models(server):
    return sorted(model for model, process in server.service.manager.processes.items() if process.state == "ready")


@pytest_twisted.inlineCallbacks
def test_group_modes_with_real_servers(llamaswap):
    server = llamaswap(GROUPS)
    for model in ("x", "y", "p"):
        assert (yield server.chat(model)).code == 200
    assert ready_models(server) == ["p", "x", "y"]  # swap: false runs them together
    assert (yield server.chat("a")).code == 200
    assert ready_models(server) == ["a", "p"]  # exclusive stops x and y, not persistent p
    assert (yield server.chat("b")).code == 200
    assert ready_models(server) == ["b", "p"]  # swap within the group
    assert (yield server.chat("x")).code == 200
    assert ready_models(server) == ["b", "p", "x"]  # non-exclusive leaves others alone


@pytest_twisted.inlineCallbacks
def test_interleaved_requests_to_a_swap_group_are_never_misrouted(llamaswap):
    """
    Waves of concurrent requests alternating between two models of one swap
    group: every request is answered, by the model it asked for.
    """
    server = llamaswap(
        f"""
        models:
          one:
            cmd: {fake("one")}
            concurrencyLimit: 50
          two:
            cmd: {fake("two")}
            concurrencyLimit: 50
        """
    )
    rng = random.Random(7)
    asked = [rng.choice(["one", "two"]) for _ in range(60)]
    pending = []
    for index, model in enumerate(asked):
        wait = rng.choice([0, 0, 0.05, 0.1])
        pending.append(server.post(f"/v1/chat/completions?wait={wait}", json={"model": model}))
        if index % 7 == 6:
            yield sleep(0.05)
    responses = yield gatherResults(pending)
    assert [response.code for response in responses] == [200] * len(asked)
    bodies = yield gatherResults([json_of(response) for response in responses])
    assert [body["responseMessage"] for body in bodies] == asked
    assert server.service.manager.scheduler.waiting == 0


@pytest_twisted.inlineCallbacks
def test_preload_hook(llamaswap):
    preloaded = []
    server = llamaswap(
        f"""
        hooks:
          on_startup:
            preload: [m1, m2, ghost]
        groups:
          both:
            swap: false
            members: [m1, m2]
        models:
          m1:
            cmd: {fake("m1")}
          m2:
            cmd: {fake("m2")}
        """
    )
    server.service.bus.subscribe(preloaded.append, ModelPreloaded)
    waited = 0.0
    while len(preloaded) < 2 and waited < 10:
        yield sleep(0.05)
        waited += 0.05
    assert preloaded == [ModelPreloaded("m1", True), ModelPreloaded("m2", True)]
    assert ready_models(server) == ["m1", "m2"]


@pytest_twisted.inlineCallbacks
def test_preload_failure_is_reported(llamaswap):
    preloaded = []
    server = llamaswap(
        f"""
        hooks:
          on_startup:
            preload: [bad]
        models:
          bad:
            cmd: {fake("bad", "--crash-after", "0", "--exit-code", "9")}
        """
    )
    server.service.bus.subscribe(preloaded.append, ModelPreloaded)
    waited = 0.0
    while not preloaded and waited < 10:
        yield sleep(0.05)
        waited += 0.05
    assert preloaded == [ModelPreloaded("bad", False)]


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


@pytest_twisted.inlineCallbacks
def test_concurrent_requests_share_one_start(llamaswap):
    server = llamaswap(
        f"""
        models:
          cold:
            cmd: {fake("cold", "--startup-delay", "0.5")}
        """
    )
    responses = yield gatherResults([server.chat("cold") for _ in range(6)])
    assert [response.code for response in responses] == [200] * 6
    starts = [event for event in server.events if event.model == "cold" and event.new == "starting"]
    assert len(starts) == 1
