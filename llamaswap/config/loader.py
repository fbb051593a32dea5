"""
The configuration file: YAML in, immutable records out.

Every rule of the configuration language lives here, and every problem is
reported as a L{ConfigError} whose message names the file, the setting and
what would fix it, so that the service can refuse to start (or a reload can
keep the old configuration) with one readable line instead of a traceback.
Settings the newest llama-swap accepts keep their meaning, their defaults
and, where they were already clear, their error messages.

Loading runs in this order, as upstream does:

  1. C{${env.NAME}} is replaced in every file (L{llamaswap.config.yamlfile});
  2. the files are merged (L{llamaswap.config.sources});
  3. global macros are expanded in every setting outside C{models}, and each
     model's settings are expanded with its macros, C{${MODEL_ID}} and its
     C{${PORT}} (L{llamaswap.config.macros});
  4. anything still looking like a macro is an error;
  5. the result is checked setting by setting and turned into records.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from attrs import evolve

from llamaswap.config import macros as _macros
from llamaswap.config.command import split_command, strip_comments
from llamaswap.config.fields import Fields, describe, macro_list
from llamaswap.config.matrix import MatrixError, compile_sets
from llamaswap.config.records import (
    COMFYUI_MODEL_ID,
    DEFAULT_GROUP_ID,
    DEFAULT_UNLOAD_TIMEOUT,
    PROTECTED_PARAMS,
    Capabilities,
    Config,
    ConfigError,
    Filters,
    GroupConfig,
    MatrixConfig,
    ModelConfig,
    PeerConfig,
    ProfileConfig,
    QueueSettings,
    SelectorConfig,
    Supervision,
    Timeouts,
    resolve_peer_model,
    sanitize_strip_params,
)
from llamaswap.config.sources import read_sources
from llamaswap.config.yamlfile import read_yaml

MIN_HEALTH_CHECK_TIMEOUT = 15
MIN_PERFORMANCE_EVERY = 5.0
DEFAULT_PROXY = "http://localhost:${PORT}"
DEFAULT_IGNORE_PATHS = (r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",)
COMFYUI_CONCURRENCY_LIMIT = 50
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_TO_STDOUT = ("proxy", "upstream", "both", "none")
LOG_TIME_FORMATS = (
    "",
    "ansic",
    "unixdate",
    "rubydate",
    "rfc822",
    "rfc822z",
    "rfc850",
    "rfc1123",
    "rfc1123z",
    "rfc3339",
    "rfc3339nano",
    "kitchen",
    "stamp",
    "stampmilli",
    "stampmicro",
    "stampnano",
)
MODALITIES = ("text", "audio", "image")
SELECTOR_STRATEGIES = ("warm", "pin", "spillover")
SCHEDULERS = ("swap-aware", "fifo")
ROUTERS = ("group", "matrix")

TOP_LEVEL_KEYS = {
    "healthCheckTimeout",
    "startTimeout",
    "maxStartFailures",
    "failureCooldown",
    "logLevel",
    "logTimeFormat",
    "logToStdout",
    "logRequests",
    "metricsMaxInMemory",
    "captureBuffer",
    "store",
    "ui",
    "performance",
    "startPort",
    "sendLoadingState",
    "includeAliasesInList",
    "globalTTL",
    "unloadTimeout",
    "stopTimeout",
    "macros",
    "apiKeys",
    "upstream",
    "profiles",
    "selectors",
    "models",
    "hooks",
    "routing",
    "groups",
    "matrix",
    "peers",
}
MODEL_KEYS = {
    "cmd",
    "healthCheckTimeout",
    "startTimeout",
    "maxStartFailures",
    "failureCooldown",
    "fallback",
    "passthroughOllama",
    "cmdStop",
    "proxy",
    "aliases",
    "env",
    "checkEndpoint",
    "ttl",
    "unloadTimeout",
    "stopTimeout",
    "unlisted",
    "useModelName",
    "name",
    "description",
    "concurrencyLimit",
    "filters",
    "macros",
    "metadata",
    "sendLoadingState",
    "timeouts",
    "compat",
    "capabilities",
}
GROUP_KEYS = {"swap", "exclusive", "persistent", "members"}
FILTER_KEYS = {"stripParams", "strip_params", "setParams", "setParamsByID"}
PEER_FILTER_KEYS = {"stripParams", "setParams"}
TIMEOUT_KEYS = {"connect", "keepalive", "responseHeader", "tlsHandshake", "expectContinue", "idleConn"}
CAPABILITY_KEYS = {"in", "out", "tools", "reranker", "context"}
PEER_KEYS = {"proxy", "models", "apiKey", "filters", "timeouts"}
SELECTOR_KEYS = {"strategy", "targets", "settings", "name", "description", "unlisted", "metadata"}
MATRIX_KEYS = {"vars", "evict_costs", "sets"}
MATRIX_VAR = re.compile(r"^[a-zA-Z0-9.-]{1,32}$")
MODEL_FIELDS_NAMED_IN_ERRORS = ("cmd", "cmdStop", "proxy", "checkEndpoint", "filters.stripParams", "name", "description")


# ---------------------------------------------------------------- entry points


def load_config(
    path: str | None,
    previous: Config | None = None,
    config_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """
    Read and validate the configuration: the file at C{path} and/or the
    files of C{config_dir}.  With the configuration it replaces
    (C{previous}), models keep their automatic ports.
    """
    sources = read_sources(path, config_dir, environ)
    try:
        return build_config(sources.tree, previous)
    except ConfigError as error:
        setting = getattr(error, "setting", None)
        raise ConfigError(f"{sources.origin(setting)}: {error}") from None


def parse_config(text: str, previous: Config | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """
    Validate configuration text and build the L{Config} it describes.
    """
    tree = read_yaml(text, environ)
    return build_config({} if tree is None else tree, previous)


def _error(message: str, setting: str | None = None) -> ConfigError:
    error = ConfigError(message)
    error.setting = setting  # which file to blame, when several were merged
    return error


class PortAllocator:
    """
    Hands out the automatic C{${PORT}} numbers, from C{startPort} on.

    On a reload, a model that was already configured keeps the port it had
    (so that a model whose settings did not change is not restarted just
    because another one was added before it); new models take the lowest
    ports nobody else holds, and the ports of removed models are free again.
    """

    def __init__(self, start: int, previous: Config | None, model_ids: set[str]):
        self.start = start
        self._kept: dict[str, int] = {}
        if previous is not None:
            for model_id in sorted(model_ids & set(previous.models)):
                port = previous.models[model_id].port
                if port is not None and port >= start and port not in self._kept.values():
                    self._kept[model_id] = port
        self._taken = set(self._kept.values())
        self._next = start

    def port_for(self, model_id: str) -> int:
        if model_id in self._kept:
            return self._kept[model_id]
        while self._next in self._taken:
            self._next += 1
        port = self._next
        self._taken.add(port)
        return port


# ---------------------------------------------------------------- macros


def _expand_macros(tree: dict, previous: Config | None) -> tuple[dict, list, dict, dict]:
    """
    Expand every macro of the document: global ones outside C{models}, each
    model's own (with C{MODEL_ID} and C{PORT}) inside it.

    @return: the expanded document, the global macros, each model's own
        macros (for the records) and each model's automatic port.
    """
    global_macros = macro_list(tree.get("macros"), "")
    expanded = {
        key: value if key in ("models", "macros") else _macros.substitute_data(value, global_macros)
        for key, value in tree.items()
    }
    start_port = Fields(expanded, "config", TOP_LEVEL_KEYS, []).integer("startPort", 5800)
    if start_port < 1:
        raise _error(f"startPort must be 1 or greater, got {start_port}", "startPort")

    raw_models = expanded.get("models")
    if raw_models is None:
        raw_models = {}
    if not isinstance(raw_models, dict):
        raise _error(f"models must be a mapping of model ids to settings, got {describe(raw_models)}", "models")
    models: dict[str, Any] = {}
    own_macros: dict[str, list] = {}
    model_ports: dict[str, int | None] = {}
    for key, value in raw_models.items():
        model_id = key if isinstance(key, str) else _macros.format_value(key)
        if not model_id.strip():
            raise _error("models: a model id may not be empty", "models")
        models[model_id] = value
    ports = PortAllocator(start_port, previous, set(models))
    for model_id in sorted(models):
        data = models[model_id]
        if not isinstance(data, dict):
            continue  # reported with the model's other settings
        data = dict(data)
        model_macros = macro_list(data.pop("macros", None), f"model {model_id}: ")
        own_macros[model_id] = model_macros
        for name in ("cmd", "cmdStop"):
            if isinstance(data.get(name), str):
                data[name] = strip_comments(data[name])
        if data.get("proxy") is None:
            data["proxy"] = DEFAULT_PROXY
        merged = _macros.merge(global_macros, model_macros, model_id)
        data = _macros.substitute_data(data, merged)
        data = _substitute_by_id_keys(data, merged, model_id)
        cmd, proxy = data.get("cmd"), data.get("proxy")
        cmd_uses_port = isinstance(cmd, str) and "${PORT}" in cmd
        proxy_uses_port = isinstance(proxy, str) and "${PORT}" in proxy
        port = None
        if proxy_uses_port and not cmd_uses_port:
            raise _error(
                f"model {model_id}: proxy uses ${{PORT}} but cmd does not - "
                "${PORT} is only available when used in cmd",
                f"models.{model_id}",
            )
        if cmd_uses_port:
            port = ports.port_for(model_id)
            data = _macros.substitute_data(data, [("PORT", port)])
            data = _substitute_by_id_keys(data, [("PORT", port)], model_id)
        model_ports[model_id] = port
        models[model_id] = data
    expanded["models"] = models
    _check_macro_uses(expanded, global_macros, own_macros)
    return expanded, global_macros, own_macros, model_ports


def _substitute_by_id_keys(data: dict, macros: list, model_id: str) -> dict:
    filters = data.get("filters")
    if not isinstance(filters, dict) or not isinstance(filters.get("setParamsByID"), dict):
        return data
    resolved: dict = {}
    for key, value in filters["setParamsByID"].items():
        new_key = _macros.substitute_text(str(key), macros)
        if new_key in resolved:
            raise _error(
                f"model {model_id} filters.setParamsByID: keys '{key}' and another both become '{new_key}'",
                f"models.{model_id}",
            )
        resolved[new_key] = value
    return {**data, "filters": {**filters, "setParamsByID": resolved}}


def _check_macro_uses(tree: dict, global_macros: list, own_macros: dict[str, list]) -> None:
    """
    Anything still written C{${name}} after expansion names a macro nobody
    defined (C{${PID}} may stay in cmdStop, where it is filled in later).
    """
    for key, value in tree.items():
        if key == "macros":
            continue
        if key != "models":
            for path, reference in _references(value, key):
                raise _error(
                    f"{path}: unknown macro '${{{reference}}}'" + _macros.suggestion(reference, _macros.known_names(global_macros)),
                    key,
                )
            continue
        for model_id, data in value.items():
            if not isinstance(data, dict):
                continue
            known = _macros.known_names(_macros.merge(global_macros, own_macros.get(model_id, []), model_id))
            for field, field_value in data.items():
                for path, reference in _references(field_value, field):
                    if reference == "PID" and field == "cmdStop":
                        continue
                    hint = _macros.suggestion(reference, known)
                    setting = f"models.{model_id}"
                    if path in MODEL_FIELDS_NAMED_IN_ERRORS:
                        raise _error(f"unknown macro '${{{reference}}}' found in {model_id}.{path}{hint}", setting)
                    context = field if field in ("metadata", "capabilities") else path
                    raise _error(f"model {model_id} {context}: unknown macro '${{{reference}}}'{hint}", setting)


def _references(value: Any, path: str):
    if isinstance(value, str):
        for reference in _macros.references(value):
            yield path, reference
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _references(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _references(item, f"{path}[{index}]")


# ---------------------------------------------------------------- the whole file


def build_config(tree: dict, previous: Config | None = None) -> Config:
    """
    Check a parsed (and merged) document and build the L{Config}.
    """
    if not isinstance(tree, dict):
        raise ConfigError(f"the configuration must be a mapping of settings, got {describe(tree)}")
    warnings: list[str] = []
    tree, global_macros, own_macros, ports = _expand_macros(tree, previous)
    top = Fields(tree, "config", TOP_LEVEL_KEYS, warnings)

    log_requests = top.boolean("logRequests", False)
    if log_requests:
        warnings.append("logRequests is deprecated and has no effect; use logLevel instead")

    supervision = _build_supervision(top, Supervision(), "", warnings)
    health_check_timeout = int(supervision.health_check_timeout)

    log_level = top.text("logLevel", "info").strip().lower()
    if log_level not in LOG_LEVELS:
        warnings.append(f"logLevel '{log_level}' is not one of {', '.join(LOG_LEVELS)}; using info")
        log_level = "info"
    log_time_format = top.text("logTimeFormat", "").strip().lower()
    if log_time_format not in LOG_TIME_FORMATS:
        warnings.append(
            f"logTimeFormat '{log_time_format}' is not a known format ({', '.join(LOG_TIME_FORMATS[1:])}); "
            "log lines will have no timestamp"
        )
        log_time_format = ""
    log_to_stdout = top.text("logToStdout", "proxy").strip().lower()
    if log_to_stdout not in LOG_TO_STDOUT:
        raise _error(f"logToStdout must be one of: {', '.join(LOG_TO_STDOUT)}; got '{log_to_stdout}'", "logToStdout")

    metrics_max = top.integer("metricsMaxInMemory", 1000)
    if metrics_max <= 0:
        metrics_max = 1000
    capture_buffer = top.integer("captureBuffer", 5)
    if capture_buffer < 0:
        raise _error(f"captureBuffer must be 0 (off) or a number of MB, got {capture_buffer}", "captureBuffer")

    global_ttl = top.integer("globalTTL", 0)
    if global_ttl < 0:
        raise _error(f"globalTTL must be 0 (never unload) or a number of seconds, got {global_ttl}", "globalTTL")
    unload_timeout = _unload_timeout(top, DEFAULT_UNLOAD_TIMEOUT, "")

    send_loading_state = top.boolean("sendLoadingState", False)
    include_aliases = top.boolean("includeAliasesInList", False)

    models: dict[str, ModelConfig] = {}
    for model_id in sorted(tree["models"]):
        models[model_id] = _build_model(
            model_id,
            tree["models"][model_id],
            own_macros.get(model_id, []),
            ports.get(model_id),
            defaults=_ModelDefaults(send_loading_state, global_ttl, unload_timeout, supervision),
            warnings=warnings,
        )
    aliases = _build_aliases(models, warnings)
    models = {model_id: _with_by_id_aliases(model, aliases, models) for model_id, model in models.items()}
    models = _resolve_fallbacks(models, aliases)

    router, groups, matrix = _build_routing(top, models, aliases, warnings)
    scheduler, priority, queue = _build_scheduler(top, models, aliases, warnings)
    preload = _build_preload(top.mapping("hooks"), models, aliases, warnings)
    api_keys = _build_api_keys(top)
    peers = _build_peers(top, warnings)
    if not models and not peers:
        raise _error("config has no models: add at least one entry under 'models' (or 'peers')", "models")
    ignore_paths = _build_upstream(top, warnings)
    selectors = _build_selectors(top, warnings)
    profiles = _build_profiles(tree, warnings)
    store_path, session_ids, perf_disabled, perf_every = _build_observability(top, warnings)

    config = Config(
        models=models,
        groups=groups,
        router=router,
        matrix=matrix,
        scheduler=scheduler,
        priority=priority,
        queue=queue,
        health_check_timeout=health_check_timeout,
        log_level=log_level,
        log_time_format=log_time_format,
        log_to_stdout=log_to_stdout,
        log_requests=log_requests,
        metrics_max_in_memory=metrics_max,
        capture_buffer_mb=capture_buffer,
        store_path=store_path,
        session_id_headers=session_ids,
        performance_disabled=perf_disabled,
        performance_every=perf_every,
        start_port=top.integer("startPort", 5800),
        send_loading_state=send_loading_state,
        include_aliases_in_list=include_aliases,
        global_ttl=global_ttl,
        unload_timeout=unload_timeout,
        macros=tuple(global_macros),
        preload=preload,
        aliases=aliases,
        api_keys=api_keys,
        peers=peers,
        upstream_ignore_paths=ignore_paths,
        profiles=profiles,
        selectors=selectors,
        warnings=tuple(warnings),
    )
    _check_names(config)
    _check_selectors(config)
    _check_profiles(config)
    return config


def _unload_timeout(fields: Fields, default: float, where: str) -> float:
    """
    C{unloadTimeout} (or its older name C{stopTimeout}): seconds between
    asking a server to stop and killing it.  0 means the default.
    """
    for key in ("unloadTimeout", "stopTimeout"):
        if fields.has(key):
            value = fields.number(key, default)
            if value < 0:
                raise _error(f"{where}{key} must be 0 (use the default) or a number of seconds, got {_macros.format_value(value)}")
            return value or default
    return default


def _seconds(fields: Fields, key: str, default: float) -> float:
    value = fields.number(key, default)
    if value < 0 or math.isnan(value):
        raise _error(f"{fields.where}: {key} must be 0 (no limit) or a number of seconds, got {_macros.format_value(value)}")
    return value


# ---------------------------------------------------------------- models


class _ModelDefaults:
    def __init__(self, send_loading_state: bool, ttl: int, unload_timeout: float, supervision: Supervision):
        self.send_loading_state = send_loading_state
        self.ttl = ttl
        self.unload_timeout = unload_timeout
        self.supervision = supervision


def _build_supervision(fields: Fields, defaults: Supervision, where: str, warnings: list[str]) -> Supervision:
    """
    healthCheckTimeout, startTimeout, maxStartFailures and failureCooldown
    of the configuration (C{fields}: the top level or one model).
    """
    health = defaults.health_check_timeout
    if fields.has("healthCheckTimeout"):
        health = parse_duration(fields.data["healthCheckTimeout"], f"{where}healthCheckTimeout")
        if health < MIN_HEALTH_CHECK_TIMEOUT:
            warnings.append(
                f"{where}healthCheckTimeout {health:g} is below the minimum; using {MIN_HEALTH_CHECK_TIMEOUT}"
            )
            health = MIN_HEALTH_CHECK_TIMEOUT
    start = defaults.start_timeout
    if fields.has("startTimeout"):
        start = parse_duration(fields.data["startTimeout"], f"{where}startTimeout")
        if start < 0:
            raise ConfigError(f"{where}startTimeout must be 0 (no cap) or a number of seconds, got {start:g}")
    failures = fields.integer("maxStartFailures", defaults.max_start_failures)
    if failures < 1:
        raise ConfigError(f"{where}maxStartFailures must be at least 1, got {failures}")
    cooldown = defaults.failure_cooldown
    if fields.has("failureCooldown"):
        cooldown = parse_duration(fields.data["failureCooldown"], f"{where}failureCooldown")
        if cooldown < 0:
            raise ConfigError(f"{where}failureCooldown must be a number of seconds, got {cooldown:g}")
    return Supervision(health, start, failures, cooldown)


def _build_model(
    model_id: str, data: Any, model_macros: list, port: int | None, defaults: _ModelDefaults, warnings: list[str]
) -> ModelConfig:
    setting = f"models.{model_id}"
    try:
        return _build_model_fields(model_id, data, model_macros, port, defaults, warnings)
    except ConfigError as error:
        if getattr(error, "setting", None) is None:
            error.setting = setting
        raise


def _build_model_fields(
    model_id: str, data: Any, model_macros: list, port: int | None, defaults: _ModelDefaults, warnings: list[str]
) -> ModelConfig:
    fields = Fields(data, f"model '{model_id}'", MODEL_KEYS, warnings)
    cmd = fields.text("cmd")
    if not cmd.strip():
        raise ConfigError(f"model '{model_id}': cmd is required")
    try:
        argv = split_command(cmd)
    except ValueError as error:
        raise ConfigError(f"model '{model_id}' cmd: {error}") from None
    cmd_stop = fields.text("cmdStop")
    if cmd_stop.strip():
        try:
            split_command(cmd_stop)
        except ValueError as error:
            raise ConfigError(f"model '{model_id}' cmdStop: {error}") from None

    proxy = fields.text("proxy", DEFAULT_PROXY).strip()
    _check_url(proxy, f"model {model_id}: invalid proxy URL")

    env = fields.text_list("env")
    for entry in env:
        name, equals, _ = entry.partition("=")
        if not equals or not name.strip():
            raise ConfigError(f"model '{model_id}' env: '{entry}' is not in the form NAME=value")

    ttl = fields.integer("ttl", -1)
    if ttl == -1:
        ttl = defaults.ttl
    elif ttl < 0:
        raise ConfigError(
            f"model '{model_id}': ttl must be 0 (never unload), -1 (globalTTL) or a number of seconds, got {ttl}"
        )
    concurrency = fields.integer("concurrencyLimit", 0)
    if concurrency < 0:
        raise ConfigError(f"model '{model_id}': concurrencyLimit must be 0 or more, got {concurrency}")
    unload_timeout = _unload_timeout(fields, defaults.unload_timeout, f"model '{model_id}': ")

    aliases = [alias.strip() for alias in fields.text_list("aliases")]
    if any(not alias for alias in aliases):
        raise ConfigError(f"model '{model_id}': an alias may not be empty")

    compat = Fields(fields.data.get("compat"), f"model '{model_id}' compat", {"ignoreWebsockets"}, warnings)
    ignore_websockets = compat.boolean("ignoreWebsockets", False)
    if model_id == COMFYUI_MODEL_ID:
        # What upstream does for the model behind /comfyui: many parallel
        # polls, and websockets that must not keep it loaded.
        concurrency = max(concurrency, COMFYUI_CONCURRENCY_LIMIT)
        ignore_websockets = True

    return ModelConfig(
        id=model_id,
        cmd=cmd,
        argv=tuple(argv),
        proxy=proxy,
        cmd_stop=cmd_stop,
        aliases=tuple(aliases),
        env=tuple(env),
        check_endpoint=fields.text("checkEndpoint", "/health").strip(),
        ttl=ttl,
        unlisted=fields.boolean("unlisted", False),
        use_model_name=fields.text("useModelName"),
        name=fields.text("name"),
        description=fields.text("description"),
        concurrency_limit=concurrency,
        filters=_build_filters(fields.data.get("filters"), f"model '{model_id}' filters", FILTER_KEYS, warnings),
        metadata=_plain(fields.mapping("metadata")),
        send_loading_state=fields.boolean("sendLoadingState", defaults.send_loading_state),
        unload_timeout=unload_timeout,
        timeouts=_build_timeouts(fields.data.get("timeouts"), f"model '{model_id}' timeouts", Timeouts(), warnings),
        ignore_websockets=ignore_websockets,
        capabilities=_build_capabilities(fields.data.get("capabilities"), model_id, warnings),
        macros=tuple(model_macros),
        port=port,
        supervision=_build_supervision(fields, defaults.supervision, f"model '{model_id}': ", warnings),
        fallback=fields.text("fallback").strip() or None,
        passthrough_ollama=fields.boolean("passthroughOllama", False),
    )


def _resolve_fallbacks(models: dict[str, ModelConfig], aliases: dict[str, str]) -> dict[str, ModelConfig]:
    """
    Each C{fallback} names another model (an alias is resolved to its id);
    a chain of fallbacks must not come back to where it started.
    """
    resolved = {}
    for model_id, model in models.items():
        if model.fallback is None:
            resolved[model_id] = model
            continue
        target = model.fallback if model.fallback in models else aliases.get(model.fallback)
        if target is None:
            raise _error(f"model '{model_id}': fallback '{model.fallback}' is not a model id or alias", f"models.{model_id}")
        if target == model_id:
            raise _error(f"model '{model_id}': fallback names the model itself", f"models.{model_id}")
        resolved[model_id] = evolve(model, fallback=target)
    for model_id in resolved:
        seen, current = [model_id], resolved[model_id].fallback
        while current is not None:
            if current in seen:
                chain = " -> ".join([*seen, current])
                raise _error(f"model '{model_id}': fallbacks go round in a circle ({chain})", f"models.{model_id}")
            seen.append(current)
            current = resolved[current].fallback
    return resolved


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} '{url}': expected http://host:port or https://host:port")
    try:
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as error:
        raise ConfigError(f"{what} '{url}': {error}") from None


def _plain(value: Any) -> Any:
    """
    A copy made of plain dicts and lists (the records must not share the
    parsed document).
    """
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _build_filters(data: Any, where: str, known: set[str], warnings: list[str]) -> Filters:
    fields = Fields(data, where, known, warnings)
    strip = fields.text("stripParams") or fields.text("strip_params")
    set_params = _params(fields.mapping("setParams"), f"{where}.setParams", warnings)
    by_id: dict[str, tuple] = {}
    for requested, params in fields.mapping("setParamsByID").items():
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.setParamsByID.{requested}: expected a mapping of parameters, got {describe(params)}")
        by_id[str(requested)] = _params(params, f"{where}.setParamsByID.{requested}", warnings)
    return Filters(strip_params=sanitize_strip_params(strip), set_params=set_params, set_params_by_id=by_id)


def _params(data: dict, where: str, warnings: list[str]) -> tuple[tuple[str, Any], ...]:
    for key in data:
        if str(key) in PROTECTED_PARAMS:
            warnings.append(f"{where}.{key} is ignored: routing decides the model, filters cannot change it")
    return tuple(sorted((str(key), _plain(value)) for key, value in data.items() if str(key) not in PROTECTED_PARAMS))


def _build_timeouts(data: Any, where: str, defaults: Timeouts, warnings: list[str]) -> Timeouts:
    fields = Fields(data, where, TIMEOUT_KEYS, warnings)
    return Timeouts(
        connect=_seconds(fields, "connect", defaults.connect),
        keepalive=_seconds(fields, "keepalive", defaults.keepalive),
        response_header=_seconds(fields, "responseHeader", defaults.response_header),
        tls_handshake=_seconds(fields, "tlsHandshake", defaults.tls_handshake),
        idle_conn=_seconds(fields, "idleConn", defaults.idle_conn),
        expect_continue=_seconds(fields, "expectContinue", defaults.expect_continue),
    )


def _build_capabilities(data: Any, model_id: str, warnings: list[str]) -> Capabilities:
    fields = Fields(data, f"model '{model_id}' capabilities", CAPABILITY_KEYS, warnings)
    modalities = {}
    for key in ("in", "out"):
        values = [value.strip() for value in fields.text_list(key)]
        for value in values:
            if value not in MODALITIES:
                raise ConfigError(
                    f"model {model_id}: capabilities.{key}: invalid modality '{value}', must be one of: {', '.join(MODALITIES)}"
                )
        modalities[key] = tuple(values)
    context = fields.integer("context", 0)
    if context < 0:
        raise ConfigError(f"model {model_id}: capabilities.context: must be >= 0, got {context}")
    return Capabilities(
        inputs=modalities["in"],
        outputs=modalities["out"],
        tools=fields.boolean("tools", False),
        reranker=fields.boolean("reranker", False),
        context=context,
    )


def _build_aliases(models: Mapping[str, ModelConfig], warnings: list[str]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for model_id in sorted(models):
        for alias in models[model_id].aliases:
            if alias in aliases:
                raise _error(f"duplicate alias {alias} found in model: {model_id}", f"models.{model_id}")
            if alias in models:
                warnings.append(
                    f"model '{model_id}': alias '{alias}' is also a model id; requests for it go to that model"
                )
            aliases[alias] = model_id
    # Every setParamsByID key names the model too (upstream's rule).
    for model_id in sorted(models):
        for key in models[model_id].filters.set_params_by_id:
            if key == model_id:
                continue
            if key in models:
                raise _error(
                    f"model {model_id} filters.setParamsByID: key '{key}' is also a model id; use another name",
                    f"models.{model_id}",
                )
            owner = aliases.get(key)
            if owner is not None and owner != model_id:
                raise _error(
                    f"model {model_id} filters.setParamsByID: key '{key}' is already an alias of model {owner}",
                    f"models.{model_id}",
                )
            aliases[key] = model_id
    return aliases


def _with_by_id_aliases(model: ModelConfig, aliases: Mapping[str, str], models) -> ModelConfig:
    extra = tuple(
        key for key in model.filters.set_params_by_id if key != model.id and key not in model.aliases
    )
    if not extra:
        return model
    return evolve(model, aliases=model.aliases + extra)


# ---------------------------------------------------------------- routing


def _build_routing(top: Fields, models, aliases, warnings) -> tuple[str, dict[str, GroupConfig], MatrixConfig | None]:
    routing = Fields(top.data.get("routing"), "routing", {"router", "scheduler"}, warnings)
    router = Fields(routing.data.get("router"), "routing.router", {"use", "settings"}, warnings)
    settings = Fields(router.data.get("settings"), "routing.router.settings", {"groups", "matrix"}, warnings)
    legacy = top.has("groups") or top.has("matrix")
    modern = router.has("use") or settings.has("groups") or settings.has("matrix")
    if legacy and modern:
        raise _error(
            "the top-level 'groups'/'matrix' and 'routing.router' are both set: move the top-level ones "
            "under routing.router.settings and remove them",
            "routing",
        )
    if legacy:
        if top.has("groups") and top.has("matrix"):
            raise _error("config cannot use both 'groups' and 'matrix': choose one router", "matrix")
        use = "matrix" if top.has("matrix") else "group"
        groups_data, matrix_data, groups_where, matrix_where = top.mapping("groups"), top.data.get("matrix"), "groups", "matrix"
    else:
        use = router.text("use", "group").strip() or "group"
        if use not in ROUTERS:
            raise _error(f"routing.router.use: unknown router '{use}' (valid: {', '.join(ROUTERS)})", "routing")
        groups_data = settings.mapping("groups")
        matrix_data = settings.data.get("matrix")
        groups_where, matrix_where = "routing.router.settings.groups", "routing.router.settings.matrix"
        if use == "matrix" and matrix_data is None:
            raise _error("routing.router.use is 'matrix' but routing.router.settings.matrix is not set", "routing")
    if use == "matrix":
        return "matrix", {}, _build_matrix(matrix_data, matrix_where, models, warnings)
    return "group", _build_groups(groups_data, groups_where, models, aliases, warnings), None


def _build_groups(data: dict, where: str, models, aliases, warnings: list[str]) -> dict[str, GroupConfig]:
    groups: dict[str, GroupConfig] = {}
    owner: dict[str, str] = {}
    for key, value in data.items():
        group_id = key if isinstance(key, str) else _macros.format_value(key)
        if group_id == DEFAULT_GROUP_ID:
            raise _error(f"group name '{DEFAULT_GROUP_ID}' is reserved for ungrouped models", f"{where}.{group_id}")
        fields = Fields(value, f"group '{group_id}'", GROUP_KEYS, warnings)
        members = fields.text_list("members")
        seen: set[str] = set()
        known = []
        for member in members:
            if member in seen:
                raise _error(f"duplicate model member {member} found in group: {group_id}", f"{where}.{group_id}")
            seen.add(member)
            if member not in models:
                # The newest llama-swap accepts such members (and they
                # change nothing); a warning points out the likely typo.
                hint = f" (it is an alias of '{aliases[member]}': list the model id)" if member in aliases else ""
                warnings.append(f"group '{group_id}': member '{member}' is not a model id, ignored{hint}")
                continue
            known.append(member)
            if member in owner:
                raise _error(
                    f"model member {member} is used in multiple groups: {owner[member]} and {group_id}",
                    f"{where}.{group_id}",
                )
            owner[member] = group_id
        groups[group_id] = GroupConfig(
            id=group_id,
            members=tuple(known),
            swap=fields.boolean("swap", True),
            exclusive=fields.boolean("exclusive", True),
            persistent=fields.boolean("persistent", False),
        )
    ungrouped = tuple(sorted(model_id for model_id in models if model_id not in owner))
    groups[DEFAULT_GROUP_ID] = GroupConfig(id=DEFAULT_GROUP_ID, members=ungrouped)
    return groups


def _build_matrix(data: Any, where: str, models, warnings: list[str]) -> MatrixConfig:
    fields = Fields(data, where, MATRIX_KEYS, warnings)
    variables: dict[str, str] = {}
    for name, model in fields.mapping("vars").items():
        name = str(name)
        if not MATRIX_VAR.match(name):
            raise _error(
                f"{where}.vars: '{name}' must be 1 to 32 letters, digits, '-' or '.'", where
            )
        if model not in models:
            raise _error(f"{where}.vars.{name}: '{model}' is not a model id", where)
        variables[name] = model

    def resolve(name: str) -> str | None:
        if name in variables:
            return variables[name]
        return name if name in models else None

    costs: dict[str, int] = {}
    for name, cost in fields.mapping("evict_costs").items():
        if isinstance(cost, bool) or not isinstance(cost, int) or cost <= 0:
            raise _error(f"{where}.evict_costs.{name} must be a whole number above 0, got {describe(cost)}", where)
        model = resolve(str(name))
        if model is None:
            raise _error(f"{where}.evict_costs: '{name}' is neither a var nor a model id", where)
        costs[model] = cost
    sets = []
    for name, expression in fields.mapping("sets").items():
        if not isinstance(expression, str):
            raise _error(f"{where}.sets.{name} must be an expression (text), got {describe(expression)}", where)
        sets.append((str(name), expression))
    try:
        program = compile_sets(sets, resolve)
    except MatrixError as error:
        raise _error(f"{where}: {error}", where) from None
    return MatrixConfig(variables=variables, evict_costs=costs, sets=tuple(sets), program=program)


def _build_scheduler(top: Fields, models, aliases, warnings) -> tuple[str, dict[str, int], QueueSettings]:
    routing = Fields(top.data.get("routing"), "routing", {"router", "scheduler"}, [])
    scheduler = Fields(routing.data.get("scheduler"), "routing.scheduler", {"use", "settings"}, warnings)
    use = scheduler.text("use", "swap-aware").strip() or "swap-aware"
    if use not in SCHEDULERS:
        raise _error(f"routing.scheduler.use: unknown scheduler '{use}' (valid: {', '.join(SCHEDULERS)})", "routing")
    settings = Fields(scheduler.data.get("settings"), "routing.scheduler.settings", {"fifo", "swap-aware"}, warnings)
    fifo = Fields(settings.data.get("fifo"), "routing.scheduler.settings.fifo", {"priority"}, warnings)
    priority: dict[str, int] = {}
    for name, value in fifo.mapping("priority").items():
        real = name if name in models else aliases.get(name)
        if real is None:
            raise _error(f"routing.scheduler.settings.fifo.priority: '{name}' is not a model id or alias", "routing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(f"routing.scheduler.settings.fifo.priority.{name} must be a whole number, got {describe(value)}", "routing")
        priority[real] = value
    where = "routing.scheduler.settings.swap-aware"
    aware = Fields(settings.data.get("swap-aware"), where, {"maxWait", "maxQueue", "queueTimeout"}, warnings)
    defaults = QueueSettings()
    limits = {}
    for key, attribute in (("maxWait", "max_wait"), ("queueTimeout", "queue_timeout")):
        value = aware.data.get(key)
        seconds = getattr(defaults, attribute) if value is None else parse_duration(value, f"{where}.{key}")
        if seconds < 0:
            raise _error(f"{where}.{key} must be 0 (off) or a number of seconds, got {describe(value)}", "routing")
        limits[attribute] = seconds
    max_queue = aware.integer("maxQueue", defaults.max_queue)
    if max_queue < 0:
        raise _error(f"{where}.maxQueue must be 0 (no limit) or a number of requests, got {max_queue}", "routing")
    return use, priority, QueueSettings(max_queue=max_queue, **limits)


def _build_preload(hooks: dict, models, aliases, warnings: list[str]) -> tuple[str, ...]:
    on_startup = Fields(
        Fields(hooks, "hooks", {"on_startup"}, warnings).data.get("on_startup"),
        "hooks.on_startup",
        {"preload"},
        warnings,
    )
    preload: list[str] = []
    for requested in on_startup.text_list("preload"):
        requested = requested.strip()
        if not requested:
            continue
        real = requested if requested in models else aliases.get(requested)
        if real is None:
            warnings.append(f"hooks.on_startup.preload: '{requested}' is not a model; not preloading it")
        elif real not in preload:
            preload.append(real)
    return tuple(preload)


# ---------------------------------------------------------------- peers, keys, upstream


def _build_api_keys(top: Fields) -> tuple[str, ...]:
    keys = []
    for index, key in enumerate(top.text_list("apiKeys")):
        if not key:
            raise _error(f"apiKeys[{index}] is empty: remove it or give it a value", "apiKeys")
        if " " in key:
            raise _error(f"apiKeys[{index}]: an API key cannot contain spaces", "apiKeys")
        keys.append(key)
    return tuple(keys)


def _build_peers(top: Fields, warnings: list[str]) -> dict[str, PeerConfig]:
    peers: dict[str, PeerConfig] = {}
    for key, value in top.mapping("peers").items():
        peer_id = str(key)
        where = f"peer '{peer_id}'"
        try:
            fields = Fields(value, where, PEER_KEYS, warnings)
            proxy = fields.text("proxy").strip()
            if not proxy:
                raise ConfigError(f"{where}: proxy is required (the peer's base URL, e.g. http://192.168.1.23:8080)")
            _check_url(proxy, f"{where}: invalid proxy URL")
            models = [model.strip() for model in fields.text_list("models")]
            if not models or any(not model for model in models):
                raise ConfigError(f"{where}: models must list the peer's model ids (at least one, none empty)")
            peers[peer_id] = PeerConfig(
                id=peer_id,
                proxy=proxy,
                models=tuple(dict.fromkeys(models)),
                api_key=fields.text("apiKey"),
                filters=_build_filters(fields.data.get("filters"), f"{where} filters", PEER_FILTER_KEYS, warnings),
                timeouts=_build_timeouts(fields.data.get("timeouts"), f"{where} timeouts", Timeouts(response_header=60), warnings),
            )
        except ConfigError as error:
            error.setting = f"peers.{peer_id}"
            raise
    return peers


def _build_upstream(top: Fields, warnings: list[str]) -> tuple[str, ...]:
    upstream = Fields(top.data.get("upstream"), "upstream", {"ignorePaths"}, warnings)
    patterns = upstream.text_list("ignorePaths")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise _error(f"upstream.ignorePaths: invalid regular expression '{pattern}': {error}", "upstream")
    return tuple(patterns) if patterns else DEFAULT_IGNORE_PATHS


def _build_observability(top: Fields, warnings: list[str]) -> tuple[str | None, tuple[str, ...], bool, float]:
    store_path = None
    if top.data.get("store") is not None:
        store = Fields(top.data.get("store"), "store", {"path"}, warnings)
        store_path = store.text("path").strip()
        if not store_path:
            raise _error("store.path must not be empty: give a database file, or remove 'store'", "store")
    ui = Fields(top.data.get("ui"), "ui", {"activity"}, warnings)
    activity = Fields(ui.data.get("activity"), "ui.activity", {"session_id"}, warnings)
    if activity.has("session_id"):
        names = activity.text_list("session_id")
    else:
        names = ["X-Session-ID", "X-Litellm-Session-Id"]
    session_ids = tuple({name.strip().lower(): name.strip() for name in reversed(names) if name.strip()}.values())[::-1]
    performance = Fields(top.data.get("performance"), "performance", {"disabled", "every"}, warnings)
    every = performance.data.get("every")
    seconds = 5.0 if every is None else parse_duration(every, "performance.every")
    if seconds < MIN_PERFORMANCE_EVERY:
        raise _error(f"performance: every must be at least 5s, got {_macros.format_value(every)}", "performance")
    return store_path, session_ids, performance.boolean("disabled", False), seconds


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, where: str) -> float:
    """
    Seconds in a duration such as C{15s}, C{1h30m} or C{90m} (Go's syntax);
    a bare number is seconds.
    """
    if isinstance(value, bool):
        raise _error(f"{where} must be a duration such as 15s or 1h30m, got {describe(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION.match(text, position)
        if match is None:
            raise _error(f"{where} must be a duration such as 15s or 1h30m, got the text '{text}'")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise _error(f"{where} must be a duration such as 15s or 1h30m, got nothing")
    return total


# ---------------------------------------------------------------- selectors and profiles


def _build_selectors(top: Fields, warnings: list[str]) -> dict[str, SelectorConfig]:
    selectors: dict[str, SelectorConfig] = {}
    for key, value in top.mapping("selectors").items():
        selector_id = str(key)
        where = f"selectors.{selector_id}"
        if not selector_id.strip():
            raise _error("selectors: a selector name may not be empty", "selectors")
        fields = Fields(value, where, SELECTOR_KEYS, warnings)
        strategy = fields.text("strategy").strip()
        if not strategy:
            raise _error(f"{where}.strategy is required (one of: {', '.join(SELECTOR_STRATEGIES)})", "selectors")
        if strategy not in SELECTOR_STRATEGIES:
            raise _error(
                f"{where}.strategy: unknown strategy '{strategy}' (valid: {', '.join(SELECTOR_STRATEGIES)})",
                "selectors",
            )
        targets = fields.text_list("targets")
        if not targets:
            raise _error(f"{where}.targets must contain at least one entry", "selectors")
        settings = Fields(fields.data.get("settings"), f"{where}.settings", {"spillover"}, warnings)
        spillover = settings.integer("spillover", 1)
        selectors[selector_id] = SelectorConfig(
            id=selector_id,
            strategy=strategy,
            targets=tuple(targets),
            spillover=spillover,
            name=fields.text("name"),
            description=fields.text("description"),
            unlisted=fields.boolean("unlisted", False),
            metadata=_plain(fields.mapping("metadata")),
        )
    return selectors


def _build_profiles(tree: dict, warnings: list[str]) -> dict[str, ProfileConfig]:
    data = tree.get("profiles")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _error(f"profiles must be a mapping of profile names, got {describe(data)}", "profiles")
    profiles: dict[str, ProfileConfig] = {}
    for key, value in data.items():
        profile_id = str(key)
        if not profile_id.strip():
            raise _error("profiles: a profile name may not be empty", "profiles")
        if isinstance(value, list):
            raise _error(
                f"profiles.{profile_id}: profiles are now a mapping with 'description' and 'pins' "
                "(the older list of models is no longer supported; use routing groups for that)",
                "profiles",
            )
        fields = Fields(value, f"profiles.{profile_id}", {"description", "pins"}, warnings)
        pins_data = fields.mapping("pins")
        if not pins_data:
            raise _error(f"profiles.{profile_id}.pins must contain at least one entry", "profiles")
        pins: dict[str, str] = {}
        for pin, target in pins_data.items():
            pin = str(pin)
            if not pin.strip():
                raise _error(f"profiles.{profile_id}.pins: a pin name may not be empty", "profiles")
            if target is not None and not isinstance(target, str):
                raise _error(f"profiles.{profile_id}.pins.{pin} must be a model id or empty, got {describe(target)}", "profiles")
            pins[pin] = target or ""
        profiles[profile_id] = ProfileConfig(profile_id, fields.text("description"), pins)
    return profiles


def _resolves(config: Config, name: str) -> bool:
    return config.real_model_name(name) is not None or resolve_peer_model(config.peers, name) is not None


def _check_names(config: Config) -> None:
    """
    Every peer model's qualified name (C{peer/model}) is its own: no model,
    alias, selector or pin may take it, and no two peers may produce it.
    """
    owners: dict[str, tuple[str, str]] = {}
    for peer_id in sorted(config.peers):
        for model in config.peers[peer_id].models:
            name = f"{peer_id}/{model}"
            if name in owners and owners[name] != (peer_id, model):
                other = owners[name]
                raise _error(
                    f"peer model name '{name}' is ambiguous between peers.{other[0]} model '{other[1]}' "
                    f"and peers.{peer_id} model '{model}'",
                    f"peers.{peer_id}",
                )
            owners[name] = (peer_id, model)
    for name in sorted(owners):
        if name in config.models:
            raise _error(f"model id '{name}' is also the name of peer {owners[name][0]}'s model: rename one", f"models.{name}")
        if name in config.aliases:
            raise _error(
                f"model {config.aliases[name]} alias '{name}' is also the name of peer {owners[name][0]}'s model: rename one",
                f"models.{config.aliases[name]}",
            )
        if name in config.selectors:
            raise _error(f"selector '{name}' is also the name of peer {owners[name][0]}'s model: rename one", "selectors")
        for profile in config.profiles.values():
            if name in profile.pins:
                raise _error(
                    f"profile {profile.id} pin '{name}' is also the name of peer {owners[name][0]}'s model: rename one",
                    "profiles",
                )


def _check_selectors(config: Config) -> None:
    for selector_id, selector in config.selectors.items():
        where = f"selectors.{selector_id}"
        if selector_id in config.models:
            raise _error(f"{where}: the name is already a model id; rename the selector", "selectors")
        if selector_id in config.aliases:
            raise _error(
                f"{where}: the name is already an alias of model {config.aliases[selector_id]}; rename the selector",
                "selectors",
            )
        resolved: list[str] = []
        local: list[str] = []
        for index, target in enumerate(selector.targets):
            if target in config.selectors:
                raise _error(
                    f"{where}.targets[{index}] is the selector '{target}': a selector cannot choose another selector",
                    "selectors",
                )
            if not _resolves(config, target):
                raise _error(f"{where}.targets[{index}]: '{target}' is not a model, alias or peer model", "selectors")
            real = config.real_model_name(target)
            if selector.strategy == "warm" and real is None:
                raise _error(f"{where}.targets[{index}]: strategy 'warm' needs local models, and '{target}' is a peer's", "selectors")
            if selector.strategy == "spillover":
                if real is None:
                    peer_id, model = resolve_peer_model(config.peers, target)
                    real = f"{peer_id}/{model}"
                else:
                    local.append(real)
                if real in resolved:
                    raise _error(f"{where}.targets names '{real}' twice", "selectors")
                resolved.append(real)
        if selector.strategy != "spillover":
            continue
        if selector.spillover < 1:
            raise _error(f"{where}.settings.spillover must be 1 or more, got {selector.spillover}", "selectors")
        _check_spillover_together(config, where, local)


def _check_spillover_together(config: Config, where: str, targets: list[str]) -> None:
    """
    Spillover runs its local targets side by side: the router must allow it.
    """
    if len(targets) <= 1:
        return
    if config.router == "matrix":
        if not config.matrix.program.can_run_together(targets):
            raise _error(f"{where}.targets must all appear together in one set of the matrix", "selectors")
        return
    groups = {member: group for group in config.groups.values() for member in group.members}
    first = groups[targets[0]]
    if first.swap:
        raise _error(
            f"{where}: spillover targets must share one routing group with swap: false (group '{first.id}' swaps)",
            "selectors",
        )
    for target in targets[1:]:
        if groups[target].id != first.id:
            raise _error(f"{where}: spillover targets must share one routing group", "selectors")


def _check_profiles(config: Config) -> None:
    for profile in config.profiles.values():
        for pin, target in profile.pins.items():
            if target and not _resolves(config, target) and target not in config.selectors:
                raise _error(
                    f"profiles.{profile.id}.pins.{pin}: '{target}' is not a model, alias, peer model or selector",
                    "profiles",
                )
