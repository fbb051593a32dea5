"""
Answers llamaswap writes itself (rather than relays): complete small bodies
with their length, JSON documents, and errors in the shape the client asked
for -- by default the OpenAI error envelope, so that OpenAI clients raise
the right exception with llamaswap's message.
"""

from __future__ import annotations

import html
import json

# HTTP status -> the OpenAI error type and the default code, as the newest
# llama-swap maps them.
ERROR_KINDS = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "unauthorized"),
    403: ("authentication_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def error_envelope(code: int, message: str, error_code: str | None = None) -> dict:
    """
    C{{"src": "llama-swap", "error": {"message", "type", "param", "code"}}}:
    the OpenAI error object, marked as coming from the proxy rather than
    from a model's server.
    """
    kind, default_code = ERROR_KINDS.get(
        code, ("invalid_request_error", "invalid_request") if 400 <= code < 500 else ("server_error", "internal_error")
    )
    return {
        "src": "llama-swap",
        "error": {"message": message, "type": kind, "param": None, "code": error_code or default_code},
    }


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


def error_response(request, code: int, message: str, error_code: str | None = None, json_only: bool = False) -> bytes:
    """
    Set the status and content type of an error and return its body: the
    message alone for a client that asks for C{text/plain}, a small page for
    C{text/html}, and the JSON error envelope otherwise (always, with
    C{json_only}).
    """
    request.setResponseCode(code)
    request.error_message = message  # for the activity log
    if getattr(request, "ollama", False):  # Ollama's clients read {"error": "..."}
        body = json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")
        return sized(request, body, b"application/json; charset=utf-8")
    accept = b"" if json_only else request.getHeader(b"accept") or b""
    if b"text/plain" in accept:
        return sized(request, message.encode("utf-8"), b"text/plain; charset=utf-8")
    if b"text/html" in accept:
        page = f"<html><body><h1>llamaswap</h1><p>{html.escape(message)}</p></body></html>"
        return sized(request, page.encode("utf-8"), b"text/html; charset=utf-8")
    body = json.dumps(error_envelope(code, message, error_code), ensure_ascii=False).encode("utf-8")
    return sized(request, body, b"application/json")


def send_error(request, code: int, message: str) -> None:
    """
    Send a complete error response now.
    """
    body = error_response(request, code, message)
    request.write(body)
    request.finish()
