"""
WebSockets through /upstream and /comfyui: the upgrade reaches the model's
server, bytes flow both ways with flow control, the model stays in use
while the socket is open -- unless the model says C{ignoreWebsockets}, in
which case a socket neither starts it nor holds it.
"""

from __future__ import annotations

from llamaswap.testing.websocket import BINARY, TEXT
from tests.helpers import error_message, fake

CONFIG = f"""
models:
  chat:
    cmd: {fake("chat")}
  other:
    cmd: {fake("other")}
  comfyui_auto:
    cmd: {fake("comfy")}
  loose:
    cmd: {fake("loose")}
    compat:
      ignoreWebsockets: true
groups:
  one-at-a-time:
    members: [chat, other]
"""


def test_a_websocket_starts_the_model_and_echoes_both_ways(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/chat/ws?clientId=1")
    assert socket.accepted, socket.head
    assert server.state("chat") == "ready"
    socket.send(b"hello")
    socket.send(b"\x00\x01binary", BINARY)
    assert server.run(socket.wait_for(2)) == [(TEXT, b"chat: hello"), (BINARY, b"chat: \x00\x01binary")]
    socket.close()
    server.run(socket.closed)


def test_the_model_stays_in_use_while_its_socket_is_open(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/chat/ws")
    assert socket.accepted
    swap = server.post("/v1/chat/completions", json={"model": "other"})
    answered = []
    swap.addCallback(lambda response: answered.append(response) or response)
    server.advance(30)
    assert answered == []  # the swap waits for the socket
    assert server.state("chat") == "ready"
    socket.send(b"still here")
    assert server.run(socket.wait_for(1)) == [(TEXT, b"chat: still here")]
    socket.close()
    response = server.run(swap)
    assert response.code == 200
    assert server.state("chat") == "stopped"


def test_a_refused_upgrade_is_relayed_and_the_connection_closed(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/chat/ws?refuse=1")
    assert socket.status == 403
    server.run(socket.closed)
    # the model is free again: nothing holds it
    assert server.service.manager.processes["chat"].inflight == 0


def test_a_large_burst_to_a_reader_that_stopped_backs_up_to_the_server(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/chat/ws")
    socket.transport.pauseProducing()  # the client stops reading
    socket.send(b"burst 5000")  # five megabytes from the server
    server.advance(5)
    to_client, from_model = [], []
    for connection in server.network.connections:
        if connection.server.host.port == server.port:
            to_client.append(connection.server.outgoing_bytes)  # llamaswap's buffer toward the client
        else:
            from_model.append(connection.client)  # llamaswap's end toward the model's server
    assert max(to_client) < 256 * 1024, to_client
    assert [end.reading for end in from_model] == [False]  # the rest waits on the server's side
    socket.transport.resumeProducing()
    messages = server.run(socket.wait_for(5000))
    assert len(messages) == 5000 and messages[-1][1].startswith(b"4999 ")
    socket.close()


def test_the_client_closing_ends_the_servers_side_and_releases_the_model(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/chat/ws")
    socket.transport.loseConnection()
    server.run(socket.closed)
    server.advance(1)
    assert server.service.manager.processes["chat"].inflight == 0
    assert server.chat("other")[0].code == 200  # the swap goes through at once


def test_ignored_websockets_do_not_start_a_model(memory):
    server = memory(CONFIG)
    socket = server.websocket("/upstream/loose/ws")
    assert socket.status == 409
    server.run(socket.closed)
    assert error_message(socket.body) == "model loose is not loaded; ignored websocket requests cannot start it"
    assert server.state("loose") == "stopped"


def test_ignored_websockets_do_not_hold_a_running_model(memory):
    server = memory(CONFIG)
    assert server.fetch("GET", "/upstream/loose/health")[0].code == 200
    socket = server.websocket("/upstream/loose/ws")
    assert socket.accepted
    assert server.service.manager.processes["loose"].inflight == 0
    socket.send(b"hi")
    assert server.run(socket.wait_for(1)) == [(TEXT, b"loose: hi")]
    server.fetch("POST", "/api/models/unload")  # nothing waits for the socket
    assert server.state("loose") == "stopped"
    server.run(socket.closed)


def test_comfyui_only_its_front_page_starts_it(memory):
    server = memory(CONFIG)
    response, body = server.fetch("GET", "/comfyui/api/queue")
    assert response.code == 409
    assert b"model comfyui_auto is not loaded; only /comfyui/ can start it" in body
    response, body = server.fetch("GET", "/comfyui/?x=1")
    assert response.code == 200 and server.state("comfyui_auto") == "ready"
    socket = server.websocket("/comfyui/ws?clientId=abc")
    assert socket.accepted
    socket.send(b"progress?")
    assert server.run(socket.wait_for(1)) == [(TEXT, b"comfy: progress?")]
    assert server.service.manager.processes["comfyui_auto"].inflight == 0  # ignored by default


def test_comfyui_redirects_and_missing_model(memory):
    server = memory(CONFIG)
    response, _ = server.fetch("GET", "/comfyui?a=b", allow_redirects=False)
    assert response.code == 301 and response.headers.getRawHeaders("location") == ["/comfyui/?a=b"]
    response, _ = server.fetch("POST", "/comfyui", allow_redirects=False)
    assert response.code == 308
    plain = memory(CONFIG.replace("comfyui_auto", "comfy"), port=8081)
    response, body = plain.fetch("GET", "/comfyui/")
    assert response.code == 404 and b"local model comfyui_auto not found" in body
