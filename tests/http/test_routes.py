"""
The HTTP surface on real sockets: every route, error shape, rewriting, and
the streaming proxy against the fake upstream.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet.defer import gatherResults, succeed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.helpers import PYTHON, fake, json_of, sleep, yaml_quote


@implementer(IBodyProducer)
class ChunkedBody:
    """
    A request body of unannounced length: sent with chunked encoding.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes):
        self.data = data

    def startProducing(self, consumer):
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


BROKEN = yaml_quote(PYTHON + """ -c "import sys; print('cannot load weights'); sys.exit(4)" ${PORT}""")

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
    cmd: {BROKEN}
groups:
  free:
    swap: false
    exclusive: false
    members: [renamed, limited]
"""


@pytest_twisted.inlineCallbacks
def test_health_and_redirects(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.get("/health")
    assert response.code == 200
    assert (yield response.text()) == "OK"
    response = yield server.get("/", allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["/ui"]
    response = yield server.get("/upstream", allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["/ui/models"]
    response = yield server.get("/ui?x=1", allow_redirects=False)
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/ui/?x=1"]


@pytest_twisted.inlineCallbacks
def test_small_answers_have_a_content_length(llamaswap):
    server = llamaswap(BASIC)
    for path in ("/health", "/v1/models", "/running", "/api/metrics", "/logs", "/nothing"):
        response = yield server.get(path)
        body = yield response.content()
        assert response.length == len(body), path  # not chunked
    response = yield server.post("/v1/chat/completions", data=b"garbage")
    assert response.length == len(b"missing or invalid 'model' key")


@pytest_twisted.inlineCallbacks
def test_unknown_paths_and_methods_are_404(llamaswap):
    server = llamaswap(BASIC)
    for method, path in [("GET", "/nothing"), ("GET", "/v1/chat/completions"), ("DELETE", "/health")]:
        response = yield server.request(method, path)
        assert response.code == 404, path
        assert (yield response.content()) == b""


@pytest_twisted.inlineCallbacks
def test_list_models(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.get("/v1/models", headers={"Origin": "i-am-the-origin"})
    assert response.code == 200
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["i-am-the-origin"]
    body = yield json_of(response)
    assert body["object"] == "list"
    ids = [entry["id"] for entry in body["data"]]
    assert ids == ["broken", "limited", "model1", "model2", "renamed"]  # sorted, unlisted hidden
    model1 = body["data"][2]
    assert model1["object"] == "model"
    assert model1["owned_by"] == "llama-swap"
    assert model1["created"] > 0
    assert model1["name"] == "Model 1"
    assert model1["description"] == "the first"
    port = server.service.config.models["model1"].proxy.rsplit(":", 1)[1]
    assert model1["meta"] == {"llamaswap": {"port": int(port), "note": "id model1"}}
    model2 = body["data"][3]
    assert "name" not in model2 and "description" not in model2 and "meta" not in model2


@pytest_twisted.inlineCallbacks
def test_list_models_with_aliases(llamaswap):
    server = llamaswap(
        f"""
        includeAliasesInList: true
        models:
          model1:
            cmd: {fake("model1")}
            name: "Model 1"
            aliases: [alias1]
        """
    )
    body = yield json_of((yield server.get("/v1/models")))
    assert [entry["id"] for entry in body["data"]] == ["alias1", "model1"]
    assert body["data"][0]["name"] == body["data"][1]["name"] == "Model 1"


@pytest_twisted.inlineCallbacks
def test_chat_routes_by_model_and_alias(llamaswap):
    server = llamaswap(BASIC)
    for requested, expected in [("model1", "model1"), ("alias1", "model1"), ("model2", "model2")]:
        response = yield server.chat(requested)
        assert response.code == 200
        body = yield json_of(response)
        assert body["responseMessage"] == expected
    running = yield json_of((yield server.get("/running")))
    assert running == {"running": [{"model": "model2", "state": "ready"}]}


@pytest_twisted.inlineCallbacks
def test_every_inference_route_is_proxied(llamaswap):
    server = llamaswap(BASIC)
    paths = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
        "/reranking",
        "/infill",
        "/completion",
    ]
    for path in paths:
        response = yield server.post(path, json={"model": "model1", "input": "x", "documents": ["a"]})
        assert response.code == 200, path
        body = yield json_of(response)
        assert body["responseMessage"] == "model1", path
    response = yield server.post("/v1/audio/speech", json={"model": "model1", "input": "hello"})
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert (yield response.content()).startswith(b"RIFF")


@pytest_twisted.inlineCallbacks
def test_bad_requests(llamaswap):
    server = llamaswap(BASIC)
    cases = [
        (b"not json", 400, "missing or invalid 'model' key"),
        (b'{"model": ', 400, "missing or invalid 'model' key"),
        (b"[1, 2]", 400, "missing or invalid 'model' key"),
        (b'{"messages": []}', 400, "missing or invalid 'model' key"),
        (b'{"model": 42}', 400, "missing or invalid 'model' key"),
        (b'{"model": ""}', 400, "missing or invalid 'model' key"),
        (b'{"model": "nope"}', 400, "could not find real modelID for nope"),
    ]
    for body, code, message in cases:
        response = yield server.post("/v1/chat/completions", data=body)
        assert response.code == code, body
        assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
        assert (yield response.text()) == message
        response = yield server.post(
            "/v1/chat/completions", data=body, headers={"Accept": "application/json"}
        )
        assert response.code == code
        assert response.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
        assert (yield json_of(response)) == {"error": message}
    assert server.service.manager.running_models() == []


@pytest_twisted.inlineCallbacks
def test_upstream_that_cannot_start_is_502_and_retried(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.chat("broken")
    assert response.code == 502
    text = yield response.text()
    assert text.startswith("unable to start process: ")
    assert "exited with code 4" in text
    assert "cannot load weights" in text
    assert server.state("broken") == "stopped"
    response = yield server.chat("broken", )
    assert response.code == 502  # tried again, failed again
    starts = [event for event in server.events if event.model == "broken" and event.new == "starting"]
    assert len(starts) == 2


@pytest_twisted.inlineCallbacks
def test_use_model_name_strip_params_and_content_length(llamaswap):
    server = llamaswap(BASIC)
    body = b'{"model":"renamed", "temperature":0.1, "x_param":"123", "y_param":"abc", "top_p": 1}'
    response = yield server.post("/v1/chat/completions", data=ChunkedBody(body))  # no Content-Length
    assert response.code == 200
    echoed = yield json_of(response)
    expected = b'{"model":"upstream-name", "x_param":"123", "y_param":"abc"}'
    assert echoed["request_body"] == expected.decode()
    assert echoed["h_content_length"] == str(len(expected))


@pytest_twisted.inlineCallbacks
def test_unchanged_body_is_forwarded_byte_for_byte(llamaswap):
    server = llamaswap(BASIC)
    body = b'{ "model" : "model1",\n  "x": "this is just some content to push the length out a bit" }'
    echoed = yield json_of((yield server.post("/v1/chat/completions", data=body)))
    assert echoed["request_body"] == body.decode()
    assert echoed["h_content_length"] == str(len(body))


@pytest_twisted.inlineCallbacks
def test_concurrency_limit_429(llamaswap):
    server = llamaswap(BASIC)
    slow = server.post("/v1/chat/completions?wait=1", json={"model": "limited"})
    yield sleep(0.1)
    response = yield server.chat("limited")
    assert response.code == 429
    assert (yield response.text()) == "Too many requests"
    assert (yield slow).code == 200


@pytest_twisted.inlineCallbacks
def test_cors_preflight(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.request("OPTIONS", "/v1/chat/completions")
    assert response.code == 204
    headers = response.headers
    assert headers.getRawHeaders("access-control-allow-origin") == ["*"]
    assert headers.getRawHeaders("access-control-allow-methods") == ["GET, POST, PUT, PATCH, DELETE, OPTIONS"]
    assert headers.getRawHeaders("access-control-allow-headers") == [
        "Content-Type, Authorization, Accept, X-Requested-With"
    ]
    assert headers.getRawHeaders("access-control-max-age") == ["86400"]
    response = yield server.request(
        "OPTIONS", "/anything/at/all", headers={"Access-Control-Request-Headers": "X-Custom-Header, bad header, Some-Other"}
    )
    assert response.code == 204
    assert response.headers.getRawHeaders("access-control-allow-headers") == ["X-Custom-Header, Some-Other"]


@pytest_twisted.inlineCallbacks
def test_upstream_passthrough(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.get("/upstream/model1/test")
    assert response.code == 200
    assert (yield response.text()) == "model1"
    response = yield server.get("/upstream/alias1/test")
    assert (yield response.text()) == "model1"
    response = yield server.request("PUT", "/upstream/model2/echo/a%2Fb?x=1&y=2", data=b"payload")
    echoed = yield json_of(response)
    assert echoed["method"] == "PUT"
    assert echoed["uri"] == "/echo/a%2Fb?x=1&y=2"
    assert echoed["body_length"] == 7
    response = yield server.get("/upstream/nope/test")
    assert response.code == 400
    assert (yield response.text()) == "model id required in path"


@pytest_twisted.inlineCallbacks
def test_upstream_model_ids_with_slashes(llamaswap):
    server = llamaswap(
        f"""
        models:
          author/model:F16:
            cmd: {fake("slashed")}
        """
    )
    response = yield server.get("/upstream/author/model:F16/test")
    assert (yield response.text()) == "slashed"


@pytest_twisted.inlineCallbacks
def test_upstream_redirects_to_trailing_slash(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.get("/upstream/model1?x=1", allow_redirects=False)
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/upstream/model1/?x=1"]
    response = yield server.post("/upstream/model1", allow_redirects=False)
    assert response.code == 308
    assert response.headers.getRawHeaders("location") == ["/upstream/model1/"]
    assert server.state("model1") == "stopped"


@pytest_twisted.inlineCallbacks
def test_unload_endpoints(llamaswap):
    server = llamaswap(BASIC)
    yield server.chat("renamed")
    yield server.chat("limited")
    response = yield server.post("/api/models/unload/nope")
    assert response.code == 404
    assert (yield response.text()) == "Model not found"
    response = yield server.post("/api/models/unload/renamed")
    assert response.code == 200
    assert (yield response.text()) == "OK"
    assert server.state("renamed") == "stopped"
    assert server.state("limited") == "ready"
    response = yield server.get("/unload")
    assert (yield response.text()) == "OK"
    assert server.state("limited") == "stopped"
    yield server.chat("model1")
    response = yield server.post("/api/models/unload")
    assert (yield json_of(response)) == {"msg": "ok"}
    assert server.state("model1") == "stopped"


@pytest_twisted.inlineCallbacks
def test_access_log_line(llamaswap):
    server = llamaswap(BASIC)
    yield server.get("/health", headers={"User-Agent": "test-agent/1.0"})
    history = server.service.logs.proxy_monitor.history().decode()
    line = [entry for entry in history.splitlines() if "GET /health" in entry][-1]
    assert line.startswith("[INFO] Request 127.0.0.1 \"GET /health HTTP/1.1\" 200 2 \"test-agent/1.0\" ")


@pytest_twisted.inlineCallbacks
def test_streaming_chat_is_relayed_with_sse_headers(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.chat("model1", stream=True)
    assert response.code == 200
    assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    text = yield response.text()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    contents = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:10]]
    assert contents == [f"model1-{index} " for index in range(10)]


@pytest_twisted.inlineCallbacks
def test_transcription_multipart(llamaswap):
    server = llamaswap(BASIC)
    audio = bytes(range(256)) * 4
    response = yield treq.post(
        server.url + "/v1/audio/transcriptions",
        data={"model": "model1", "language": "en"},
        files={"file": ("test.mp3", "audio/mpeg", __import__("io").BytesIO(audio))},
    )
    assert response.code == 200
    body = yield json_of(response)
    assert body["model"] == "model1"
    assert body["filename"] == "test.mp3"
    assert body["text"] == f"The length of the file is {len(audio)} bytes"
    response = yield treq.post(
        server.url + "/v1/audio/transcriptions",
        data={"model": "renamed"},
        files={"file": ("a.wav", "audio/wav", __import__("io").BytesIO(b"abc"))},
    )
    body = yield json_of(response)
    assert body["model"] == "upstream-name"
    assert body["text"] == "The length of the file is 3 bytes"
    assert int(body["h_content_length"]) > 0
    response = yield treq.post(server.url + "/v1/audio/transcriptions", data={"language": "en"},
                               files={"file": ("a.wav", "audio/wav", __import__("io").BytesIO(b"abc"))})
    assert response.code == 400
    assert (yield response.text()) == "missing or invalid 'model' parameter in form data"
    response = yield server.post("/v1/audio/transcriptions", data=b"plain")
    assert response.code == 400


@pytest_twisted.inlineCallbacks
def test_ui_files_and_fallback(llamaswap):
    server = llamaswap(BASIC)
    index = yield server.get("/ui/")
    assert index.code == 200
    html = yield index.text()
    assert "<html" in html.lower() or "<!doctype" in html.lower()
    deep = yield server.get("/ui/models/some/route")
    assert (yield deep.text()) == html
    traversal = yield server.get("/ui/../../etc/passwd")
    assert "root:" not in (yield traversal.text())


@pytest_twisted.inlineCallbacks
def test_parallel_requests_to_three_models_of_a_swap_group(llamaswap):
    server = llamaswap(
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
    responses = yield gatherResults(
        [server.post("/v1/chat/completions?wait=0.3", json={"model": name}) for name in ("m1", "m2", "m3")]
    )
    bodies = yield gatherResults([json_of(response) for response in responses])
    assert [body["responseMessage"] for body in bodies] == ["m1", "m2", "m3"]


@pytest_twisted.inlineCallbacks
def test_favicon_and_wol_health(llamaswap):
    server = llamaswap(BASIC)
    response = yield server.get("/favicon.ico")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["image/x-icon"]
    assert (yield response.content()).startswith(b"\x00\x00\x01\x00")  # an ICO file
    response = yield server.get("/wol-health")
    assert (yield response.text()) == "OK"
    history = server.service.logs.proxy_monitor.history().decode()
    assert "GET /favicon.ico" in history
    assert "GET /wol-health" not in history  # the wake-on-LAN proxy's checks are not logged
