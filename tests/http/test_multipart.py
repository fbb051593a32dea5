"""
multipart/form-data bodies: finding the model field and replacing it while
every other byte -- the audio file above all -- passes unchanged.
"""

from __future__ import annotations

import pytest

from llamaswap.http.multipart import InvalidForm, boundary_of, form_value, parse_fields, replace_value
from tests.helpers import multipart


def test_boundary_from_the_content_type():
    assert boundary_of("multipart/form-data; boundary=abc") == "abc"
    assert boundary_of('multipart/form-data; charset=utf-8; boundary="a b;c"') == "a b;c"
    with pytest.raises(InvalidForm, match="expected multipart/form-data"):
        boundary_of("application/json")
    with pytest.raises(InvalidForm, match="boundary is missing"):
        boundary_of("multipart/form-data")


def test_fields_files_and_replacement():
    audio = bytes(range(256)) * 3
    body, content_type = multipart({"model": "whisper", "language": "en"}, {"file": ("a.wav", "audio/wav", audio)})
    fields = parse_fields(body, boundary_of(content_type))
    assert [(field.name, field.filename) for field in fields] == [("model", None), ("language", None), ("file", "a.wav")]
    assert form_value(body, fields, "model") == "whisper"
    assert form_value(body, fields, "file") is None  # a file is not a value
    replaced = replace_value(body, fields, "model", "upstream/name")
    assert replaced == body.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\nupstream/name\r\n")
    assert replace_value(body, fields, "absent", "x") is body


def test_boundary_text_inside_a_value_is_not_a_delimiter():
    boundary = "XyZ"
    tricky = b"--XyZ at the start, --XyZ-- in the middle, and \n--XyZ after a bare LF"
    body, content_type = multipart({"model": "m"}, {"file": ("t.txt", "text/plain", tricky)}, boundary=boundary)
    fields = parse_fields(body, boundary)
    file_field = fields[1]
    assert body[file_field.value_start : file_field.value_end] == tricky
    assert form_value(body, fields, "model") == "m"


def test_model_field_after_the_file_and_a_preamble():
    body, content_type = multipart({}, {"file": ("a.wav", "audio/wav", b"RIFF....")}, boundary="b")
    body = b"this preamble is ignored\r\n" + body.replace(
        b"--b--", b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nlate\r\n--b--'
    )
    fields = parse_fields(body, "b")
    assert form_value(body, fields, "model") == "late"


def test_quoted_names_and_unicode_filenames():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="mo;del"\r\n\r\nx\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="\xc3\xa9t\xc3\xa9.wav"\r\n\r\nabc\r\n'
        b"--b--\r\n"
    )
    fields = parse_fields(body, "b")
    assert [field.name for field in fields] == ["mo;del", "file"]
    assert fields[1].filename == "été.wav"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"no delimiter at all", "no multipart boundary found"),
        (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm', "truncated"),
        (b'--b\r\nContent-Disposition: form-data; name="model"\r\nno end of headers', "no end of headers"),
        (b'--bX\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--b--', "malformed multipart boundary line"),
        (b'--b\nContent-Disposition: form-data; name="model"\n\nm\n--b--', "malformed multipart boundary line"),
    ],
)
def test_malformed_forms_are_refused(body, message):
    with pytest.raises(InvalidForm, match=message):
        parse_fields(body, "b")
