"""
Profiles (run-time model id rewrites) and selectors (virtual ids that pick
a target per request), through the whole service in memory.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
models:
  big:
    cmd: {fake("big", "--startup-delay", "1")}
  small:
    cmd: {fake("small")}
  tiny:
    cmd: {fake("tiny")}
    aliases: [mini]
profiles:
  coding:
    description: "code with the big one"
    pins:
      llm-code: big
      small: tiny
      image-gen: ~
  cheap:
    pins:
      llm-code: mini
selectors:
  warm-one:
    strategy: warm
    targets: [big, small]
  pinned:
    strategy: pin
    targets: [small, big]
  spill:
    strategy: spillover
    targets: [small, tiny]
    settings: {{spillover: 2}}
groups:
  together:
    swap: false
    exclusive: false
    members: [small, tiny]
"""


def answered_by(server, model: str, **extra) -> str:
    response, body = server.chat(model, **extra)
    assert response.code == 200, body
    return json.loads(body)["responseMessage"]


def test_profiles_api_and_pins(memory):
    server = memory(CONFIG)
    listing = json.loads(server.fetch("GET", "/api/profiles")[1])
    assert listing == {
        "active": None,
        "profiles": [
            {"id": "cheap", "description": "", "pins": {"llm-code": "mini"}},
            {"id": "coding", "description": "code with the big one", "pins": {"llm-code": "big", "small": "tiny", "image-gen": ""}},
        ],
    }
    response, body = server.chat("llm-code")
    assert response.code == 404  # no profile active: not a model
    response, body = server.fetch("PUT", "/api/profiles/active", json={"name": "coding"})
    assert json.loads(body) == {"active": "coding"}
    assert answered_by(server, "llm-code") == "big"
    assert answered_by(server, "small") == "tiny"  # a pin may shadow a model id
    response, body = server.chat("image-gen")
    assert response.code == 404 and b"not available while profile 'coding' is active" in body
    sent = json.loads(json.loads(server.chat("llm-code")[1])["request_body"])
    assert sent["model"] == "big"  # the body names the target
    server.fetch("PUT", "/api/profiles/active", json={"name": "cheap"})
    assert answered_by(server, "llm-code") == "tiny"  # through the alias
    assert json.loads(server.fetch("PUT", "/api/profiles/active", json={"name": None})[1]) == {"active": None}
    assert server.chat("llm-code")[0].code == 404


def test_profile_api_errors(memory):
    server = memory(CONFIG)
    assert server.fetch("PUT", "/api/profiles/active", json={"name": "nope"})[0].code == 404
    assert server.fetch("PUT", "/api/profiles/active", json={"nom": "x"})[0].code == 400
    assert server.fetch("PUT", "/api/profiles/active", data=b"not json")[0].code == 400
    assert server.fetch("PUT", "/api/profiles/active", json={"name": 3})[0].code == 400


def test_profile_pins_apply_to_upstream_paths(memory):
    server = memory(CONFIG)
    server.fetch("PUT", "/api/profiles/active", json={"name": "coding"})
    assert server.fetch("GET", "/upstream/llm-code/test")[1] == b"big"
    assert server.fetch("GET", "/upstream/image-gen/test")[0].code == 404


def test_pin_selector_always_uses_its_first_target(memory):
    server = memory(CONFIG)
    assert [answered_by(server, "pinned") for _ in range(3)] == ["small"] * 3


def test_warm_selector_prefers_ready_then_starting_then_the_first(memory):
    server = memory(CONFIG)
    assert answered_by(server, "small") == "small"
    assert answered_by(server, "warm-one") == "small"  # ready beats first
    server.fetch("POST", "/api/models/unload")
    slow = server.post("/v1/chat/completions", json={"model": "big"})
    server.advance(0.2)
    assert server.state("big") == "starting"
    assert answered_by(server, "warm-one") == "big"  # starting beats cold
    server.run(slow)


def test_spillover_fills_the_first_target_then_starts_the_next(memory):
    server = memory(CONFIG)
    waiting = [server.post("/v1/chat/completions?wait=2", json={"model": "spill"}) for _ in range(5)]
    server.advance(0.5)
    assert server.state("small") == "ready" and server.state("tiny") == "ready"
    answers = [json.loads(server.run(server.run(request).content()))["responseMessage"] for request in waiting]
    assert sorted(answers) == ["small", "small", "small", "tiny", "tiny"]
    assert answers[:3] == ["small", "small", "tiny"]  # two on small, then spill to tiny
    # once answered, both are idle and tied: requests take turns between them
    assert sorted(answered_by(server, "spill") for _ in range(2)) == ["small", "tiny"]


def test_profiles_reset_on_reload(memory, tmp_path):
    server = memory(CONFIG)
    server.fetch("PUT", "/api/profiles/active", json={"name": "coding"})
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace("code with the big one", "changed"))
    server.service.config_path = str(path)
    assert server.service.reload_config()
    assert json.loads(server.fetch("GET", "/api/profiles")[1])["active"] is None
