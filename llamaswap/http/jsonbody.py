"""
Read and minimally rewrite the JSON body of an inference request.

Only the top-level object is taken apart: C{model} and C{stream} are read,
C{model} may be replaced (useModelName) and some keys removed
(filters.stripParams).  Everything else -- key order, spacing, number
formatting, a 50 MB base64 image -- is passed on byte for byte, and a body
that needs no change is not re-encoded at all.  A key given twice counts by
its first occurrence, as in the original; when C{model} is replaced, every
occurrence is.
"""

from __future__ import annotations

import json
from json.decoder import scanstring
from typing import Any, Iterable

from attrs import frozen

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_INTERESTING = ("model", "stream")
PROTECTED = frozenset({"model"})


class InvalidBody(ValueError):
    """
    The request body is not a JSON object.
    """


@frozen
class _Member:
    key: str
    start: int  # the key's opening quote
    value_start: int
    end: int  # just after the value


@frozen
class JsonRequestBody:
    raw: bytes
    text: str
    members: tuple[_Member, ...]
    values: dict[str, Any]  # the values of the keys we care about
    close: int  # the position of the closing brace

    @property
    def model(self) -> Any:
        return self.values.get("model")

    @property
    def stream(self) -> bool:
        return self.values.get("stream") is True

    def rewrite(
        self,
        model: str | None = None,
        strip: Iterable[str] = (),
        set_params: Iterable[tuple[str, Any]] = (),
    ) -> bytes:
        """
        The body with C{model} replaced (when given), the C{strip} keys
        removed and the C{set_params} set (replacing a key that is there,
        added at the end otherwise); the original bytes when nothing changes.
        C{model} itself is never stripped nor set by the last two.
        """
        strip = set(strip) - PROTECTED
        values = {key: value for key, value in set_params if key not in PROTECTED}
        members = self.members
        keep = [index for index, member in enumerate(members) if member.key not in strip]
        present = {member.key for member in members}
        replacements: dict[str, str] = {key: json.dumps(value, ensure_ascii=False) for key, value in values.items()}
        if model is not None and "model" in present:
            replacements["model"] = json.dumps(model, ensure_ascii=False)
        if len(keep) == len(members) and not replacements:
            return self.raw
        added = [key for key in values if key not in present or key in strip]
        text = self.text
        if members:
            head, tail = text[: members[0].start], text[members[-1].end :]
        else:
            head, tail = text[: self.close], text[self.close :]
        pieces = [head]
        for position, index in enumerate(keep):
            member = members[index]
            if position:
                # The separator that stood before this member in the original.
                pieces.append(text[members[index - 1].end : member.start])
            if member.key in replacements:
                # Every occurrence: a duplicate key must not reach the
                # server with a value other than the one we mean.
                pieces.append(text[member.start : member.value_start])
                pieces.append(replacements[member.key])
            else:
                pieces.append(text[member.start : member.end])
        if added:
            pieces.append(", " if keep else "")
            pieces.append(", ".join(json.dumps(key, ensure_ascii=False) + ": " + replacements[key] for key in added))
        pieces.append(tail)
        return "".join(pieces).encode("utf-8")


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def parse_request_body(raw: bytes) -> JsonRequestBody:
    """
    Validate C{raw} as a JSON object and locate its top-level members.

    @raise InvalidBody: for anything that is not one complete JSON object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidBody(f"request body is not UTF-8: {error}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    index = _skip(text, 0)
    if index >= len(text) or text[index] != "{":
        raise InvalidBody("request body must be a JSON object")
    members: list[_Member] = []
    values: dict[str, Any] = {}
    index = _skip(text, index + 1)
    try:
        if index < len(text) and text[index] == "}":
            end = index
        else:
            while True:
                if index >= len(text) or text[index] != '"':
                    raise InvalidBody(f"expected a key at position {index}")
                key, after_key = scanstring(text, index + 1)
                colon = _skip(text, after_key)
                if colon >= len(text) or text[colon] != ":":
                    raise InvalidBody(f"expected ':' at position {colon}")
                value_start = _skip(text, colon + 1)
                value, value_end = _DECODER.raw_decode(text, value_start)
                members.append(_Member(key, index, value_start, value_end))
                if key in _INTERESTING and key not in values:
                    values[key] = value
                index = _skip(text, value_end)
                if index < len(text) and text[index] == ",":
                    index = _skip(text, index + 1)
                    continue
                if index < len(text) and text[index] == "}":
                    end = index
                    break
                raise InvalidBody(f"expected ',' or '}}' at position {index}")
    except json.JSONDecodeError as error:
        raise InvalidBody(f"invalid JSON: {error}") from None
    if _skip(text, end + 1) != len(text):
        raise InvalidBody("unexpected data after the JSON object")
    return JsonRequestBody(raw=raw, text=text, members=tuple(members), values=values, close=end)
