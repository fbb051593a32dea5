"""
In-flight requests: listed from arrival to the end of the answer, with
credentials hidden and byte counts published at most four times a second;
an operator can cancel one whether it waits for its model or streams.
"""

from __future__ import annotations

import json

from twisted.web.client import ResponseDone

from llamaswap.observe.inflight import InFlightUpdate
from tests.helpers import error_message, fake

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
  slow:
    cmd: {fake("slow", "--startup-delay", "5")}
"""


def updates(server) -> list[dict]:
    seen: list[dict] = []
    server.service.bus.subscribe(lambda update: seen.append(update.to_json()), InFlightUpdate)
    return seen


def test_a_stream_is_listed_while_it_runs(memory):
    server = memory(CONFIG)
    server.chat("m")  # started
    seen = updates(server)
    headers = {"Authorization": "Bearer secret", "X-Session-ID": "chat-42", "X-Forwarded-For": "10.1.2.3, 10.0.0.1"}
    response = server.run(
        server.post("/v1/chat/completions?chunks=40&delay=0.05", json={"model": "m", "stream": True}, headers=headers)
    )
    body = server.collect(response)
    server.advance(0.6)
    [entry] = server.service.inflight.snapshot().to_json()["requests"]
    assert entry["model"] == "m" and entry["req_path"] == "/v1/chat/completions" and entry["method"] == "POST"
    assert entry["req_headers"]["Authorization"] == "[REDACTED]" and entry["req_headers"]["X-Session-Id"] == "chat-42"
    assert entry["remote_ip"] == "10.1.2.3"
    assert entry["resp_headers"]["Content-Type"] == "text/event-stream"
    assert 0 < entry["resp_bytes"] and entry["elapsed_ms"] >= 0
    server.advance(3)
    assert body.reason is not None  # done
    operations = [update["operation"] for update in seen]
    assert operations[0] == "upsert" and operations[-1] == "remove"
    byte_updates = operations.count("upsert") - 2  # beyond the arrival and the response head
    assert 4 <= byte_updates <= 2.1 * 4 + 1  # about four a second over ~2 s, not one per chunk (42)
    assert len(server.service.inflight) == 0


def test_cancelling_a_stream_ends_it_cleanly_and_frees_the_model(memory):
    server = memory(CONFIG)
    server.chat("m")
    response = server.run(
        server.post("/v1/chat/completions?chunks=100&delay=0.05", json={"model": "m", "stream": True})
    )
    body = server.collect(response)
    server.advance(0.3)
    [entry] = server.service.inflight.snapshot().requests
    assert server.service.manager.processes["m"].inflight == 1
    answer, text = server.fetch("POST", f"/api/inflight/{entry['id']}/cancel")
    assert (answer.code, json.loads(text)) == (200, {"msg": "ok"})
    server.advance(0.1)
    assert body.reason is not None and body.reason.check(ResponseDone)  # a clean end, not a cut
    assert body.data.rstrip().endswith(b'"type": "upstream_error"}}') and b"request cancelled" in body.data
    assert server.service.manager.processes["m"].inflight == 0
    assert len(server.service.inflight) == 0
    assert b"client disconnected" in server.service.logs.upstream.history()  # the server stopped generating
    assert server.chat("m")[0].code == 200  # and serves the next one


def test_cancelling_a_request_waiting_for_its_model(memory):
    server = memory(CONFIG)
    waiting = server.post("/v1/chat/completions", json={"model": "slow"})
    server.advance(1)
    [entry] = server.service.inflight.snapshot().requests
    assert server.service.manager.scheduler.queued("slow") == 1
    assert server.fetch("POST", f"/api/inflight/{entry['id']}/cancel")[0].code == 200
    response = server.run(waiting)
    assert (response.code, error_message(server.run(response.content()))) == (503, "request cancelled")
    assert server.service.manager.scheduler.queued("slow") == 0
    assert len(server.service.inflight) == 0


def test_cancelling_before_the_answer_starts(memory):
    server = memory(CONFIG)
    server.chat("m")
    pending = server.post("/v1/chat/completions?wait=10", json={"model": "m"})
    server.advance(0.5)
    [entry] = server.service.inflight.snapshot().requests
    server.fetch("POST", f"/api/inflight/{entry['id']}/cancel")
    response = server.run(pending)
    assert (response.code, error_message(server.run(response.content()))) == (503, "request cancelled")
    assert server.service.manager.processes["m"].inflight == 0


def test_cancelling_an_unknown_request(memory):
    server = memory(CONFIG)
    response, body = server.fetch("POST", "/api/inflight/12345/cancel")
    assert (response.code, error_message(body)) == (404, "inflight request not found")


def test_only_inference_requests_are_listed(memory):
    server = memory(CONFIG)
    seen = updates(server)
    server.fetch("GET", "/upstream/m/health")
    server.fetch("POST", "/upstream/m/v1/chat/completions", json={"model": "m"})
    listed = [update["request"]["req_path"] for update in seen if update["operation"] == "upsert"]
    assert set(listed) == {"/v1/chat/completions"}
