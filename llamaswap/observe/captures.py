"""
Captures: the request and answer of recent metered requests, kept so an
operator can see exactly what a client sent and what the model answered
(C{GET /api/captures/<activity id>}).

They live in memory only, compressed, in a ring of C{captureBuffer} MB: the
oldest go first.  Captures still being assembled (an answer streaming in)
draw on a second allowance of the same size, so however many requests run
at once, captures never hold more than twice C{captureBuffer}; a capture
that does not fit is simply not kept.  Credentials in headers are replaced
before anything is stored, and the audio and image routes keep only what
is readable (as the newest llama-swap does).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import OrderedDict
from typing import Any

from llamaswap.observe.inflight import header_map

REQUEST_HEADERS, REQUEST_BODY, RESPONSE_HEADERS, RESPONSE_BODY = 1, 2, 4, 8
EVERYTHING = REQUEST_HEADERS | REQUEST_BODY | RESPONSE_HEADERS | RESPONSE_BODY

# What the routes carrying large binary payloads keep; every other route
# keeps everything.
KEPT_BY_PATH = {
    "/v1/audio/speech": REQUEST_HEADERS | REQUEST_BODY | RESPONSE_HEADERS,
    "/v1/audio/voices": REQUEST_HEADERS | RESPONSE_HEADERS | RESPONSE_BODY,
    "/v1/audio/transcriptions": REQUEST_HEADERS | RESPONSE_HEADERS | RESPONSE_BODY,
    "/v1/images/generations": REQUEST_HEADERS | REQUEST_BODY | RESPONSE_HEADERS,
    "/v1/images/edits": REQUEST_HEADERS | RESPONSE_HEADERS,
    "/sdapi/v1/txt2img": REQUEST_HEADERS | REQUEST_BODY | RESPONSE_HEADERS,
    "/sdapi/v1/img2img": REQUEST_HEADERS | RESPONSE_HEADERS,
}


def kept_for(path: str) -> int:
    return KEPT_BY_PATH.get(path, EVERYTHING)


def _body(data: bytes | None) -> str | None:
    # Bodies are bytes; JSON carries them as base64, as Go encodes []byte.
    return None if data is None else base64.b64encode(data).decode("ascii")


def capture_document(
    path: str,
    request_headers: dict[str, str] | None,
    request_body: bytes | None,
    response_headers: dict[str, str] | None,
    response_body: bytes | None,
) -> bytes:
    """
    A capture's JSON without its leading C{"id"} (added when it is read,
    since the id is only known once the activity row is written): the
    newest llama-swap's fields, bodies in base64.
    """
    document = {
        "req_path": path,
        "req_headers": request_headers,
        "req_body": _body(request_body),
        "resp_headers": response_headers,
        "resp_body": _body(response_body),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))[1:].encode("utf-8")


def compress(document: bytes) -> bytes:
    return zlib.compress(document, 6)


class Captures:
    def __init__(self, megabytes: int):
        self._ring: OrderedDict[int, bytes] = OrderedDict()
        self._used = 0
        self._assembling = 0
        self.capacity = 0
        self.resize(megabytes)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def resize(self, megabytes: int) -> None:
        self.capacity = max(0, megabytes) * 1024 * 1024
        self._evict(0)

    # ------------------------------------------------------------ assembling

    def reserve(self, size: int) -> bool:
        """
        Whether a capture being assembled may hold C{size} more bytes.
        """
        if self._assembling + size > self.capacity:
            return False
        self._assembling += size
        return True

    def release(self, size: int) -> None:
        self._assembling = max(0, self._assembling - size)

    # ------------------------------------------------------------ the ring

    def _evict(self, room: int) -> None:
        while self._ring and self._used + room > self.capacity:
            _, oldest = self._ring.popitem(last=False)
            self._used -= len(oldest)

    def add(self, activity_id: int, compressed: bytes) -> bool:
        if len(compressed) > self.capacity:
            return False
        self._evict(len(compressed))
        self._ring[activity_id] = compressed
        self._used += len(compressed)
        return True

    def has(self, activity_id: int) -> bool:
        return activity_id in self._ring

    def get(self, activity_id: int) -> bytes | None:
        """
        The capture's JSON document, or C{None} if it is not (or no
        longer) kept.
        """
        compressed = self._ring.get(activity_id)
        if compressed is None:
            return None
        return b'{"id":%d,' % activity_id + zlib.decompress(compressed)

    @property
    def used(self) -> int:
        return self._used


def redacted_headers(headers) -> dict[str, str]:
    """
    The headers of a Twisted C{Headers} as one value each, credentials
    replaced.
    """
    return header_map((name, value) for name, values in headers.getAllRawHeaders() for value in values)


def response_header_map(pairs: Any) -> dict[str, str]:
    headers = header_map(pairs)
    for name in [name for name in headers if name.lower() == "content-encoding"]:
        del headers[name]
    return headers
