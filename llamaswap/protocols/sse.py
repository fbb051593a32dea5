"""
Server-Sent Events framing.
"""

from __future__ import annotations

import json
from typing import Any


def sse_message(payload: Any, event: str = "message") -> bytes:
    """
    One SSE message carrying C{payload} as JSON, framed like the original
    (C{event:message} and C{data:...} without a space after the colon).
    """
    return b"event:" + event.encode() + b"\ndata:" + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
