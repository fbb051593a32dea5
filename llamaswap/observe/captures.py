"""
Captures: the request and answer of recent metered requests, kept so an
operator can see exactly what a client sent and what the model answered
(C{GET /api/captures/<activity id>}).

They live in memory only, in a ring of C{captureBuffer} MB: the oldest go
first.  Captures still being assembled (an answer streaming in) draw on a
second allowance of the same size, so however many requests run at once,
captures never hold more than twice C{captureBuffer}; a capture that does
not fit is simply not kept.  Credentials in headers never leave: they are
replaced whenever a capture is shown, and the audio and image routes keep
only what is readable (as the newest llama-swap does).

Keeping a capture costs the request almost nothing: the bodies are kept as
they are (large ones compressed, on a thread) and the JSON document is only
made when somebody asks for it.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections import OrderedDict
from typing import NamedTuple

from twisted.web.http_headers import Headers

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

# Bodies at least this large are compressed (text shrinks several times);
# smaller ones would gain little for the work.
COMPRESS_FROM = 16 * 1024
# What a capture costs beyond its bodies, roughly: the record and headers.
OVERHEAD = 2048


def kept_for(path: str) -> int:
    return KEPT_BY_PATH.get(path, EVERYTHING)


def header_pairs(headers: Headers) -> tuple:
    return tuple((name, values[0]) for name, values in headers.getAllRawHeaders() if values)


def shown_headers(pairs: tuple | None) -> dict[str, str] | None:
    """
    Headers as a capture shows them: one value each, credentials replaced,
    no C{Content-Encoding} (bodies are shown decoded).
    """
    if pairs is None:
        return None
    shown = header_map(pairs)
    for name in [name for name in shown if name.lower() == "content-encoding"]:
        del shown[name]
    return shown


class Capture(NamedTuple):
    """
    One exchange as kept: headers as raw C{(name, value)} pairs (made
    presentable, with credentials replaced, only when shown), bodies as
    bytes (zlib-compressed when C{compressed}), C{None} where left out.

    The ring keeps it as a plain tuple: thousands of captures stay in
    memory, and the garbage collector stops tracking a plain tuple of
    bytes and strings (not a subclass of tuple), where tracked objects
    would make every full collection walk them all.
    """

    path: str
    request_headers: tuple | None
    request_body: bytes | None
    response_headers: tuple | None
    response_body: bytes | None
    compressed: bool = False

    @property
    def size(self) -> int:
        return OVERHEAD + len(self.request_body or b"") + len(self.response_body or b"")

    def worth_compressing(self) -> bool:
        return not self.compressed and len(self.request_body or b"") + len(self.response_body or b"") >= COMPRESS_FROM

    def compress(self) -> Capture:
        """
        The same capture with its bodies compressed (run on a thread: zlib
        lets go of the interpreter while it works).
        """

        def shrink(body: bytes | None) -> bytes | None:
            return None if body is None else zlib.compress(body, 6)

        return self._replace(
            request_body=shrink(self.request_body), response_body=shrink(self.response_body), compressed=True
        )

    def to_json(self, activity_id: int) -> bytes:
        """
        The newest llama-swap's document: bodies in base64, as Go encodes
        bytes.
        """

        def encoded(body: bytes | None) -> str | None:
            if body is None:
                return None
            return base64.b64encode(zlib.decompress(body) if self.compressed else body).decode("ascii")

        document = {
            "id": activity_id,
            "req_path": self.path,
            "req_headers": shown_headers(self.request_headers),
            "req_body": encoded(self.request_body),
            "resp_headers": shown_headers(self.response_headers),
            "resp_body": encoded(self.response_body),
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Captures:
    def __init__(self, megabytes: int):
        self._ring: OrderedDict[int, tuple[tuple, int]] = OrderedDict()
        self._used = 0
        self._assembling = 0
        self.capacity = 0
        self.resize(megabytes)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def used(self) -> int:
        return self._used

    @property
    def assembling(self) -> int:
        return self._assembling

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
            _, (_, size) = self._ring.popitem(last=False)
            self._used -= size

    def add(self, activity_id: int, capture: Capture) -> bool:
        size = capture.size
        if size > self.capacity:
            return False
        self._evict(size)
        self._ring[activity_id] = (tuple(capture), size)
        self._used += size
        return True

    def has(self, activity_id: int) -> bool:
        return activity_id in self._ring

    def get(self, activity_id: int) -> bytes | None:
        """
        The capture's JSON document, or C{None} if it is not (or no
        longer) kept.
        """
        kept = self._ring.get(activity_id)
        return None if kept is None else Capture(*kept[0]).to_json(activity_id)
