"""
Finding what an answer cost while it passes: the C{usage}, C{timings}
(llama.cpp) and C{metrics} (vLLM) of a JSON answer without parsing the rest
of it, and the same merged over the events of an SSE stream, holding only
the current line.

Usage comes in several shapes: OpenAI's chat (C{prompt_tokens},
C{completion_tokens}), OpenAI's Responses and Anthropic's Messages
(C{input_tokens}, C{output_tokens}, under C{response} or C{message} in
their stream events, Anthropic's split over two events), with cached
tokens under one of three names.
"""

from __future__ import annotations

import json
import re

MAX_SSE_LINE = 4 * 1024 * 1024


_KEY = re.compile(rb'"(usage|timings|metrics)"\s*:\s*')
# Where a usage object may sit in a response or a stream event.
USAGE_PATHS = (("usage",), ("response", "usage"), ("message", "usage"))


def _dig(document: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


class Tally:
    """
    What the documents of one answer say it cost, merged as they come: the
    latest non-zero input and output counts, the latest cached count, and
    the latest C{timings} and C{metrics} objects.
    """

    def __init__(self) -> None:
        self.input = 0
        self.output = 0
        self.cached = -1
        self.timings: dict | None = None
        self.metrics: dict | None = None
        self.found = False

    def add(self, document) -> None:
        if not isinstance(document, dict):
            return
        for path in USAGE_PATHS:
            usage = _dig(document, path)
            if isinstance(usage, dict):
                self._usage(usage)
        for key in ("timings", "metrics"):
            value = document.get(key)
            if isinstance(value, dict):
                setattr(self, key, value)
                self.found = True

    def _usage(self, usage: dict) -> None:
        found = False
        for names, attribute in ((("prompt_tokens", "input_tokens"), "input"), (("completion_tokens", "output_tokens"), "output")):
            for name in names:
                if name in usage:
                    value = _count(usage[name]) or 0
                    found = True
                    if value > 0:
                        setattr(self, attribute, value)
                    break
        for path in (("cache_read_input_tokens",), ("input_tokens_details", "cached_tokens"), ("prompt_tokens_details", "cached_tokens")):
            value = _dig(usage, path)
            if value is not None:
                cached = _count(value)
                found = True
                if cached is not None and cached >= 0:
                    self.cached = cached
                break
        self.found = self.found or found
_DECODER = json.JSONDecoder()


def usage_of(body: bytes) -> dict | None:
    """
    The C{usage}, C{timings} and C{metrics} of a JSON response, found
    without parsing the rest of it (a long answer or a big embedding):
    C{None} when it has none of them or is not JSON.
    """
    found: dict = {}
    for match in _KEY.finditer(body):
        try:
            value, _ = _DECODER.raw_decode(body[match.end() : match.end() + 65536].decode("utf-8", "replace"))
        except ValueError:
            continue
        found[match.group(1).decode()] = value  # the last occurrence wins
    if not found:
        return None
    stripped = body.strip()
    if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
        return None
    return found


class SSEUsageScanner:
    """
    Merges the SSE C{data:} events carrying usage, timings or metrics into
    a L{Tally} while the stream passes, holding only the current line, and
    counts the events that carry generated text (for servers whose streams
    have no usage).
    """

    KEYS = (b'"usage"', b'"timings"', b'"metrics"')
    # "content": "<something>" or "text": "<something>" -- not an empty string,
    # and not "reasoning_content", whose quote comes before "reasoning".
    GENERATED = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False
        self.tally = Tally()
        self.generated_events = 0

    def feed(self, data: bytes) -> int:
        """
        Scan more of the stream; returns how many events with generated
        text it completed.
        """
        if self._partial:
            data = self._partial + data
            self._partial = b""
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return 0
            self._skipping = False
            data = data[cut + 1 :]
        cut = data.rfind(b"\n") + 1
        complete = data[:cut]
        self._keep(data[cut:])
        if not complete:
            return 0
        found = len(self.GENERATED.findall(complete))
        self.generated_events += found
        if any(key in complete for key in self.KEYS):
            for line in complete.split(b"\n"):
                self._line(line)
        return found

    def _keep(self, tail: bytes) -> None:
        if len(tail) > MAX_SSE_LINE:
            self._skipping = True
            tail = b""
        self._partial = tail

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]" or not any(key in payload for key in self.KEYS):
            return
        try:
            document = json.loads(payload)
        except ValueError:
            return
        self.tally.add(document)

    def close(self) -> None:
        if self._partial and not self._skipping:
            self.generated_events += len(self.GENERATED.findall(self._partial))
            self._line(self._partial)
        self._partial = b""
