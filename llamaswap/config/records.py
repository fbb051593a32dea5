"""
The configuration as immutable records: what the loader produces and the
rest of llamaswap reads.  Nothing here parses YAML or reports errors; see
L{llamaswap.config.loader} for that.
"""

from __future__ import annotations

from typing import Any, Mapping

from attrs import field, frozen

from llamaswap.config.command import split_command

DEFAULT_GROUP_ID = "(default)"
DEFAULT_CONCURRENCY_LIMIT = 10
DEFAULT_UNLOAD_TIMEOUT = 10
PROTECTED_PARAMS = frozenset({"model"})
# The model the /comfyui endpoint serves (the newest llama-swap's name).
COMFYUI_MODEL_ID = "comfyui_auto"


class ConfigError(ValueError):
    """
    The configuration cannot be used; the message says why and where.
    """


@frozen
class GroupConfig:
    """
    How a set of models shares the machine.

    @ivar swap: only one member runs at a time.
    @ivar exclusive: running a member stops the models of every other
        non-persistent group.
    @ivar persistent: other groups never stop this group's models.
    """

    id: str
    members: tuple[str, ...] = ()
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False


@frozen
class Timeouts:
    """
    Timeouts of the connections to a model server or peer, in seconds
    (C{0}: none).  C{response_header} is how long a server may take to
    start answering once the request is sent.
    """

    connect: float = 30
    keepalive: float = 30
    response_header: float = 0
    tls_handshake: float = 10
    idle_conn: float = 90
    expect_continue: float = 1


@frozen
class Filters:
    """
    Request rewriting for one model or peer: keys removed, keys set, and
    keys set only when the model was asked for by a given name.
    """

    strip_params: tuple[str, ...] = ()
    set_params: tuple[tuple[str, Any], ...] = ()
    set_params_by_id: Mapping[str, tuple[tuple[str, Any], ...]] = field(factory=dict)

    def params_for(self, requested: str) -> tuple[tuple[str, Any], ...]:
        """
        What to set in a request that asked for C{requested}: C{setParams},
        then that name's C{setParamsByID} entries on top.
        """
        by_id = self.set_params_by_id.get(requested)
        if not by_id:
            return self.set_params
        merged = dict(self.set_params)
        merged.update(by_id)
        return tuple(sorted(merged.items()))

    @property
    def empty(self) -> bool:
        return not (self.strip_params or self.set_params or self.set_params_by_id)


@frozen
class Capabilities:
    """
    What a model accepts and produces, for clients reading /v1/models.
    """

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    tools: bool = False
    reranker: bool = False
    context: int = 0

    @property
    def empty(self) -> bool:
        return not (self.inputs or self.outputs or self.tools or self.reranker or self.context)


@frozen
class Supervision:
    """
    How a model's starts are watched (seconds; global settings, each one
    overridable per model).

    @ivar health_check_timeout: the longest a starting server may show no
        sign of progress (no new output line, no CPU time used).
    @ivar start_timeout: a hard cap on one start, progress or not (0: none).
    @ivar max_start_failures: consecutive failed starts before the model is
        marked failed.
    @ivar failure_cooldown: how long a failed model refuses requests before
        it is tried again (doubling each time it fails again, up to an hour).
    """

    health_check_timeout: float = 120.0
    start_timeout: float = 3600.0
    max_start_failures: int = 3
    failure_cooldown: float = 60.0


@frozen(eq=True, hash=False)
class ModelConfig:
    """
    One model entry, with macros expanded and defaults applied.

    C{cmd} and C{cmd_stop} keep the expanded text (comment lines removed);
    C{argv} is the command split into arguments, ready for C{spawnProcess}.
    """

    id: str
    cmd: str
    argv: tuple[str, ...]
    proxy: str
    cmd_stop: str = ""
    aliases: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    check_endpoint: str = "/health"
    ttl: int = 0
    unlisted: bool = False
    use_model_name: str = ""
    name: str = ""
    description: str = ""
    concurrency_limit: int = 0
    filters: Filters = Filters()
    metadata: Mapping[str, Any] = field(factory=dict)
    send_loading_state: bool = False
    unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT
    timeouts: Timeouts = Timeouts()
    ignore_websockets: bool = False
    capabilities: Capabilities = Capabilities()
    macros: tuple[tuple[str, Any], ...] = ()
    port: int | None = None  # the automatic ${PORT}, when the model uses one
    supervision: Supervision = Supervision()
    fallback: str | None = None  # the model serving this one's requests while it is failed
    passthrough_ollama: bool = False  # the server speaks Ollama's API itself: /api/* goes to it unchanged

    @property
    def strip_params(self) -> tuple[str, ...]:
        return self.filters.strip_params

    @property
    def stop_timeout(self) -> float:
        """
        The grace period between asking the server to stop and killing it
        (C{unloadTimeout}; C{stopTimeout} is the same setting's older name).
        """
        return self.unload_timeout

    @property
    def max_concurrency(self) -> int:
        return self.concurrency_limit if self.concurrency_limit > 0 else DEFAULT_CONCURRENCY_LIMIT

    @property
    def health_url(self) -> str | None:
        """
        The URL polled for readiness, or C{None} when checks are disabled.
        """
        endpoint = self.check_endpoint.strip()
        if endpoint == "none":
            return None
        return join_url(self.proxy, endpoint)

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """
        The child's environment: the inherited one plus this model's C{env}.
        """
        merged = dict(inherited)
        for entry in self.env:
            name, _, value = entry.partition("=")
            merged[name] = value
        return merged

    def stop_argv(self, pid: int) -> list[str] | None:
        """
        The C{cmdStop} command with C{${PID}} filled in, or C{None}.
        """
        if not self.cmd_stop.strip():
            return None
        return split_command(self.cmd_stop.replace("${PID}", str(pid)))


@frozen(eq=True, hash=False)
class PeerConfig:
    """
    Another server (often another llamaswap) whose models are served
    through this one.
    """

    id: str
    proxy: str
    models: tuple[str, ...]
    api_key: str = ""
    filters: Filters = Filters()
    timeouts: Timeouts = Timeouts(response_header=60)


@frozen
class ProfileConfig:
    """
    A runtime-selectable set of model id rewrites; an empty pin target
    makes that id unavailable (404) while the profile is active.
    """

    id: str
    description: str
    pins: Mapping[str, str]


@frozen(eq=True, hash=False)
class SelectorConfig:
    """
    A virtual model id that picks one of its targets per request.
    """

    id: str
    strategy: str
    targets: tuple[str, ...]
    spillover: int = 1
    name: str = ""
    description: str = ""
    unlisted: bool = False
    metadata: Mapping[str, Any] = field(factory=dict)


@frozen(eq=True, hash=False)
class MatrixConfig:
    """
    The matrix router's settings: named sets of models that may run
    together (in the DSL, compiled), costs of evicting each model, and the
    short names used in the sets.
    """

    variables: Mapping[str, str]
    evict_costs: Mapping[str, int]
    sets: tuple[tuple[str, str], ...]
    program: Any = field(eq=False)  # llamaswap.config.matrix.Program


@frozen
class QueueSettings:
    """
    The swap-aware scheduler's limits (seconds; 0 turns one off).
    """

    max_wait: float = 30.0
    max_queue: int = 100
    queue_timeout: float = 600.0


@frozen(eq=True, hash=False)
class Config:
    """
    A whole, validated configuration.
    """

    models: Mapping[str, ModelConfig]
    groups: Mapping[str, GroupConfig]
    router: str = "group"
    matrix: MatrixConfig | None = None
    scheduler: str = "swap-aware"
    priority: Mapping[str, int] = field(factory=dict)
    queue: QueueSettings = QueueSettings()
    health_check_timeout: int = 120
    log_level: str = "info"
    log_time_format: str = ""
    log_to_stdout: str = "proxy"
    log_requests: bool = False
    metrics_max_in_memory: int = 1000
    capture_buffer_mb: int = 5
    store_path: str | None = None
    session_id_headers: tuple[str, ...] = ("X-Session-ID", "X-Litellm-Session-Id")
    performance_disabled: bool = False
    performance_every: float = 5.0
    start_port: int = 5800
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    global_ttl: int = 0
    unload_timeout: float = DEFAULT_UNLOAD_TIMEOUT
    macros: tuple[tuple[str, Any], ...] = ()
    preload: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(factory=dict)
    api_keys: tuple[str, ...] = ()
    peers: Mapping[str, PeerConfig] = field(factory=dict)
    upstream_ignore_paths: tuple[str, ...] = ()
    profiles: Mapping[str, ProfileConfig] = field(factory=dict)
    selectors: Mapping[str, SelectorConfig] = field(factory=dict)
    warnings: tuple[str, ...] = field(default=(), eq=False)

    @property
    def stop_timeout(self) -> float:
        return self.unload_timeout

    def real_model_name(self, requested: str) -> str | None:
        """
        Resolve a local model id or alias to the model id, or C{None}.
        """
        if requested in self.models:
            return requested
        return self.aliases.get(requested)

    def peer_model(self, requested: str) -> tuple[str, str] | None:
        """
        The (peer id, model id) a name stands for: C{<peer>/<model>}
        always, an unqualified model id when exactly one peer has it.
        """
        return resolve_peer_model(self.peers, requested)

    def group_of(self, model_id: str) -> GroupConfig:
        for group in self.groups.values():
            if model_id in group.members:
                return group
        raise KeyError(model_id)


def resolve_peer_model(peers: Mapping[str, PeerConfig], requested: str) -> tuple[str, str] | None:
    for qualified in (True, False):
        found = None
        for peer_id, peer in peers.items():
            for model in peer.models:
                name = f"{peer_id}/{model}" if qualified else model
                if name != requested:
                    continue
                if found is not None and found != (peer_id, model):
                    return None  # ambiguous
                found = (peer_id, model)
        if found is not None:
            return found
    return None


def sanitize_strip_params(text: str) -> tuple[str, ...]:
    seen = {part.strip() for part in text.split(",")}
    seen.discard("")
    seen -= PROTECTED_PARAMS
    return tuple(sorted(seen))


def join_url(base: str, path: str) -> str:
    """
    Append C{path} to C{base} with exactly one slash between them.
    """
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")
