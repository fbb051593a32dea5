"""
Model names as clients see them: the C{/v1/models} listing (local models,
their aliases when asked, peers' models, selectors and the active profile's
pins, each with its capabilities and status, shaped as the newest llama-swap
shapes them), and finding the model in an C{/upstream/...} path.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from llamaswap.config import Capabilities, Config
from llamaswap.models.process import READY, SHUTDOWN, STARTING, STOPPED
from llamaswap.routing.profiles import Profiles

# Fields the capabilities produce; metadata of the same name gives way.
CAPABILITY_FIELDS = ("architecture", "capabilities", "supported_parameters", "context_length")


def render_capabilities(caps: Capabilities) -> dict[str, Any]:
    """
    The OpenRouter-style fields a model's capabilities add to its record.
    """
    if caps.empty:
        return {}
    inputs, outputs = list(caps.inputs), list(caps.outputs)
    fields: dict[str, Any] = {}
    architecture: dict[str, Any] = {}
    if inputs:
        architecture["input_modalities"] = inputs
    if outputs:
        architecture["output_modalities"] = outputs
    if inputs and outputs:
        architecture["modality"] = "+".join(inputs) + "->" + "+".join(outputs)
    if architecture:
        fields["architecture"] = architecture
    flags: dict[str, bool] = {}
    if "image" in inputs:
        flags["vision"] = True
    if inputs and outputs:
        if "audio" in inputs and "text" in outputs:
            flags["audio_transcriptions"] = True
        if "text" in inputs and "audio" in outputs:
            flags["audio_speech"] = True
        if "text" in inputs and "image" in outputs:
            flags["image_generation"] = True
        if "image" in inputs and "image" in outputs:
            flags["image_to_image"] = True
    if caps.tools:
        flags["function_calling"] = True
        fields["supported_parameters"] = ["tools", "tool_choice"]
    if caps.reranker:
        flags["reranker"] = True
    if inputs or outputs or caps.tools or caps.reranker:
        fields["capabilities"] = flags
    if caps.context > 0:
        fields["context_length"] = caps.context
    return fields


def _record(
    created: int,
    model_id: str,
    name: str,
    description: str,
    metadata: dict | None,
    caps: Capabilities,
    status: str,
    internal: dict[str, Any],
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": model_id, "object": "model", "created": created, "owned_by": "llama-swap"}
    if name.strip():
        record["name"] = name.strip()
    if description.strip():
        record["description"] = description.strip()
    capability_fields = render_capabilities(caps)
    record.update(capability_fields)
    metadata = dict(metadata or {})
    if not caps.empty:
        for key in CAPABILITY_FIELDS:
            metadata.pop(key, None)
    ours = {**metadata, **internal}
    meta: dict[str, Any] = {}
    if ours:
        meta["llamaswap"] = ours
    if capability_fields.get("context_length"):
        meta["n_ctx"] = capability_fields["context_length"]
    if meta:
        record["meta"] = meta
    record["status"] = {"value": status}
    return record


def model_listing(config: Config, state_of: Callable[[str], str], profiles: Profiles) -> list[dict[str, Any]]:
    created = int(time.time())
    data = []
    names: set[str] = set()

    def status(model_id: str) -> str:
        return "unloaded" if state_of(model_id) in (STOPPED, SHUTDOWN) else "loaded"

    for model_id, model in config.models.items():
        names.add(model_id)
        names.update(model.aliases)
        if model.unlisted:
            continue
        internal: dict[str, Any] = {"type": "model"}
        if model.aliases:
            internal["aliases"] = list(model.aliases)
        data.append(_record(created, model_id, model.name, model.description, model.metadata, model.capabilities, status(model_id), internal))
        if config.include_aliases_in_list:
            for alias in model.aliases:
                if alias.strip():
                    data.append(
                        _record(
                            created, alias, model.name, model.description, model.metadata, model.capabilities,
                            status(model_id), {"type": "alias", "modelID": model_id},
                        )
                    )
    for peer_id, peer in config.peers.items():
        for model in peer.models:
            qualified = f"{peer_id}/{model}"
            names.add(qualified)
            if config.peer_model(model) == (peer_id, model):
                names.add(model)
            data.append(
                _record(created, qualified, f"{peer_id}: {model}", "", None, Capabilities(), "unloaded",
                        {"type": "peer", "peerID": peer_id})
            )
    for selector_id, selector in config.selectors.items():
        names.add(selector_id)
        if selector.unlisted:
            continue
        loaded = "unloaded"
        for target in selector.targets:
            model_id = config.real_model_name(target)
            if model_id is not None and state_of(model_id) in (READY, STARTING):
                loaded = "loaded"
            if selector.strategy == "pin" or loaded == "loaded":
                break
        internal = {"type": "selector", "strategy": selector.strategy, "targets": list(selector.targets)}
        if selector.strategy == "spillover":
            internal["spillover"] = selector.spillover
        data.append(
            _record(created, selector_id, selector.name, selector.description, selector.metadata, Capabilities(), loaded, internal)
        )
    if profiles.active is not None:
        for pin, target in config.profiles[profiles.active].pins.items():
            if target and pin not in names:
                data.append(_record(created, pin, "", "", None, Capabilities(), "unloaded", {"type": "profile"}))
    data.sort(key=lambda record: record["id"])
    return data


def model_statuses(config: Config, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The C{modelStatus} event's list: the local models' states (from the
    model manager) with what the UI shows next to them -- aliases,
    capability flags, context length -- then every peer's models.
    """
    result = []
    for entry in local:
        model = config.models.get(entry["id"])
        entry = {**entry, "peerID": ""}
        if model is not None:
            if model.aliases:
                entry["aliases"] = list(model.aliases)
            rendered = render_capabilities(model.capabilities)
            if rendered.get("capabilities"):
                entry["capabilities"] = rendered["capabilities"]
            if rendered.get("context_length"):
                entry["context_length"] = rendered["context_length"]
        result.append(entry)
    for peer_id, peer in config.peers.items():
        for model in peer.models:
            result.append(
                {"id": f"{peer_id}/{model}", "name": "", "description": "", "state": "", "unlisted": False, "peerID": peer_id}
            )
    return result


def find_model_in_path(config: Config, path: str) -> tuple[str, str] | None:
    """
    The longest leading part of C{path} that names a local model, alias or
    peer model (ids may contain slashes), and the rest of the path.
    """
    parts = path.split("/")
    name = ""
    found = None
    for index, part in enumerate(parts):
        if not part:
            continue
        name = f"{name}/{part}" if name else part
        if config.real_model_name(name) is not None or config.peer_model(name) is not None:
            found = (name, "/" + "/".join(parts[index + 1 :]))
    return found


def ignored_path(config: Config, path: str) -> bool:
    """
    Whether an C{/upstream/<model>/<path>} request must not start a model
    (C{upstream.ignorePaths}).
    """
    return any(re.search(pattern, path) for pattern in config.upstream_ignore_paths)
