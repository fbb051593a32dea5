"""
Token metrics: the parsing rules, the bounded store, and metrics of real
proxied responses -- streamed or not, with and without llama.cpp timings --
with constant memory for long streams.
"""

from __future__ import annotations

import json

from llamaswap.observe.metrics import MetricsObserver, metrics_document, metrics_from
from llamaswap.observe.usage import SSEUsageScanner, usage_of
from llamaswap.protocols.client import ResponseHead
from tests.helpers import fake


def test_usage_only():
    metrics = metrics_from({"usage": {"prompt_tokens": 25, "completion_tokens": 10}}, "m", 123)
    assert (metrics.input_tokens, metrics.output_tokens, metrics.cache_tokens) == (25, 10, -1)
    assert (metrics.prompt_per_second, metrics.tokens_per_second, metrics.duration_ms) == (-1, -1, 123)


def test_timings_win_over_usage():
    document = {
        "usage": {"prompt_tokens": 50, "completion_tokens": 25},
        "timings": {
            "prompt_n": 100,
            "predicted_n": 50,
            "prompt_per_second": 150.5,
            "predicted_per_second": 25.5,
            "prompt_ms": 500.0,
            "predicted_ms": 1500.0,
            "cache_n": 20,
        },
    }
    metrics = metrics_from(document, "m", 9)
    assert (metrics.input_tokens, metrics.output_tokens, metrics.cache_tokens) == (100, 50, 20)
    assert (metrics.prompt_per_second, metrics.tokens_per_second, metrics.duration_ms) == (150.5, 25.5, 2000)


def test_timings_without_cache_and_missing_fields():
    metrics = metrics_from({"timings": {"prompt_n": 3, "predicted_n": 4}}, "m", 9)
    assert metrics.cache_tokens == -1
    assert metrics.prompt_per_second == 0  # present timings, missing field: zero like the original
    assert metrics.duration_ms == 9  # the measured duration, longer than the timings' (none)


def test_nothing_to_measure():
    assert metrics_from({"choices": []}, "m", 1) is None
    assert metrics_from([1, 2], "m", 1) is None
    assert metrics_from({"usage": None}, "m", 1) is None


def test_the_nov_2025_metrics_shape_of_an_activity_row():
    row = (1_700_000_000, "m", "/v1/chat/completions", "application/json", 200, 3, -1, -1, 7, 5, 10.0, 20.0, 80, "", "")
    assert metrics_document(9, row) == {
        "id": 9,
        "timestamp": "2023-11-14T22:13:20Z",
        "model": "m",
        "cache_tokens": 3,
        "input_tokens": 7,
        "output_tokens": 5,
        "prompt_per_second": 10.0,
        "tokens_per_second": 20.0,
        "duration_ms": 80,
        "draft_tokens": -1,
        "draft_acc_tokens": -1,
    }
    failed = row[:4] + (500,) + row[5:]
    silent = row[:8] + (0, 0) + row[10:]
    assert metrics_document(9, failed) is None and metrics_document(9, silent) is None


def test_scanner_finds_the_last_usage_event_across_chunk_boundaries():
    stream = (
        b'data: {"choices":[{"text":"First"}]}\n\n'
        b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
        b'data: {"choices":[{"text":"Second"}]}\n\n'
        b'data: {"usage":{"prompt_tokens":100,"completion_tokens":50}}\n\n'
        b"data: [DONE]\n\n"
    )
    for size in (1, 3, 7, 64, len(stream)):
        scanner = SSEUsageScanner()
        for start in range(0, len(stream), size):
            scanner.feed(stream[start : start + size])
        scanner.close()
        assert (scanner.tally.input, scanner.tally.output) == (100, 50), size


def test_scanner_ignores_invalid_json_and_null_usage():
    scanner = SSEUsageScanner()
    scanner.feed(b'data: not json "usage"\n\ndata: {"usage": null, "choices": []}\n\ndata: [DONE]\n\n')
    scanner.close()
    assert not scanner.tally.found


def stream_tally(*events: dict):
    scanner = SSEUsageScanner()
    for event in events:
        scanner.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    scanner.close()
    return scanner.tally


def test_responses_usage_streamed_and_not():
    usage = {"input_tokens": 30, "output_tokens": 12, "input_tokens_details": {"cached_tokens": 8}}
    metrics = metrics_from({"object": "response", "usage": usage}, "m", 5)
    assert (metrics.input_tokens, metrics.output_tokens, metrics.cache_tokens) == (30, 12, 8)
    tally = stream_tally(
        {"type": "response.created", "response": {"usage": None}},
        {"type": "response.output_text.delta", "delta": "hi"},
        {"type": "response.completed", "response": {"usage": usage}},
    )
    assert (tally.input, tally.output, tally.cached) == (30, 12, 8)


def test_anthropic_usage_is_merged_over_its_events():
    tally = stream_tally(
        {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 4}}},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "message_delta", "usage": {"output_tokens": 15}},
    )
    assert (tally.input, tally.output, tally.cached) == (25, 15, 4)


def test_openai_cached_prompt_tokens():
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 5}}
    assert metrics_from({"usage": usage}, "m", 1).cache_tokens == 5


def test_vllm_metrics_give_speeds_and_speculative_decoding():
    document = {
        "usage": {"prompt_tokens": 110, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 10}},
        "metrics": {
            "time_to_first_token_ms": 200.0,
            "mean_itl_ms": 25.0,
            "speculative_decoding": {"num_draft_tokens": 30, "num_accepted_draft_tokens": 21},
        },
    }
    metrics = metrics_from(document, "m", 1)
    assert metrics.prompt_per_second == 500.0  # 100 uncached prompt tokens in 0.2 s
    assert metrics.tokens_per_second == 40.0
    assert (metrics.draft_tokens, metrics.draft_acc_tokens) == (30, 21)
    half = {"metrics": {"speculative_decoding": {"num_draft_tokens": 30}}, "usage": {"prompt_tokens": 1}}
    assert metrics_from(half, "m", 1).draft_tokens == -1  # never from half an object


def test_llama_cpp_draft_counts():
    timings = {"prompt_n": 5, "predicted_n": 7, "draft_n": 6, "draft_n_accepted": 4}
    metrics = metrics_from({"timings": timings}, "m", 1)
    assert (metrics.draft_tokens, metrics.draft_acc_tokens) == (6, 4)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def observe(content_type: bytes, pieces, code=200, clock=None):
    clock = clock or Clock()
    observer = MetricsObserver("m", clock)
    observer.response_started(ResponseHead(code, b"", [(b"Content-Type", content_type)]))
    for piece in pieces:
        observer.data_received(piece)
    clock.now += 0.25
    metrics = observer.result(clock.now)
    return [] if metrics is None else [metrics]


def test_observer_plain_json():
    [metrics] = observe(b"application/json", [b'{"usage": {"prompt_tokens": 7, ', b'"completion_tokens": 3}}'])
    assert (metrics.input_tokens, metrics.output_tokens, metrics.duration_ms) == (7, 3, 250)


def test_stream_without_usage_derives_what_it_can():
    clock = Clock()
    observer = MetricsObserver("m", clock)
    observer.response_started(ResponseHead(200, b"", [(b"content-type", b"text/event-stream")]))
    observer.data_received(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n')
    for index in range(5):
        clock.now += 0.1
        observer.data_received(f'data: {{"choices":[{{"delta":{{"content":"tok{index}"}}}}]}}\n\n'.encode())
    observer.data_received(b'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}\n\n')
    observer.data_received(b'data: {"choices":[{"delta":{"content":""},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    clock.now += 0.05
    metrics = observer.result(clock.now)
    assert metrics.output_tokens == 5
    assert (metrics.input_tokens, metrics.cache_tokens, metrics.prompt_per_second) == (-1, -1, -1)
    assert metrics.tokens_per_second == 10.0  # 4 gaps over 0.4 s
    assert metrics.duration_ms == 550


def test_observer_skips_failures_and_garbage():
    assert observe(b"application/json", [b'{"usage": {"prompt_tokens": 7}}'], code=500) == []
    assert observe(b"application/json", [b"not json"]) == []
    assert observe(b"text/event-stream", [b""]) == []


# ---------------------------------------------------------------- through the proxy

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
"""


def test_metrics_of_proxied_responses(memory):
    server = memory(CONFIG)
    server.chat("m")
    server.fetch("POST", "/v1/chat/completions?no_timings=1", json={"model": "m"})
    server.chat("m", stream=True)
    server.fetch("POST", "/v1/chat/completions?no_timings=1&chunks=4", json={"model": "m", "stream": True})
    server.fetch("POST", "/v1/chat/completions?no_timings=1&no_usage=1", json={"model": "m"})  # nothing to record
    server.fetch(
        "POST", "/v1/chat/completions?no_timings=1&no_usage=1&chunks=6&delay=0.02", json={"model": "m", "stream": True}
    )
    server.fetch("POST", "/v1/embeddings", json={"model": "m", "input": ["abcdefgh"]})
    server.advance(0.01)  # recorded once the answers are on their way
    metrics = json.loads(server.fetch("GET", "/api/metrics")[1])
    assert [item["id"] for item in metrics] == [1, 2, 3, 4, 6, 7]  # activity ids; 5 said nothing
    plain_timed, plain, streamed_timed, streamed, derived, embeddings = metrics
    assert derived["output_tokens"] == 6 and derived["input_tokens"] == -1
    assert derived["tokens_per_second"] == 50.0  # chunks 20 ms apart
    assert plain_timed["cache_tokens"] == 3 and plain_timed["tokens_per_second"] == 250.0
    assert plain_timed["duration_ms"] == 52  # from timings: 12.5 + 40
    assert plain["cache_tokens"] == -1 and plain["tokens_per_second"] == -1 and plain["output_tokens"] == 10
    assert streamed_timed["output_tokens"] == 10 and streamed_timed["cache_tokens"] == 3
    assert streamed["output_tokens"] == 4 and streamed["tokens_per_second"] == -1
    assert embeddings["input_tokens"] == 2 and embeddings["output_tokens"] == 0
    assert all(item["model"] == "m" for item in metrics)
    assert all(item["timestamp"].endswith("Z") for item in metrics)


def test_usage_is_found_without_parsing_the_whole_answer():
    body = (
        b'{"choices":[{"message":{"content":"the \\"usage\\": {} key is not real"}}],'
        b' "usage" : {"prompt_tokens": 3, "completion_tokens": 4}, "timings": {"predicted_n": 4}}'
    )
    assert usage_of(body) == {"usage": {"prompt_tokens": 3, "completion_tokens": 4}, "timings": {"predicted_n": 4}}
    assert usage_of(b'{"choices": []}') is None
    assert usage_of(b'not json "usage": {"prompt_tokens": 1}') is None


def test_a_finished_request_is_in_the_metrics_asked_for_right_after(memory):
    server = memory(f"models:\n  m:\n    cmd: {fake('m')}\n")
    response = server.run(server.post("/v1/chat/completions", json={"model": "m"}))
    server.run(response.content())
    # the record is still queued behind the answer (no time has passed)...
    assert server.service.activity.metrics() == []
    # ...and a reader asking now still sees it
    records = json.loads(server.fetch("GET", "/api/metrics")[1])
    assert [record["model"] for record in records] == ["m"]


def test_metrics_of_responses_and_messages_through_the_proxy(memory):
    server = memory(CONFIG)
    for stream in (False, True):
        for path in ("/v1/responses", "/v1/messages"):
            response, body = server.fetch("POST", path + "?chunks=7", json={"model": "m", "stream": stream})
            assert response.code == 200, body
    records = json.loads(server.fetch("GET", "/api/metrics")[1])
    assert [(record["output_tokens"], record["input_tokens"] > 0) for record in records] == [(7, True)] * 4
    responses, messages, responses_streamed, messages_streamed = records
    assert responses["cache_tokens"] == responses_streamed["cache_tokens"] == 2  # input_tokens_details
    assert messages["cache_tokens"] == messages_streamed["cache_tokens"] == 1  # cache_read_input_tokens
