"""
Peers in memory: a llamaswap serving another llamaswap's models (and a
plain OpenAI-compatible server's), with the peer's key injected, filters
applied, streams relayed, and clear errors when a peer is away.
"""

from __future__ import annotations

import json
import os

import pytest

from llamaswap.testing.harness import InMemoryLlamaswap, MemoryWorld
from llamaswap.testing.upstream import FakeServer, Host, parse_args
from tests.helpers import fake

FAR = f"""
startPort: 6800
models:
  remote-chat:
    cmd: {fake("remote-chat")}
  shared:
    cmd: {fake("far-shared")}
"""

NEAR = f"""
startPort: 5800
models:
  local:
    cmd: {fake("local")}
  shared:
    cmd: {fake("near-shared")}
peers:
  far:
    proxy: http://127.0.0.1:8081
    apiKey: sk-far-key
    models: [remote-chat, shared, missing-on-far]
    filters:
      stripParams: top_k
      setParams: {{provider: {{zdr: true}}}}
  raw:
    proxy: http://127.0.0.1:7000/base
    models: [echo-model]
  gone:
    proxy: http://127.0.0.1:7999
    models: [vanished]
"""


@pytest.fixture
def pair():
    world = MemoryWorld()
    far = InMemoryLlamaswap(FAR, world=world, port=8081)
    near = InMemoryLlamaswap(NEAR, world=world, port=8080)
    options = parse_args(["--port", "7000", "--respond", "raw-peer", "--silent"])
    host = Host(world.reactor, dict(os.environ), lambda message: None, lambda code: None)
    raw = FakeServer(options, host, lambda site: world.network.listen("127.0.0.1", 7000, site))
    raw.start(1)
    world.network.flush()
    yield near, far
    near.stop()
    far.stop()


def test_a_peer_model_is_served_by_the_peer_with_its_key(pair):
    near, far = pair
    response, body = near.chat("far/remote-chat", top_k=3)
    assert response.code == 200
    answer = json.loads(body)
    assert answer["responseMessage"] == "remote-chat"
    sent = json.loads(answer["request_body"])
    assert sent["model"] == "remote-chat"  # the peer's own name for it
    assert "top_k" not in sent and sent["provider"] == {"zdr": True}
    assert far.state("remote-chat") == "ready" and near.processes == []


def test_unqualified_names_go_to_the_one_peer_that_has_them_unless_a_local_model_does(pair):
    near, _ = pair
    assert json.loads(near.chat("remote-chat")[1])["responseMessage"] == "remote-chat"
    assert json.loads(near.chat("shared")[1])["responseMessage"] == "near-shared"  # local first
    assert json.loads(near.chat("far/shared")[1])["responseMessage"] == "far-shared"


def test_the_key_is_sent_as_bearer_and_x_api_key_in_place_of_the_clients(pair):
    near, _ = pair
    response, body = near.fetch(
        "POST",
        "/upstream/far/remote-chat/echo",
        json={"model": "x"},
        headers={"Authorization": "Bearer client-key", "X-Api-Key": "client-key"},
    )
    echoed = json.loads(body)
    assert echoed["headers"]["authorization"] == ["Bearer sk-far-key"]
    assert echoed["headers"]["x-api-key"] == ["sk-far-key"]


def test_the_path_is_appended_to_the_peers_proxy_url(pair):
    near, _ = pair
    response, body = near.fetch("POST", "/v1/embeddings?x=1", json={"model": "echo-model", "input": "a"})
    assert (response.code, body) == (200, b"POST /base/v1/embeddings")  # the fake server's catch-all answer
    response, body = near.fetch("GET", "/upstream/raw/echo-model/echo/here?y=2")
    assert body == b"GET /base/upstream/echo-model/echo/here"  # the peer's name for the model


def test_streams_from_a_peer_are_relayed_as_they_come(pair):
    near, _ = pair
    response = near.run(near.post("/v1/chat/completions?chunks=5&delay=0.1", json={"model": "far/remote-chat", "stream": True}))
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    body = near.collect(response)
    near.advance(0.35)
    early = body.data.count(b'"content"')
    assert 2 <= early < 5  # arriving, not buffered until the end
    near.advance(2)
    assert body.data.count(b'"content"') == 5 and body.data.rstrip().endswith(b"data: [DONE]")


def test_an_unreachable_peer_is_a_502_naming_it(pair):
    near, _ = pair
    response, body = near.chat("gone/vanished")
    assert response.code == 502
    assert b"peer gone" in body and b"connection refused" in body


def test_a_peer_that_does_not_have_the_model_answers_for_itself(pair):
    near, _ = pair
    response, body = near.chat("far/missing-on-far")
    assert response.code == 404  # the far llamaswap's own answer, relayed
    assert b"missing-on-far" in body


def test_websockets_reach_a_peers_model_through_both_instances(pair):
    near, far = pair
    socket = near.websocket("/upstream/far/remote-chat/ws")
    assert socket.accepted, socket.head
    socket.send(b"over two hops")
    assert near.run(socket.wait_for(1)) == [(1, b"remote-chat: over two hops")]
    assert far.service.manager.processes["remote-chat"].inflight == 1  # the far side holds its model
    socket.close()
    near.run(socket.closed)
    far.advance(1)
    assert far.service.manager.processes["remote-chat"].inflight == 0
