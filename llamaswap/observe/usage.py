"""
Finding what an answer cost while it passes: the C{usage} and C{timings} of
a JSON answer without parsing the rest of it, and the last SSE event that
carries them, holding only the current line of a stream.
"""

from __future__ import annotations

import json
import re

MAX_SSE_LINE = 4 * 1024 * 1024


_KEY = re.compile(rb'"(usage|timings)"\s*:\s*')
_DECODER = json.JSONDecoder()


def usage_of(body: bytes) -> dict | None:
    """
    The C{usage} and C{timings} of a JSON response, found without parsing
    the rest of it (a long answer or a big embedding): C{None} when it has
    neither or is not JSON.
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
    Finds the last SSE C{data:} event carrying usage or timings while the
    stream passes, holding only the current line, and counts the events
    that carry generated text (for servers whose streams have no usage).
    """

    KEYS = (b'"usage"', b'"timings"')
    # "content": "<something>" or "text": "<something>" -- not an empty string,
    # and not "reasoning_content", whose quote comes before "reasoning".
    GENERATED = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False
        self.last: dict | None = None
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
        if isinstance(document, dict) and (
            isinstance(document.get("usage"), dict) or isinstance(document.get("timings"), dict)
        ):
            self.last = document

    def close(self) -> None:
        if self._partial and not self._skipping:
            self.generated_events += len(self.GENERATED.findall(self._partial))
            self._line(self._partial)
        self._partial = b""
