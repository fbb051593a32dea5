"""
The streaming reverse proxy under stress, in memory: chunk-by-chunk
delivery, backpressure with slow readers, clients and upstreams that
vanish, the loading-state stream, and hostile requests.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from twisted.web.client import ResponseDone

from llamaswap.http.site import LlamaswapRequest
from llamaswap.testing.memory import HIGH_WATER
from tests.helpers import fake

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


@pytest.fixture
def server(memory):
    return memory(CONFIG)


def stream(server, path: str, **body):
    response = server.run(server.post(path, json={"stream": True, **body}))
    return response, server.collect(response)


def sse_events(data: bytes) -> list[str]:
    return [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]


def test_chunks_arrive_one_by_one(server):
    server.chat("m")
    _, body = stream(server, "/v1/chat/completions?chunks=6&delay=0.15", model="m")
    server.advance(5)
    assert body.reason.check(ResponseDone)
    arrivals = [moment for moment, piece in body.pieces if b'"content"' in piece]
    assert len(arrivals) == 6  # each chunk on its own, not coalesced
    gaps = [round(later - earlier, 3) for earlier, later in zip(arrivals, arrivals[1:])]
    assert gaps == [0.15] * 5  # and as soon as the upstream sent it


def test_slow_reader_pauses_the_upstream_and_buffers_stay_bounded(server):
    """
    A client that stops reading backs up through the proxy to the model
    server: nothing along the way holds more than a few buffers' worth.
    """
    server.chat("m")
    total = 50 * 1024 * 1024
    client = server.connect()
    client.transport.pauseProducing()  # this client does not read
    client.transport.write(f"GET /upstream/m/big?total={total}&chunk=65536&length=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    server.advance(5)
    buffered = sum(end.outgoing_bytes for connection in server.network.connections for end, _ in connection.ends())
    upstream_sent = max(end.written for connection in server.network.connections for end, _ in connection.ends())
    assert buffered < 8 * HIGH_WATER
    assert upstream_sent < 16 * HIGH_WATER  # the model server was paused too
    client.transport.resumeProducing()
    server.advance(5)
    head, _, rest = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(rest) == total


def test_client_disconnect_cancels_the_upstream_request(server):
    server.chat("m")
    _, body = stream(server, "/v1/chat/completions?chunks=50&delay=0.1", model="m")
    server.advance(0.35)
    process = server.service.manager.processes["m"]
    assert process.inflight == 1
    body.transport.stopProducing()  # the client goes away mid-stream
    server.advance(0.3)
    assert process.inflight == 0  # the lease was released
    assert "client disconnected from /v1/chat/completions" in server.service.logs.upstream.history().decode()
    assert server.chat("m")[0].code == 200  # the model still serves others


def test_upstream_crash_mid_sse_stream_ends_it_with_an_error_event(server):
    _, body = stream(server, "/v1/chat/completions?chunks=20&delay=0.05&die_after=3", model="m")
    server.advance(3)
    assert body.reason.check(ResponseDone)  # a clean end for the client
    events = sse_events(body.data)
    assert len(events) == 4
    message = json.loads(events[-1])["error"]["message"]
    assert "upstream m stopped responding" in message
    assert "(model m exited with code" in message  # how it ended, once known
    assert server.state("m") == "stopped"
    assert server.chat("m")[0].code == 200  # restarted on demand


def test_upstream_crash_mid_plain_response_cuts_the_connection(server):
    server.chat("m")
    response = server.run(server.get("/upstream/m/big?total=10000000&chunk=65536&die_at=1000000&length=1"))
    body = server.collect(response)
    server.advance(3)
    assert body.reason is not None and not body.reason.check(ResponseDone)  # known to be incomplete
    assert 1000000 <= len(body.data) < 10000000
    assert server.fetch("GET", "/health")[0].code == 200


def test_loading_state_stream_then_real_answer(server):
    response, body = server.chat("slowstart", stream=True)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    events = [json.loads(event) for event in sse_events(body) if event.startswith("{")]
    deltas = [event["choices"][0]["delta"] for event in events if event.get("choices")]
    reasoning = "".join(delta.get("reasoning_content", "") for delta in deltas)
    assert "llamaswap loading model: slowstart" in reasoning
    assert "." in reasoning  # one dot per second of waiting
    done = re.search(r"Done! \((\d+\.\d\d)s\)", reasoning)
    assert done and 1.5 <= float(done.group(1)) < 1.6  # ready soon after the server listens
    contents = [delta["content"] for delta in deltas if "content" in delta]
    assert contents[0] == "slowstart-0 "
    assert body.decode().rstrip().endswith("data: [DONE]")


def test_loading_state_reports_a_failed_start(server):
    response, body = server.chat("doomed", stream=True)
    assert response.code == 200
    text = body.decode()
    assert "Unable to swap model err: unable to start process" in text
    assert "exited with code 5" in text


def test_loading_state_only_for_streaming_requests_of_cold_models(server):
    response, body = server.chat("slowstart")  # not streaming: a plain answer
    assert json.loads(body)["responseMessage"] == "slowstart"
    response, body = server.chat("slowstart", stream=True)  # already ready: no loading messages
    assert b"reasoning_content" not in body


def test_client_leaving_while_its_model_starts_leaves_no_lease_behind(server):
    waiting = server.post("/v1/chat/completions", json={"model": "slowstart"})
    server.advance(0.3)
    assert server.state("slowstart") == "starting"
    waiting.cancel()  # the client gives up while the model loads
    waiting.addErrback(lambda failure: None)
    server.advance(2)
    assert server.state("slowstart") == "ready"
    assert server.service.manager.processes["slowstart"].inflight == 0
    assert server.service.manager.scheduler.waiting == 0
    assert server.chat("slowstart")[0].code == 200


def test_ambiguous_content_length_and_transfer_encoding(server):
    answer = server.raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert server.service.manager.running_models() == []


def test_huge_headers_are_refused(server):
    answer = server.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    answer = server.raw(b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(1000)) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert server.fetch("GET", "/health")[0].code == 200


def test_oversized_body_is_refused_before_it_is_read(server, monkeypatch):
    monkeypatch.setattr(LlamaswapRequest, "max_body", 1024 * 1024)
    answer = server.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    answer = server.raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 2,
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert server.fetch("GET", "/health")[0].code == 200


def test_fifty_megabyte_chat_request(server):
    image = base64.b64encode(b"\x89PNG" + b"\x00" * (38 * 1024 * 1024)).decode()
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}).encode()
    assert len(body) > 50 * 1024 * 1024
    echoed = json.loads(server.fetch("POST", "/upstream/m/echo", data=body)[1])
    assert echoed["body_length"] == len(body)
    response, answer = server.fetch("POST", "/v1/chat/completions", data=body)
    assert response.code == 200
    answer = json.loads(answer)
    assert answer["responseMessage"] == "m"
    assert answer["h_content_length"] == str(len(body))


def test_service_keeps_serving_while_a_client_stalls(server):
    server.chat("m")
    staller = server.connect()
    staller.transport.write(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model"')
    for _ in range(3):
        assert server.chat("m")[0].code == 200
    assert not staller.closed


def test_a_broken_relay_waits_briefly_to_name_how_the_server_ended():
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure
    from twisted.web.test.requesthelper import DummyRequest

    from llamaswap.http.proxy import EXIT_GRACE, ReverseProxyResource, _ProxiedExchange

    def exchange(exit_after: float | None):
        clock = Clock()
        ended = {"note": None}
        if exit_after is not None:
            clock.callLater(exit_after, ended.update, note="model m exited with code 139 (SIGSEGV)")
        resource = ReverseProxyResource(
            None, "m", "http://127.0.0.1:1", b"/", None, log_error=lambda message: None,
            explain=lambda: ended["note"], clock=clock,
        )  # fmt: skip
        request = DummyRequest([b""])
        relay = _ProxiedExchange(resource, request)
        relay.request_failed(Failure(ConnectionResetError("connection lost")))
        return clock, request

    clock, request = exchange(0.1)  # the exit is reported just after the connection broke
    assert request.written == []
    clock.pump([0.02] * 7)
    assert b"model m exited with code 139 (SIGSEGV)" in b"".join(request.written) and request.responseCode == 502
    clock, request = exchange(None)  # the server lives on: the error goes out after the grace
    clock.pump([0.05] * round(EXIT_GRACE / 0.05 + 2))
    body = b"".join(request.written)
    assert request.responseCode == 502 and b"connection lost" in body and b"exited" not in body
