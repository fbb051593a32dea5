"""
/v1/models (and /models) as the newest llama-swap shapes it: capabilities,
status, aliases, peers' models, selectors and the active profile's pins.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
includeAliasesInList: true
models:
  vision:
    cmd: {fake("vision")}
    name: " Vision 7B "
    aliases: [v7]
    metadata: {{architecture: "mine", note: kept}}
    capabilities:
      in: [text, image]
      out: [text]
      tools: true
      context: 32768
  speech:
    cmd: {fake("speech")}
    capabilities: {{in: [text], out: [audio]}}
  plain:
    cmd: {fake("plain")}
peers:
  far:
    proxy: http://127.0.0.1:9
    models: [remote-a, shared]
  other:
    proxy: http://127.0.0.1:10
    models: [shared]
selectors:
  best:
    strategy: warm
    targets: [plain, vision]
    description: "whichever is warm"
profiles:
  demo:
    pins: {{llm-code: plain, gone: ~}}
"""


def listing(server) -> dict[str, dict]:
    response, body = server.fetch("GET", "/v1/models")
    assert response.code == 200
    return {record["id"]: record for record in json.loads(body)["data"]}


def test_capabilities_are_rendered_as_upstream_does(memory):
    server = memory(CONFIG)
    records = listing(server)
    vision = records["vision"]
    assert vision["name"] == "Vision 7B"
    assert vision["architecture"] == {
        "input_modalities": ["text", "image"],
        "output_modalities": ["text"],
        "modality": "text+image->text",
    }
    assert vision["capabilities"] == {"vision": True, "function_calling": True}
    assert vision["supported_parameters"] == ["tools", "tool_choice"]
    assert vision["context_length"] == 32768
    # metadata keys the capabilities produce give way to them
    assert vision["meta"] == {"llamaswap": {"note": "kept", "type": "model", "aliases": ["v7"]}, "n_ctx": 32768}
    assert records["speech"]["capabilities"] == {"audio_speech": True}
    assert "capabilities" not in records["plain"] and "architecture" not in records["plain"]
    assert records["v7"]["meta"]["llamaswap"] == {"note": "kept", "type": "alias", "modelID": "vision"}


def test_status_peers_and_selectors(memory):
    server = memory(CONFIG)
    server.chat("plain")
    records = listing(server)
    assert records["plain"]["status"] == {"value": "loaded"}
    assert records["vision"]["status"] == {"value": "unloaded"}
    assert records["far/remote-a"]["name"] == "far: remote-a"
    assert records["far/remote-a"]["meta"] == {"llamaswap": {"type": "peer", "peerID": "far"}}
    assert {"far/shared", "other/shared"} <= set(records)
    assert records["best"]["status"] == {"value": "loaded"}  # a target is warm
    assert records["best"]["meta"]["llamaswap"] == {"type": "selector", "strategy": "warm", "targets": ["plain", "vision"]}
    assert "llm-code" not in records  # no profile is active


def test_the_active_profiles_pins_are_listed(memory):
    server = memory(CONFIG)
    server.fetch("PUT", "/api/profiles/active", json={"name": "demo"})
    records = listing(server)
    assert records["llm-code"]["meta"] == {"llamaswap": {"type": "profile"}}
    assert "gone" not in records  # a pin without a target is not offered


def test_versionless_models_route(memory):
    server = memory(CONFIG)
    ids = [record["id"] for record in json.loads(server.fetch("GET", "/models")[1])["data"]]
    assert ids == sorted(ids) and "vision" in ids
