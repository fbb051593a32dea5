"""
Ollama's API in front of OpenAI-compatible servers: requests translated,
answers translated back line by line, the informational endpoints answered
locally, model management refused, errors in Ollama's shape.
"""

from __future__ import annotations

import json

from tests.helpers import fake

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
    aliases: [llama3]
    metadata: {{family: llama, parameter_size: 8B}}
  other:
    cmd: {fake("other")}
"""


def lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def test_chat_streams_one_ndjson_line_per_event(memory):
    server = memory(CONFIG)
    response, body = server.fetch(
        "POST", "/api/chat?chunks=4", json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.code == 200 and response.headers.getRawHeaders("content-type") == ["application/x-ndjson"]
    events = lines(body)
    assert [event["message"]["content"] for event in events[:-1]] == [f"m-{index} " for index in range(4)]
    assert all(event["model"] == "llama3" and event["done"] is False for event in events[:-1])
    final = events[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] == 4 and final["prompt_eval_count"] > 0 and final["total_duration"] > 0


def test_chat_without_streaming_is_one_document(memory):
    server = memory(CONFIG)
    response, body = server.fetch(
        "POST",
        "/api/chat",
        json={
            "model": "m",
            "stream": False,
            "messages": [{"role": "user", "content": "hi", "images": ["aGVsbG8="]}],
            "options": {"temperature": 0.2, "num_predict": 7, "num_ctx": 4096},
            "format": "json",
        },
    )
    document = json.loads(body)
    assert response.code == 200 and document["done"] is True and document["message"]["role"] == "assistant"
    assert document["message"]["content"].startswith("m-0")
    # what the server was asked, as the activity log's capture kept it
    server.advance(0.01)
    [entry] = json.loads(server.fetch("GET", "/api/metrics/activity")[1])["data"]
    capture = json.loads(server.fetch("GET", f"/api/captures/{entry['id']}")[1])
    import base64

    sent = json.loads(base64.b64decode(capture["req_body"]))
    assert (sent["temperature"], sent["max_tokens"], sent["stream"]) == (0.2, 7, False)
    assert sent["response_format"] == {"type": "json_object"} and "num_ctx" not in sent
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == "data:image/jpeg;base64,aGVsbG8="


def test_the_translated_request(memory):
    from llamaswap.http.ollama import chat_request, generate_request

    request = chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "look", "images": ["QUJD"]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "options": {"temperature": 0.5, "num_predict": 9, "stop": ["\n"], "unknown": 1},
            "format": {"type": "object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["temperature"] == 0.5 and request["max_tokens"] == 9 and request["stop"] == ["\n"]
    assert "unknown" not in request and request["tools"][0]["function"]["name"] == "f"
    assert request["response_format"]["type"] == "json_schema"
    user, assistant, tool = request["messages"]
    assert user["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}
    assert assistant["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert tool["name"] == "f"
    generated = generate_request({"model": "m", "prompt": "p", "system": "s", "stream": False})
    assert generated["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]
    assert generated["stream"] is False


def test_generate_streamed_and_plain(memory):
    server = memory(CONFIG)
    _, body = server.fetch("POST", "/api/generate?chunks=3", json={"model": "m", "prompt": "hello"})
    events = lines(body)
    assert "".join(event["response"] for event in events) == "m-0 m-1 m-2 " and events[-1]["done"] is True
    _, body = server.fetch("POST", "/api/generate", json={"model": "m", "prompt": "hello", "stream": False})
    document = json.loads(body)
    assert document["response"].startswith("m-0") and document["done"] is True and document["eval_count"] == 10


def test_embed_and_the_legacy_embeddings(memory):
    server = memory(CONFIG)
    _, body = server.fetch("POST", "/api/embed", json={"model": "m", "input": ["abc", "defgh"]})
    document = json.loads(body)
    assert document["model"] == "m" and len(document["embeddings"]) == 2
    assert all(isinstance(value, float) for value in document["embeddings"][0])
    _, body = server.fetch("POST", "/api/embeddings", json={"model": "m", "prompt": "abc"})
    assert isinstance(json.loads(body)["embedding"][0], float)


def test_local_answers(memory):
    server = memory(CONFIG.replace("models:", "includeAliasesInList: true\nmodels:"))
    tags = json.loads(server.fetch("GET", "/api/tags")[1])["models"]
    assert [tag["name"] for tag in tags] == ["llama3", "m", "other"]
    assert tags[1]["details"]["family"] == "llama" and len(tags[1]["digest"]) == 64
    assert json.loads(server.fetch("GET", "/api/ps")[1]) == {"models": []}
    server.chat("m")
    assert [entry["name"] for entry in json.loads(server.fetch("GET", "/api/ps")[1])["models"]] == ["m"]
    shown = json.loads(server.fetch("POST", "/api/show", json={"model": "llama3"})[1])
    assert shown["model_info"]["family"] == "llama" and "completion" in shown["capabilities"]
    response, body = server.fetch("POST", "/api/show", json={"model": "ghost"})
    assert (response.code, json.loads(body)) == (404, {"error": "model 'ghost' not found"})
    assert "version" in json.loads(server.fetch("GET", "/api/version")[1])


def test_model_management_is_not_ours(memory):
    server = memory(CONFIG)
    for method, path in (("POST", "/api/pull"), ("POST", "/api/create"), ("DELETE", "/api/delete"), ("POST", "/api/blobs/sha256:abc")):
        response, body = server.fetch(method, path, json={"model": "x"})
        assert response.code == 501 and "configure" in json.loads(body)["error"], path


def test_errors_in_ollamas_shape(memory):
    server = memory(CONFIG)
    response, body = server.fetch("POST", "/api/chat", json={"model": "ghost", "messages": []})
    assert response.code == 404 and set(json.loads(body)) == {"error"}
    response, body = server.fetch("POST", "/api/chat", data=b"{oops")
    assert (response.code, json.loads(body)) == (400, {"error": "the body is not valid JSON"})
    response, body = server.fetch("POST", "/api/chat", json={"messages": []})
    assert (response.code, json.loads(body)) == (400, {"error": "model is required"})
    response, body = server.fetch("POST", "/api/chat?fail=500", json={"model": "m", "messages": []})
    assert (response.code, json.loads(body)) == (500, {"error": "fake failure 500"})  # the server's own message


def test_a_swap_driven_only_through_api_chat_is_in_the_activity(memory):
    server = memory(CONFIG)
    for model in ("m", "other", "m"):
        _, body = server.fetch("POST", "/api/chat", json={"model": model, "messages": [], "stream": False})
        assert json.loads(body)["message"]["content"].startswith(f"{model}-0")
    server.advance(0.01)
    entries = json.loads(server.fetch("GET", "/api/metrics/activity")[1])["data"]
    assert [(entry["model"], entry["req_path"]) for entry in entries] == [
        ("m", "/api/chat"),
        ("other", "/api/chat"),
        ("m", "/api/chat"),
    ]
    assert all(entry["tokens"]["output_tokens"] == 10 for entry in entries)


def test_token_embeddings_are_averaged_into_one_vector():
    from llamaswap.http.ollama import _vector

    assert _vector([[1.0, 2.0], [3.0, 6.0]]) == [2.0, 4.0]
    assert _vector([0.5, 0.25]) == [0.5, 0.25]


def test_passthrough_sends_ollama_requests_unchanged(memory):
    server = memory(CONFIG.replace("  other:\n", "  other:\n    passthroughOllama: true\n"))
    response, body = server.fetch("POST", "/api/chat", json={"model": "other", "messages": [], "stream": False})
    assert response.code == 200 and json.loads(body)["message"]["content"] == "native ollama other"


def test_each_event_becomes_a_line_as_it_arrives(memory):
    server = memory(CONFIG)
    server.chat("m")
    response = server.run(
        server.post("/api/chat?chunks=5&delay=0.5", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    )
    collector = server.collect(response)
    server.advance(0.1)
    seen = []
    for _ in range(6):
        server.advance(0.5)
        seen.append(len(lines(b"".join(piece for _, piece in collector.pieces))))
    assert seen[:4] == [2, 3, 4, 5]  # one more line every half second, not all at the end
    assert collector.reason is not None and lines(b"".join(piece for _, piece in collector.pieces))[-1]["done"]


def test_a_peers_model_through_ollamas_api(memory):
    from llamaswap.testing.harness import InMemoryLlamaswap

    server = memory(CONFIG + "peers:\n  far:\n    proxy: http://127.0.0.1:8081\n    models: [remote]\n")
    far = InMemoryLlamaswap(f"models:\n  remote:\n    cmd: {fake('remote')}\n", world=server.world, port=8081)
    try:
        _, body = server.fetch("POST", "/api/chat", json={"model": "far/remote", "messages": [], "stream": False})
        document = json.loads(body)
        assert document["model"] == "far/remote" and document["message"]["content"].startswith("remote-0")
        _, body = server.fetch("POST", "/api/generate?chunks=2", json={"model": "far/remote", "prompt": "x"})
        assert "".join(line["response"] for line in lines(body)) == "remote-0 remote-1 "
    finally:
        far.stop()


def test_a_bug_in_a_handler_is_a_logged_500_not_a_crash(memory, monkeypatch):
    from twisted.logger import globalLogPublisher

    from llamaswap.http import ollama

    def broken(document):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ollama, "chat_request", broken)
    server = memory(CONFIG)
    logged = []
    observer = lambda event: "log_failure" in event and logged.append(event["log_failure"])  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        response, body = server.fetch("POST", "/api/chat", json={"model": "m", "messages": []})
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code == 500 and b"internal error" in body and b"a bug" not in body  # no details to the client
    assert [failure.getErrorMessage() for failure in logged] == ["a bug"]  # the details in the log
    # and the service keeps serving
    response, body = server.fetch("POST", "/api/generate", json={"model": "m", "prompt": "hi", "stream": False})
    assert response.code == 200
