"""
Macros: named snippets substituted into a model's settings as C{${name}}.

The rules match the original llama-swap so that existing configuration files
expand to exactly the same commands:

  - names match C{^[a-zA-Z0-9_-]+$}, are shorter than 64 characters and are
    not one of the reserved names C{PID}, C{PORT} and C{MODEL_ID};
  - values are scalars (string, number, boolean); strings are shorter than
    1024 characters and may not refer to themselves;
  - a macro may use macros defined I{before} it: substitution runs from the
    last definition to the first, so each expansion can still be expanded by
    the definitions that precede it;
  - C{${MODEL_ID}} is substituted after every user macro, C{${PORT}} last.

Numbers and booleans are written the way Go's C{%v} writes them (C{true},
C{0.7}, C{1e+06}), again so that commands come out identical.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

MACRO_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MACRO_REFERENCE = re.compile(r"\$\{([a-zA-Z0-9_-]+)\}")
RESERVED = ("PID", "PORT", "MODEL_ID")
MAX_NAME_LENGTH = 63
MAX_VALUE_LENGTH = 1023

Scalar = str | int | float | bool


class MacroError(ValueError):
    """
    A macro definition or reference is invalid.
    """


def format_value(value: Any) -> str:
    """
    Render a scalar the way the original does when splicing it into text.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_float(value)
    return str(value)


def _format_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    from decimal import Decimal  # only for floats, which few configurations have

    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(text)
    point = len(text) + exponent  # position of the decimal point in text
    magnitude = point - 1
    prefix = "-" if sign else ""
    if magnitude < -4 or magnitude >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if magnitude < 0 else '+'}{abs(magnitude):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


def validate(name: Any, value: Any) -> None:
    """
    Check one macro definition against the naming and value rules.

    @raise MacroError: naming the macro and the rule it breaks.
    """
    if not isinstance(name, str):
        raise MacroError(f"macro name {name!r} must be a string")
    if len(name) > MAX_NAME_LENGTH:
        raise MacroError(
            f"macro name '{name}' exceeds maximum length of {MAX_NAME_LENGTH} characters"
        )
    if not MACRO_NAME.match(name):
        raise MacroError(
            f"macro name '{name}' contains invalid characters, must match pattern ^[a-zA-Z0-9_-]+$"
        )
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise MacroError(
                f"macro value for '{name}' exceeds maximum length of {MAX_VALUE_LENGTH + 1} characters"
            )
        if "${" + name + "}" in value:
            raise MacroError(f"macro '{name}' contains self-reference")
    elif not isinstance(value, (int, float, bool)):
        kind = type(value).__name__
        if isinstance(value, dict):
            kind = "mapping"
        elif isinstance(value, list):
            kind = "list"
        elif value is None:
            kind = "null"
        raise MacroError(
            f"macro '{name}' has invalid type {kind}, must be a scalar type (string, int, float, or bool)"
        )
    if name in RESERVED:
        raise MacroError(f"macro name '{name}' is reserved")


def merge(
    global_macros: Sequence[tuple[str, Scalar]],
    model_macros: Sequence[tuple[str, Scalar]],
    model_id: str,
) -> list[tuple[str, Scalar]]:
    """
    The macros one model sees, in substitution order reversed.

    C{MODEL_ID} comes first so that it is substituted after everything else;
    a model macro with the name of a global one takes its place in the
    global order.
    """
    merged: list[tuple[str, Scalar]] = [("MODEL_ID", model_id), *global_macros]
    for name, value in model_macros:
        for index, (existing, _) in enumerate(merged):
            if existing == name:
                merged[index] = (name, value)
                break
        else:
            merged.append((name, value))
    return merged


def substitute_text(text: str, macros: Sequence[tuple[str, Scalar]]) -> str:
    """
    Expand C{macros} in C{text}, last definition first.
    """
    if "${" not in text:
        return text
    for name, value in reversed(macros):
        slug = "${" + name + "}"
        if slug in text:
            text = text.replace(slug, format_value(value))
    return text


def substitute_data(data: Any, macros: Sequence[tuple[str, Scalar]]) -> Any:
    """
    Expand C{macros} inside nested metadata.

    A string that is exactly one macro reference becomes the macro's value
    with its type (so C{port: ${PORT}} stays a number); any other string
    has the values spliced in as text.  Keys are left alone.
    """
    for name, value in reversed(macros):
        data = _substitute_one(data, "${" + name + "}", value)
    return data


def _substitute_one(data: Any, slug: str, value: Scalar) -> Any:
    if isinstance(data, str):
        if data == slug:
            return value
        if slug in data:
            return data.replace(slug, format_value(value))
        return data
    if isinstance(data, dict):
        return {key: _substitute_one(item, slug, value) for key, item in data.items()}
    if isinstance(data, list):
        return [_substitute_one(item, slug, value) for item in data]
    return data


def references(text: str) -> list[str]:
    """
    The macro names referenced in C{text}, in order of appearance.
    """
    return MACRO_REFERENCE.findall(text)


def references_in_data(data: Any) -> Iterable[str]:
    """
    The macro names referenced anywhere inside nested metadata.
    """
    if isinstance(data, str):
        yield from references(data)
    elif isinstance(data, dict):
        for item in data.values():
            yield from references_in_data(item)
    elif isinstance(data, list):
        for item in data:
            yield from references_in_data(item)


def suggestion(name: str, known: Iterable[str]) -> str:
    """
    A " (did you mean ...?)" hint for a misspelt macro name, or "".
    """
    import difflib  # only when there is a mistake to explain

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '${{{close[0]}}}'?)" if close else ""


def known_names(macros: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> list[str]:
    items = macros.items() if isinstance(macros, Mapping) else macros
    return [name for name, _ in items] + list(RESERVED)
