"""
A fake OpenAI-compatible inference server, for tests, benchmarks and the
demo configuration.

    python -m llamaswap.testing.upstream --port 8081 --respond model-a

It answers every endpoint llamaswap proxies (chat and text completions,
plain and streamed with C{usage} and llama.cpp-style C{timings}, embeddings,
rerank, infill, speech, multipart transcriptions), plus test helpers: slow
and long streams, environment and request echoes.  Flags make it start
slowly, stay unhealthy for a while, ignore SIGTERM or crash.

Per-request behaviour is chosen with query parameters (or the same names
inside a C{"fake"} object in a JSON body):

  - C{wait}: seconds before answering
  - C{chunks}: number of content chunks in a stream (default 10)
  - C{delay}: seconds between stream chunks (default 0)
  - C{chunk_bytes}: pad each chunk's content to this many bytes
  - C{die_after}: exit the whole server after sending this many chunks
  - C{no_usage}, C{no_timings}: leave usage / timings out
  - C{stream=true}: stream even if the body does not ask for it
  - C{fail}: answer a completion with this HTTP status and an error body
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import struct
import sys
from typing import Any, Callable, Iterator, Mapping

from attrs import frozen
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web import resource, server
from zope.interface import implementer

from llamaswap.http.channel import JoinedHeadRequest, LlamaswapChannel
from llamaswap.http.multipart import InvalidForm, boundary_of, form_value, parse_fields
from llamaswap.testing import endpoints
from llamaswap.testing.websocket import EchoSocket, accept_key


@frozen
class Host:
    """
    What the fake upstream needs from the process it runs in: a clock, an
    environment, somewhere to print, and a way to exit at once.  A real
    process gives the reactor and the OS; an in-memory test its own.
    """

    clock: IReactorTime
    environ: Mapping[str, str]
    print: Callable[[str], None]
    exit: Callable[[int], None]


@implementer(IPushProducer)
class _GeneratorProducer:
    """
    Writes pieces from a generator as fast as the client reads them; a
    piece may also be a number of seconds to pause.

    A push producer: it writes until the transport pauses it, and pauses
    itself for the delays.  (A pull producer would be driven by Twisted's
    cooperator, which batches work into 10 ms slices and so delays every
    chunk.)
    """

    def __init__(self, request: server.Request, pieces: Iterator[bytes | float], clock: IReactorTime, say=None):
        self.request = request
        self.clock = clock
        self.pieces = pieces
        self.sleeping = None
        self.paused = False
        self.done = False
        self.complete = False
        self._say = say
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)
        self._run()

    def _client_gone(self, _) -> None:
        if not self.complete and self._say is not None:
            self._say(f"client disconnected from {self.request.path.decode('latin-1')}")
        self.stopProducing()

    def _run(self) -> None:
        while not (self.done or self.paused or self.sleeping is not None):
            try:
                piece = next(self.pieces)
            except StopIteration:
                self.done = self.complete = True
                self.request.unregisterProducer()
                self.request.finish()
                return
            if isinstance(piece, (int, float)):
                self.sleeping = self.clock.callLater(piece, self._wake)
                return
            self.request.write(piece)

    def _wake(self) -> None:
        self.sleeping = None
        self._run()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._run()

    def stopProducing(self) -> None:
        self.done = True
        if self.sleeping is not None and self.sleeping.active():
            self.sleeping.cancel()


class FakeUpstream(resource.Resource):
    isLeaf = True

    def __init__(self, options: argparse.Namespace, host: Host):
        super().__init__()
        self.options = options
        self.host = host
        self.clock = host.clock
        self.respond = options.respond
        self.healthy_at = self.clock.seconds() + options.unhealthy_for
        self.requests = 0

    def say(self, message: str) -> None:
        if not self.options.silent:
            self.host.print(f"fake upstream {self.respond}: {message}")

    def _producer(self, request, pieces) -> None:
        _GeneratorProducer(request, pieces, self.clock, self.say)

    # ------------------------------------------------------------ plumbing

    def render(self, request: server.Request):
        self.requests += 1
        path = request.path.decode("utf-8", "replace")
        if (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
            return self.websocket(request)
        handler = self.ROUTES.get((request.method.decode(), path))
        if handler is None and path.startswith("/echo"):
            handler = FakeUpstream.echo
        if handler is None:
            handler = FakeUpstream.fallback
        body = request.content.read() if request.content is not None else b""
        wait = self._float(request, self._json(body), "wait", 0)
        if wait > 0:
            gone = []
            request.notifyFinish().addErrback(gone.append)

            def later():
                if not gone:
                    result = handler(self, request, body)
                    if result is not server.NOT_DONE_YET:
                        request.write(result)
                        request.finish()

            self.clock.callLater(wait, later)
            return server.NOT_DONE_YET
        return handler(self, request, body)

    def websocket(self, request: server.Request):
        """
        Any path upgraded to a WebSocket echoes messages (see L{EchoSocket});
        C{?refuse=1} answers 403 instead of switching.
        """
        key = request.getHeader(b"sec-websocket-key")
        if key is None or request.args.get(b"refuse"):
            return self._send_json(request, {"error": "websocket refused"}, 403)
        channel = request.channel
        transport = channel.transport
        self.say(f"websocket opened on {request.uri.decode('latin-1')}")
        socket = EchoSocket(self.respond, transport, lambda: self.say("websocket closed"))
        channel.divert_input(socket.data_received)
        request.setResponseCode(101)
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        return server.NOT_DONE_YET

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body) if body else None
        except ValueError:
            return None

    def _param(self, request, document, name, default=None):
        values = request.args.get(name.encode())
        if values:
            return values[0].decode()
        if isinstance(document, dict) and isinstance(document.get("fake"), dict):
            if name in document["fake"]:
                return document["fake"][name]
        return default

    def _float(self, request, document, name, default: float) -> float:
        try:
            return float(self._param(request, document, name, default))
        except (TypeError, ValueError):
            return default

    def _flag(self, request, document, name) -> bool:
        value = self._param(request, document, name, None)
        return value not in (None, False, "0", "false", "")

    @staticmethod
    def _send_json(request, payload, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(payload).encode()

    def _usage(self, prompt: int, completion: int, request, document) -> dict:
        extra: dict[str, Any] = {}
        if not self._flag(request, document, "no_usage"):
            extra["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        if not self._flag(request, document, "no_timings"):
            extra["timings"] = {
                "cache_n": 3,
                "prompt_n": prompt,
                "prompt_ms": 12.5,
                "prompt_per_second": prompt / 0.0125,
                "predicted_n": completion,
                "predicted_ms": 40.0,
                "predicted_per_second": completion / 0.04,
            }
        return extra

    # ------------------------------------------------------------ health and info

    def health(self, request, body):
        if self.clock.seconds() < self.healthy_at:
            return self._send_json(request, {"error": {"message": "Loading model", "code": 503}}, 503)
        return self._send_json(request, {"status": "ok"})

    def models(self, request, body):
        return self._send_json(request, {"object": "list", "data": [{"id": self.respond, "object": "model"}]})

    def test(self, request, body):
        request.setHeader(b"content-type", b"text/plain")
        return self.respond.encode()

    def env(self, request, body):
        return self._send_json(request, {"respond": self.respond, "env": dict(self.host.environ)})

    def fallback(self, request, body):
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"x-responder", self.respond.encode())
        return f"{request.method.decode()} {request.path.decode('utf-8', 'replace')}".encode()

    def echo(self, request, body):
        headers = {
            name.decode("latin-1").lower(): [value.decode("latin-1") for value in values]
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        return self._send_json(
            request,
            {
                "respond": self.respond,
                "method": request.method.decode(),
                "uri": request.uri.decode("latin-1"),
                "path": request.path.decode("latin-1"),
                "headers": headers,
                "body_length": len(body),
                "body_prefix": body[:64].decode("utf-8", "replace"),
            },
        )

    # ------------------------------------------------------------ completions

    def chat(self, request, body):
        return self._completion(request, body, chat=True)

    def text_completion(self, request, body):
        return self._completion(request, body, chat=False)

    def _completion(self, request, body, chat: bool):
        document = self._json(body)
        if not isinstance(document, dict):
            return self._send_json(request, {"error": {"message": "body must be a JSON object"}}, 400)
        failure = int(self._float(request, document, "fail", 0))
        if failure:
            return self._send_json(request, {"error": {"message": f"fake failure {failure}", "type": "server_error"}}, failure)
        model = document.get("model", self.respond)
        stream = document.get("stream") is True or self._param(request, document, "stream") == "true"
        chunks = int(self._float(request, document, "chunks", 10))
        prompt_tokens = max(1, len(body) // 16)
        if not stream:
            text = " ".join(f"{self.respond}-{index}" for index in range(chunks))
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            payload = {
                "id": f"fake-{self.requests}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(self.clock.seconds()),
                "model": model,
                "choices": [choice],
                "content": text,
                "responseMessage": self.respond,
                "request_body": body.decode("utf-8", "replace"),
                "h_content_length": (request.getHeader(b"content-length") or b"").decode(),
                "h_content_type": (request.getHeader(b"content-type") or b"").decode(),
            }
            payload.update(self._usage(prompt_tokens, chunks, request, document))
            return self._send_json(request, payload)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        self._producer(request, self._stream(request, document, model, chat, chunks, prompt_tokens))
        return server.NOT_DONE_YET

    def _stream(self, request, document, model, chat, chunks, prompt_tokens):
        delay = self._float(request, document, "delay", 0)
        pad = int(self._float(request, document, "chunk_bytes", 0))
        die_after = int(self._float(request, document, "die_after", -1))
        created = int(self.clock.seconds())
        base = {
            "id": f"fake-{self.requests}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "responder": self.respond,
        }
        for index in range(chunks):
            if index == die_after:
                self.host.exit(3)
                return
            text = f"{self.respond}-{index} "
            if pad > len(text):
                text = text + "x" * (pad - len(text))
            if chat:
                choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                if index == 0:
                    choice["delta"]["role"] = "assistant"
            else:
                choice = {"index": 0, "text": text, "finish_reason": None}
            yield b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"
            if delay > 0:
                yield delay
        final_choice = {"index": 0, "finish_reason": "stop"}
        final_choice.update({"delta": {}} if chat else {"text": ""})
        yield b"data: " + json.dumps({**base, "choices": [final_choice]}).encode() + b"\n\n"
        usage = self._usage(prompt_tokens, chunks, request, document)
        if usage:
            yield b"data: " + json.dumps({**base, "choices": [], **usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def completion(self, request, body):
        # llama.cpp's native /completion and /infill
        document = self._json(body)
        if not isinstance(document, dict):
            return self._send_json(request, {"error": "body must be a JSON object"}, 400)
        payload = {
            "content": f"{self.respond} completion",
            "model": document.get("model", self.respond),
            "responseMessage": self.respond,
            "request_body": body.decode("utf-8", "replace"),
        }
        payload.update(self._usage(max(1, len(body) // 16), 2, request, document))
        return self._send_json(request, payload)

    # ------------------------------------------------------------ other endpoints

    def embeddings(self, request, body):
        document = self._json(body)
        if not isinstance(document, dict):
            return self._send_json(request, {"error": {"message": "body must be a JSON object"}}, 400)
        inputs = document.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(inputs):
            seed = len(str(item)) + index
            vector = [round(((seed * (i + 1)) % 97) / 97.0, 4) for i in range(8)]
            if document.get("encoding_format") == "base64":
                embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(max(1, len(str(item)) // 4) for item in inputs)
        return self._send_json(
            request,
            {
                "object": "list",
                "data": data,
                "model": document.get("model", self.respond),
                "responseMessage": self.respond,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def rerank(self, request, body):
        document = self._json(body)
        if not isinstance(document, dict):
            return self._send_json(request, {"error": "body must be a JSON object"}, 400)
        documents = document.get("documents", [])
        results = [
            {"index": index, "relevance_score": 1.0 / (index + 1)} for index in range(len(documents))
        ]
        return self._send_json(
            request,
            {
                "model": document.get("model", self.respond),
                "results": results,
                "responseMessage": self.respond,
                "usage": {"prompt_tokens": len(documents), "total_tokens": len(documents)},
            },
        )

    def speech(self, request, body):
        document = self._json(body)
        model = document.get("model") if isinstance(document, dict) else None
        expected = self.options.expect_model
        if expected and model != expected:
            return self._send_json(
                request, {"error": f"Invalid model: {model}, expected: {expected}"}, 400
            )
        samples = b"\x00\x00" * 800
        wav = (
            b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
            + b"data" + struct.pack("<I", len(samples)) + samples
        )
        request.setHeader(b"content-type", b"audio/wav")
        request.setHeader(b"x-model", str(model).encode())
        return wav

    def transcription(self, request, body):
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        try:
            fields = parse_fields(body, boundary_of(content_type))
        except InvalidForm as error:
            return self._send_json(request, {"error": f"Error parsing multipart form: {error}"}, 400)
        model = form_value(body, fields, "model")
        files = [field for field in fields if field.filename is not None]
        if not model:
            return self._send_json(request, {"error": "Missing model parameter"}, 400)
        if not files:
            return self._send_json(request, {"error": "Error getting file: no file"}, 400)
        size = files[0].value_end - files[0].value_start
        return self._send_json(
            request,
            {
                "text": f"The length of the file is {size} bytes",
                "model": model,
                "filename": files[0].filename,
                "h_content_type": content_type,
                "h_content_length": (request.getHeader(b"content-length") or b"").decode(),
            },
        )

    # ------------------------------------------------------------ streams for tests

    def slow_respond(self, request, body):
        echo = request.args.get(b"echo", [b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"])[0]
        delay = float(request.args.get(b"delay", [b"0.1"])[0])
        request.setHeader(b"content-type", b"text/plain")

        def pieces():
            for index in range(len(echo)):
                yield echo[index : index + 1]
                yield delay

        self._producer(request, pieces())
        return server.NOT_DONE_YET

    def big(self, request, body):
        """
        C{total} bytes in C{chunk}-byte writes, at the reader's pace; with
        C{die_at}, the server exits after sending that many bytes.
        """
        total = int(request.args.get(b"total", [b"1048576"])[0])
        chunk = int(request.args.get(b"chunk", [b"65536"])[0])
        die_at = int(request.args.get(b"die_at", [b"-1"])[0])
        request.setHeader(b"content-type", b"application/octet-stream")
        if b"length" in request.args:
            request.setHeader(b"content-length", str(total).encode())
        block = b"x" * chunk

        def pieces():
            sent = 0
            while sent < total:
                if 0 <= die_at <= sent:
                    self.host.exit(3)
                    return
                piece = block[: min(chunk, total - sent)]
                sent += len(piece)
                yield piece

        self._producer(request, pieces())
        return server.NOT_DONE_YET

    ROUTES = {
        ("GET", "/health"): health,
        ("GET", "/v1/models"): models,
        ("GET", "/test"): test,
        ("GET", "/env"): env,
        ("GET", "/slow-respond"): slow_respond,
        ("GET", "/big"): big,
        ("POST", "/v1/chat/completions"): chat,
        ("POST", "/v1/completions"): text_completion,
        ("POST", "/completion"): completion,
        ("POST", "/infill"): completion,
        ("POST", "/v1/embeddings"): embeddings,
        ("POST", "/v1/rerank"): rerank,
        ("POST", "/v1/reranking"): rerank,
        ("POST", "/rerank"): rerank,
        ("POST", "/reranking"): rerank,
        ("POST", "/v1/audio/speech"): speech,
        ("POST", "/v1/audio/transcriptions"): transcription,
        **endpoints.ROUTES,
    }


class _UpstreamRequest(JoinedHeadRequest):
    """
    The fake server's requests (a class of their own, so tests looking at
    llamaswap's objects can tell them apart).
    """


class _QuietSite(server.Site):
    protocol = LlamaswapChannel
    requestFactory = _UpstreamRequest

    def log(self, request):
        pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llamaswap.testing.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--respond", default="fake", help="this server's name, echoed in answers")
    parser.add_argument("--expect-model", default="", help="/v1/audio/speech refuses other model names")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listening")
    parser.add_argument("--unhealthy-for", type=float, default=0.0, help="seconds /health answers 503")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--crash-after", type=float, default=None, help="exit after this many seconds")
    parser.add_argument("--exit-code", type=int, default=1, help="exit code for --crash-after")
    parser.add_argument("--silent", action="store_true")
    parser.add_argument("--colour", action="store_true", help="print its start-up line in ANSI colours")
    # Flags meant for a real server (--model, --ctx-size...) are ignored, so
    # that the fake can stand in for it in a real configuration.
    options, _ = parser.parse_known_args(argv)
    return options


class FakeServer:
    """
    The life of one fake upstream server: it announces itself, listens
    after C{--startup-delay}, crashes after C{--crash-after}, and exits on
    SIGTERM unless told to ignore it.

    @param listen: puts the site on C{options.host}:C{options.port}.
    """

    def __init__(self, options: argparse.Namespace, host: Host, listen: Callable[[server.Site], object]):
        self.options = options
        self.host = host
        self._listen = listen
        self.resource = FakeUpstream(options, host)
        self.site = _QuietSite(self.resource, reactor=host.clock)
        self._timers: list = []

    def say(self, message: str) -> None:
        if not self.options.silent:
            self.host.print(f"fake upstream {self.options.respond}: {message}")

    def start(self, pid: int) -> None:
        options, clock = self.options, self.host.clock
        self.say(f"starting, pid {pid}")
        if options.crash_after is not None:
            self._timers.append(clock.callLater(options.crash_after, self._crash))
        self._timers.append(clock.callLater(options.startup_delay, self._start_listening))

    def stop(self) -> None:
        """
        The process is gone: nothing it planned happens any more.
        """
        for timer in self._timers:
            if timer.active():
                timer.cancel()

    def _start_listening(self) -> None:
        self._listen(self.site)
        if getattr(self.options, "colour", False):
            self.say(f"\x1b[1;32mlistening\x1b[0m on \x1b[36m{self.options.host}:{self.options.port}\x1b[0m")
        else:
            self.say(f"listening on {self.options.host}:{self.options.port}")

    def _crash(self) -> None:
        self.say(f"crashing on purpose with code {self.options.exit_code}")
        self.host.exit(self.options.exit_code)

    def terminate(self) -> bool:
        """
        SIGTERM: returns whether the server goes away.
        """
        if self.options.ignore_sigterm:
            self.say("ignoring SIGTERM")
            return False
        self.say("SIGTERM received, shutting down")
        return True


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    from twisted.internet import reactor

    options = parse_args(sys.argv[1:] if argv is None else argv)
    host = Host(reactor, os.environ, lambda message: print(message, flush=True), _exit_now)
    fake = FakeServer(options, host, lambda site: reactor.listenTCP(options.port, site, interface=options.host))

    def on_sigterm(number, frame):
        if fake.terminate():
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_sigterm)
    fake.start(os.getpid())
    reactor.run(installSignalHandlers=False)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    main()
