"""
The configuration file: YAML in, immutable records out.

Every rule of the configuration language lives here, and every problem is
reported as a L{ConfigError} whose message names the model, group, field or
macro at fault, so that the service can refuse to start with one readable
line instead of a traceback.  Settings the original llama-swap accepts keep
their meaning, their defaults and (where they were already clear) their
error messages.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit

from llamaswap.config import macros as _macros
from llamaswap.config.command import split_command, strip_comments
from llamaswap.config.fields import Fields, macro_list
from llamaswap.config.records import (
    DEFAULT_GROUP_ID,
    Config,
    ConfigError,
    GroupConfig,
    ModelConfig,
)
from llamaswap.config.yamlfile import read_yaml

MIN_HEALTH_CHECK_TIMEOUT = 15
LOG_LEVELS = ("debug", "info", "warn", "error")
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

TOP_LEVEL_KEYS = {
    "healthCheckTimeout",
    "logLevel",
    "logTimeFormat",
    "logRequests",
    "metricsMaxInMemory",
    "startPort",
    "sendLoadingState",
    "includeAliasesInList",
    "stopTimeout",
    "macros",
    "models",
    "groups",
    "hooks",
    "profiles",
}
MODEL_KEYS = {
    "cmd",
    "cmdStop",
    "proxy",
    "aliases",
    "env",
    "checkEndpoint",
    "ttl",
    "unlisted",
    "useModelName",
    "name",
    "description",
    "concurrencyLimit",
    "filters",
    "macros",
    "metadata",
    "sendLoadingState",
    "stopTimeout",
}
GROUP_KEYS = {"swap", "exclusive", "persistent", "members"}


def load_config(path: str, previous: Config | None = None) -> Config:
    """
    Read and validate the configuration file at C{path}; with the
    configuration it replaces, models keep their automatic ports.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read config file '{path}': {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file '{path}' is not UTF-8 text: {error}") from None
    return parse_config(text, previous)


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


def parse_config(text: str, previous: Config | None = None) -> Config:
    """
    Validate configuration text and build the L{Config} it describes (see
    L{PortAllocator} for what C{previous} is for).
    """
    warnings: list[str] = []
    top = Fields(read_yaml(text), "config", TOP_LEVEL_KEYS, warnings)

    if top.has("profiles"):
        warnings.append(
            "profiles have been removed in favour of groups and are ignored; see the README"
        )
    log_requests = top.boolean("logRequests", False)
    if log_requests:
        warnings.append("logRequests is deprecated and has no effect; use logLevel instead")

    health_check_timeout = top.integer("healthCheckTimeout", 120)
    if health_check_timeout < MIN_HEALTH_CHECK_TIMEOUT:
        warnings.append(
            f"healthCheckTimeout {health_check_timeout} is below the minimum; using {MIN_HEALTH_CHECK_TIMEOUT}"
        )
        health_check_timeout = MIN_HEALTH_CHECK_TIMEOUT

    log_level = top.text("logLevel", "info").strip().lower()
    if log_level not in LOG_LEVELS:
        warnings.append(
            f"logLevel '{log_level}' is not one of {', '.join(LOG_LEVELS)}; using info"
        )
        log_level = "info"

    log_time_format = top.text("logTimeFormat", "").strip().lower()
    if log_time_format not in LOG_TIME_FORMATS:
        warnings.append(
            f"logTimeFormat '{log_time_format}' is not a known format ({', '.join(LOG_TIME_FORMATS[1:])}); "
            "log lines will have no timestamp"
        )
        log_time_format = ""

    start_port = top.integer("startPort", 5800)
    if start_port < 1:
        raise ConfigError(f"startPort must be 1 or greater, got {start_port}")

    metrics_max = top.integer("metricsMaxInMemory", 1000)
    if metrics_max <= 0:
        metrics_max = 1000

    stop_timeout = top.number("stopTimeout", 5.0)
    if stop_timeout <= 0:
        raise ConfigError(f"stopTimeout must be a positive number of seconds, got {stop_timeout}")

    send_loading_state = top.boolean("sendLoadingState", False)
    global_macros = macro_list(top.data.get("macros"), "")

    raw_models = top.mapping("models")
    if not raw_models:
        raise ConfigError("config has no models: add at least one entry under 'models'")
    models_by_id: dict[str, Any] = {}
    for key, value in raw_models.items():
        model_id = key if isinstance(key, str) else _macros.format_value(key)
        if not model_id.strip():
            raise ConfigError("models: a model id may not be empty")
        models_by_id[model_id] = value

    models: dict[str, ModelConfig] = {}
    ports = PortAllocator(start_port, previous, set(models_by_id))
    for model_id in sorted(models_by_id):
        models[model_id] = _build_model(
            model_id,
            models_by_id[model_id],
            global_macros,
            ports,
            send_loading_state,
            stop_timeout,
            warnings,
        )

    aliases: dict[str, str] = {}
    for model_id in sorted(models):
        for alias in models[model_id].aliases:
            if alias in aliases:
                raise ConfigError(f"duplicate alias {alias} found in model: {model_id}")
            if alias in models:
                warnings.append(
                    f"model '{model_id}': alias '{alias}' is also a model id; requests for it go to that model"
                )
            aliases[alias] = model_id

    groups = _build_groups(top.mapping("groups"), models, aliases, warnings)
    preload = _build_preload(top.mapping("hooks"), models, aliases, warnings)

    return Config(
        models=models,
        groups=groups,
        health_check_timeout=health_check_timeout,
        log_level=log_level,
        log_time_format=log_time_format,
        log_requests=log_requests,
        metrics_max_in_memory=metrics_max,
        start_port=start_port,
        send_loading_state=send_loading_state,
        include_aliases_in_list=top.boolean("includeAliasesInList", False),
        stop_timeout=stop_timeout,
        macros=tuple(global_macros),
        preload=preload,
        aliases=aliases,
        warnings=tuple(warnings),
    )


def _build_model(
    model_id: str,
    data: Any,
    global_macros: list[tuple[str, Any]],
    ports: PortAllocator,
    global_loading_state: bool,
    global_stop_timeout: float,
    warnings: list[str],
) -> ModelConfig:
    where = f"model {model_id}"
    fields = Fields(data, f"model '{model_id}'", MODEL_KEYS, warnings)
    if not fields.text("cmd").strip():
        raise ConfigError(f"model '{model_id}': cmd is required")

    model_macros = macro_list(fields.data.get("macros"), f"{where}: ")
    merged = _macros.merge(global_macros, model_macros, model_id)

    filters = Fields(
        fields.data.get("filters"), f"model '{model_id}' filters", {"stripParams", "strip_params"}, warnings
    )
    texts = {
        "cmd": strip_comments(fields.text("cmd")),
        "cmdStop": strip_comments(fields.text("cmdStop")),
        "proxy": fields.text("proxy", "http://localhost:${PORT}"),
        "checkEndpoint": fields.text("checkEndpoint", "/health"),
        "filters.stripParams": filters.text("stripParams") or filters.text("strip_params"),
    }
    texts = {name: _macros.substitute_text(value, merged) for name, value in texts.items()}
    metadata = _macros.substitute_data(fields.mapping("metadata"), merged)

    cmd_uses_port = "${PORT}" in texts["cmd"]
    proxy_uses_port = "${PORT}" in texts["proxy"]
    port = None
    if cmd_uses_port or proxy_uses_port:
        if not cmd_uses_port:
            raise ConfigError(
                f"model {model_id}: proxy uses ${{PORT}} but cmd does not - "
                "${PORT} is only available when used in cmd"
            )
        port = ports.port_for(model_id)
        port_macro = [("PORT", port)]
        for name in ("cmd", "cmdStop", "proxy"):
            texts[name] = _macros.substitute_text(texts[name], port_macro)
        metadata = _macros.substitute_data(metadata, port_macro)

    known = _macros.known_names(merged)
    for name, value in texts.items():
        for reference in _macros.references(value):
            if reference == "PID" and name == "cmdStop":
                continue
            raise ConfigError(
                f"unknown macro '${{{reference}}}' found in {model_id}.{name}"
                + _macros.suggestion(reference, known)
            )
    for reference in _macros.references_in_data(metadata):
        raise ConfigError(
            f"model {model_id} metadata: unknown macro '${{{reference}}}'"
            + _macros.suggestion(reference, known)
        )

    try:
        argv = split_command(texts["cmd"])
    except ValueError as error:
        raise ConfigError(f"model '{model_id}' cmd: {error}") from None
    if texts["cmdStop"].strip():
        try:
            split_command(texts["cmdStop"])
        except ValueError as error:
            raise ConfigError(f"model '{model_id}' cmdStop: {error}") from None

    proxy = texts["proxy"].strip()
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"model {model_id}: invalid proxy URL '{proxy}': expected http://host:port or https://host:port"
        )
    try:
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as error:
        raise ConfigError(f"model {model_id}: invalid proxy URL '{proxy}': {error}") from None

    env = fields.text_list("env")
    for entry in env:
        name, equals, _ = entry.partition("=")
        if not equals or not name.strip():
            raise ConfigError(f"model '{model_id}' env: '{entry}' is not in the form NAME=value")

    ttl = fields.integer("ttl", 0)
    if ttl < 0:
        raise ConfigError(f"model '{model_id}': ttl must be 0 (never unload) or a number of seconds, got {ttl}")
    concurrency = fields.integer("concurrencyLimit", 0)
    if concurrency < 0:
        raise ConfigError(f"model '{model_id}': concurrencyLimit must be 0 or more, got {concurrency}")
    stop_timeout = fields.number("stopTimeout", global_stop_timeout)
    if stop_timeout <= 0:
        raise ConfigError(f"model '{model_id}': stopTimeout must be a positive number of seconds")

    aliases = [alias.strip() for alias in fields.text_list("aliases")]
    if any(not alias for alias in aliases):
        raise ConfigError(f"model '{model_id}': an alias may not be empty")

    model = ModelConfig(
        id=model_id,
        cmd=texts["cmd"],
        argv=tuple(argv),
        proxy=proxy,
        cmd_stop=texts["cmdStop"],
        aliases=tuple(aliases),
        env=tuple(env),
        check_endpoint=texts["checkEndpoint"].strip(),
        ttl=ttl,
        unlisted=fields.boolean("unlisted", False),
        use_model_name=fields.text("useModelName"),
        name=fields.text("name"),
        description=fields.text("description"),
        concurrency_limit=concurrency,
        strip_params_text=texts["filters.stripParams"],
        metadata=metadata,
        send_loading_state=fields.boolean("sendLoadingState", global_loading_state),
        stop_timeout=stop_timeout,
        macros=tuple(model_macros),
        port=port,
    )
    return model


def _build_groups(
    data: dict, models: Mapping[str, ModelConfig], aliases: Mapping[str, str], warnings: list[str]
) -> dict[str, GroupConfig]:
    groups: dict[str, GroupConfig] = {}
    owner: dict[str, str] = {}
    for key, value in data.items():
        group_id = key if isinstance(key, str) else _macros.format_value(key)
        if group_id == DEFAULT_GROUP_ID:
            raise ConfigError(f"group name '{DEFAULT_GROUP_ID}' is reserved for ungrouped models")
        fields = Fields(value, f"group '{group_id}'", GROUP_KEYS, warnings)
        members = fields.text_list("members")
        seen: set[str] = set()
        for member in members:
            if member in seen:
                raise ConfigError(f"duplicate model member {member} found in group: {group_id}")
            seen.add(member)
            if member not in models:
                hint = f" (it is an alias of '{aliases[member]}')" if member in aliases else ""
                raise ConfigError(f"group '{group_id}': member '{member}' is not a model id{hint}")
            if member in owner:
                raise ConfigError(
                    f"model member {member} is used in multiple groups: {owner[member]} and {group_id}"
                )
            owner[member] = group_id
        groups[group_id] = GroupConfig(
            id=group_id,
            members=tuple(members),
            swap=fields.boolean("swap", True),
            exclusive=fields.boolean("exclusive", True),
            persistent=fields.boolean("persistent", False),
        )
    ungrouped = tuple(sorted(model_id for model_id in models if model_id not in owner))
    groups[DEFAULT_GROUP_ID] = GroupConfig(id=DEFAULT_GROUP_ID, members=ungrouped)
    return groups


def _build_preload(
    hooks: dict, models: Mapping[str, ModelConfig], aliases: Mapping[str, str], warnings: list[str]
) -> tuple[str, ...]:
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
