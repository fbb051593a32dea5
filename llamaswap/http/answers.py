"""
Answers llamaswap writes itself (rather than relays): complete small bodies
with their length, JSON documents, and errors as JSON or plain text, as the
client asked.
"""

from __future__ import annotations

import json


def wants_json(request) -> bool:
    accept = request.getHeader(b"accept") or b""
    return b"application/json" in accept


def sized(request, body: bytes, content_type: bytes | None = None) -> bytes:
    """
    Announce a complete body's length (Klein would otherwise send even a
    two-byte answer chunked) and return it.
    """
    if content_type is not None:
        request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(body)).encode())
    return body


def json_response(request, payload, charset: bool = True) -> bytes:
    content_type = b"application/json; charset=utf-8" if charset else b"application/json"
    return sized(request, json.dumps(payload, separators=(",", ":")).encode("utf-8"), content_type)


def error_response(request, code: int, message: str) -> bytes:
    """
    Set the status and content type of an error and return its body: JSON
    C{{"error": message}} when the client accepts JSON, plain text otherwise.
    """
    request.setResponseCode(code)
    if wants_json(request):
        return sized(request, json.dumps({"error": message}).encode("utf-8"), b"application/json; charset=utf-8")
    return sized(request, message.encode("utf-8"), b"text/plain; charset=utf-8")


def send_error(request, code: int, message: str) -> None:
    """
    Send a complete error response now.
    """
    body = error_response(request, code, message)
    request.write(body)
    request.finish()
