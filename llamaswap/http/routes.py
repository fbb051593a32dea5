"""
The HTTP API as thin Klein routes: parse the request, call the object that
does the work, format the answer.  Paths, status codes, headers and JSON
shapes follow the original llama-swap so that its clients keep working.
"""

from __future__ import annotations

import time
from typing import Callable
from urllib.parse import urlsplit

from klein import Klein
from twisted.python.filepath import FilePath
from twisted.web.server import Request

from llamaswap.http.answers import error_response, json_response, sized
from llamaswap.http.bodies import spooled_body
from llamaswap.http.gateway import Gateway
from llamaswap.http.jsonbody import InvalidBody, parse_request_body
from llamaswap.http.multipart import (
    InvalidForm,
    boundary_of,
    form_value,
    parse_fields,
    replace_value,
)
from llamaswap.http.streams import LOG_SOURCES, stream_events, stream_logs
from llamaswap.http.ui import UIFiles
from llamaswap.models.manager import ModelManager
from llamaswap.observe.events import EventBus
from llamaswap.observe.logs import Logs
from llamaswap.observe.metrics import MetricsStore

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

    def __init__(
        self,
        *,
        models: ModelManager,
        gateway: Gateway,
        logs: Logs,
        bus: EventBus,
        metrics: MetricsStore,
        static_dir: FilePath,
    ):
        self.models = models
        self.gateway = gateway
        self.logs = logs
        self.bus = bus
        self.metrics = metrics
        self.ui_files = UIFiles(static_dir)

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

    @property
    def config(self):
        return self.models.config

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
        return self.gateway.forward(request, model_id, body, loading=model.send_loading_state and parsed.stream)

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
        return self.gateway.forward(request, model_id, body)

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
        return self.gateway.forward(request, model_id, spooled_body(request.content), path=target)

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
        return json_response(request, {"object": "list", "data": data})

    @app.route("/running", methods=["GET"])
    def running(self, request):
        return json_response(request, {"running": self.models.running_models()}, charset=False)

    @app.route("/unload", methods=["GET"])
    def unload_all(self, request):
        return self.models.unload_all().addCallback(lambda _: sized(request, b"OK", TEXT))

    @app.route("/api/models/unload", methods=["POST"])
    def api_unload_all(self, request):
        return self.models.unload_all().addCallback(lambda _: json_response(request, {"msg": "ok"}))

    @app.route("/api/models/unload/<path:model>", methods=["POST"])
    def api_unload_model(self, request, model):
        model_id = self.config.real_model_name(model)
        if model_id is None:
            return error_response(request, 404, "Model not found")

        return self.models.unload(model_id).addCallback(lambda _: sized(request, b"OK", TEXT))

    @app.route("/api/metrics", methods=["GET"])
    def api_metrics(self, request):
        return sized(request, self.metrics.to_json(), b"application/json")

    # ------------------------------------------------------------ logs and events

    @app.route("/logs", methods=["GET"])
    def logs(self, request):
        if b"text/html" in (request.getHeader(b"accept") or b""):
            request.redirect(b"/ui/")
            return sized(request, b"")
        return sized(request, self.logs.combined.history(), b"text/plain")

    @app.route("/logs/stream", methods=["GET"], defaults={"name": ""}, endpoint="logs_stream_all")
    @app.route("/logs/stream/<name>", methods=["GET"], endpoint="logs_stream_one")
    def logs_stream(self, request, name):
        if name not in LOG_SOURCES:
            request.setResponseCode(400)
            return b"invalid logger. Use 'proxy' or 'upstream'"
        query = request.uri.partition(b"?")[2]
        history = b"no-history" not in {part.partition(b"=")[0] for part in query.split(b"&")}
        return stream_logs(request, self.logs, self.bus, name, history)

    @app.route("/api/events", methods=["GET"])
    def api_events(self, request):
        return stream_events(request, self.logs, self.bus, self.metrics, self.models.statuses)

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
        return self.ui_files.render(request, b"favicon.ico")

    @app.route("/ui", methods=["GET", "HEAD"], strict_slashes=False, endpoint="ui_root")
    def ui_root(self, request):
        request.setResponseCode(301)
        request.setHeader(b"location", b"/ui/" + request.uri[len(request.path) :])
        return sized(request, b"")

    @app.route("/ui/", methods=["GET", "HEAD"], branch=True, endpoint="ui_files")
    def ui(self, request):
        return self.ui_files.render(request, request.path[len(b"/ui/") :])

    @app.handle_errors(Exception)
    def errors(self, request, failure):
        """
        Routing outcomes become their HTTP answers (a redirect the router
        asks for -- say, to merge doubled slashes -- is sent as a redirect
        to a path on this server); anything else is a bug, logged, and a
        500 without details.
        """
        from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
        from werkzeug.routing import RequestRedirect

        if failure.check(RequestRedirect):
            target = urlsplit(failure.value.new_url)
            request.setResponseCode(308)
            request.setHeader(b"location", (target.path + ("?" + target.query if target.query else "")).encode())
            return sized(request, b"")
        if failure.check(NotFound, MethodNotAllowed):
            request.setResponseCode(404)
            return sized(request, b"")
        if failure.check(HTTPException) and 400 <= (failure.value.code or 0) < 500:
            request.setResponseCode(failure.value.code)
            return sized(request, b"")
        self.logs.proxy.error(
            f"internal error handling {request.method.decode('latin-1')} "
            f"{request.path.decode('latin-1')}: {failure.getErrorMessage()}"
        )
        return error_response(request, 500, "internal error")
