"""
Every route, its answers and its error shapes, with llamaswap and its
model servers in memory (see L{llamaswap.testing.harness}).
"""

from __future__ import annotations

import html
import json

import pytest

from tests.helpers import error_message, fake, multipart

BASIC = f"""
healthCheckTimeout: 15
logLevel: debug
models:
  model1:
    cmd: {fake("model1")}
    aliases: [alias1]
    name: "Model 1"
    description: "the first"
    metadata:
      port: ${{PORT}}
      note: "id ${{MODEL_ID}}"
  model2:
    cmd: {fake("model2")}
    name: "   "
  hidden:
    cmd: {fake("hidden")}
    unlisted: true
  renamed:
    cmd: {fake("renamed")}
    useModelName: "upstream-name"
    filters:
      stripParams: "temperature, top_p, model"
  limited:
    cmd: {fake("limited")}
    concurrencyLimit: 1
  broken:
    cmd: {fake("broken", "--crash-after", "0", "--exit-code", "4")}
groups:
  free:
    swap: false
    exclusive: false
    members: [renamed, limited]
"""


@pytest.fixture
def server(memory):
    return memory(BASIC)


def location(response) -> list[str]:
    return response.headers.getRawHeaders("location")


def test_health_and_redirects(server):
    response, body = server.fetch("GET", "/health")
    assert (response.code, body) == (200, b"OK")
    response, _ = server.fetch("GET", "/", allow_redirects=False)
    assert (response.code, location(response)) == (302, ["/ui"])
    response, _ = server.fetch("GET", "/upstream", allow_redirects=False)
    assert (response.code, location(response)) == (302, ["/ui/models"])
    response, _ = server.fetch("GET", "/ui?x=1", allow_redirects=False)
    assert (response.code, location(response)) == (301, ["/ui/?x=1"])


def test_small_answers_have_a_content_length(server):
    for path in ("/health", "/v1/models", "/running", "/api/metrics", "/logs", "/nothing"):
        response, body = server.fetch("GET", path)
        assert response.length == len(body), path  # not chunked
    response, body = server.fetch("POST", "/v1/chat/completions", data=b"garbage")
    assert response.length == len(body) and error_message(body) == "missing or invalid 'model' key"


def test_unknown_paths_and_methods_are_404(server):
    for method, path in [("GET", "/nothing"), ("GET", "/v1/chat/completions"), ("DELETE", "/health")]:
        response, body = server.fetch(method, path)
        assert (response.code, body) == (404, b""), path


def test_list_models(server):
    response, body = server.fetch("GET", "/v1/models", headers={"Origin": "i-am-the-origin"})
    assert response.code == 200
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["i-am-the-origin"]
    listing = json.loads(body)
    assert listing["object"] == "list"
    ids = [entry["id"] for entry in listing["data"]]
    assert ids == ["broken", "limited", "model1", "model2", "renamed"]  # sorted, unlisted hidden
    model1 = listing["data"][2]
    assert model1["object"] == "model"
    assert model1["owned_by"] == "llama-swap"
    assert model1["created"] > 0
    assert model1["name"] == "Model 1"
    assert model1["description"] == "the first"
    port = server.config.models["model1"].proxy.rsplit(":", 1)[1]
    assert model1["meta"] == {
        "llamaswap": {"port": int(port), "note": "id model1", "type": "model", "aliases": ["alias1"]}
    }
    assert model1["status"] == {"value": "unloaded"}
    model2 = listing["data"][3]
    assert "name" not in model2 and "description" not in model2
    assert model2["meta"] == {"llamaswap": {"type": "model"}}


def test_list_models_with_aliases(memory):
    server = memory(
        f"""
        includeAliasesInList: true
        models:
          model1:
            cmd: {fake("model1")}
            name: "Model 1"
            aliases: [alias1]
        """
    )
    listing = json.loads(server.fetch("GET", "/v1/models")[1])
    assert [entry["id"] for entry in listing["data"]] == ["alias1", "model1"]
    assert listing["data"][0]["name"] == listing["data"][1]["name"] == "Model 1"


def test_chat_routes_by_model_and_alias(server):
    for requested, expected in [("model1", "model1"), ("alias1", "model1"), ("model2", "model2")]:
        response, body = server.chat(requested)
        assert response.code == 200
        assert json.loads(body)["responseMessage"] == expected
    response, body = server.fetch("GET", "/running")
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    [running] = json.loads(body)["running"]
    model = server.service.config.models["model2"]
    assert running == {
        "model": "model2",
        "state": "ready",
        "cmd": model.cmd,
        "proxy": model.proxy,
        "ttl": model.ttl,
        "name": model.name,
        "description": model.description,
        "queued": 0,
    }


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
        "/reranking",
        "/infill",
        "/completion",
    ],
)
def test_every_inference_route_is_proxied(server, path):
    response, body = server.fetch("POST", path, json={"model": "model1", "input": "x", "documents": ["a"]})
    assert response.code == 200, path
    assert json.loads(body)["responseMessage"] == "model1"


def test_speech_is_relayed_as_audio(server):
    response, body = server.fetch("POST", "/v1/audio/speech", json={"model": "model1", "input": "hello"})
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert body.startswith(b"RIFF")


@pytest.mark.parametrize(
    "body, code, message",
    [
        (b"not json", 400, "missing or invalid 'model' key"),
        (b'{"model": ', 400, "missing or invalid 'model' key"),
        (b"[1, 2]", 400, "missing or invalid 'model' key"),
        (b'{"messages": []}', 400, "missing or invalid 'model' key"),
        (b'{"model": 42}', 400, "missing or invalid 'model' key"),
        (b'{"model": ""}', 400, "missing or invalid 'model' key"),
        (b"\xff\xfe not utf-8", 400, "missing or invalid 'model' key"),
        (b'{"model": "nope"}', 404, "could not find real modelID for nope"),
    ],
)
def test_bad_requests_as_json_text_and_html(server, body, code, message):
    response, answer = server.fetch("POST", "/v1/chat/completions", data=body)
    assert response.code == code
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    kind, error_code = ("invalid_request_error", "bad_request" if code == 400 else "not_found")
    assert json.loads(answer) == {
        "src": "llama-swap",
        "error": {"message": message, "type": kind, "param": None, "code": error_code},
    }
    response, answer = server.fetch("POST", "/v1/chat/completions", data=body, headers={"Accept": "text/plain"})
    assert response.code == code
    assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    assert answer.decode() == message
    response, answer = server.fetch("POST", "/v1/chat/completions", data=body, headers={"Accept": "text/html"})
    assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert html.escape(message).encode() in answer
    assert server.service.manager.running_models() == []


def test_upstream_that_cannot_start_is_502_and_retried(server):
    response, body = server.chat("broken")
    assert response.code == 502
    text = error_message(body)
    assert text.startswith("unable to start process: ")
    assert "exited with code 4" in text
    assert "crashing on purpose" in text  # the server's own last words
    assert server.state("broken") == "stopped"
    response, _ = server.chat("broken")
    assert response.code == 502  # tried again, failed again
    assert len([process for process in server.processes if "broken" in process.command]) == 2


def test_use_model_name_strip_params_and_content_length(server):
    body = b'{"model":"renamed", "temperature":0.1, "x_param":"123", "y_param":"abc", "top_p": 1}'
    response, answer = server.fetch("POST", "/v1/chat/completions", data=body)
    assert response.code == 200
    echoed = json.loads(answer)
    expected = b'{"model":"upstream-name", "x_param":"123", "y_param":"abc"}'
    assert echoed["request_body"] == expected.decode()
    assert echoed["h_content_length"] == str(len(expected))


def test_chunked_request_body_is_forwarded_with_a_length(server):
    body = b'{"model":"model1","x":1}'
    client = server.connect()
    client.transport.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    )
    server.advance(1)
    head, _, answer = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(answer)
    assert echoed["request_body"] == body.decode()
    assert echoed["h_content_length"] == str(len(body))


def test_unchanged_body_is_forwarded_byte_for_byte(server):
    body = b'{ "model" : "model1",\n  "x": "this is just some content to push the length out a bit" }'
    echoed = json.loads(server.fetch("POST", "/v1/chat/completions", data=body)[1])
    assert echoed["request_body"] == body.decode()
    assert echoed["h_content_length"] == str(len(body))


def test_concurrency_limit_429(server):
    slow = server.post("/v1/chat/completions?wait=1", json={"model": "limited"})
    server.advance(0.1)
    response, body = server.chat("limited")
    assert (response.code, error_message(body)) == (429, "Too many requests")
    [retry_after] = response.headers.getRawHeaders("retry-after")
    assert int(retry_after) >= 1
    assert json.loads(body)["error"]["code"] == "concurrency_limit"
    # JSON whatever the client accepts: clients retry on it by machine
    response, body = server.fetch(
        "POST", "/v1/chat/completions", json={"model": "limited"}, headers={"Accept": "text/plain"}
    )
    assert response.code == 429 and response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert server.run(slow).code == 200


def test_cors_preflight(server):
    response, body = server.fetch("OPTIONS", "/v1/chat/completions")
    assert (response.code, body) == (204, b"")
    headers = response.headers
    assert headers.getRawHeaders("access-control-allow-origin") == ["*"]
    assert headers.getRawHeaders("access-control-allow-methods") == ["GET, POST, PUT, PATCH, DELETE, OPTIONS"]
    assert headers.getRawHeaders("access-control-allow-headers") == [
        "Content-Type, Authorization, Accept, X-Requested-With"
    ]
    assert headers.getRawHeaders("access-control-max-age") == ["86400"]
    response, _ = server.fetch(
        "OPTIONS", "/anything/at/all", headers={"Access-Control-Request-Headers": "X-Custom-Header, bad header, Some-Other"}
    )
    assert response.code == 204
    assert response.headers.getRawHeaders("access-control-allow-headers") == ["X-Custom-Header, Some-Other"]


def test_upstream_passthrough(server):
    assert server.fetch("GET", "/upstream/model1/test")[1] == b"model1"
    assert server.fetch("GET", "/upstream/alias1/test")[1] == b"model1"
    response, body = server.fetch("PUT", "/upstream/model2/echo/a%2Fb?x=1&y=2", data=b"payload")
    echoed = json.loads(body)
    assert echoed["method"] == "PUT"
    assert echoed["uri"] == "/echo/a%2Fb?x=1&y=2"
    assert echoed["body_length"] == 7
    response, body = server.fetch("GET", "/upstream/nope/test")
    assert (response.code, error_message(body)) == (404, "model not found")


def test_upstream_model_ids_with_slashes(memory):
    server = memory(
        f"""
        models:
          author/model:F16:
            cmd: {fake("slashed")}
        """
    )
    assert server.fetch("GET", "/upstream/author/model:F16/test")[1] == b"slashed"


def test_upstream_redirects_to_trailing_slash(server):
    response, _ = server.fetch("GET", "/upstream/model1?x=1", allow_redirects=False)
    assert (response.code, location(response)) == (301, ["/upstream/model1/?x=1"])
    response, _ = server.fetch("POST", "/upstream/model1", allow_redirects=False)
    assert (response.code, location(response)) == (308, ["/upstream/model1/"])
    assert server.state("model1") == "stopped"


def test_unload_endpoints(server):
    server.chat("renamed")
    server.chat("limited")
    response, body = server.fetch("POST", "/api/models/unload/nope")
    assert (response.code, error_message(body)) == (404, "Model not found")
    response, body = server.fetch("POST", "/api/models/unload/renamed")
    assert (response.code, body) == (200, b"OK")
    assert server.state("renamed") == "stopped"
    assert server.state("limited") == "ready"
    assert server.fetch("GET", "/unload")[1] == b"OK"
    assert server.state("limited") == "stopped"
    server.chat("model1")
    assert json.loads(server.fetch("POST", "/api/models/unload")[1]) == {"msg": "ok"}
    assert server.state("model1") == "stopped"


def test_access_log_line(server):
    server.fetch("GET", "/health", headers={"User-Agent": "test-agent/1.0"})
    server.advance(0.01)  # written once the answer is on its way
    history = server.service.logs.proxy_monitor.history().decode()
    line = [entry for entry in history.splitlines() if "GET /health" in entry][-1]
    assert line.startswith('[INFO] Request 127.0.0.1 "GET /health HTTP/1.1" 200 2 "test-agent/1.0" ')


def test_streaming_chat_is_relayed_with_sse_headers(server):
    response, body = server.chat("model1", stream=True)
    assert response.code == 200
    assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    contents = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:10]]
    assert contents == [f"model1-{index} " for index in range(10)]


def test_transcription_multipart(server):
    audio = bytes(range(256)) * 4
    body, content_type = multipart({"model": "model1", "language": "en"}, {"file": ("test.mp3", "audio/mpeg", audio)})
    response, answer = server.fetch(
        "POST", "/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    )
    assert response.code == 200
    answer = json.loads(answer)
    assert answer["model"] == "model1"
    assert answer["filename"] == "test.mp3"
    assert answer["text"] == f"The length of the file is {len(audio)} bytes"
    body, content_type = multipart({"model": "renamed"}, {"file": ("a.wav", "audio/wav", b"abc")})
    answer = json.loads(
        server.fetch("POST", "/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type})[1]
    )
    assert answer["model"] == "upstream-name"
    assert answer["text"] == "The length of the file is 3 bytes"
    assert int(answer["h_content_length"]) == len(body) - len(b"renamed") + len(b"upstream-name")


@pytest.mark.parametrize(
    "body, content_type, code, message",
    [
        (
            multipart({"language": "en"}, {"file": ("a.wav", "audio/wav", b"abc")})[0],
            multipart({}, {})[1],
            400,
            "missing or invalid 'model' parameter in form data",
        ),
        (b"plain", "text/plain", 400, "error parsing multipart form: expected multipart/form-data, got text/plain"),
        (b"plain", "multipart/form-data", 400, "error parsing multipart form: the multipart boundary is missing"),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmodel1",
            "multipart/form-data; boundary=b",
            400,
            "error parsing multipart form: the multipart body is truncated",
        ),
        (
            multipart({"model": "nope"}, {})[0],
            multipart({}, {})[1],
            404,
            "could not find real modelID for nope",
        ),
    ],
)
def test_transcription_errors(server, body, content_type, code, message):
    response, answer = server.fetch(
        "POST", "/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    )
    assert (response.code, error_message(answer)) == (code, message)


def test_ui_files_and_fallback(server):
    response, html = server.fetch("GET", "/ui/")
    assert response.code == 200
    assert b"<!doctype" in html.lower()
    # client-side routes get the page too, its <base> leading back to /ui/
    deep, page = server.fetch("GET", "/ui/models/some/route")
    assert b'<base href="./">' in html
    assert page == html.replace(b'<base href="./">', b'<base href="../../">')
    assert deep.headers.getRawHeaders("etag") != response.headers.getRawHeaders("etag")
    assert server.fetch("GET", "/ui/activity/")[1] == html.replace(b'<base href="./">', b'<base href="../">')
    response, body = server.fetch("GET", "/ui/app.css")
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/css")
    assert b"root:" not in server.fetch("GET", "/ui/../../etc/passwd")[1]


@pytest.mark.parametrize(
    "path, accept, location",
    [
        ("/", "", "/llama/ui"),
        ("/ui?x=1", "", "/llama/ui/?x=1"),
        ("/logs", "text/html", "/llama/ui/"),
        ("/upstream", "", "/llama/ui/models"),
        ("/upstream/model1", "", "/llama/upstream/model1/"),
    ],
)
def test_redirects_behind_a_proxy_keep_its_prefix(server, path, accept, location):
    headers = {"X-Forwarded-Prefix": "/llama/", "Accept": accept}
    response, _ = server.fetch("GET", path, headers=headers, allow_redirects=False)
    assert response.headers.getRawHeaders("location") == [location]


@pytest.mark.parametrize("prefix", ["//evil.example", "https://evil.example", "/a b", "/a/../b", "relative", "/%2f"])
def test_a_prefix_that_is_not_a_plain_path_is_ignored(server, prefix):
    response, _ = server.fetch("GET", "/", headers={"X-Forwarded-Prefix": prefix}, allow_redirects=False)
    assert response.headers.getRawHeaders("location") == ["/ui"]


def test_parallel_requests_to_three_models_of_a_swap_group(memory):
    server = memory(
        f"""
        models:
          m1:
            cmd: {fake("m1")}
          m2:
            cmd: {fake("m2")}
          m3:
            cmd: {fake("m3")}
        """
    )
    waiting = [server.post("/v1/chat/completions?wait=0.3", json={"model": name}) for name in ("m1", "m2", "m3")]
    bodies = [json.loads(server.run(server.run(request).content())) for request in waiting]
    assert [body["responseMessage"] for body in bodies] == ["m1", "m2", "m3"]


def test_favicon_and_wol_health(server):
    response, body = server.fetch("GET", "/favicon.ico")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["image/x-icon"]
    assert body.startswith(b"\x00\x00\x01\x00")  # an ICO file
    assert server.fetch("GET", "/wol-health")[1] == b"OK"
    server.advance(0.01)
    history = server.service.logs.proxy_monitor.history().decode()
    assert "GET /favicon.ico" in history
    assert "GET /wol-health" not in history  # the wake-on-LAN proxy's checks are not logged


def test_polled_paths_stay_out_of_the_access_log(server):
    for path in ("/metrics", "/api/performance", "/api/performance?after=2026-01-01T00:00:00Z", "/health"):
        server.fetch("GET", path)
    server.advance(0.01)
    history = server.service.logs.proxy_monitor.history().decode()
    assert "GET /metrics" not in history and "GET /api/performance" not in history  # scraped all day
    assert '"GET /health HTTP/1.1" 200' in history


ODD_PATHS = [
    b"//etc/passwd",
    b"/%2fetc%2fpasswd",
    b"/%2Fetc%2Fpasswd",
    b"/../../../../etc/passwd",
    b"/..%2f..%2f..%2fetc%2fpasswd",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/./././etc/passwd",
    b"/..\\..\\etc\\passwd",
    b"/%5c..%5c..%5cetc%5cpasswd",
    b"/%00",
    b"/a%00b",
    b"/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    b"/%c0%af",
    b"/\xc0\xaf",
    b"/%ff%fe",
    b"/\xff",
    b"/%",
    b"/%zz",
    b"//",
    b"///",
]
PREFIXES = [b"", b"/ui", b"/ui/", b"/upstream", b"/upstream/model1", b"/logs/stream", b"/api/models/unload", b"/v1", b"/api"]


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda prefix: prefix.decode())
def test_odd_paths_are_refused_or_redirected_never_an_error(server, prefix):
    for path in ODD_PATHS:
        for method in (b"GET", b"POST"):
            answer = server.raw(method + b" " + prefix + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 1)
            status = answer.split(b"\r\n", 1)[0]
            assert status.startswith(b"HTTP/1.1 "), (prefix + path, answer[:200])
            code = int(status.split()[1])
            if prefix.startswith(b"/upstream/model1") and code == 200:
                assert b"root:" not in answer  # the model server's own answer
                continue
            assert 300 <= code < 500, (method, prefix + path, answer[:300])
            assert b"root:" not in answer
    assert "internal error" not in server.service.logs.proxy_monitor.history().decode()


def test_without_a_health_check_the_first_request_waits_until_the_server_listens(memory):
    server = memory(
        f"""
        models:
          late:
            cmd: {fake("late", "--startup-delay", "1.5")}
            checkEndpoint: none
        """
    )
    started = server.reactor.seconds()
    response, body = server.chat("late")
    assert response.code == 200  # not "connection refused"
    assert json.loads(body)["responseMessage"] == "late"
    assert 1.5 <= server.reactor.seconds() - started < 1.7


def test_without_a_health_check_a_server_that_never_listens_fails_after_the_timeout(memory):
    server = memory(
        f"""
        healthCheckTimeout: 15
        models:
          silent:
            cmd: {fake("silent", "--startup-delay", "3600")}
            checkEndpoint: none
        """
    )
    started = server.reactor.seconds()
    response, body = server.chat("silent")
    assert response.code == 502
    assert b"health check timed out after 15s" in body and b"connection refused" in body
    assert 15 <= server.reactor.seconds() - started < 16


def test_a_models_settings_with_secrets_masked(memory):
    from tests.helpers import PYTHON, yaml_quote

    command = f"{PYTHON} -m llamaswap.testing.upstream --port ${{PORT}} --api-key sk-very-secret --hf-token=hf_abc --note sk-configured"
    server = memory(
        "apiKeys: [sk-configured]\n"
        "models:\n"
        "  m:\n"
        f"    cmd: {yaml_quote(command)}\n"
        "    env: [HF_TOKEN=hf_xyz, MODE=fast]\n"
        "    aliases: [gpt]\n"
        "    metadata: {family: llama}\n"
        "    capabilities: {in: [text, image], tools: true, context: 8192}\n"
    )
    response, body = server.fetch("GET", "/api/models/gpt", headers={"Authorization": "Bearer sk-configured"})
    document = json.loads(body)
    assert response.code == 200 and document["id"] == "m" and document["state"] == "stopped"
    for secret in (b"sk-very-secret", b"hf_abc", b"hf_xyz", b"sk-configured"):
        assert secret not in body
    assert "--api-key ••••••" in document["cmd"] and "--hf-token=••••••" in document["cmd"]
    assert document["env"] == ["HF_TOKEN=••••••", "MODE=fast"]
    assert document["capabilities"]["in"] == ["text", "image"] and document["capabilities"]["context"] == 8192
    assert document["metadata"] == {"family": "llama"} and document["aliases"] == ["gpt"]
    missing = server.fetch("GET", "/api/models/ghost", headers={"Authorization": "Bearer sk-configured"})
    assert missing[0].code == 404
