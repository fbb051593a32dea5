"""
The HTTP API as thin Klein routes: parse the request, call the object that
does the work, format the answer.  Paths, status codes, headers and JSON
shapes follow the original llama-swap so that its clients keep working.
"""

from __future__ import annotations

import functools
import json
from typing import Callable
from urllib.parse import urlsplit

from klein import Klein
from twisted.python.filepath import FilePath
from twisted.web.server import Request

from llamaswap.config.records import COMFYUI_MODEL_ID
from llamaswap.http import ollama
from llamaswap.http.answers import error_response, json_response, sized
from llamaswap.http.bodies import spooled_body, spooled_view
from llamaswap.http.gateway import Gateway
from llamaswap.http.jsonbody import InvalidBody, parse_request_body
from llamaswap.http.listing import find_model_in_path, ignored_path, model_listing, model_statuses
from llamaswap.http.modelinfo import model_settings
from llamaswap.http.multipart import (
    InvalidForm,
    boundary_of,
    form_value,
    parse_fields,
    replace_value,
)
from llamaswap.http.proxy import is_websocket, upgrade_requested
from llamaswap.http.streams import LOG_SOURCES, stream_events, stream_logs
from llamaswap.http.ui import UIFiles, forwarded_prefix
from llamaswap.models.manager import ModelManager
from llamaswap.observe.activity import ActivityLog, parse_query
from llamaswap.observe.events import EventBus
from llamaswap.observe.host import HostSampler
from llamaswap.observe.logs import Logs
from llamaswap.observe.prometheus import CONTENT_TYPE as PROMETHEUS_TYPE
from llamaswap.observe.prometheus import Telemetry
from llamaswap.observe.timestamps import parse_rfc3339
from llamaswap.routing.names import Names, NoTargetNow, Resolution, UnknownModel
from llamaswap.routing.profiles import Profiles, UnknownProfile

TEXT = b"text/plain; charset=utf-8"
# Endpoints routed by the "model" of a JSON body (POST).
INFERENCE_PATHS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/v1/audio/speech",
    "/v1/audio/voices",
    "/v1/images/generations",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/infill",
    "/completion",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/audioapi/v1/tasks/run",  # audio.cpp's task API: /audioapi is stripped
    # versionless forms, for clients that add /v1 themselves: /v is stripped
    "/v/chat/completions",
    "/v/responses",
    "/v/completions",
    "/v/messages",
    "/v/messages/count_tokens",
    "/v/embeddings",
    "/v/rerank",
    "/v/reranking",
)
# Endpoints routed by the "model" field of a multipart form (POST).
FORM_PATHS = ("/v1/audio/transcriptions", "/v1/images/edits")
# Endpoints routed by a ?model= query parameter (GET).
QUERY_PATHS = ("/v1/audio/voices", "/sdapi/v1/loras", "/props")
# Ollama's inference endpoints, /api/<kind>, translated to OpenAI's
OLLAMA_KINDS = ("chat", "generate", "embed", "embeddings")
STRIPPED_PREFIXES = (b"/v/", b"/audioapi/")


def is_inference(method: bytes, path: str) -> bool:
    """
    Whether a request is one of the model-routed endpoints (an
    C{/upstream/<model>/...} request for one is tracked like one).
    """
    if method == b"POST":
        return path in INFERENCE_PATHS or path in FORM_PATHS
    return method == b"GET" and path in QUERY_PATHS


def forwarded_target(request: Request) -> bytes | None:
    """
    The path and query to ask the model's server for, when it is not the
    client's own: C{/v/...} and C{/audioapi/...} lose their prefix.
    """
    for prefix in STRIPPED_PREFIXES:
        if request.uri.startswith(prefix):
            return request.uri[len(prefix) - 1 :]
    return None


def _with_model(request: Request, model: str) -> bytes:
    """
    The request's path and query with its C{model} parameter replaced.
    """
    from urllib.parse import parse_qsl, urlencode

    path, _, query = request.uri.partition(b"?")
    pairs = [
        (key, model if key == "model" else value)
        for key, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
    ]
    return path + b"?" + urlencode(pairs).encode("ascii")


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
        names: Names,
        profiles: Profiles,
        gateway: Gateway,
        logs: Logs,
        bus: EventBus,
        activity: ActivityLog,
        static_dir: FilePath,
        telemetry: Telemetry | None = None,
        host: HostSampler | None = None,
        hardware: Callable[[], dict | None] = lambda: None,
    ):
        self.telemetry = telemetry
        self.host = host
        self.hardware = hardware
        self._fast: dict[tuple[bytes, bytes], Callable] | None = None
        self.models = models
        self.names = names
        self.profiles = profiles
        self.gateway = gateway
        self.logs = logs
        self.bus = bus
        self.activity = activity
        self.ui_files = UIFiles(static_dir)

    def resource(self):
        return self.app.resource()

    def knows(self, request: Request) -> bool:
        """
        Whether the request would reach one of the routes (an API key is
        asked only of those; other paths stay plain 404s).
        """
        from werkzeug.exceptions import HTTPException
        from werkzeug.routing import RequestRedirect

        if (request.method, request.path) in self.fast_routes():
            return True
        adapter = self.app.url_map.bind("localhost")
        try:
            adapter.match(request.path.decode("utf-8", "replace"), method=request.method.decode("latin-1"))
        except RequestRedirect:
            return True
        except HTTPException:
            return False
        return True

    def fast_routes(self) -> dict[tuple[bytes, bytes], Callable]:
        """
        The inference endpoints, dispatched without Klein's routing: they
        carry almost all the traffic, and skipping the router is measurably
        cheaper (see benchmarks/README.md).  So are the endpoints monitors
        and clients poll all day (health checks, the model list).
        """
        if self._fast is not None:
            return self._fast
        routes = self._fast = {(b"POST", path.encode()): self.inference for path in INFERENCE_PATHS}
        for path in FORM_PATHS:
            routes[(b"POST", path.encode())] = self.form_inference
        for path in QUERY_PATHS:
            routes[(b"GET", path.encode())] = self.query_inference
        for kind in OLLAMA_KINDS:
            routes[(b"POST", f"/api/{kind}".encode())] = functools.partial(self._ollama, kind=kind)
        for path, handler in (
            (b"/health", self.health),
            (b"/wol-health", self.wol_health),
            (b"/v1/models", self.list_models),
            (b"/models", self.list_models),
        ):
            routes[(b"GET", path)] = handler
        return routes

    @property
    def config(self):
        return self.models.config

    # ------------------------------------------------------------ inference

    def _resolve(self, request: Request, requested: str) -> Resolution | bytes:
        try:
            return self.names.resolve(requested)
        except UnknownModel as error:
            return error_response(request, 404, str(error))
        except NoTargetNow as error:
            return error_response(request, 503, str(error))

    def inference(self, request: Request):
        try:
            parsed = parse_request_body(_read_body(request))
        except InvalidBody:
            return error_response(request, 400, "missing or invalid 'model' key")
        requested = parsed.model
        if not isinstance(requested, str) or not requested:
            return error_response(request, 400, "missing or invalid 'model' key")
        resolution = self._resolve(request, requested)
        if isinstance(resolution, bytes):
            return resolution
        model = self.config.models.get(resolution.model_id) if resolution.model_id is not None else None
        loading = model is not None and model.send_loading_state and parsed.stream
        return self._forward_json(request, resolution, requested, parsed, forwarded_target(request), loading=loading)

    def _forward_json(
        self,
        request: Request,
        resolution: Resolution,
        requested: str,
        parsed,
        path: bytes | None,
        loading: bool = False,
        translate=None,
    ):
        """
        Send a JSON request to whoever serves C{resolution}: its body with
        the model named as that server knows it and the filters applied.
        """
        on_done = resolution.release if resolution.selector else None
        if resolution.model_id is not None:
            model = self.config.models[resolution.model_id]
            renamed = resolution.name if resolution.name != requested else None
            body = parsed.rewrite(
                model=model.use_model_name or renamed,
                strip=model.filters.strip_params,
                set_params=model.filters.params_for(resolution.name),
            )
            return self.gateway.forward(
                request, resolution.model_id, body, path=path, loading=loading, on_done=on_done, translate=translate
            )
        peer_id, peer_model = resolution.peer
        peer = self.config.peers[peer_id]
        body = parsed.rewrite(
            model=peer_model if peer_model != requested else None,
            strip=peer.filters.strip_params,
            set_params=peer.filters.params_for(resolution.name),
        )
        return self.gateway.forward_to_peer(
            request, peer, body, path=path, metrics_name=f"{peer_id}/{peer_model}", on_done=on_done, translate=translate
        )

    def form_inference(self, request: Request):
        """
        A multipart POST whose model is its C{model} field (transcriptions,
        image edits).
        """
        with spooled_view(request.content) as body:
            try:
                content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
                fields = parse_fields(body, boundary_of(content_type))
            except InvalidForm as error:
                return error_response(request, 400, f"error parsing multipart form: {error}")
            requested = form_value(body, fields, "model")
            if not requested:
                return error_response(request, 400, "missing or invalid 'model' parameter in form data")
            return self._forward_renamed(
                request,
                requested,
                lambda name: (replace_value(body, fields, "model", name) if name else spooled_body(request.content), None),
            )

    def query_inference(self, request: Request):
        """
        A GET whose model is its C{?model=} parameter (voices, LoRAs, props).
        """
        values = request.args.get(b"model")
        requested = values[0].decode("utf-8", "replace") if values else ""
        if not requested:
            return error_response(request, 400, "missing or invalid 'model' query parameter")
        return self._forward_renamed(request, requested, lambda name: (None, _with_model(request, name) if name else None))

    def _forward_renamed(self, request: Request, requested: str, rename):
        """
        Send a request whose model is C{requested} to whoever serves it;
        C{rename(name)} gives the body and path to send (C{name} is the
        name the server knows the model by, or C{None} if it is the
        requested one).
        """
        resolution = self._resolve(request, requested)
        if isinstance(resolution, bytes):
            return resolution
        on_done = resolution.release if resolution.selector else None
        if resolution.model_id is not None:
            name = self.config.models[resolution.model_id].use_model_name or resolution.name
            body, path = rename(name if name != requested else None)
            return self.gateway.forward(request, resolution.model_id, body, path=path, on_done=on_done)
        peer_id, peer_model = resolution.peer
        body, path = rename(peer_model if peer_model != requested else None)
        return self.gateway.forward_to_peer(
            request, self.config.peers[peer_id], body, path=path, metrics_name=f"{peer_id}/{peer_model}", on_done=on_done
        )

    # ------------------------------------------------------------ Ollama

    def _ollama(self, request: Request, kind: str):  # POST /api/{chat,generate,embed,embeddings}
        """
        An Ollama inference request: translated to the OpenAI request it
        means, routed like any other, its answer translated back -- or sent
        unchanged to a model whose server speaks Ollama (C{passthroughOllama}).
        """
        request.ollama = True
        try:
            document = json.loads(_read_body(request))
        except ValueError:
            return error_response(request, 400, "the body is not valid JSON")
        requested = document.get("model") if isinstance(document, dict) else None
        if not isinstance(requested, str) or not requested:
            return error_response(request, 400, "model is required")
        resolution = self._resolve(request, requested)
        if isinstance(resolution, bytes):
            return resolution
        model = self.config.models.get(resolution.model_id) if resolution.model_id is not None else None
        if model is not None and model.passthrough_ollama:
            on_done = resolution.release if resolution.selector else None
            return self.gateway.forward(request, resolution.model_id, _read_body(request), on_done=on_done)
        try:
            if kind == "chat":
                translated = ollama.chat_request(document)
            elif kind == "generate":
                translated = ollama.generate_request(document)
            else:
                translated = ollama.embed_request(document, legacy=kind == "embeddings")
        except ollama.BadRequest as error:
            return error_response(request, 400, str(error))
        path = b"/v1/embeddings" if kind in ("embed", "embeddings") else b"/v1/chat/completions"
        path += request.uri[len(request.path) :]  # the query string, as sent
        translate = ollama.OllamaTranslator(kind, requested, translated.get("stream") is True)
        parsed = parse_request_body(json.dumps(translated).encode("utf-8"))
        return self._forward_json(request, resolution, requested, parsed, path, translate=translate)

    @app.route("/api/tags", methods=["GET"])
    def ollama_tags(self, request):
        listing = model_listing(self.config, self.models.state_of, self.profiles)
        modified = ollama.now_text()
        tags = []
        for entry in sorted(listing, key=lambda entry: entry["id"]):
            model = self.config.models.get(self.config.real_model_name(entry["id"]) or "")
            tags.append(ollama.tag(entry["id"], modified, model.metadata if model is not None else None))
        return json_response(request, {"models": tags})

    @app.route("/api/ps", methods=["GET"])
    def ollama_ps(self, request):
        expires = ollama.now_text()
        ready = [
            ollama.running(model_id, expires, self.config.models[model_id].metadata)
            for model_id in sorted(self.config.models)
            if self.models.state_of(model_id) == "ready"
        ]
        return json_response(request, {"models": ready})

    @app.route("/api/show", methods=["POST"])
    def ollama_show(self, request):
        request.ollama = True
        try:
            document = json.loads(_read_body(request))
        except ValueError:
            return error_response(request, 400, "the body is not valid JSON")
        requested = document.get("model") or document.get("name") if isinstance(document, dict) else None
        model_id = self.config.real_model_name(requested) if isinstance(requested, str) else None
        if model_id is None:
            return error_response(request, 404, f"model '{requested}' not found")
        return json_response(request, ollama.show(model_id, self.config.models[model_id]))

    @app.route("/api/pull", methods=["POST"])
    @app.route("/api/push", methods=["POST"])
    @app.route("/api/create", methods=["POST"])
    @app.route("/api/copy", methods=["POST"])
    @app.route("/api/delete", methods=["DELETE"])
    @app.route("/api/blobs/<path:digest>", methods=["HEAD", "POST"])
    def ollama_management(self, request, digest=None):
        request.ollama = True
        return error_response(
            request,
            501,
            "llamaswap runs the model servers you configure: pull, push, create, copy and delete models "
            "on the machine, then add them to llamaswap's configuration",
        )

    # ------------------------------------------------------------ upstream

    @app.route("/upstream", methods=["GET"])
    def upstream_index(self, request):
        request.redirect(forwarded_prefix(request) + b"/ui/models")
        return sized(request, b"")

    @app.route("/upstream/", branch=True)
    def upstream(self, request: Request):
        raw_path = request.path[len(b"/upstream/") :].decode("utf-8", "surrogateescape")
        query = request.uri[len(request.path) :]
        pinned = self.profiles.pin_path(raw_path)
        if pinned is not None:
            pin, target = pinned
            if not target:
                return error_response(request, 404, f"model {pin} is not available in the active profile")
            raw_path = target + raw_path.lstrip("/")[len(pin) :]
        found = find_model_in_path(self.config, raw_path)
        if found is None:
            return error_response(request, 404, "model not found")
        name, remaining = found
        if remaining == "/" and not raw_path.endswith("/"):
            location = forwarded_prefix(request) + f"/upstream/{name}/".encode("utf-8", "surrogateescape") + query
            request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
            request.setHeader(b"location", location)
            return sized(request, b"")
        model_id = self.config.real_model_name(name)
        target = remaining.encode("utf-8", "surrogateescape") + query
        upgrade = upgrade_requested(request)
        inference = is_inference(request.method, remaining)
        if model_id is None:
            peer_id, peer_model = self.config.peer_model(name)
            path = f"/upstream/{peer_model}".encode("utf-8", "surrogateescape") + target
            return self.gateway.forward_to_peer(
                request,
                self.config.peers[peer_id],
                spooled_body(request.content),
                path=path,
                upgrade=upgrade,
                track=inference,
            )
        if not self.models.is_ready(model_id) and ignored_path(self.config, remaining):
            return error_response(
                request, 409, f"model {model_id} is not loaded; path matches upstream.ignorePaths"
            )
        return self._forward_local(request, model_id, target, upgrade, track=inference)

    def _forward_local(self, request: Request, model_id: str, target: bytes, upgrade: bytes | None, track: bool):
        if is_websocket(upgrade) and self.config.models[model_id].ignore_websockets:
            return self.gateway.forward_unmanaged(request, model_id, target, upgrade)
        body = spooled_body(request.content)
        return self.gateway.forward(request, model_id, body, path=target, upgrade=upgrade, track=track)

    # ------------------------------------------------------------ ComfyUI

    @app.route("/comfyui", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def comfyui_index(self, request: Request):
        query = request.uri[len(request.path) :]
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"location", forwarded_prefix(request) + b"/comfyui/" + query)
        return sized(request, b"")

    @app.route("/comfyui/", branch=True)
    def comfyui(self, request: Request):
        """
        ComfyUI behind a fixed model id: only its front page may start it,
        so a browser tab left open does not load it again with its
        background requests once it was unloaded.
        """
        if COMFYUI_MODEL_ID not in self.config.models:
            return error_response(request, 404, f"local model {COMFYUI_MODEL_ID} not found")
        remaining = request.path[len(b"/comfyui") :]
        if remaining != b"/" and not self.models.is_ready(COMFYUI_MODEL_ID):
            return error_response(
                request, 409, f"model {COMFYUI_MODEL_ID} is not loaded; only /comfyui/ can start it"
            )
        target = remaining + request.uri[len(request.path) :]
        return self._forward_local(request, COMFYUI_MODEL_ID, target, upgrade_requested(request), track=False)

    # ------------------------------------------------------------ models

    @app.route("/v1/models", methods=["GET"])
    @app.route("/models", methods=["GET"], endpoint="models_versionless")
    def list_models(self, request):
        origin = request.getHeader(b"origin")
        if origin:
            request.setHeader(b"access-control-allow-origin", origin)
        listing = model_listing(self.config, self.models.state_of, self.profiles)
        return json_response(request, {"object": "list", "data": listing})

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

    @app.route("/api/models/<path:model>", methods=["GET"])
    def api_model(self, request, model):
        """
        One model's settings for the UI's model page (secrets masked).
        """
        model_id = self.config.real_model_name(model)
        if model_id is None:
            return error_response(request, 404, "Model not found")
        process = self.models.processes[model_id]
        state = self.models.state_shown(model_id)
        reason = process.supervisor.reason if state == "failed" else ""
        return json_response(
            request, model_settings(self.config, model_id, state, self.models.scheduler.queued(model_id), reason)
        )

    @app.route("/api/profiles", methods=["GET"])
    def api_profiles(self, request):
        return json_response(request, self.profiles.describe())

    @app.route("/api/profiles/active", methods=["PUT"])
    def api_active_profile(self, request):
        try:
            document = json.loads(_read_body(request))
        except ValueError:
            return error_response(request, 400, "invalid profile request")
        if not isinstance(document, dict) or "name" not in document:
            return error_response(request, 400, "profile name is required")
        name = document["name"]
        if name is not None and not isinstance(name, str):
            return error_response(request, 400, "profile name must be a string or null")
        try:
            self.profiles.activate(name or None)
        except UnknownProfile:
            return error_response(request, 404, f"profile {name} not found")
        return json_response(request, {"active": self.profiles.active})

    @app.route("/api/metrics", methods=["GET"])
    def api_metrics(self, request):
        self.gateway.backlog.run()  # what finished before this request, included
        return sized(request, json.dumps(self.activity.metrics()).encode(), b"application/json")

    @app.route("/api/metrics/activity", methods=["GET"])
    def api_activity(self, request):
        try:
            query = parse_query(request.args)
        except ValueError as error:
            return error_response(request, 400, str(error))
        self.gateway.backlog.run()
        listing = self.activity.page(query)
        return listing.addCallbacks(
            lambda page: json_response(request, page, charset=False),
            lambda failure: self._database_failed(request, failure, "failed to get activity"),
        )

    @app.route("/api/metrics/stats", methods=["GET"])
    def api_activity_stats(self, request):
        model = request.args.get(b"model", [b""])[0].decode("utf-8", "replace").strip()
        self.gateway.backlog.run()
        return self.activity.stats(model).addCallbacks(
            lambda stats: json_response(request, stats, charset=False),
            lambda failure: self._database_failed(request, failure, "failed to get activity stats"),
        )

    def _database_failed(self, request, failure, message: str) -> bytes:
        self.logs.proxy.error(f"{message}: {failure.getErrorMessage()}")
        return error_response(request, 500, message)

    @app.route("/api/captures/<capture_id>", methods=["GET"])
    def api_capture(self, request, capture_id):
        try:
            activity_id = int(capture_id)
        except ValueError:
            return error_response(request, 400, "invalid capture ID")
        self.gateway.backlog.run()
        document = self.activity.capture(activity_id)
        if document is None:
            return error_response(request, 404, "capture not found")
        return sized(request, document, b"application/json")

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request):
        self.gateway.backlog.run()
        if self.telemetry is None:
            return error_response(request, 503, "metrics are not available")
        return sized(request, self.telemetry.render(), PROMETHEUS_TYPE)

    @app.route("/api/performance", methods=["GET"])
    def api_performance(self, request):
        if self.host is None or self.host.disabled:
            request.setResponseCode(503)
            return json_response(request, {"enabled": False})
        after = None
        values = request.args.get(b"after")
        if values:
            after = parse_rfc3339(values[0].decode("latin-1"))
            if after is None:
                return error_response(request, 400, "invalid 'after' timestamp, use RFC3339 format")
        sys_stats, gpu_stats = self.host.history(after)
        return json_response(
            request,
            {
                "enabled": True,
                "sys_stats": [stat.to_json() for stat in sys_stats],
                "gpu_stats": [stat.to_json() for stat in gpu_stats],
            },
        )

    @app.route("/api/hardware", methods=["GET"])
    def api_hardware(self, request):
        document = self.hardware()
        if document is None:
            return error_response(request, 503, "hardware detection unavailable")
        return json_response(request, document)

    @app.route("/api/version", methods=["GET"])
    def api_version(self, request):
        from llamaswap import __version__

        return json_response(request, {"version": __version__, "commit": "", "build_date": ""})

    # ------------------------------------------------------------ logs and events

    @app.route("/logs", methods=["GET"])
    def logs(self, request):
        self.gateway.backlog.run()
        if b"text/html" in (request.getHeader(b"accept") or b""):
            request.redirect(forwarded_prefix(request) + b"/ui/")
            return sized(request, b"")
        return sized(request, self.logs.combined.history(), b"text/plain")

    @app.route("/logs/stream", methods=["GET"], defaults={"name": ""}, endpoint="logs_stream_all")
    @app.route("/logs/stream/<path:name>", methods=["GET"], endpoint="logs_stream_one")
    def logs_stream(self, request, name):
        self.gateway.backlog.run()
        if name not in LOG_SOURCES:
            found = find_model_in_path(self.config, "/" + name)
            model_id = found and self.config.real_model_name(found[0])
            if not model_id:
                return error_response(request, 400, "invalid logger. Use 'proxy', 'upstream' or a model's ID")
            name = model_id
        query = request.uri.partition(b"?")[2]
        history = b"no-history" not in {part.partition(b"=")[0] for part in query.split(b"&")}
        return stream_logs(request, self.logs, self.bus, name, history)

    @app.route("/api/events", methods=["GET"])
    def api_events(self, request):
        self.gateway.backlog.run()
        config = self.config
        return stream_events(
            request,
            self.logs,
            self.bus,
            self.activity,
            lambda: model_statuses(self.config, self.models.statuses()),
            inflight=self.gateway.inflight,
            ui_config=lambda: {"activity": {"session_id": list(config.session_id_headers)}},
            active_profile=lambda: self.profiles.active,
        )

    @app.route("/api/inflight/<path:entry_id>/cancel", methods=["POST"])
    def api_cancel_inflight(self, request, entry_id):
        inflight = self.gateway.inflight
        if inflight is None or not inflight.cancel(entry_id):
            return error_response(request, 404, "inflight request not found")
        return json_response(request, {"msg": "ok"})

    # ------------------------------------------------------------ misc

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return sized(request, b"OK", TEXT)

    @app.route("/wol-health", methods=["GET"])
    def wol_health(self, request):
        return sized(request, b"OK", TEXT)

    @app.route("/", methods=["GET"])
    def root(self, request):
        request.redirect(forwarded_prefix(request) + b"/ui")
        return sized(request, b"")

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request):
        return self.ui_files.render(request, b"favicon.ico")

    @app.route("/ui", methods=["GET", "HEAD"], strict_slashes=False, endpoint="ui_root")
    def ui_root(self, request):
        request.setResponseCode(301)
        request.setHeader(b"location", forwarded_prefix(request) + b"/ui/" + request.uri[len(request.path) :])
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
            location = (target.path + ("?" + target.query if target.query else "")).encode()
            request.setHeader(b"location", forwarded_prefix(request) + location)
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
