"""
The streaming reverse proxy under stress: chunk-by-chunk delivery,
backpressure with slow readers, clients and upstreams that vanish, the
loading-state stream, hostile requests, and the official openai SDK.
"""

from __future__ import annotations

import base64
import io
import json
import socket

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers

from llamaswap.http.site import LlamaswapRequest
from tests.helpers import Body, fake, json_of, read_body, sleep

CONFIG = f"""
logLevel: debug
sendLoadingState: false
models:
  m:
    cmd: {fake("m")}
    aliases: [gpt-4o-mini]
  slowstart:
    cmd: {fake("slowstart", "--startup-delay", "1.5")}
    sendLoadingState: true
  doomed:
    cmd: {fake("doomed", "--startup-delay", "5", "--crash-after", "0.3", "--exit-code", "5")}
    sendLoadingState: true
groups:
  all:
    swap: false
    exclusive: false
    members: [m, slowstart, doomed]
"""


def request(server, method: bytes, path: str, body: bytes | None = None) -> Deferred:
    from twisted.web.client import FileBodyProducer

    agent = Agent(reactor)
    producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
    return agent.request(method, (server.url + path).encode(), Headers({}), producer)


@pytest_twisted.inlineCallbacks
def test_chunks_arrive_one_by_one(llamaswap):
    server = llamaswap(CONFIG)
    body = json.dumps({"model": "m", "stream": True}).encode()
    response = yield request(server, b"POST", "/v1/chat/completions?chunks=6&delay=0.15", body)
    recorder = Body()
    response.deliverBody(recorder)
    yield recorder.done
    assert recorder.reason.check(ResponseDone)
    content_arrivals = [moment for moment, piece in recorder.pieces if b'"content"' in piece]
    assert len(content_arrivals) == 6  # each chunk on its own, not coalesced
    gaps = [later - earlier for earlier, later in zip(content_arrivals, content_arrivals[1:])]
    assert all(gap > 0.1 for gap in gaps), gaps


@pytest_twisted.inlineCallbacks
def test_slow_reader_pauses_the_upstream_and_memory_stays_bounded(llamaswap):
    """
    300 MB flow through the proxy to a client that stops reading for two
    seconds: the proxy must pause the upstream instead of buffering.
    """
    server = llamaswap(CONFIG)
    yield server.chat("m")
    me = psutil.Process()
    before = me.memory_info().rss
    client = socket.create_connection(("127.0.0.1", server.port))
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    total = 300 * 1024 * 1024
    client.sendall(
        f"GET /upstream/m/big?total={total}&chunk=65536&length=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    yield sleep(2.0)  # not reading at all
    during = me.memory_info().rss
    assert during - before < 40 * 1024 * 1024, f"proxy grew by {(during - before) >> 20} MB"
    received = 0
    while received < total:
        try:
            data = client.recv(1024 * 1024)
        except BlockingIOError:
            yield sleep(0.001)
            continue
        if not data:
            break
        received += len(data)
    client.close()
    assert received > total  # headers + the whole body
    assert me.memory_info().rss - before < 60 * 1024 * 1024


@pytest_twisted.inlineCallbacks
def test_client_disconnect_cancels_the_upstream_request(llamaswap):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    body = json.dumps({"model": "m", "stream": True}).encode()
    response = yield request(server, b"POST", "/v1/chat/completions?chunks=50&delay=0.1", body)
    recorder = Body()
    response.deliverBody(recorder)
    yield sleep(0.35)
    assert server.process("m").inflight == 1
    recorder.transport.stopProducing()  # the client goes away mid-stream
    yield sleep(0.3)
    assert server.process("m").inflight == 0  # the lease was released
    history = server.service.logs.upstream.history().decode()
    assert "client disconnected from /v1/chat/completions" in history
    # the service is fine and the model still serves others
    assert (yield server.chat("m")).code == 200


@pytest_twisted.inlineCallbacks
def test_upstream_crash_mid_sse_stream_ends_it_with_an_error_event(llamaswap):
    server = llamaswap(CONFIG)
    body = json.dumps({"model": "m", "stream": True}).encode()
    response = yield request(server, b"POST", "/v1/chat/completions?chunks=20&delay=0.05&die_after=3", body)
    recorder = Body()
    response.deliverBody(recorder)
    yield recorder.done
    assert recorder.reason.check(ResponseDone)  # a clean end for the client
    events = [line[6:] for line in recorder.data.decode().split("\n") if line.startswith("data: ")]
    assert len(events) == 4
    assert "stopped responding" in json.loads(events[-1])["error"]["message"]
    yield server.wait_for_state("m", "stopped")
    assert (yield server.chat("m")).code == 200  # restarted on demand


@pytest_twisted.inlineCallbacks
def test_upstream_crash_mid_plain_response_cuts_the_connection(llamaswap):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    response = yield request(server, b"GET", "/upstream/m/big?total=10000000&chunk=65536&die_at=1000000&length=1")
    recorder = Body()
    response.deliverBody(recorder)
    yield recorder.done
    assert not recorder.reason.check(ResponseDone)  # the client knows the body is incomplete
    assert len(recorder.data) < 10000000
    assert (yield server.get("/health")).code == 200


@pytest_twisted.inlineCallbacks
def test_loading_state_stream_then_real_answer(llamaswap):
    server = llamaswap(CONFIG)
    response = yield server.chat("slowstart", stream=True)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    text = yield response.text()
    events = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    reasoning = "".join(event["choices"][0]["delta"].get("reasoning_content", "") for event in events if event.get("choices"))
    assert "llamaswap loading model: slowstart" in reasoning
    assert "." in reasoning
    assert "Done! (" in reasoning
    contents = [event["choices"][0]["delta"].get("content") for event in events if event.get("choices") and "content" in event["choices"][0]["delta"]]
    assert contents[0] == "slowstart-0 "
    assert text.rstrip().endswith("data: [DONE]")


@pytest_twisted.inlineCallbacks
def test_loading_state_reports_a_failed_start(llamaswap):
    server = llamaswap(CONFIG)
    response = yield server.chat("doomed", stream=True)
    assert response.code == 200
    text = yield response.text()
    assert "Unable to swap model err: unable to start process" in text
    assert "exited with code 5" in text


@pytest_twisted.inlineCallbacks
def test_loading_state_only_for_streaming_requests_of_cold_models(llamaswap):
    server = llamaswap(CONFIG)
    response = yield server.chat("slowstart")  # not streaming: a plain answer
    body = yield json_of(response)
    assert body["responseMessage"] == "slowstart"
    response = yield server.chat("slowstart", stream=True)  # already ready: no loading messages
    text = yield response.text()
    assert "reasoning_content" not in text


@inlineCallbacks
def raw_exchange(port: int, data: bytes, seconds: float = 1.0):
    """
    Send raw bytes and collect what comes back until the server closes the
    connection (or C{seconds} pass).
    """
    client = socket.create_connection(("127.0.0.1", port))
    try:
        client.sendall(data)
    except OSError:
        pass
    client.setblocking(False)
    answer = b""
    for _ in range(int(seconds / 0.01)):
        yield sleep(0.01)
        try:
            piece = client.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not piece:
            break
        answer += piece
    client.close()
    return answer


@pytest_twisted.inlineCallbacks
def test_ambiguous_content_length_and_transfer_encoding(llamaswap):
    server = llamaswap(CONFIG)
    answer = yield raw_exchange(
        server.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert server.service.manager.running_models() == []


@pytest_twisted.inlineCallbacks
def test_huge_headers_are_refused(llamaswap):
    server = llamaswap(CONFIG)
    answer = yield raw_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    answer = yield raw_exchange(
        server.port, b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(1000)) + b"\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert (yield server.get("/health")).code == 200


@pytest_twisted.inlineCallbacks
def test_oversized_body_is_refused_before_it_is_read(llamaswap, monkeypatch):
    monkeypatch.setattr(LlamaswapRequest, "max_body", 1024 * 1024)
    server = llamaswap(CONFIG)
    answer = yield raw_exchange(
        server.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 413")
    answer = yield raw_exchange(
        server.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 2,
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert (yield server.get("/health")).code == 200


@pytest_twisted.inlineCallbacks
def test_fifty_megabyte_chat_request(llamaswap):
    server = llamaswap(CONFIG)
    image = base64.b64encode(b"\x89PNG" + b"\x00" * (38 * 1024 * 1024)).decode()
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]}
            ],
        }
    ).encode()
    assert len(body) > 50 * 1024 * 1024
    response = yield request(server, b"POST", "/upstream/m/echo", body)
    echoed = json.loads((yield read_body(response)))
    assert echoed["body_length"] == len(body)
    response = yield request(server, b"POST", "/v1/chat/completions", body)
    assert response.code == 200
    answer = json.loads((yield read_body(response)))
    assert answer["responseMessage"] == "m"
    assert answer["h_content_length"] == str(len(body))


@pytest_twisted.inlineCallbacks
def test_service_keeps_serving_while_a_client_stalls(llamaswap):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    staller = socket.create_connection(("127.0.0.1", server.port))
    staller.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    for _ in range(3):
        assert (yield server.chat("m")).code == 200
    staller.close()


# ---------------------------------------------------------------- the openai SDK


@pytest.fixture
def openai_client():
    openai = pytest.importorskip("openai")

    def make(server):
        return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=30)

    return make


@pytest_twisted.inlineCallbacks
def test_openai_sdk_chat_plain_and_streamed(llamaswap, openai_client):
    server = llamaswap(CONFIG)
    client = openai_client(server)
    completion = yield deferToThread(
        client.chat.completions.create, model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content.startswith("m-0 m-1")
    assert completion.usage.completion_tokens == 10

    def stream():
        chunks = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk for chunk in chunks]

    chunks = yield deferToThread(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "".join(f"m-{index} " for index in range(10))
    assert chunks[-1].usage.total_tokens > 0


@pytest_twisted.inlineCallbacks
def test_openai_sdk_completions_embeddings_and_transcription(llamaswap, openai_client):
    server = llamaswap(CONFIG)
    client = openai_client(server)
    completion = yield deferToThread(client.completions.create, model="m", prompt="once upon a time")
    assert completion.choices[0].text.startswith("m-0")
    embeddings = yield deferToThread(client.embeddings.create, model="m", input=["a", "bb"])
    assert len(embeddings.data) == 2
    assert len(embeddings.data[0].embedding) == 8
    audio = io.BytesIO(b"RIFF" + b"\x00" * 4000)
    audio.name = "speech.wav"
    transcription = yield deferToThread(client.audio.transcriptions.create, model="m", file=audio)
    assert transcription.text == "The length of the file is 4004 bytes"
    speech = yield deferToThread(client.audio.speech.create, model="m", voice="alloy", input="hello")
    assert speech.content.startswith(b"RIFF")
    models = yield deferToThread(client.models.list)
    assert [model.id for model in models.data] == ["doomed", "m", "slowstart"]


@pytest_twisted.inlineCallbacks
def test_client_leaving_while_its_model_starts_leaves_no_lease_behind(llamaswap):
    server = llamaswap(CONFIG)
    body = json.dumps({"model": "slowstart"}).encode()
    waiting = request(server, b"POST", "/v1/chat/completions", body)
    yield sleep(0.3)
    assert server.process("slowstart").state == "starting"
    waiting.cancel()  # the client gives up while the model loads
    waiting.addErrback(lambda failure: None)
    yield server.wait_for_state("slowstart", "ready", timeout=10)
    yield sleep(0.1)
    assert server.process("slowstart").inflight == 0
    assert server.service.manager.scheduler.waiting == 0
    assert (yield server.chat("slowstart")).code == 200
