"""
sendLoadingState: keep a streaming chat client company while its model
starts.

The response starts at once as an SSE stream whose chunks carry progress
text in C{choices[0].delta.reasoning_content} -- chat UIs show it as the
model "thinking" -- and, once the model is ready, the real answer follows on
the same response.  If the model cannot start, the stream says so and ends.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.internet.task import LoopingCall
from twisted.web.server import Request

from llamaswap.protocols.sse import sse_event

RULE = "\u2501" * 5
REMARKS = (
    "Warming up the matrix multipliers...",
    "Paging weights in from disk, one layer at a time...",
    "Persuading the KV cache to make some room...",
    "Counting attention heads (they keep moving)...",
    "Reheating yesterday's embeddings...",
    "Lining up the tensors in a neat row...",
    "Giving the GPU fans something to do...",
    "Unpacking quantised thoughts...",
    "Asking the tokenizer to spell everything out...",
    "Polishing the softmax...",
    "Negotiating with the memory allocator...",
    "Feeding the model its morning coffee...",
    "Checking the vocabulary for typos...",
    "Rolling the sampling dice in advance...",
    "Shuffling layers into the right order...",
    "Waiting for the last weights to arrive...",
    "Convincing the context window to open wider...",
    "Still faster than compiling it from source...",
    "Almost there, give or take a few gigabytes...",
    "Dusting off the positional encodings...",
)


def sse_chunk(text: str) -> bytes:
    return sse_event({"choices": [{"delta": {"reasoning_content": text}}]})


class LoadingStream:
    """
    Progress messages on a client's response while its model loads.
    """

    def __init__(
        self,
        request: Request,
        model_id: str,
        clock,
        latest_line: Callable[[], str] = str,
        rng: random.Random | None = None,
    ):
        self.request = request
        self.model_id = model_id
        self.clock = clock
        self._latest_line = latest_line  # what the server printed last, shown with the time
        self._rng = rng or random.Random()
        self._remarks = list(REMARKS)
        self._rng.shuffle(self._remarks)
        self._started = clock.seconds()
        self._next_remark = self._started + self._rng.randint(2, 5)
        self._active = True
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        self._send(RULE + "\n")
        self._send(f"llamaswap loading model: {model_id}\n")
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._ticker.start(1.0, now=False)
        request.notifyFinish().addErrback(lambda _: self._stop())

    def _send(self, text: str) -> None:
        if not self.request.finished and not self.request.gone:
            self.request.write(sse_chunk(text))

    def _tick(self) -> None:
        now = self.clock.seconds()
        line = self._latest_line()
        if line:
            self._send(f"{line} ({now - self._started:.0f}s)\n")
            return
        if now >= self._next_remark and self._remarks:
            self._send("\n" + self._remarks.pop() + "\n")
            self._next_remark = now + self._rng.randint(5, 9)
        else:
            self._send(".")

    def _stop(self) -> bool:
        if not self._active:
            return False
        self._active = False
        if self._ticker.running:
            self._ticker.stop()
        self._ticker = None  # it calls back into this stream: part them
        return True

    def done(self) -> None:
        """
        The model is ready; the real stream follows.
        """
        if self._stop():
            self._send(f"\nDone! ({self.clock.seconds() - self._started:.2f}s)\n")
            self._send(RULE + "\n")
            self._send(" \n")

    def failed(self, message: str) -> None:
        """
        The model could not start: say why and end the response.
        """
        self.request.error_message = message  # for the activity log
        if self._stop():
            self._send(f"\nUnable to swap model err: {message}\n")
        if not self.request.finished and not self.request.gone:
            self.request.finish()
