"""
The model-routed endpoints of the newest llama-swap: by the JSON body's
model (Responses, Messages, images, Stable Diffusion, audio.cpp tasks, the
versionless /v/ forms), by a multipart form's model (transcriptions, image
edits) and by a ?model= parameter (voices, LoRAs, props).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import error_message, fake, multipart

CONFIG = f"""
models:
  one:
    cmd: {fake("one")}
    aliases: [first]
  two:
    cmd: {fake("two")}
    useModelName: "vendor/two-7b"
peers:
  far:
    proxy: http://127.0.0.1:8081
    models: [remote]
groups:
  both: {{swap: false, members: [one, two]}}
"""

FAR = f"""
models:
  remote:
    cmd: {fake("remote")}
"""


def answer(server, method: str, path: str, **kwargs) -> dict:
    response, body = server.fetch(method, path, **kwargs)
    assert response.code == 200, (path, body)
    return json.loads(body)


@pytest.mark.parametrize(
    "path, check",
    [
        ("/v1/responses", lambda doc: doc["object"] == "response"),
        ("/v1/messages", lambda doc: doc["type"] == "message"),
        ("/v1/messages/count_tokens", lambda doc: doc["input_tokens"] > 0),
        ("/v1/images/generations", lambda doc: doc["data"][0]["b64_json"]),
        ("/sdapi/v1/txt2img", lambda doc: doc["images"]),
        ("/sdapi/v1/img2img", lambda doc: doc["images"]),
        ("/v1/audio/voices", lambda doc: "alloy" in doc["voices"]),
    ],
)
def test_json_routes_go_to_the_model_in_the_body(memory, path, check):
    server = memory(CONFIG)
    document = answer(server, "POST", path, json={"model": "first", "prompt": "x", "input": "x"})
    assert check(document)
    assert document.get("responder", document.get("responseMessage")) == "one"


@pytest.mark.parametrize(
    "path", ["chat/completions", "responses", "completions", "messages", "messages/count_tokens", "embeddings"]
)
def test_versionless_routes_lose_their_v(memory, path):
    # for servers that serve /chat/completions and the like (the fake answers
    # such paths with its catch-all: the method and path it got)
    server = memory(CONFIG)
    response, body = server.fetch("POST", f"/v/{path}?x=1", json={"model": "two"})
    assert (response.code, body) == (200, f"POST /{path}".encode())
    assert response.headers.getRawHeaders("x-responder") == ["two"]


@pytest.mark.parametrize("path", ["rerank", "reranking"])
def test_versionless_rerank_reaches_the_servers_own_rerank(memory, path):
    document = answer(memory(CONFIG), "POST", f"/v/{path}", json={"model": "two", "documents": []})
    assert document["responseMessage"] == "two"


def test_audioapi_loses_its_prefix(memory):
    server = memory(CONFIG)
    document = answer(server, "POST", "/audioapi/v1/tasks/run", json={"model": "one", "task": "tts"})
    assert document == {"task": "tts", "status": "done", "path": "/v1/tasks/run", "responder": "one"}


def test_form_routes_go_to_the_model_in_the_form(memory):
    server = memory(CONFIG)
    body, content_type = multipart({"model": "two", "prompt": "a cat", "n": "2"}, {"image": ("a.png", "image/png", b"\x89PNG")})
    document = answer(server, "POST", "/v1/images/edits", data=body, headers={"Content-Type": content_type})
    assert len(document["data"]) == 2 and document["responder"] == "two"


def test_query_routes_go_to_the_model_in_the_query_and_rename_it(memory):
    server = memory(CONFIG)
    document = answer(server, "GET", "/props?model=one")
    assert (document["responder"], document["model"]) == ("one", "one")
    document = answer(server, "GET", "/v1/audio/voices?model=two&lang=en")
    assert (document["responder"], document["model"]) == ("two", "vendor/two-7b")  # useModelName
    assert answer(server, "GET", "/sdapi/v1/loras?model=first")[0]["name"] == "one-lora"


@pytest.mark.parametrize(
    "method, path, kwargs, code, message",
    [
        ("GET", "/props", {}, 400, "missing or invalid 'model' query parameter"),
        ("GET", "/props?model=", {}, 400, "missing or invalid 'model' query parameter"),
        ("GET", "/sdapi/v1/loras?model=ghost", {}, 404, "could not find real modelID for ghost"),
        ("POST", "/v1/messages", {"data": b"{not json"}, 400, "missing or invalid 'model' key"),
        (
            "POST",
            "/v1/images/edits",
            {"data": multipart({"prompt": "x"}, {})[0], "headers": {"Content-Type": multipart({}, {})[1]}},
            400,
            "missing or invalid 'model' parameter in form data",
        ),
    ],
)
def test_requests_without_a_usable_model(memory, method, path, kwargs, code, message):
    server = memory(CONFIG)
    response, body = server.fetch(method, path, **kwargs)
    assert (response.code, error_message(body)) == (code, message)
    assert server.service.manager.running_models() == []


def test_query_routes_reach_peers_with_the_peers_name(memory):
    from llamaswap.testing.harness import InMemoryLlamaswap

    server = memory(CONFIG)
    far = InMemoryLlamaswap(FAR, world=server.world, port=8081)
    try:
        document = answer(server, "GET", "/props?model=far/remote")
        assert (document["responder"], document["model"]) == ("remote", "remote")
    finally:
        far.stop()
