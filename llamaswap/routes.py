"""
The HTTP API as thin Klein routes: parse the request, ask the model manager,
format the answer.  Paths, status codes, headers and JSON shapes follow the
original llama-swap so that its clients keep working.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Callable

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath, InsecurePath
from twisted.web.server import Request
from twisted.web.static import File

from llamaswap.events import (
    ConfigFileChanged,
    LogData,
    ProcessStateChanged,
    TokenMetricsRecorded,
)
from llamaswap.groups import ShuttingDown, TooManyRequests
from llamaswap.jsonbody import InvalidBody, parse_request_body
from llamaswap.loading import LoadingStream
from llamaswap.metrics import MetricsObserver
from llamaswap.multipart import (
    InvalidForm,
    boundary_of,
    form_value,
    parse_fields,
    replace_value,
)
from llamaswap.process import ProcessShutdown, StartFailed
from llamaswap.protocols.sse import sse_message
from llamaswap.protocols.streaming import BoundedStream
from llamaswap.proxy import ReverseProxyResource
from llamaswap.upstream import spooled_body
from llamaswap.web import error_response, send_error, sized

if TYPE_CHECKING:
    from llamaswap.service import LlamaswapService

TEXT = b"text/plain; charset=utf-8"
INFERENCE_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio/speech",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/infill",
    "/completion",
)


def _read_body(request: Request) -> bytes:
    if request.content is None:
        return b""
    request.content.seek(0)
    return request.content.read()


class Routes:
    """
    The Klein application of one running service.
    """

    app = Klein()

    def __init__(self, service: LlamaswapService, static_dir: FilePath):
        self.service = service
        self.static_dir = static_dir

    def resource(self):
        return self.app.resource()

    def fast_routes(self) -> dict[tuple[bytes, bytes], Callable]:
        """
        The inference endpoints, dispatched without Klein's routing: they
        carry almost all the traffic, and skipping the router is measurably
        cheaper (see benchmarks/README.md).
        """
        routes = {(b"POST", path.encode()): self.inference for path in INFERENCE_PATHS}
        routes[(b"POST", b"/v1/audio/transcriptions")] = self.transcription
        return routes

    # ------------------------------------------------------------ helpers

    @property
    def config(self):
        return self.service.config

    @property
    def manager(self):
        return self.service.manager

    @property
    def log(self):
        return self.service.logs.proxy

    def _proxy_to(self, request, model_id, lease, body, headers_sent=False, path=None):
        model = self.config.models[model_id]
        target = path if path is not None else request.uri
        url = (model.proxy.rstrip("/") + target.decode("latin-1")).encode("latin-1")
        observer = None
        if request.method == b"POST":
            observer = MetricsObserver(
                self.service.metrics,
                model_id,
                self.service.clock.seconds,
                warn=self.log.debug,
                path=request.path.decode("latin-1"),
            )
        return ReverseProxyResource(
            self.service.client,
            model_id,
            url,
            body,
            send_error=send_error,
            log_error=self.log.error,
            observer=observer,
            on_done=lease.release,
            headers_sent=headers_sent,
        )

    def _use(self, request, model_id, body, loading_allowed=False, path=None):
        """
        Wait for the model (answering 429/502/503 as appropriate), then
        proxy the request to it.
        """
        try:
            waiting = self.manager.use(model_id)
        except TooManyRequests:
            return error_response(request, 429, "Too many requests")
        except ShuttingDown as error:
            return error_response(request, 503, str(error))
        loading = None
        if loading_allowed and not self.manager.is_ready(model_id):
            loading = LoadingStream(request, model_id, self.service.clock)

        def ready(lease):
            if request._disconnected:
                lease.release()  # the client left just as its turn came
                return None
            if loading is not None:
                loading.done()
            return self._proxy_to(request, model_id, lease, body, headers_sent=loading is not None, path=path)

        def failed(failure: Failure):
            if failure.check(CancelledError):
                return None  # the client went away while waiting
            if failure.check(ProcessShutdown):
                failure = Failure(ShuttingDown(f"llamaswap is shutting down: {failure.value}"))
            if failure.check(StartFailed):
                message = f"unable to start process: {failure.value}"
            elif failure.check(ShuttingDown):
                if loading is not None:
                    loading.failed(str(failure.value))
                    return None
                return error_response(request, 503, str(failure.value))
            else:
                message = f"error starting model {model_id}: {failure.value}"
                self.log.error(message)
            if loading is not None:
                loading.failed(message)
                return None
            return error_response(request, 502, message)

        return waiting.addCallbacks(ready, failed)

    # ------------------------------------------------------------ inference

    def inference(self, request: Request):
        try:
            parsed = parse_request_body(_read_body(request))
        except InvalidBody:
            return error_response(request, 400, "missing or invalid 'model' key")
        requested = parsed.model
        if not isinstance(requested, str) or not requested:
            return error_response(request, 400, "missing or invalid 'model' key")
        model_id = self.config.real_model_name(requested)
        if model_id is None:
            return error_response(request, 400, f"could not find real modelID for {requested}")
        model = self.config.models[model_id]
        body = parsed.rewrite(model=model.use_model_name or None, strip=model.strip_params)
        return self._use(request, model_id, body, loading_allowed=model.send_loading_state and parsed.stream)

    def transcription(self, request: Request):
        body = _read_body(request)
        try:
            content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
            fields = parse_fields(body, boundary_of(content_type))
        except InvalidForm as error:
            return error_response(request, 400, f"error parsing multipart form: {error}")
        requested = form_value(body, fields, "model")
        if not requested:
            return error_response(request, 400, "missing or invalid 'model' parameter in form data")
        model_id = self.config.real_model_name(requested)
        if model_id is None:
            return error_response(request, 400, f"could not find real modelID for {requested}")
        use_name = self.config.models[model_id].use_model_name
        if use_name:
            body = replace_value(body, fields, "model", use_name)
        return self._use(request, model_id, body)

    # ------------------------------------------------------------ upstream

    @app.route("/upstream", methods=["GET"])
    def upstream_index(self, request):
        request.redirect(b"/ui/models")
        return sized(request, b"")

    @app.route("/upstream/", branch=True)
    def upstream(self, request: Request):
        raw_path = request.path[len(b"/upstream/") :].decode("utf-8", "surrogateescape")
        parts = raw_path.split("/")
        query = request.uri[len(request.path) :]
        found = None
        for index in range(len(parts)):
            candidate = "/".join(part for part in parts[: index + 1] if part)
            if candidate and self.config.real_model_name(candidate) is not None:
                found = (candidate, index)
                break
        if found is None:
            return error_response(request, 400, "model id required in path")
        candidate, index = found
        remaining = "/" + "/".join(parts[index + 1 :])
        if remaining == "/" and not raw_path.endswith("/"):
            location = f"/upstream/{candidate}/".encode("utf-8", "surrogateescape") + query
            request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
            request.setHeader(b"location", location)
            return sized(request, b"")
        model_id = self.config.real_model_name(candidate)
        target = remaining.encode("utf-8", "surrogateescape") + query
        return self._use(request, model_id, spooled_body(request.content), path=target)

    # ------------------------------------------------------------ models

    @app.route("/v1/models", methods=["GET"])
    def list_models(self, request):
        created = int(time.time())

        def record(name, model):
            entry = {"id": name, "object": "model", "created": created, "owned_by": "llama-swap"}
            if model.name.strip():
                entry["name"] = model.name.strip()
            if model.description.strip():
                entry["description"] = model.description.strip()
            if model.metadata:
                entry["meta"] = {"llamaswap": model.metadata}
            return entry

        data = []
        for model_id, model in self.config.models.items():
            if model.unlisted:
                continue
            data.append(record(model_id, model))
            if self.config.include_aliases_in_list:
                data.extend(record(alias, model) for alias in model.aliases if alias.strip())
        data.sort(key=lambda entry: entry["id"])
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"access-control-allow-origin", origin)
        return self._json(request, {"object": "list", "data": data})

    @app.route("/running", methods=["GET"])
    def running(self, request):
        return self._json(request, {"running": self.manager.running_models()}, charset=False)

    @app.route("/unload", methods=["GET"])
    def unload_all(self, request):
        return self.manager.unload_all().addCallback(lambda _: sized(request, b"OK", TEXT))

    @app.route("/api/models/unload", methods=["POST"])
    def api_unload_all(self, request):
        return self.manager.unload_all().addCallback(lambda _: self._json(request, {"msg": "ok"}))

    @app.route("/api/models/unload/<path:model>", methods=["POST"])
    def api_unload_model(self, request, model):
        model_id = self.config.real_model_name(model)
        if model_id is None:
            return error_response(request, 404, "Model not found")

        return self.manager.unload(model_id).addCallback(lambda _: sized(request, b"OK", TEXT))

    @app.route("/api/metrics", methods=["GET"])
    def api_metrics(self, request):
        return sized(request, self.service.metrics.to_json(), b"application/json")

    # ------------------------------------------------------------ logs and events

    @app.route("/logs", methods=["GET"])
    def logs(self, request):
        if b"text/html" in (request.getHeader(b"accept") or b""):
            request.redirect(b"/ui/")
            return sized(request, b"")
        return sized(request, self.service.logs.combined.history(), b"text/plain")

    @app.route("/logs/stream", methods=["GET"], defaults={"name": ""}, endpoint="logs_stream_all")
    @app.route("/logs/stream/<name>", methods=["GET"], endpoint="logs_stream_one")
    def logs_stream(self, request, name):
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-accel-buffering", b"no")
        monitor = self.service.logs.monitor(name)
        if monitor is None:
            request.setResponseCode(400)
            return b"invalid logger. Use 'proxy' or 'upstream'"
        sources = {"proxy", "upstream"} if name == "" else {name}
        stream = BoundedStream(
            request,
            dropped_notice=lambda count: f"[llamaswap: {count} log chunks dropped, the client was too slow]\n".encode(),
        )
        query = request.uri.partition(b"?")[2]
        if b"no-history" not in {part.partition(b"=")[0] for part in query.split(b"&")}:
            stream.send(monitor.history())
        # Send the headers now, even before any log line.
        request.write(b"")

        def on_log(event: LogData) -> None:
            if event.source in sources:
                stream.send(event.data)

        subscription = self.service.bus.subscribe(on_log, LogData, on_close=stream.close)
        stream.on_close = subscription.cancel
        return stream.done

    @app.route("/api/events", methods=["GET"])
    def api_events(self, request):
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"connection", b"keep-alive")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = BoundedStream(
            request,
            dropped_notice=lambda count: f": {count} events dropped, the client was too slow\n\n".encode(),
        )

        def envelope(kind: str, payload) -> None:
            stream.send(sse_message({"type": kind, "data": json.dumps(payload, ensure_ascii=False)}))

        def log_data(source: str, data: bytes) -> None:
            envelope("logData", {"data": data.decode("utf-8", "replace"), "source": source})

        def on_event(event) -> None:
            if isinstance(event, (ProcessStateChanged, ConfigFileChanged)):
                envelope("modelStatus", self.manager.statuses())
            elif isinstance(event, LogData):
                log_data(event.source, event.data)
            elif isinstance(event, TokenMetricsRecorded):
                envelope("metrics", [event.metrics.to_json()])

        log_data("proxy", self.service.logs.proxy_monitor.history())
        log_data("upstream", self.service.logs.upstream.history())
        envelope("modelStatus", self.manager.statuses())
        envelope("metrics", [metrics.to_json() for metrics in self.service.metrics.all()])
        subscription = self.service.bus.subscribe(
            on_event,
            ProcessStateChanged,
            ConfigFileChanged,
            LogData,
            TokenMetricsRecorded,
            on_close=stream.close,
        )
        stream.on_close = subscription.cancel
        return stream.done

    # ------------------------------------------------------------ misc

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return sized(request, b"OK", TEXT)

    @app.route("/wol-health", methods=["GET"])
    def wol_health(self, request):
        return sized(request, b"OK", TEXT)

    @app.route("/", methods=["GET"])
    def root(self, request):
        request.redirect(b"/ui")
        return sized(request, b"")

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request):
        icon = self.static_dir.child("favicon.ico")
        if not icon.isfile():
            request.setResponseCode(404)
            return sized(request, b"")
        return sized(request, icon.getContent(), b"image/x-icon")

    @app.route("/ui", methods=["GET", "HEAD"], strict_slashes=False, endpoint="ui_root")
    def ui_root(self, request):
        request.setResponseCode(301)
        request.setHeader(b"location", b"/ui/" + request.uri[len(request.path) :])
        return sized(request, b"")

    @app.route("/ui/", methods=["GET", "HEAD"], branch=True, endpoint="ui_files")
    def ui(self, request):
        relative = request.path[len(b"/ui") :].decode("utf-8", "replace").strip("/")
        target = self.static_dir
        try:
            for segment in relative.split("/") if relative else []:
                target = target.child(segment)
        except InsecurePath:
            request.setResponseCode(404)
            return sized(request, b"")
        if not target.isfile():
            target = self.static_dir.child("index.html")  # client-side routes
        if not target.isfile():
            request.setResponseCode(404)
            return sized(request, b"the web UI is not installed", TEXT)
        request.postpath = []  # the file is found; nothing left to traverse
        return File(target.path)

    @app.handle_errors(Exception)
    def not_found(self, request, failure):
        from werkzeug.exceptions import MethodNotAllowed, NotFound

        if failure.check(NotFound, MethodNotAllowed):
            request.setResponseCode(404)
            return sized(request, b"")
        self.log.error(f"internal error handling {request.method.decode()} {request.path.decode('latin-1')}: {failure.getErrorMessage()}")
        return error_response(request, 500, "internal error")

    # ------------------------------------------------------------ formatting

    @staticmethod
    def _json(request, payload, charset: bool = True) -> bytes:
        content_type = b"application/json; charset=utf-8" if charset else b"application/json"
        return sized(request, json.dumps(payload, separators=(",", ":")).encode("utf-8"), content_type)

