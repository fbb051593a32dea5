"""
Where the configuration comes from: the C{-c} file and the C{*.yml} and
C{*.yaml} files of C{--config-dir} (in name order), merged into one
document before it is validated.

Merging: mappings merge key by key, lists are concatenated, a scalar set to
two different values is a conflict, and a null gives way to a value.  The
children of C{models}, C{groups}, C{peers}, C{profiles}, C{selectors} and
the matrix name things; the same name in two files is an error naming both
files.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from attrs import frozen

from llamaswap.config.records import ConfigError
from llamaswap.config.yamlfile import read_yaml

IDENTITY_MAPS = {
    "models": "model",
    "groups": "group",
    "profiles": "profile",
    "selectors": "selector",
    "peers": "peer",
    "matrix": "matrix setting",
    "routing.router.settings.groups": "group",
    "routing.router.settings.matrix": "matrix setting",
}


@frozen
class Sources:
    """
    The merged document, the files it came from, and which file defined
    each named thing (C{"models.m"} -> the file), for error messages.
    """

    tree: dict
    files: tuple[str, ...]
    origins: Mapping[str, str]

    def origin(self, setting: str | None) -> str:
        """
        The file a setting most likely comes from.
        """
        if setting:
            parts = setting.split(".")
            for length in range(len(parts), 0, -1):
                found = self.origins.get(".".join(parts[:length]))
                if found:
                    return found
        return self.files[0] if self.files else "config"


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read config file '{path}': {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file '{path}' is not UTF-8 text: {error}") from None


def yaml_files(directory: str) -> list[str]:
    """
    The C{*.yml} and C{*.yaml} files directly in C{directory}, by name.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise ConfigError(f"cannot read config directory '{directory}': {error.strerror or error}") from None
    return [
        os.path.join(directory, name)
        for name in names
        if name.endswith((".yml", ".yaml")) and os.path.isfile(os.path.join(directory, name))
    ]


def read_sources(path: str | None, directory: str | None, environ: Mapping[str, str] | None = None) -> Sources:
    files: list[str] = []
    if path:
        files.append(path)
    if directory:
        listed = yaml_files(directory)
        if path and os.path.abspath(path) in {os.path.abspath(item) for item in listed}:
            raise ConfigError(f"config file '{path}' is also in --config-dir '{directory}': give it only once")
        files.extend(listed)
    if not files:
        raise ConfigError(f"no configuration: '{directory}' has no .yml or .yaml files")
    merged: dict | None = None
    origins: dict[str, str] = {}
    for file in files:
        try:
            tree = read_yaml(read_text(file), environ)
        except ConfigError as error:
            raise ConfigError(f"{file}: {error}") from None
        if tree is None:
            continue  # an empty file (or only comments)
        if not isinstance(tree, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of settings")
        _note_origins(tree, "", file, origins)
        if merged is None:
            merged = tree
        else:
            _merge_mapping(merged, tree, "", file, origins)
    return Sources(merged or {}, tuple(files), origins)


def _note_origins(tree: dict, prefix: str, file: str, origins: dict[str, str]) -> None:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        origins.setdefault(path, file)
        if path in IDENTITY_MAPS and isinstance(value, dict):
            for name in value:
                origins.setdefault(f"{path}.{name}", file)
        elif isinstance(value, dict) and path in ("routing", "routing.router", "routing.router.settings"):
            _note_origins(value, f"{path}.", file, origins)


def _merge_mapping(into: dict, new: dict, prefix: str, file: str, origins: dict[str, str]) -> None:
    for key, value in new.items():
        path = f"{prefix}{key}"
        if key not in into:
            into[key] = value
        elif path in IDENTITY_MAPS:
            _merge_identities(into, key, value, path, file, origins)
        else:
            into[key] = _merge_value(into[key], value, path, file)


def _merge_identities(into: dict, key: str, value: Any, path: str, file: str, origins: dict[str, str]) -> None:
    existing = into[key]
    if existing is None:
        into[key] = value
        return
    if value is None:
        return
    if not isinstance(existing, dict) or not isinstance(value, dict):
        raise ConfigError(f"{file}: {path} must be a mapping")
    for name, entry in value.items():
        if name in existing:
            first = origins.get(f"{path}.{name}", "an earlier file")
            raise ConfigError(
                f"{IDENTITY_MAPS[path]} '{name}' is defined in both {first} and {file}: keep one of them"
            )
        existing[name] = entry
        origins[f"{path}.{name}"] = file


def _merge_value(into: Any, new: Any, path: str, file: str) -> Any:
    if isinstance(into, dict) and isinstance(new, dict):
        merged = dict(into)
        for key, value in new.items():
            child = f"{path}.{key}"
            if key not in merged:
                merged[key] = value
            elif child in IDENTITY_MAPS:
                # routing.router.settings.groups and friends
                holder = {key: merged[key]}
                _merge_identities(holder, key, value, child, file, {})
                merged[key] = holder[key]
            else:
                merged[key] = _merge_value(merged[key], value, child, file)
        return merged
    if isinstance(into, list) and isinstance(new, list):
        return into + new
    if into is None:
        return new
    if new is None:
        return into
    if isinstance(into, (dict, list)) or isinstance(new, (dict, list)):
        raise ConfigError(f"{file}: {path} is a {_kind(new)} here but a {_kind(into)} in an earlier file")
    if into == new and type(into) is type(new):
        return into
    raise ConfigError(f"{file}: {path} is set to {new!r} here but to {into!r} in an earlier file")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return "single value"
