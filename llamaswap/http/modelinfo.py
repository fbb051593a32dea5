"""
One model's settings as the UI's model page shows them, with secrets
masked: a command line often carries an API key or a token
(C{--api-key sk-...}, C{HF_TOKEN=...}), and llamaswap's own keys may appear
in it too.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

MASK = "••••••"
SECRET_NAME = re.compile(r"(key|token|secret|password|passwd|auth|credential)", re.IGNORECASE)


def _masked_argv(argv: tuple[str, ...], secrets: tuple[str, ...]) -> list[str]:
    masked: list[str] = []
    hide_next = False
    for argument in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        if argument.startswith("-") and SECRET_NAME.search(argument):
            name, equals, _ = argument.partition("=")
            if equals:
                masked.append(f"{name}={MASK}")
            else:
                masked.append(argument)
                hide_next = True
            continue
        masked.append(_without(argument, secrets))
    return masked


def _without(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _masked_env(entry: str, secrets: tuple[str, ...]) -> str:
    name, _, value = entry.partition("=")
    return f"{name}={MASK}" if SECRET_NAME.search(name) else f"{name}={_without(value, secrets)}"


def model_settings(config, model_id: str, state: str, queued: int, reason: str = "") -> dict[str, Any]:
    model = config.models[model_id]
    secrets = tuple(config.api_keys)
    try:
        group = config.group_of(model_id).id
    except (KeyError, AttributeError):
        group = None
    capabilities = model.capabilities
    document: dict[str, Any] = {
        "id": model_id,
        "name": model.name,
        "description": model.description,
        "state": state,
        "queued": queued,
        "cmd": " ".join(argument if MASK in argument else shlex.quote(argument) for argument in _masked_argv(model.argv, secrets)),
        "proxy": model.proxy,
        "check_endpoint": model.check_endpoint,
        "ttl": model.ttl,
        "group": group,
        "aliases": list(model.aliases),
        "env": [_masked_env(entry, secrets) for entry in model.env],
        "capabilities": {
            "in": list(capabilities.inputs),
            "out": list(capabilities.outputs),
            "tools": capabilities.tools,
            "reranker": capabilities.reranker,
            "context": capabilities.context,
        },
        "metadata": model.metadata,
        "concurrency_limit": model.max_concurrency,
        "fallback": model.fallback,
        "unlisted": model.unlisted,
    }
    if reason:
        document["reason"] = reason
    return document
