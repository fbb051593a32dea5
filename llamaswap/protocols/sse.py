"""
Server-Sent Events framing: the one writer behind the event stream, the
loading-state messages and the error event that ends a broken stream.
"""

from __future__ import annotations

import json
from typing import Any


def sse_event(payload: Any, event: str | None = None) -> bytes:
    """
    One SSE event whose data is C{payload} as JSON (on one line, so it
    needs no splitting), optionally with an C{event:} name.
    """
    data = b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
    if event is None:
        return data
    return b"event: " + event.encode("utf-8") + b"\n" + data
