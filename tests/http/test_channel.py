"""
Request heads as llhttp parses them: well-formed requests in every
arrangement of bytes a network can produce, and malformed ones refused
with a 400 while the service goes on serving everybody else.
"""

from __future__ import annotations

import json
import re

import pytest
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from llamaswap.http.channel import JoinedHeadRequest, LlamaswapChannel
from tests.helpers import fake

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
"""

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def server(memory):
    world = memory(CONFIG)
    assert world.chat("m")[0].code == 200  # the model is running for every test
    return world


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def chat_request(*extra: bytes) -> bytes:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return head + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT


def relayed(server) -> int:
    """
    How many inference requests reached a model so far.
    """
    return json.loads(server.fetch("GET", "/api/metrics/activity")[1])["total"]


def still_serving(server) -> None:
    assert server.fetch("GET", "/health")[0].code == 200
    assert server.chat("m")[0].code == 200


def test_pipelined_requests_are_answered_in_order(server):
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = server.raw(health + chat_request() + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [200, 200, 200]
    markers = (b"\r\n\r\nOK", b'"responseMessage"', b'"owned_by"')
    first, second, third = (answer.index(marker) for marker in markers)
    assert first < second < third


def test_a_request_arriving_byte_by_byte(server):
    client = server.connect()
    for byte in chat_request():
        client.transport.write(bytes([byte]))
        server.advance(0)
    server.advance(1)
    assert statuses(client.received) == [200]
    assert b'"responseMessage":"m"' in client.received.replace(b" ", b"")


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_the_end_of_a_head_split_between_reads(server, cut):
    data = chat_request()
    end = data.index(b"\r\n\r\n") + cut
    client = server.connect()
    client.transport.write(data[:end])
    server.advance(0)
    client.transport.write(data[end:])
    server.advance(1)
    assert statuses(client.received) == [200]


def test_an_empty_line_before_the_request_is_tolerated(server):
    assert statuses(server.raw(b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]


def test_raw_utf8_in_the_target_is_read_as_its_percent_encoding(server):
    answer = server.raw("GET /v1/models?café=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert statuses(answer) == [200]
    answer = server.raw("GET /nowhere/café HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert statuses(answer) == [404]
    assert "GET /nowhere/caf%C3%A9" in server.service.logs.proxy_monitor.history().decode()


def test_chunked_request_body(server):
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (CHAT[:10], CHAT[10:]))
    answer = server.raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert statuses(answer) == [200]
    assert b'"responseMessage":"m"' in answer.replace(b" ", b"")


def test_expect_100_continue(server):
    client = server.connect()
    head, body = chat_request(b"Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    client.transport.write(head + b"\r\n\r\n")
    server.advance(0)
    assert client.received == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.transport.write(body)
    server.advance(1)
    assert statuses(client.received) == [100, 200]


def test_http_1_0_gets_its_answer_and_the_connection_closes(server):
    client = server.connect()
    client.transport.write(b"GET /health HTTP/1.0\r\n\r\n")
    server.advance(1)
    assert client.received.startswith(b"HTTP/1.0 200")  # Twisted answers in the version asked
    assert client.closed


def test_nothing_after_connection_close_is_read(server):
    client = server.connect()
    client.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + chat_request())
    server.advance(1)
    assert statuses(client.received) == [200]
    assert client.closed
    assert relayed(server) == 1  # the fixture's chat only


BAD_HEADS = {
    "garbage request line": b"HELLO\r\n\r\n",
    "a method HTTP does not define": b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "no version (HTTP/0.9)": b"GET /health\r\nHost: x\r\n\r\n",
    "HTTP/0.9 spelled out": b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
    "unknown version": b"GET /health HTTP/7.3\r\nHost: x\r\n\r\n",
    "space in a header name": b"GET /health HTTP/1.1\r\nBad Name: y\r\n\r\n",
    "no colon": b"GET /health HTTP/1.1\r\nNoColon\r\n\r\n",
    "NUL in a value": b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "CR alone in a value": b"GET /health HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    "space in the target": b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    "Content-Length and Transfer-Encoding": b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding and Content-Length": b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "two different lengths": b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nabcdef",
    "two equal lengths": b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
    "a length with a sign": b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde",
    "a length that is not a number": b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: five\r\n\r\nabcde",
    "a transfer coding not understood": b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabcde",
    "chunked twice": b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "a folded header line": b"GET /health HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
    "a malformed chunk": b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_malformed_requests_are_refused(server, name):
    answer = server.raw(BAD_HEADS[name])
    assert statuses(answer) == [400], answer
    assert relayed(server) == 1  # nothing reached the model
    still_serving(server)


def test_a_head_that_never_ends_is_refused_once_it_passes_the_limit(server):
    client = server.connect()
    client.transport.write(b"GET /health HTTP/1.1\r\n")
    for _ in range(20):
        client.transport.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        server.advance(0)
    server.advance(1)
    assert statuses(client.received) == [400]
    assert client.closed
    still_serving(server)


def test_a_request_after_a_refused_one_on_the_same_connection_is_not_read(server):
    answer = server.raw(b"GET /health HTTP/1.1\r\nBad Name: y\r\n\r\n" + chat_request())
    assert statuses(answer) == [400]
    assert relayed(server) == 1


# The response side, on a transport that records each write.


class RecordingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))


class Answers(Resource):
    isLeaf = True

    def render_GET(self, request):
        if request.path == b"/whole":
            return b"hello"
        if request.path == b"/empty":
            request.setResponseCode(204)
            return b""
        if request.path == b"/head-first":
            request.write(b"")  # the head now, the body later
            request.notifyFinish().addErrback(lambda failure: None)
            self.pending = request
            return NOT_DONE_YET
        request.write(b"chunk one")  # no length: chunked
        request.write(b"chunk two")
        request.finish()
        return NOT_DONE_YET

    render_HEAD = render_GET


def answer(path: bytes, method: bytes = b"GET") -> tuple[list[bytes], Answers]:
    resource = Answers()
    site = Site(resource)
    site.requestFactory = JoinedHeadRequest
    site.protocol = LlamaswapChannel
    channel = site.buildProtocol(None)
    transport = RecordingTransport()
    channel.makeConnection(transport)
    channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    return transport.writes, resource


def test_the_head_goes_out_with_the_body():
    writes, _ = answer(b"/whole")
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhello")


def test_a_head_without_a_body():
    writes, _ = answer(b"/empty")
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 204 ") and writes[0].endswith(b"\r\n\r\n")
    writes, _ = answer(b"/whole", b"HEAD")
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"\r\n\r\n")


def test_a_head_sent_first_is_not_held_back():
    writes, resource = answer(b"/head-first")
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")
    resource.pending.write(b"later")
    assert writes[1:] == [b"5\r\nlater\r\n"]


def test_a_chunked_answer():
    writes, _ = answer(b"/chunked")
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"\r\n\r\n9\r\nchunk one\r\n")
    assert writes[1:] == [b"9\r\nchunk two\r\n", b"0\r\n\r\n"]
