"""
Request filters through the whole service: stripParams, setParams and
setParamsByID (whose keys become aliases), for models and peers.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
models:
  gpt:
    cmd: {fake("gpt")}
    useModelName: "openai/gpt-oss"
    filters:
      stripParams: "top_k, model"
      setParams:
        temperature: 0.7
        model: "not allowed"
        provider: {{zdr: true}}
      setParamsByID:
        "${{MODEL_ID}}:high":
          reasoning_effort: high
          temperature: 1.0
        "${{MODEL_ID}}:low":
          reasoning_effort: low
"""


def sent(server, **body) -> dict:
    response, answer = server.fetch("POST", "/v1/chat/completions", json={"messages": [], **body})
    assert response.code == 200, answer
    return json.loads(json.loads(answer)["request_body"])


def test_set_params_and_strip_params(memory):
    server = memory(CONFIG)
    body = sent(server, model="gpt", top_k=5, temperature=2.0, seed=1)
    assert body == {"model": "openai/gpt-oss", "messages": [], "temperature": 0.7, "seed": 1, "provider": {"zdr": True}}


def test_set_params_by_id_keys_are_aliases_and_override_set_params(memory):
    server = memory(CONFIG)
    assert server.config.models["gpt"].aliases == ("gpt:high", "gpt:low")
    high = sent(server, model="gpt:high")
    assert high["reasoning_effort"] == "high" and high["temperature"] == 1.0
    low = sent(server, model="gpt:low")
    assert low["reasoning_effort"] == "low" and low["temperature"] == 0.7
    assert "reasoning_effort" not in sent(server, model="gpt")
    assert len(server.processes) == 1  # one server for all three names


def test_a_body_needing_nothing_passes_byte_for_byte(memory):
    server = memory(f"models:\n  plain:\n    cmd: {fake('plain')}\n    filters: {{stripParams: 'absent'}}\n")
    raw = b'{"model":"plain",   "x": 1.50 }'
    echoed = json.loads(server.fetch("POST", "/v1/chat/completions", data=raw)[1])
    assert echoed["request_body"] == raw.decode()
