"""
Reading one configuration file's YAML: PyYAML's safe loader, closer to
YAML 1.2, strict about duplicate keys, and with C{${env.NAME}} replaced by
the environment variable's value before anything else sees the text.

An environment macro that is a whole plain value takes the type the value
would have had in the file (C{ttl: ${env.TTL}} with C{TTL=60} is the number
60); inside a longer or quoted value it is text.  A variable that is not set
is an error naming the variable, the line and the setting.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import yaml

from llamaswap.config.records import ConfigError

ENV_REFERENCE = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")
COMMENT = re.compile(r"(?:^|(?<=\s))#", re.M)


class _Loader(yaml.SafeLoader):
    """
    PyYAML's safe loader, made closer to YAML 1.2 (only C{true}/C{false} are
    booleans, so a macro value C{on} stays the text "on") and strict about
    duplicate keys, which would otherwise silently hide a model.
    """

    environ: Mapping[str, str] = os.environ

    def __init__(self, stream):
        super().__init__(stream)
        self.path: list[str] = []


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def env_value(name: str, environ: Mapping[str, str], where: str) -> str:
    value = environ.get(name)
    if value is None:
        raise ConfigError(f"{where}environment variable '{name}' is not set: export it before starting llamaswap, or remove ${{env.{name}}}")
    if any(char in value for char in "\n\r\x00"):
        raise ConfigError(f"{where}environment variable '{name}' contains a line break or NUL, which a setting cannot")
    return value


def _where(loader: _Loader, node: yaml.Node) -> str:
    setting = ".".join(loader.path)
    return f"line {node.start_mark.line + 1}" + (f" ({setting})" if setting else "") + ": "


def _construct_scalar(loader: _Loader, node: yaml.ScalarNode) -> Any:
    text = node.value
    if "${env." not in text:
        return loader.yaml_constructors[node.tag](loader, node)
    substituted = ENV_REFERENCE.sub(lambda match: env_value(match.group(1), loader.environ, _where(loader, node)), text)
    if node.style is not None or ENV_REFERENCE.fullmatch(text) is None:
        return substituted  # quoted, or part of a longer value: text
    tag = loader.resolve(yaml.ScalarNode, substituted, (True, False))
    return loader.yaml_constructors[tag](loader, yaml.ScalarNode(tag, substituted, node.start_mark, node.end_mark))


def _construct_object(loader: _Loader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _construct_scalar(loader, node)
    return loader.construct_object(node, deep=True)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = _construct_object(loader, key_node)
        try:
            duplicate = key in result
        except TypeError:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: a mapping key must be a plain value") from None
        if duplicate:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is defined twice")
        loader.path.append(str(key))
        try:
            result[key] = _construct_object(loader, value_node)
        finally:
            loader.path.pop()
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> list:
    result = []
    for index, item in enumerate(node.value):
        loader.path.append(f"[{index}]")
        try:
            result.append(_construct_object(loader, item))
        finally:
            loader.path.pop()
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _load(text: str, environ: Mapping[str, str]) -> Any:
    loader = _Loader(text)
    loader.environ = environ
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _substitute_text(text: str, environ: Mapping[str, str]) -> str:
    """
    The fallback for files that are only valid YAML once the variables are
    in (C{[${env.KEY}]}: a brace in a flow list): replace them in the text,
    escaped for a double-quoted context, as the newest llama-swap does.
    """

    def replace(match: re.Match) -> str:
        line_start = text.rfind("\n", 0, match.start()) + 1
        if COMMENT.search(text, line_start, match.start()):
            return match.group(0)  # in a comment: not a setting
        line = text.count("\n", 0, match.start()) + 1
        value = env_value(match.group(1), environ, f"line {line}: ")
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return ENV_REFERENCE.sub(replace, text)


def read_yaml(text: str, environ: Mapping[str, str] | None = None) -> Any:
    environ = os.environ if environ is None else environ
    try:
        return _load(text, environ)
    except yaml.YAMLError as error:
        if "${env." not in text:
            raise ConfigError(f"invalid YAML: {error}") from None
        first = error
    try:
        return _load(_substitute_text(text, environ), environ)
    except yaml.YAMLError:
        raise ConfigError(f"invalid YAML: {first}") from None
