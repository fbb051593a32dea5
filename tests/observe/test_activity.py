"""
The activity log and captures through the in-memory llamaswap: every
metered request is recorded whatever its outcome, listed and filtered as
the newest llama-swap lists it, and its capture can be read back with
credentials hidden.
"""

from __future__ import annotations

import base64
import json
from random import Random

import pytest

from llamaswap.observe.activity import error_message_of, parse_query
from llamaswap.observe.events import ActivityRecorded
from tests.helpers import error_message, fake

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
    aliases: [alias-m]
  other:
    cmd: {fake("other")}
  slow:
    cmd: {fake("slow", "--startup-delay", "5")}
  limited:
    cmd: {fake("limited")}
    concurrencyLimit: 1
"""


def activity(server, query: str = "") -> dict:
    response, body = server.fetch("GET", "/api/metrics/activity" + query)
    assert response.code == 200, body
    return json.loads(body)


def capture(server, activity_id) -> dict:
    response, body = server.fetch("GET", f"/api/captures/{activity_id}")
    assert response.code == 200, body
    return json.loads(body)


def decoded(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def test_successful_requests_are_listed_newest_first(memory):
    server = memory(CONFIG)
    server.chat("m")
    server.fetch("POST", "/v1/chat/completions?chunks=4", json={"model": "alias-m", "stream": True})
    server.chat("other")
    server.advance(0.01)
    page = activity(server)
    assert (page["page"], page["limit"], page["total"], page["total_pages"]) == (1, 25, 3, 1)
    newest, streamed, first = page["data"]
    assert [first["id"], streamed["id"], newest["id"]] == [1, 2, 3]
    assert newest["model"] == "other" and first["model"] == "m" and streamed["model"] == "m"
    assert first["req_path"] == "/v1/chat/completions" and first["resp_status_code"] == 200
    assert first["resp_content_type"] == "application/json" and streamed["resp_content_type"] == "text/event-stream"
    assert first["tokens"]["output_tokens"] == 10 and first["tokens"]["cache_tokens"] == 3
    assert streamed["tokens"]["output_tokens"] == 4 and streamed["tokens"]["tokens_per_second"] == 100.0
    assert first["duration_ms"] >= 52 and first["timestamp"].endswith("Z")
    assert "error_msg" not in first and first["has_capture"] is True
    assert set(first) == {
        "id",
        "timestamp",
        "model",
        "req_path",
        "resp_content_type",
        "resp_status_code",
        "tokens",
        "duration_ms",
        "has_capture",
    }
    assert set(first["tokens"]) == {
        "cache_tokens",
        "draft_tokens",
        "draft_acc_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_per_second",
        "tokens_per_second",
    }


def test_failures_are_recorded_with_why(memory):
    server = memory(CONFIG)
    server.fetch("POST", "/v1/chat/completions?fail=500", json={"model": "m"})
    server.fetch("POST", "/v1/chat/completions?fail=400", json={"model": "m", "stream": True})
    # refused by the concurrency limit while another request runs
    running = server.post("/v1/chat/completions?chunks=20&delay=0.1", json={"model": "limited", "stream": True})
    server.advance(1)
    refused, body = server.fetch("POST", "/v1/chat/completions", json={"model": "limited"})
    assert refused.code == 429
    server.advance(3)
    server.run(running)
    server.advance(0.01)
    refusal, bad_request, server_error = activity(server)["data"][1:]
    assert (server_error["resp_status_code"], server_error["error_msg"]) == (500, "fake failure 500")
    assert server_error["tokens"]["output_tokens"] == 0
    assert (bad_request["resp_status_code"], bad_request["error_msg"]) == (400, "fake failure 400")
    assert (refusal["model"], refusal["resp_status_code"], refusal["error_msg"]) == (
        "limited",
        429,
        "Too many requests",
    )
    # a failure keeps the request in its capture, not the error answer
    kept = capture(server, server_error["id"])
    assert json.loads(decoded(kept["req_body"]))["model"] == "m"
    assert kept["resp_body"] is None and kept["resp_headers"]["Content-Type"] == "application/json"


def test_unknown_models_and_bad_bodies_are_not_metered(memory):
    server = memory(CONFIG)
    assert server.fetch("POST", "/v1/chat/completions", json={"model": "nope"})[0].code == 404
    assert server.fetch("POST", "/v1/chat/completions", data=b"{not json")[0].code == 400
    assert server.fetch("GET", "/v1/models")[0].code == 200
    server.advance(0.01)
    assert activity(server)["total"] == 0


def test_a_client_leaving_and_an_operator_cancelling_are_recorded(memory):
    server = memory(CONFIG)
    server.chat("m")
    # a client that leaves while its model loads
    waiting = server.post("/v1/chat/completions", json={"model": "slow"})
    server.advance(1)
    waiting.cancel()
    server.advance(0.5)
    # an operator cancels a stream
    response = server.run(
        server.post("/v1/chat/completions?chunks=100&delay=0.05", json={"model": "m", "stream": True})
    )
    server.collect(response)
    server.advance(0.3)
    [entry] = [entry for entry in server.service.inflight.snapshot().requests if entry["model"] == "m"]
    assert server.fetch("POST", f"/api/inflight/{entry['id']}/cancel")[0].code == 200
    server.advance(0.1)
    cancelled, left = activity(server)["data"][:2]
    assert (left["model"], left["resp_status_code"]) == ("slow", 499)
    assert left["error_msg"] == "the client went away before the answer started"
    assert (cancelled["resp_status_code"], cancelled["error_msg"]) == (200, "request cancelled")


def test_filters_sorting_and_pages(memory):
    server = memory(CONFIG)
    for chunks in (3, 9, 5):
        server.fetch("POST", f"/v1/chat/completions?chunks={chunks}", json={"model": "m"})
    server.chat("other")
    server.advance(0.01)
    assert [entry["id"] for entry in activity(server, "?model=m")["data"]] == [3, 2, 1]
    assert activity(server, "?model=m&model=other")["total"] == 4
    by_output = activity(server, "?model=m&sort=generated&order=asc")["data"]
    assert [entry["tokens"]["output_tokens"] for entry in by_output] == [3, 5, 9]
    page = activity(server, "?limit=3&page=2")
    assert (page["total"], page["total_pages"], [entry["id"] for entry in page["data"]]) == (4, 2, [1])
    assert [entry["id"] for entry in activity(server, "?min_id=2&max_id=3")["data"]] == [3, 2]
    assert activity(server, "?start=2000-01-01T00:00:00Z&end=2000-01-02T00:00:00Z")["total"] == 0
    assert activity(server, "?start=2000-01-01T00:00:00Z")["total"] == 4


@pytest.mark.parametrize(
    "query, message",
    [
        ("limit=0", "limit must be between 1 and 999"),
        ("limit=1000", "limit must be between 1 and 999"),
        ("limit=ten", "invalid limit"),
        ("page=0", "page must be >= 1"),
        ("page=x", "page must be >= 1"),
        ("sort=ts_created;drop", "invalid sort column"),
        ("order=up", "order must be asc or desc"),
        ("start=yesterday", "invalid 'start' timestamp, use RFC3339 format"),
        ("end=2026-13-01T00:00:00Z", "invalid 'end' timestamp, use RFC3339 format"),
        ("start=2026-02-01T00:00:00Z&end=2026-01-01T00:00:00Z", "start must be before end"),
        ("min_id=0", "min_id must be >= 1"),
        ("max_id=-3", "max_id must be >= 1"),
        ("min_id=5&max_id=2", "min_id must be <= max_id"),
    ],
)
def test_bad_queries_get_a_clear_400(memory, query, message):
    server = memory(CONFIG)
    response, body = server.fetch("GET", "/api/metrics/activity?" + query)
    assert (response.code, error_message(body)) == (400, message)


def test_parse_query_defaults():
    query = parse_query({})
    assert (query.limit, query.page, query.sort, query.order, query.models) == (25, 1, "id", "desc", ())
    assert parse_query({b"model": [b" a ", b"", b"b", b"a"]}).models == ("a", "b")


def test_stats_and_histograms(memory):
    server = memory(CONFIG)
    for chunks in (2, 4, 6, 8, 10, 12):
        server.fetch("POST", f"/v1/chat/completions?chunks={chunks}", json={"model": "m"})
    server.fetch("POST", "/v1/chat/completions?no_timings=1", json={"model": "other"})
    server.advance(0.01)
    stats = json.loads(server.fetch("GET", "/api/metrics/stats?model=m")[1])
    assert stats["total_requests"] == 6 and stats["total_output_tokens"] == 42
    assert stats["total_cache_tokens"] == 18
    generation = stats["gen_histogram"]
    assert (generation["min"], generation["max"]) == (50.0, 300.0)  # chunks / 40 ms
    assert sum(generation["bins"]) == 6 and len(generation["bins"]) == 5 and generation["binSize"] == 50.0
    assert generation["p50"] == 175.0
    everything = json.loads(server.fetch("GET", "/api/metrics/stats")[1])
    assert everything["total_requests"] == 7
    nothing = json.loads(server.fetch("GET", "/api/metrics/stats?model=nobody")[1])
    assert nothing["total_requests"] == 0 and nothing["gen_histogram"] is None


def test_captures_hold_the_exchange_with_credentials_hidden(memory):
    server = memory(CONFIG)
    headers = {"Authorization": "Bearer sk-secret", "X-Session-ID": "chat-7", "Cookie": "session=abc"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    server.fetch("POST", "/v1/chat/completions?chunks=3", json=body, headers=headers)
    server.advance(0.01)
    [entry] = activity(server)["data"]
    kept = capture(server, entry["id"])
    assert kept["id"] == entry["id"] and kept["req_path"] == "/v1/chat/completions"
    assert kept["req_headers"]["Authorization"] == "[REDACTED]" and kept["req_headers"]["Cookie"] == "[REDACTED]"
    assert kept["req_headers"]["X-Session-Id"] == "chat-7"
    assert json.loads(decoded(kept["req_body"])) == body
    assert kept["resp_headers"]["Content-Type"] == "text/event-stream"
    events = decoded(kept["resp_body"]).decode()
    assert events.count("data: ") == 3 + 2 + 1 and events.rstrip().endswith("data: [DONE]")
    assert b"sk-secret" not in server.fetch("GET", f"/api/captures/{entry['id']}")[1]


def test_capture_errors(memory):
    server = memory(CONFIG)
    response, body = server.fetch("GET", "/api/captures/abc")
    assert (response.code, error_message(body)) == (400, "invalid capture ID")
    response, body = server.fetch("GET", "/api/captures/42")
    assert (response.code, error_message(body)) == (404, "capture not found")


def test_binary_routes_keep_only_what_is_readable(memory):
    server = memory(CONFIG)
    server.fetch("POST", "/v1/images/generations", json={"model": "m", "prompt": "a cat"})
    server.advance(0.01)
    [entry] = activity(server)["data"]
    kept = capture(server, entry["id"])
    assert json.loads(decoded(kept["req_body"]))["prompt"] == "a cat"
    assert kept["resp_headers"] and kept["resp_body"] is None


def test_captures_off(memory):
    server = memory("captureBuffer: 0\n" + CONFIG)
    server.chat("m")
    server.advance(0.01)
    [entry] = activity(server)["data"]
    assert entry["has_capture"] is False
    assert server.fetch("GET", f"/api/captures/{entry['id']}")[0].code == 404


def test_the_ring_drops_the_oldest_and_skips_what_cannot_fit(memory):
    server = memory("captureBuffer: 1\n" + CONFIG)
    # answers too large to keep (more than the whole buffer) are not captured
    server.fetch("POST", "/v1/chat/completions?chunks=30&chunk_bytes=50000", json={"model": "m", "stream": True})
    server.advance(0.01)
    [big] = activity(server)["data"]
    assert big["has_capture"] is False and big["tokens"]["output_tokens"] == 30
    captures = server.service.activity.captures
    assert captures.used == 0 and captures.assembling == 0
    random = Random(7)
    for _ in range(12):  # ~400 kB each once compressed (the body is sent and echoed): random text does not shrink
        noise = base64.b64encode(random.randbytes(150_000)).decode()
        server.fetch(
            "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": noise}]}
        )
        server.advance(0.01)
    entries = activity(server, "?limit=100")["data"]
    kept = [entry["id"] for entry in entries if entry["has_capture"]]
    assert 2 <= len(kept) <= 4 and kept == [entry["id"] for entry in entries[: len(kept)]]  # the newest
    assert captures.used <= captures.capacity and captures.assembling == 0


def test_in_memory_activity_is_capped(memory):
    server = memory("metricsMaxInMemory: 3\n" + CONFIG)
    for _ in range(5):
        server.chat("m")
    server.advance(0.01)
    page = activity(server)
    assert page["total"] == 3 and [entry["id"] for entry in page["data"]] == [5, 4, 3]


def test_new_entries_are_announced(memory):
    server = memory(CONFIG)
    seen = []
    server.service.bus.subscribe(seen.append, ActivityRecorded)
    server.chat("m")
    server.advance(0.01)
    [event] = seen
    assert (event.id, event.model, event.row[1], event.row[4]) == (1, "m", "m", 200)


def test_error_messages_from_answers():
    assert error_message_of(b'{"error": {"message": " boom "}}') == "boom"
    assert error_message_of(b'{"error": "plain"}') == "plain"
    assert error_message_of(b'{"detail": "fastapi"}') == "fastapi"
    assert error_message_of(b'{"message": "x' + b"y" * 600 + b'"}').endswith("...")
    assert error_message_of(b"<html>") == "" and error_message_of(b"[1]") == ""


def test_a_compressed_capture_reads_back_the_same():
    from llamaswap.observe.captures import Capture

    body = json.dumps({"messages": [{"content": "word " * 10_000}]}).encode()
    capture = Capture("/v1/chat/completions", ((b"Authorization", b"Bearer sk-x"),), body, None, b"answer " * 5000)
    assert capture.worth_compressing()
    smaller = capture.compress()
    assert smaller.compressed and smaller.size < capture.size / 10
    assert json.loads(smaller.to_json(4)) == json.loads(capture.to_json(4))
    document = json.loads(smaller.to_json(4))
    assert document["req_headers"] == {"Authorization": "[REDACTED]"} and decoded(document["req_body"]) == body


def test_reloads_resize_the_activity_and_the_captures(memory):
    server = memory(CONFIG)
    for _ in range(4):
        server.chat("m")
    server.advance(0.01)
    server.service.activity.reconfigure(2, 0)
    for _ in range(3):
        server.chat("m")
    server.advance(0.01)
    page = activity(server)
    assert [entry["id"] for entry in page["data"]] == [7, 6] and not any(entry["has_capture"] for entry in page["data"])
    assert [entry["id"] for entry in json.loads(server.fetch("GET", "/api/metrics")[1])] == [6, 7]
