"""
The loading-state stream on a fake clock: what a streaming chat client
sees while its model starts.
"""

from __future__ import annotations

import json
import random

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.http.loading import REMARKS, RULE, LoadingStream


class Request(DummyRequest):
    gone = False

    def lose_connection(self):
        self.gone = True
        self.processingFailed(Exception("connection lost"))


def reasoning(request) -> list[str]:
    texts = []
    for chunk in request.written:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        texts.append(json.loads(chunk[6:])["choices"][0]["delta"]["reasoning_content"])
    return texts


def test_headers_title_dots_and_remarks():
    clock = Clock()
    request = Request([b""])
    LoadingStream(request, "big-model", clock, rng=random.Random(7))
    assert request.responseCode == 200
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert request.responseHeaders.getRawHeaders(b"x-accel-buffering") == [b"no"]
    assert reasoning(request) == [RULE + "\n", "llamaswap loading model: big-model\n"]
    clock.advance(1)
    assert reasoning(request)[-1] == "."
    for _ in range(20):
        clock.advance(1)
    texts = reasoning(request)[2:]
    remarks = [text.strip() for text in texts if text != "."]
    assert len(texts) == 21  # one piece per second
    assert 2 <= len(remarks) <= 5 and all(remark in REMARKS for remark in remarks)
    assert len(set(remarks)) == len(remarks)  # never the same remark twice


def test_done_announces_the_time_and_stops_ticking():
    clock = Clock()
    request = Request([b""])
    stream = LoadingStream(request, "m", clock, rng=random.Random(1))
    clock.advance(3.25)
    stream.done()
    texts = reasoning(request)
    assert texts[-3:] == ["\nDone! (3.25s)\n", RULE + "\n", " \n"]
    written = len(request.written)
    clock.advance(10)
    assert len(request.written) == written
    assert not request.finished  # the real answer follows on the same response
    assert clock.getDelayedCalls() == []


def test_failure_is_told_and_ends_the_response():
    clock = Clock()
    request = Request([b""])
    stream = LoadingStream(request, "m", clock)
    clock.advance(2)
    stream.failed("upstream command exited with code 1")
    assert reasoning(request)[-1] == "\nUnable to swap model err: upstream command exited with code 1\n"
    assert request.finished
    assert clock.getDelayedCalls() == []


def test_a_client_that_leaves_stops_the_ticker():
    clock = Clock()
    request = Request([b""])
    stream = LoadingStream(request, "m", clock)
    clock.advance(1)
    request.lose_connection()
    assert clock.getDelayedCalls() == []
    written = len(request.written)
    stream.done()
    stream.failed("late")
    assert len(request.written) == written


def test_the_servers_latest_line_is_shown_with_the_time():
    clock = Clock()
    request = Request([b""])
    lines = iter(["", "loading 40 %", "loading 40 %", "loading 85 %"])
    LoadingStream(request, "m", clock, lambda: next(lines))
    for _ in range(4):
        clock.advance(1)
    assert reasoning(request)[2:] == [".", "loading 40 % (2s)\n", "loading 40 % (3s)\n", "loading 85 % (4s)\n"]
