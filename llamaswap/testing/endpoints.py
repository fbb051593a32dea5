"""
The fake upstream's newer endpoints, shaped as the real servers answer
them so that the official SDKs accept the answers: OpenAI's Responses API,
Anthropic's Messages API (and token counting), image generation and
editing, Stable Diffusion WebUI's API, audio voices, audio.cpp's task API
and llama.cpp's C{/props}.

Every function takes the L{FakeUpstream} serving the request, the request
and its body, like the fake's own handlers.  Answers carry the fake's name
(C{responder}) so tests can tell which server answered.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.web import server

from llamaswap.http.multipart import InvalidForm, boundary_of, form_value, parse_fields

# A 1x1 transparent PNG: what every image endpoint "generates".
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def _document(fake, request, body) -> dict | bytes:
    document = fake._json(body)
    if not isinstance(document, dict):
        return fake._send_json(request, {"error": {"message": "body must be a JSON object"}}, 400)
    return document


def _generation(fake, request, body, document) -> tuple[str, int, int, list[str]]:
    """
    What a "generated" answer is made of: the model named, the number of
    pieces (C{chunks}, default 10), the prompt's size in tokens, the pieces.
    """
    chunks = int(fake._float(request, document, "chunks", 10))
    pieces = [f"{fake.respond}-{index} " for index in range(chunks)]
    return document.get("model", fake.respond), chunks, max(1, len(body) // 16), pieces


def _sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


def _stream(fake, request, pieces) -> object:
    request.setHeader(b"content-type", b"text/event-stream")
    request.setHeader(b"cache-control", b"no-cache")
    fake._producer(request, pieces)
    return server.NOT_DONE_YET


# ---------------------------------------------------------------- OpenAI Responses


def responses(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    model, chunks, input_tokens, pieces = _generation(fake, request, body, document)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": chunks,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + chunks,
    }
    message_id = f"msg_fake{fake.requests}"
    created = int(fake.clock.seconds())

    def response(status: str, text: str, with_usage: bool) -> dict:
        output = []
        if text:
            output.append(
                {
                    "type": "message",
                    "id": message_id,
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            )
        return {
            "id": f"resp_fake{fake.requests}",
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage if with_usage else None,
            "responder": fake.respond,
        }

    if not document.get("stream"):
        return fake._send_json(request, response("completed", "".join(pieces), True))

    def events():
        sequence = 0

        def event(kind: str, **payload) -> bytes:
            nonlocal sequence
            sequence += 1
            return _sse(kind, {"type": kind, "sequence_number": sequence, **payload})

        yield event("response.created", response=response("in_progress", "", False))
        item = {"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []}
        yield event("response.output_item.added", output_index=0, item=item)
        for piece in pieces:
            yield event(
                "response.output_text.delta", item_id=message_id, output_index=0, content_index=0, delta=piece
            )
        yield event(
            "response.output_text.done", item_id=message_id, output_index=0, content_index=0, text="".join(pieces)
        )
        yield event("response.completed", response=response("completed", "".join(pieces), True))

    return _stream(fake, request, events())


# ---------------------------------------------------------------- Anthropic Messages


def messages(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    model, chunks, input_tokens, pieces = _generation(fake, request, body, document)
    message = {
        "id": f"msg_fake{fake.requests}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(pieces)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": chunks,
            "cache_read_input_tokens": 1,
            "cache_creation_input_tokens": 0,
        },
        "responder": fake.respond,
        # what the client sent that only Anthropic clients send
        "h_anthropic_version": (request.getHeader(b"anthropic-version") or b"").decode(),
    }
    if not document.get("stream"):
        return fake._send_json(request, message)

    def events():
        start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse(
            "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for piece in pieces:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            yield _sse("content_block_delta", delta)
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return _stream(fake, request, events())


def count_tokens(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    return fake._send_json(request, {"input_tokens": max(1, len(body) // 16), "responder": fake.respond})


# ---------------------------------------------------------------- images


def _images(fake, request, count: Any) -> bytes:
    try:
        count = max(1, int(count))
    except (TypeError, ValueError):
        count = 1
    data = [{"b64_json": PIXEL, "revised_prompt": f"{fake.respond} image {index}"} for index in range(count)]
    return fake._send_json(request, {"created": int(fake.clock.seconds()), "data": data, "responder": fake.respond})


def image_generations(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    return _images(fake, request, document.get("n", 1))


def image_edits(fake, request, body):
    try:
        fields = parse_fields(body, boundary_of((request.getHeader(b"content-type") or b"").decode("latin-1")))
    except InvalidForm as error:
        return fake._send_json(request, {"error": {"message": str(error)}}, 400)
    if not any(field.name in ("image", "image[]") and field.filename is not None for field in fields):
        return fake._send_json(request, {"error": {"message": "an image is required"}}, 400)
    return _images(fake, request, form_value(body, fields, "n") or 1)


def sd_images(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    count = int(document.get("batch_size", 1) or 1)
    return fake._send_json(
        request,
        {
            "images": [PIXEL] * count,
            "parameters": document,
            "info": json.dumps({"responder": fake.respond}),
            "responder": fake.respond,
        },
    )


def sd_loras(fake, request, body):
    return fake._send_json(request, [{"name": f"{fake.respond}-lora", "alias": "lora", "path": "/loras/a.safetensors"}])


# ---------------------------------------------------------------- audio and props


def voices(fake, request, body):
    return fake._send_json(
        request,
        {"voices": ["alloy", "echo", f"{fake.respond}-voice"], "model": _model_of(request, body), "responder": fake.respond},
    )


def tasks_run(fake, request, body):
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    return fake._send_json(
        request, {"task": document.get("task", ""), "status": "done", "path": request.path.decode(), "responder": fake.respond}
    )


def props(fake, request, body):
    return fake._send_json(
        request,
        {
            "default_generation_settings": {"n_ctx": 4096, "temperature": 0.8},
            "model_path": f"/models/{fake.respond}.gguf",
            "model": _model_of(request, body),
            "responder": fake.respond,
        },
    )


def _model_of(request, body) -> str:
    values = request.args.get(b"model")
    if values:
        return values[0].decode("utf-8", "replace")
    try:
        document = json.loads(body) if body else {}
    except ValueError:
        return ""
    return document.get("model", "") if isinstance(document, dict) else ""


def ollama_chat(fake, request, body):
    """
    A server that speaks Ollama's API natively (for passthroughOllama).
    """
    document = _document(fake, request, body)
    if isinstance(document, bytes):
        return document
    return fake._send_json(
        request,
        {
            "model": document.get("model", fake.respond),
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": f"native ollama {fake.respond}"},
            "done": True,
        },
    )


ROUTES = {
    ("POST", "/api/chat"): ollama_chat,
    ("POST", "/v1/responses"): responses,
    ("POST", "/v1/messages"): messages,
    ("POST", "/v1/messages/count_tokens"): count_tokens,
    ("POST", "/v1/images/generations"): image_generations,
    ("POST", "/v1/images/edits"): image_edits,
    ("POST", "/sdapi/v1/txt2img"): sd_images,
    ("POST", "/sdapi/v1/img2img"): sd_images,
    ("GET", "/sdapi/v1/loras"): sd_loras,
    ("GET", "/v1/audio/voices"): voices,
    ("POST", "/v1/audio/voices"): voices,
    ("POST", "/v1/tasks/run"): tasks_run,
    ("GET", "/props"): props,
}
