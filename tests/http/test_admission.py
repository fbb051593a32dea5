"""
Admission as clients see it: a full queue or a request that waited too
long gets 503 with Retry-After and a JSON body whatever it accepts, a
client that leaves the queue starts nothing, and /running shows queues.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
models:
  a:
    cmd: {fake("a")}
  b:
    cmd: {fake("b", "--startup-delay", "1")}
routing:
  scheduler:
    settings:
      swap-aware: {{maxWait: 5, maxQueue: 2, queueTimeout: 8}}
"""


def running(server) -> dict[str, dict]:
    return {entry["model"]: entry for entry in json.loads(server.fetch("GET", "/running")[1])["running"]}


def test_a_full_queue_is_a_503_with_retry_after_in_json(memory):
    server = memory(CONFIG.replace("queueTimeout: 8", "queueTimeout: 30"))
    server.chat("a")
    stream = server.post("/v1/chat/completions?chunks=200&delay=0.05", json={"model": "a", "stream": True})
    server.advance(0.5)
    queued = [server.post("/v1/chat/completions", json={"model": "b"}) for _ in range(2)]
    server.advance(0.1)
    response, body = server.fetch("POST", "/v1/chat/completions", json={"model": "b"}, headers={"Accept": "text/html"})
    assert response.code == 503
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert int(response.headers.getRawHeaders("retry-after")[0]) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == "queue_full" and "maxQueue" in error["message"] and error["type"] == "server_error"
    assert running(server)["b"]["queued"] == 2 and running(server)["b"]["state"] == "stopped"
    server.advance(12)
    assert [server.run(request).code for request in queued] == [200, 200]
    server.run(stream)


def test_a_request_waiting_past_queue_timeout_gets_503(memory):
    server = memory(CONFIG.replace("maxWait: 5", "maxWait: 30"))
    server.chat("a")
    stream = server.post("/v1/chat/completions?chunks=400&delay=0.05", json={"model": "a", "stream": True})
    server.advance(0.5)
    waiting = server.post("/v1/chat/completions", json={"model": "b"})
    server.advance(8.1)
    response = server.run(waiting)
    assert response.code == 503 and int(response.headers.getRawHeaders("retry-after")[0]) >= 1
    assert json.loads(server.run(response.content()))["error"]["code"] == "queue_timeout"
    server.run(stream)
    assert server.state("b") == "stopped"


def test_a_client_that_leaves_the_queue_starts_nothing(memory):
    server = memory(CONFIG)
    server.chat("a")
    stream = server.post("/v1/chat/completions?chunks=100&delay=0.05", json={"model": "a", "stream": True})
    server.advance(0.5)
    waiting = server.post("/v1/chat/completions", json={"model": "b"})
    server.advance(1)
    assert running(server)["b"]["queued"] == 1
    waiting.cancel()
    server.advance(0.1)
    assert "b" not in running(server)
    server.run(stream)
    server.advance(10)
    assert server.state("b") == "stopped" and server.state("a") == "ready"
    assert not any("b" in process.command for process in server.processes)
