"""
Reading the configuration's YAML: PyYAML's safe loader, closer to YAML 1.2
and strict about duplicate keys.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from llamaswap.config.records import ConfigError


class _Loader(yaml.SafeLoader):
    """
    PyYAML's safe loader, made closer to YAML 1.2 (only C{true}/C{false} are
    booleans, so a macro value C{on} stays the text "on") and strict about
    duplicate keys, which would otherwise silently hide a model.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in result
        except TypeError:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value"
            ) from None
        if duplicate:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: key '{key}' is defined twice"
            )
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}") from None
