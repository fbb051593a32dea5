"""
Reading and minimally rewriting JSON request bodies: only the top-level
members are touched, everything else passes byte for byte.
"""

from __future__ import annotations

import json

import pytest

from llamaswap.http.jsonbody import InvalidBody, parse_request_body


def test_model_and_stream_are_read():
    body = parse_request_body(b'{"model": "m", "stream": true, "messages": [{"model": "nested"}]}')
    assert body.model == "m"
    assert body.stream is True
    assert parse_request_body(b'{"model": "m", "stream": "yes"}').stream is False


def test_unchanged_body_is_the_same_bytes():
    raw = b'{ "model" :\t"m" ,\n "temperature": 1.0000, "x": 1e3 }'
    body = parse_request_body(raw)
    assert body.rewrite() is raw
    assert body.rewrite(strip=["absent"]) is raw
    assert body.rewrite(strip=["model"]) is raw  # model is never stripped


def test_model_replaced_in_place_keeping_everything_else():
    raw = b'{ "model" :\t"m" ,\n "temperature": 1.0000, "x": 1e3 }'
    assert parse_request_body(raw).rewrite(model="new/name") == b'{ "model" :\t"new/name" ,\n "temperature": 1.0000, "x": 1e3 }'


def test_stripping_first_middle_and_last_members():
    raw = b'{"a": 1, "model": "m", "b": [1, {"a": 2}], "c": "x"}'
    body = parse_request_body(raw)
    assert body.rewrite(strip=["a"]) == b'{"model": "m", "b": [1, {"a": 2}], "c": "x"}'
    assert body.rewrite(strip=["b"]) == b'{"a": 1, "model": "m", "c": "x"}'
    assert body.rewrite(strip=["c"]) == b'{"a": 1, "model": "m", "b": [1, {"a": 2}]}'
    assert json.loads(body.rewrite(strip=["a", "b", "c"], model="z")) == {"model": "z"}


def test_byte_order_mark_is_accepted():
    raw = '\ufeff{"model": "m", "x": 1}'.encode()
    body = parse_request_body(raw)
    assert body.model == "m"
    assert body.rewrite() is raw
    assert json.loads(body.rewrite(model="n")) == {"model": "n", "x": 1}


def test_duplicate_keys_route_by_the_first_and_rewrite_every_one():
    body = parse_request_body(b'{"model": "a", "x": 1, "model": "b", "x": 2}')
    assert body.model == "a"
    assert body.rewrite(model="real") == b'{"model": "real", "x": 1, "model": "real", "x": 2}'
    assert body.rewrite(strip=["x"]) == b'{"model": "a", "model": "b"}'


def test_escaped_keys_are_recognised():
    raw = b'{"mo\\u0064el": "m", "\\u0078": 1}'
    body = parse_request_body(raw)
    assert body.model == "m"
    assert body.rewrite(model="n") == b'{"mo\\u0064el": "n", "\\u0078": 1}'
    assert body.rewrite(strip=["x"]) == b'{"mo\\u0064el": "m"}'


def test_unicode_survives_a_rewrite():
    raw = '{"model": "m", "prompt": "naïve 日本 \\ud83d\\ude00 😀"}'.encode()
    assert parse_request_body(raw).rewrite(model="ü") == '{"model": "ü", "prompt": "naïve 日本 \\ud83d\\ude00 😀"}'.encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"[]",
        b'"model"',
        b"{",
        b'{"model": "m",}',
        b'{"model" "m"}',
        b'{model: "m"}',
        b'{"model": "m"} trailing',
        b'{"model": "m"}{"model": "n"}',
        b'{"model": undefined}',
        b"\xff\xfe{}",
        b'{"model": "m", "x": NaNx}',
    ],
)
def test_anything_but_one_object_is_refused(raw):
    with pytest.raises(InvalidBody):
        parse_request_body(raw)


def test_a_big_body_is_not_reencoded():
    image = "A" * (8 * 1024 * 1024)
    raw = json.dumps({"model": "m", "messages": [{"content": image}], "top_p": 1}).encode()
    rewritten = parse_request_body(raw).rewrite(model="n", strip=["top_p"])
    assert rewritten == raw.replace(b'"model": "m"', b'"model": "n"').replace(b', "top_p": 1', b"")


def test_set_params_replace_in_place_or_add_at_the_end():
    raw = b'{"model": "m", "temperature": 1.5,\n "messages": []}'
    body = parse_request_body(raw)
    rewritten = body.rewrite(set_params=[("temperature", 0.7), ("provider", {"zdr": True, "order": ["a"]})])
    assert rewritten == b'{"model": "m", "temperature": 0.7,\n "messages": [], "provider": {"zdr": true, "order": ["a"]}}'
    assert body.rewrite(set_params=[("model", "x")]) is raw  # model is protected


def test_strip_then_set_and_an_empty_object():
    body = parse_request_body(b'{"model": "m", "top_p": 0.1, "seed": 1}')
    assert body.rewrite(strip=["top_p", "seed"], set_params=[("seed", 42)]) == b'{"model": "m", "seed": 42}'
    assert parse_request_body(b"{ }").rewrite(set_params=[("a", "é")]) == '{ "a": "é"}'.encode()
    body = parse_request_body(b'{"model":"m","x":1,"x":2}')
    assert body.rewrite(set_params=[("x", None)]) == b'{"model":"m","x":null,"x":null}'
