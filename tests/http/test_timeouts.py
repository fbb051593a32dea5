"""
Per-model and per-peer timeouts on the way to a server: a server that
accepts a request but never starts its answer gets the client a 504 after
C{responseHeader} seconds instead of a hung request.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
models:
  slow:
    cmd: {fake("slow")}
    timeouts:
      responseHeader: 2
  patient:
    cmd: {fake("patient")}
"""


def test_no_response_head_in_time_is_a_504(memory):
    server = memory(CONFIG)
    assert server.chat("slow")[0].code == 200  # started, and fast enough when it answers at once
    started = server.reactor.seconds()
    response, body = server.fetch("POST", "/v1/chat/completions?wait=30", json={"model": "slow"})
    assert response.code == 504
    assert server.reactor.seconds() - started < 3
    assert b"no response headers within 2s" in body
    # the model is not blamed: the next request is served
    assert server.chat("slow")[0].code == 200
    assert server.service.manager.processes["slow"].inflight == 0


def test_without_a_response_header_timeout_a_slow_answer_is_waited_for(memory):
    server = memory(CONFIG)
    response, body = server.fetch("POST", "/v1/chat/completions?wait=30", json={"model": "patient"})
    assert response.code == 200 and json.loads(body)["responseMessage"] == "patient"


def test_the_timeout_is_for_the_head_not_the_whole_stream(memory):
    server = memory(CONFIG)
    response = server.run(
        server.post("/v1/chat/completions?chunks=5&delay=1", json={"model": "slow", "stream": True})
    )
    assert response.code == 200
    body = server.run(response.content())
    assert body.count(b'"content": "') >= 5 and body.endswith(b"data: [DONE]\n\n")
