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
    strip_params_text: str = ""
    metadata: Mapping[str, Any] = field(factory=dict)
    send_loading_state: bool = False
    stop_timeout: float = 5.0
    macros: tuple[tuple[str, Any], ...] = ()
    port: int | None = None  # the automatic ${PORT}, when the model uses one

    @property
    def strip_params(self) -> tuple[str, ...]:
        """
        The request keys to remove: trimmed, de-duplicated, sorted, and
        never C{model}.
        """
        return sanitize_strip_params(self.strip_params_text)

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
class Config:
    """
    A whole, validated configuration.
    """

    models: Mapping[str, ModelConfig]
    groups: Mapping[str, GroupConfig]
    health_check_timeout: int = 120
    log_level: str = "info"
    log_time_format: str = ""
    log_requests: bool = False
    metrics_max_in_memory: int = 1000
    start_port: int = 5800
    send_loading_state: bool = False
    include_aliases_in_list: bool = False
    stop_timeout: float = 5.0
    macros: tuple[tuple[str, Any], ...] = ()
    preload: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(factory=dict)
    warnings: tuple[str, ...] = field(default=(), eq=False)

    def real_model_name(self, requested: str) -> str | None:
        """
        Resolve a model id or alias to the model id, or C{None}.
        """
        if requested in self.models:
            return requested
        return self.aliases.get(requested)

    def group_of(self, model_id: str) -> GroupConfig:
        for group in self.groups.values():
            if model_id in group.members:
                return group
        raise KeyError(model_id)


def sanitize_strip_params(text: str) -> tuple[str, ...]:
    seen = {part.strip() for part in text.split(",")}
    seen.discard("")
    seen.discard("model")
    return tuple(sorted(seen))


def join_url(base: str, path: str) -> str:
    """
    Append C{path} to C{base} with exactly one slash between them.
    """
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")
