"""
Ollama's API, translated: clients that speak only Ollama (Open WebUI,
Continue, the C{ollama} library) use llamaswap's models unchanged.

C{/api/chat}, C{/api/generate}, C{/api/embed} and C{/api/embeddings} become
the OpenAI requests they mean and are routed like every other request (by
C{model}: aliases, filters, the scheduler, peers); the answers are turned
back into Ollama's shape as they stream past: each server-sent event of the
OpenAI stream becomes one NDJSON line at once, holding only the current
line, so a long answer takes constant memory and no buffering.  A plain
(not streamed) answer is kept up to L{MAX_ANSWER} bytes and translated at
its end.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from llamaswap.observe.activity import error_message_of
from llamaswap.protocols.client import ResponseHead

MAX_ANSWER = 16 * 1024 * 1024
MAX_LINE = 4 * 1024 * 1024
NDJSON = b"application/x-ndjson"
JSON = b"application/json; charset=utf-8"

# Ollama's options and the OpenAI (or llama.cpp) fields they become.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
}


class BadRequest(ValueError):
    """
    The Ollama request cannot be translated; the message says why.
    """


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _streaming(document: dict) -> bool:
    stream = document.get("stream", True)  # Ollama streams unless told not to
    return stream is not False


def _common(document: dict, out: dict) -> None:
    options = document.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    for name, field in OPTIONS.items():
        if name in options:
            out[field] = options[name]
    form = document.get("format")
    if form == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(form, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": form, "strict": True}}
    elif form not in (None, ""):
        raise BadRequest('format must be "json" or a JSON schema object')
    if _streaming(document):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    else:
        out["stream"] = False


def _with_images(text: str, images: Any) -> Any:
    if not images:
        return text
    parts: list[dict] = [{"type": "text", "text": text}]
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}})
    return parts


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    converted = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object")
        role = message.get("role", "user")
        content = message.get("content") or ""
        out: dict[str, Any] = {
            "role": role,
            "content": _with_images(content, message.get("images")) if role == "user" else content,
        }
        if message.get("tool_name"):
            out["name"] = message["tool_name"]
        calls = message.get("tool_calls")
        if calls:
            out["tool_calls"] = [
                {
                    "id": f"call_{index}",
                    "type": "function",
                    "function": {
                        "name": (call.get("function") or {}).get("name", ""),
                        "arguments": json.dumps((call.get("function") or {}).get("arguments") or {}),
                    },
                }
                for index, call in enumerate(calls)
            ]
        converted.append(out)
    return converted


def chat_request(document: dict) -> dict:
    out: dict[str, Any] = {"model": document["model"], "messages": _messages(document.get("messages") or [])}
    if document.get("tools"):
        out["tools"] = document["tools"]
    _common(document, out)
    return out


def generate_request(document: dict) -> dict:
    messages: list[dict] = []
    if document.get("system") and not document.get("raw"):
        messages.append({"role": "system", "content": document["system"]})
    messages.append({"role": "user", "content": _with_images(document.get("prompt") or "", document.get("images"))})
    out: dict[str, Any] = {"model": document["model"], "messages": messages}
    if document.get("suffix"):
        out["suffix"] = document["suffix"]
    _common(document, out)
    return out


def embed_request(document: dict, legacy: bool) -> dict:
    if legacy:
        return {"model": document["model"], "input": document.get("prompt") or ""}
    out = {"model": document["model"], "input": document.get("input", "")}
    if document.get("dimensions"):
        out["dimensions"] = document["dimensions"]
    return out


def _nanoseconds(milliseconds: Any) -> int:
    return int(float(milliseconds) * 1_000_000) if isinstance(milliseconds, (int, float)) else 0


class _Answer:
    """
    What is learnt of an answer as it passes: text, tool calls, why it
    stopped, token counts and llama.cpp's timings.
    """

    def __init__(self) -> None:
        self.reason = "stop"
        self.prompt = 0
        self.generated = 0
        self.timings: dict = {}
        self.tool_calls: dict[int, dict] = {}

    def learn(self, document: dict) -> None:
        usage = document.get("usage")
        if isinstance(usage, dict):
            self.prompt = usage.get("prompt_tokens") or self.prompt
            self.generated = usage.get("completion_tokens") or self.generated
        timings = document.get("timings")
        if isinstance(timings, dict):
            self.timings = timings
        for choice in document.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.reason = choice["finish_reason"]

    def totals(self, started: float) -> dict[str, Any]:
        timings = self.timings
        totals = {
            "done_reason": self.reason,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": timings.get("prompt_n") or self.prompt,
            "prompt_eval_duration": _nanoseconds(timings.get("prompt_ms")),
            "eval_count": timings.get("predicted_n") or self.generated,
            "eval_duration": _nanoseconds(timings.get("predicted_ms")),
        }
        return totals

    def calls(self) -> list[dict]:
        calls = []
        for _, call in sorted(self.tool_calls.items()):
            try:
                arguments = json.loads(call["arguments"]) if call["arguments"] else {}
            except ValueError:
                arguments = {"raw": call["arguments"]}
            calls.append({"function": {"name": call["name"], "arguments": arguments}})
        return calls


class OllamaTranslator:
    """
    An OpenAI answer (SSE stream or JSON) as Ollama's (NDJSON lines or one
    JSON document) -- the proxy's L{llamaswap.http.proxy.AnswerTranslator}.

    @param kind: C{chat}, C{generate}, C{embed} or C{embeddings}.
    @param model: the model name the client asked for, echoed back.
    """

    def __init__(self, kind: str, model: str, streamed: bool):
        self.kind = kind
        self.model = model
        self.streamed = streamed and kind in ("chat", "generate")
        self._started = time.monotonic()
        self._answer = _Answer()
        self._pending = b""
        self._body: list[bytes] = []
        self._size = 0
        self._status = 200
        self._sse = False
        self._ended = False

    # the proxy's side

    def head(self, head: ResponseHead) -> tuple[int, list[tuple[bytes, bytes]]]:
        self._status = head.code
        self._sse = b"text/event-stream" in (head.header(b"content-type") or b"").lower()
        if head.code == 200 and self.streamed:
            return 200, [(b"content-type", NDJSON), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        return head.code, [(b"content-type", JSON)]

    def data(self, data: bytes) -> bytes:
        if self._status == 200 and self._sse:
            return self._events(data)
        self._size += len(data)
        if self._size <= MAX_ANSWER:
            self._body.append(data)
        return b""

    def end(self, complete: bool) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        if self._status != 200:
            return self._error()
        if self._sse:
            tail = self._events(b"\n") if self._pending else b""
            return tail + self._final(complete)
        if self._size > MAX_ANSWER:
            return _line({"error": f"the answer of {self.model} was too large to translate"})
        try:
            document = json.loads(b"".join(self._body))
        except ValueError:
            return _line({"error": f"{self.model} answered with something that is not JSON"})
        return self._whole(document)

    # streams

    def _events(self, data: bytes) -> bytes:
        data = self._pending + data
        cut = data.rfind(b"\n") + 1
        lines, self._pending = data[:cut], data[cut:]
        if len(self._pending) > MAX_LINE:
            self._pending = b""  # an event that long is not one we can use
        out = []
        for line in lines.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if isinstance(event, dict):
                translated = self._event(event)
                if translated is not None:
                    out.append(_line(translated))
        return b"".join(out)

    def _event(self, event: dict) -> dict | None:
        self._answer.learn(event)
        choices = event.get("choices") or []
        delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
        if not isinstance(delta, dict):
            return None
        for call in delta.get("tool_calls") or ():
            slot = self._answer.tool_calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
        text = delta.get("content") or ""
        thinking = delta.get("reasoning_content") or ""
        if not (text or thinking):
            return None
        return self._piece(text, thinking)

    def _piece(self, text: str, thinking: str = "") -> dict:
        if self.kind == "generate":
            piece = {"model": self.model, "created_at": now_text(), "response": text, "done": False}
            if thinking:
                piece["thinking"] = thinking
            return piece
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        return {"model": self.model, "created_at": now_text(), "message": message, "done": False}

    def _final(self, complete: bool) -> bytes:
        out = b""
        calls = self._answer.calls()
        if calls and self.kind == "chat":
            piece = self._piece("")
            piece["message"]["tool_calls"] = calls
            out += _line(piece)
        final = self._piece("")
        final["done"] = True
        final.update(self._answer.totals(self._started))
        if not complete:
            final["done_reason"] = "error"
        return out + _line(final)

    # whole answers

    def _whole(self, document: Any) -> bytes:
        if not isinstance(document, dict):
            return _line({"error": f"{self.model} answered with an unexpected document"})
        answer = self._answer
        answer.learn(document)
        if self.kind in ("embed", "embeddings"):
            vectors = [_vector(item.get("embedding")) for item in document.get("data") or () if isinstance(item, dict)]
            if self.kind == "embeddings":
                return _json({"embedding": vectors[0] if vectors else []})
            return _json(
                {
                    "model": self.model,
                    "embeddings": vectors,
                    "total_duration": int((time.monotonic() - self._started) * 1e9),
                    "load_duration": 0,
                    "prompt_eval_count": answer.prompt,
                }
            )
        choices = document.get("choices") or [{}]
        message = choices[0].get("message") or {} if isinstance(choices[0], dict) else {}
        for index, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            answer.tool_calls[index] = {"name": function.get("name") or "", "arguments": function.get("arguments") or ""}
        piece = self._piece(message.get("content") or "", message.get("reasoning_content") or "")
        if self.kind == "chat" and answer.tool_calls:
            piece["message"]["tool_calls"] = answer.calls()
        piece["done"] = True
        piece.update(answer.totals(self._started))
        return _json(piece)

    def _error(self) -> bytes:
        body = b"".join(self._body)
        message = error_message_of(body) or body.decode("utf-8", "replace").strip()[:500] or f"HTTP {self._status}"
        return _json({"error": message})


def _vector(embedding: Any) -> Any:
    """
    One vector per input, as Ollama's clients expect: a server without
    pooling answers with a vector per token, averaged here.
    """
    if isinstance(embedding, list) and embedding and all(isinstance(token, list) for token in embedding):
        size = len(embedding[0])
        return [sum(token[index] for token in embedding) / len(embedding) for index in range(size)]
    return embedding


def _line(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _json(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_body(message: str) -> bytes:
    return _json({"error": message})


def _digest(name: str) -> str:
    import hashlib

    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _details(metadata: Any = None) -> dict[str, Any]:
    metadata = metadata if isinstance(metadata, dict) else {}
    family = str(metadata.get("family", ""))
    return {
        "parent_model": "",
        "format": str(metadata.get("format", "gguf")),
        "family": family,
        "families": [family] if family else [],
        "parameter_size": str(metadata.get("parameter_size", "")),
        "quantization_level": str(metadata.get("quantization_level", "")),
    }


def tag(name: str, modified_at: str, metadata: Any = None) -> dict[str, Any]:
    """
    One model as C{/api/tags} lists it (llamaswap does not know sizes: 0).
    """
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": 0,
        "digest": _digest(name),
        "details": _details(metadata),
    }


def running(name: str, expires_at: str, metadata: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "size": 0,
        "digest": _digest(name),
        "details": _details(metadata),
        "expires_at": expires_at,
        "size_vram": 0,
    }


def show(model_id: str, model) -> dict[str, Any]:
    """
    C{/api/show} for a local model: its metadata under C{model_info}, its
    capabilities in Ollama's words.
    """
    capabilities = ["completion"]
    found = model.capabilities
    if found.tools:
        capabilities.append("tools")
    if "image" in found.inputs:
        capabilities.append("vision")
    if found.reranker:
        capabilities = ["rerank"]
    info = dict(model.metadata) if isinstance(model.metadata, dict) else {}
    if found.context:
        info.setdefault("context_length", found.context)
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _details(model.metadata),
        "model_info": {"general.name": model.name or model_id, **info},
        "capabilities": capabilities,
    }
