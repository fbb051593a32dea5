"""
A request is freed when it ends, by reference counting: nothing it built
(the request, its relay, its observers, its in-flight entry, its lease) is
left in a reference cycle for the garbage collector.  At thousands of
requests a second such cycles meant a collection every few requests and
pauses of tens of milliseconds.
"""

from __future__ import annotations

import collections
import gc

import pytest

from tests.helpers import fake

# Per connection, not per request: a channel and its transport refer to
# each other (the test client opens a connection per request, and its
# request body goes with it).
NOT_THE_REQUESTS = {"LlamaswapChannel", "BytesProducer"}


def cyclic_garbage(server, requests) -> collections.Counter:
    """
    The llamaswap objects that only the garbage collector would free after
    C{requests()} ran.
    """
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.disable()
    try:
        requests()
        server.advance(0.1)
        gc.collect()
        return collections.Counter(
            type(thing).__qualname__
            for thing in gc.garbage
            if type(thing).__module__.startswith("llamaswap")
            and not type(thing).__module__.startswith("llamaswap.testing")  # the fake upstream, the network
            and type(thing).__qualname__ not in NOT_THE_REQUESTS
        )
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
        gc.enable()

ONE_MODEL = f"""
models:
  m:
    cmd: {fake("m")}
"""


def warm(memory, text: str | None = None):
    """
    llamaswap with one model (or C{text}'s), the model running and the
    connection pool warm.
    """
    server = memory(text or ONE_MODEL)
    server.chat("m")
    return server


def raw_chat(server, body: bytes, query: bytes = b""):
    """
    A chat request on a connection of its own, which the test can drop.
    """
    client = server.connect()
    client.transport.write(
        b"POST /v1/chat/completions" + query + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return client


@pytest.mark.parametrize("stream", [False, True])
def test_a_finished_request_leaves_no_cycles(memory, stream):
    server = warm(
        memory,
        f"""
        captureBuffer: 5
        models:
          m:
            cmd: {fake("m")}
        """,
    )

    def requests():
        for _ in range(10):
            response, body = server.chat("m", stream=stream)
            assert response.code == 200 and body

    assert cyclic_garbage(server, requests) == {}


@pytest.mark.parametrize("path", ["/health", "/wol-health", "/v1/models", "/models"])
def test_polled_endpoints_leave_no_cycles(memory, path):
    server = warm(memory)

    def requests():
        for _ in range(10):
            assert server.fetch("GET", path)[0].code == 200

    assert cyclic_garbage(server, requests) == {}


@pytest.mark.parametrize(
    "path, body, code",
    [
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 200),  # Ollama's shape
        ("/v1/embeddings", {"model": "m", "input": "hi"}, 200),
        ("/v1/chat/completions", {"model": "nobody"}, 404),
        ("/v1/chat/completions?fail=500", {"model": "m"}, 500),
    ],
)
def test_other_requests_leave_no_cycles_either(memory, path, body, code):
    server = warm(memory)

    def requests():
        for _ in range(5):
            response = server.run(server.post(path, json=body))
            server.run(response.content())
            assert response.code == code

    assert cyclic_garbage(server, requests) == {}


def test_a_cancelled_request_leaves_no_cycles(memory):
    server = warm(memory)

    def requests():
        for _ in range(5):
            waiting = server.post("/v1/chat/completions?chunks=50&delay=0.1", json={"model": "m", "stream": True})
            server.advance(0.25)
            (entry,) = server.service.gateway.inflight.snapshot().requests
            # (Klein, which serves the cancel route, leaves cycles of its own)
            assert server.service.gateway.inflight.cancel(entry["id"])
            server.run(server.run(waiting).content())

    assert cyclic_garbage(server, requests) == {}


def test_requests_that_wait_for_a_model_leave_no_cycles(memory):
    server = warm(
        memory,
        f"""
        sendLoadingState: true
        models:
          m:
            cmd: {fake("m", "--startup-delay", "0.5")}
          other:
            cmd: {fake("other")}
        """,
    )

    def requests():
        for model in ("other", "m", "other", "m"):  # each one swaps, the streamed ones with loading messages
            response, body = server.chat(model, stream=model == "m")
            assert response.code == 200 and body

    assert cyclic_garbage(server, requests) == {}


def test_uploads_and_peers_leave_no_cycles(memory):
    from tests.helpers import free_port, multipart

    server = warm(
        memory,
        f"""
        models:
          m:
            cmd: {fake("m")}
        peers:
          far:
            proxy: http://127.0.0.1:{free_port()}
            models: [remote]
        """,
    )
    body, content_type = multipart({"model": "m"}, {"file": ("a.wav", "audio/wav", b"RIFF" + b"\0" * 5000)})

    def requests():
        for _ in range(5):
            response, _ = server.fetch("POST", "/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type})
            assert response.code == 200
            response, _ = server.chat("far/remote")  # nobody listens there: a 502
            assert response.code == 502

    assert cyclic_garbage(server, requests) == {}


def test_a_client_that_leaves_mid_stream_leaves_no_cycles(memory):
    server = warm(memory)

    def requests():
        for _ in range(5):
            client = raw_chat(server, b'{"model": "m", "stream": true}', b"?chunks=50&delay=0.1")
            server.advance(0.35)
            assert b"m-2" in client.received  # streaming
            client.transport.abortConnection()  # the user pressed Stop
            server.advance(0.3)
        assert server.service.manager.processes["m"].inflight == 0

    assert cyclic_garbage(server, requests) == {}


def test_a_client_that_leaves_while_waiting_for_its_model_leaves_no_cycles(memory):
    server = warm(
        memory,
        f"""
        models:
          m:
            cmd: {fake("m", "--startup-delay", "1")}
          other:
            cmd: {fake("other")}
        """,
    )

    def requests():
        for _ in range(3):
            server.chat("other")  # m is stopped: the next request for it waits
            client = raw_chat(server, b'{"model": "m"}')
            server.advance(0.3)
            assert server.state("m") == "starting"
            client.transport.abortConnection()  # gives up while it loads
            server.advance(2)
        assert server.service.manager.processes["m"].inflight == 0

    assert cyclic_garbage(server, requests) == {}
