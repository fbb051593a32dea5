"""
The model manager through the whole service, in memory: groups, idle
timeouts, preloads, shared starts, and many concurrent requests that must
each reach the model they asked for.
"""

from __future__ import annotations

import json
import random

from llamaswap.observe.events import ModelPreloaded
from tests.helpers import fake

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


def test_group_modes(memory):
    server = memory(GROUPS)
    for model in ("x", "y", "p"):
        assert server.chat(model)[0].code == 200
    assert ready_models(server) == ["p", "x", "y"]  # swap: false runs them together
    assert server.chat("a")[0].code == 200
    assert ready_models(server) == ["a", "p"]  # exclusive stops x and y, not persistent p
    assert server.chat("b")[0].code == 200
    assert ready_models(server) == ["b", "p"]  # swap within the group
    assert server.chat("x")[0].code == 200
    assert ready_models(server) == ["b", "p", "x"]  # non-exclusive leaves others alone


def test_ttl_unloads_an_idle_model(memory):
    server = memory(
        f"""
        models:
          brief:
            cmd: {fake("brief")}
            ttl: 1
        """
    )
    slow = server.post("/v1/chat/completions?wait=1.5", json={"model": "brief"})
    server.advance(1.2)
    assert server.state("brief") == "ready"  # busy longer than its ttl
    assert server.run(slow).code == 200
    server.advance(0.9)
    assert server.state("brief") == "ready"  # idle for less than its ttl
    server.advance(0.2)
    assert server.state("brief") in ("stopping", "stopped")
    assert "idle for its ttl of 1s" in server.service.logs.proxy_monitor.history().decode()


def test_interleaved_requests_to_a_swap_group_are_never_misrouted(memory):
    """
    Waves of concurrent requests alternating between two models of one swap
    group: every request is answered, by the model it asked for.
    """
    server = memory(
        f"""
        models:
          one:
            cmd: {fake("one", "--startup-delay", "0.2")}
            concurrencyLimit: 500
          two:
            cmd: {fake("two", "--startup-delay", "0.3")}
            concurrencyLimit: 500
        """
    )
    rng = random.Random(7)
    asked = [rng.choice(["one", "two"]) for _ in range(300)]
    pending = []
    for index, model in enumerate(asked):
        wait = rng.choice([0, 0, 0.05, 0.1])
        pending.append(server.post(f"/v1/chat/completions?wait={wait}", json={"model": model}))
        if index % 7 == 6:
            server.advance(rng.choice([0.01, 0.05, 0.2]))
    responses = [server.run(request) for request in pending]
    assert [response.code for response in responses] == [200] * len(asked)
    answered = [json.loads(server.run(response.content()))["responseMessage"] for response in responses]
    assert answered == asked
    assert server.service.manager.scheduler.waiting == 0


def test_preload_hook(memory):
    preloaded = []
    server = memory(
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
    server.advance(2)
    assert preloaded == [ModelPreloaded("m1", True), ModelPreloaded("m2", True)]
    assert ready_models(server) == ["m1", "m2"]
    assert "'ghost' is not a model" in server.service.logs.proxy_monitor.history().decode()


def test_preload_failure_is_reported(memory):
    preloaded = []
    server = memory(
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
    server.advance(2)
    assert preloaded == [ModelPreloaded("bad", False)]
    assert "failed to preload model bad" in server.service.logs.proxy_monitor.history().decode()


def test_concurrent_requests_share_one_start(memory):
    server = memory(
        f"""
        models:
          cold:
            cmd: {fake("cold", "--startup-delay", "0.5")}
        """
    )
    pending = [server.post("/v1/chat/completions", json={"model": "cold"}) for _ in range(6)]
    assert [server.run(request).code for request in pending] == [200] * 6
    assert len(server.processes) == 1
