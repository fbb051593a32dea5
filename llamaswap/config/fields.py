"""
Typed access to the mappings of the configuration file, with errors that
say where and what was expected ("model 'x': ttl must be a whole number,
got the text 'ten'"), and warnings for settings nobody reads.
"""

from __future__ import annotations

from typing import Any

from llamaswap.config import macros as _macros
from llamaswap.config.macros import MacroError
from llamaswap.config.records import ConfigError

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {_macros.format_value(value)}"
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, (int, float)):
        return f"the number {_macros.format_value(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Fields:
    """
    Typed access to one mapping of the file, with errors that say where.
    """

    def __init__(self, data: Any, where: str, known: set[str], warnings: list[str]):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {describe(data)}")
        self.data = data
        self.where = where
        for key in data:
            if key not in known:
                hint = _macros.suggestion(str(key), known).replace("${", "").replace("}", "")
                warnings.append(f"{where}: unknown setting '{key}' is ignored{hint}")

    def _fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.where}: {key} must be {expected}, got {describe(value)}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, (dict, list)):
            raise self._fail(key, "text", value)
        return value if isinstance(value, str) else _macros.format_value(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self._fail(key, "true or false", value)

    def integer(self, key: str, default: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "a whole number", value)
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._fail(key, "a number", value)
        return float(value)

    def text_list(self, key: str) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, "a list", value)
        result = []
        for item in value:
            if item is None or isinstance(item, (dict, list)):
                raise ConfigError(
                    f"{self.where}: every entry of {key} must be text, got {describe(item)}"
                )
            result.append(item if isinstance(item, str) else _macros.format_value(item))
        return result

    def mapping(self, key: str) -> dict:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, "a mapping", value)
        return value


def macro_list(data: Any, where: str) -> list[tuple[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"{where}macros must be a mapping, got {describe(data)}")
    entries = []
    for name, value in data.items():
        try:
            _macros.validate(name, value)
        except MacroError as error:
            raise ConfigError(f"{where}{error}") from None
        entries.append((name, value))
    return entries
