"""
The gateway's answers when a model cannot be used: shutting down while a
request waits or arrives, and the same for a streaming request that is
already getting loading messages.
"""

from __future__ import annotations

import json

from tests.helpers import error_message, fake

CONFIG = f"""
models:
  slow:
    cmd: {fake("slow", "--startup-delay", "5")}
  loading:
    cmd: {fake("loading", "--startup-delay", "5")}
    sendLoadingState: true
"""


def test_a_request_waiting_for_its_model_gets_503_when_llamaswap_stops(memory):
    server = memory(CONFIG)
    waiting = server.post("/v1/chat/completions", json={"model": "slow"}, headers={"Accept": "application/json"})
    server.advance(1)
    stopping = server.service.stopService()
    response = server.run(waiting)
    assert response.code == 503
    assert json.loads(server.run(response.content())) == {
        "src": "llama-swap",
        "error": {
            "message": "llamaswap is shutting down: health check interrupted due to shutdown",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        },
    }
    server.run(stopping)


def test_a_request_arriving_while_llamaswap_stops_gets_503(memory):
    server = memory(CONFIG)
    server.service.manager.scheduler.close()  # what stopping the service does first
    response, body = server.chat("slow")
    assert (response.code, error_message(body)) == (503, "llamaswap is shutting down")


def test_a_loading_stream_is_told_when_llamaswap_stops(memory):
    server = memory(CONFIG)
    response = server.run(server.post("/v1/chat/completions", json={"model": "loading", "stream": True}))
    body = server.collect(response)
    server.advance(1.5)
    server.stop()
    server.advance(0.1)
    assert b"llamaswap loading model: loading" in body.data
    assert b"Unable to swap model err: llamaswap is shutting down" in body.data
    assert body.reason is not None  # the stream ended
