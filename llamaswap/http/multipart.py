"""
multipart/form-data bodies (audio transcriptions): find the C{model} field
and, when the model has a useModelName, replace its value.  Every other
part -- the audio file above all -- is passed on byte for byte.
"""

from __future__ import annotations

from email.message import Message

from attrs import frozen


class InvalidForm(ValueError):
    """
    The body is not a well-formed multipart form.
    """


@frozen
class FormField:
    name: str
    filename: str | None
    value_start: int
    value_end: int


def boundary_of(content_type: str) -> str:
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/form-data":
        raise InvalidForm(f"expected multipart/form-data, got {message.get_content_type()}")
    boundary = message.get_param("boundary")
    if not boundary or not isinstance(boundary, str):
        raise InvalidForm("the multipart boundary is missing")
    return boundary


def parse_fields(body: bytes, boundary: str) -> list[FormField]:
    """
    The named parts of a form; C{body} may be anything that finds and
    slices like C{bytes} (a map of the spooled body, so a large upload is
    never copied into memory).
    """
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise InvalidForm("no multipart boundary found in the body")
    fields = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return fields  # the closing delimiter
        if body[position : position + 2] != b"\r\n":
            raise InvalidForm("malformed multipart boundary line")
        headers_end = body.find(b"\r\n\r\n", position + 2)
        if headers_end < 0:
            raise InvalidForm("a multipart part has no end of headers")
        headers = body[position + 2 : headers_end].decode("utf-8", "replace")
        value_start = headers_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, value_start)
        if next_delimiter < 0:
            raise InvalidForm("the multipart body is truncated")
        disposition = Message()
        for line in headers.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        field_name = disposition.get_param("name", header="content-disposition")
        filename = disposition.get_param("filename", header="content-disposition")
        if isinstance(field_name, str):
            fields.append(
                FormField(
                    field_name,
                    filename if isinstance(filename, str) else None,
                    value_start,
                    next_delimiter,
                )
            )
        position = next_delimiter + 2 + len(delimiter)


def form_value(body: bytes, fields: list[FormField], name: str) -> str | None:
    for field in fields:
        if field.name == name and field.filename is None:
            return body[field.value_start : field.value_end].decode("utf-8", "replace")
    return None


def replace_value(body: bytes, fields: list[FormField], name: str, value: str) -> bytes:
    for field in fields:
        if field.name == name and field.filename is None:
            return body[: field.value_start] + value.encode("utf-8") + body[field.value_end :]
    return body
