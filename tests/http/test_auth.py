"""
apiKeys: which routes need a key, the three ways to give one, the 401
with its challenge, keys from the environment, a reload changing them, and
no key in the logs.
"""

from __future__ import annotations

import base64

import pytest

from llamaswap.http.auth import presented_key
from tests.helpers import error_message, fake

CONFIG = f"""
apiKeys: ["sk-first", "${{env.SECOND_KEY}}"]
models:
  m:
    cmd: {fake("m")}
"""


@pytest.fixture
def server(memory, monkeypatch):
    monkeypatch.setenv("SECOND_KEY", "sk-second")
    return memory(CONFIG)


def basic(password: str, user: str = "anyone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-first"},
        {"Authorization": "bearer sk-second"},
        {"Authorization": basic("sk-first")},
        {"x-api-key": "sk-second"},
    ],
)
def test_a_valid_key_in_any_of_the_three_places(server, headers):
    response, body = server.fetch("POST", "/v1/chat/completions", json={"model": "m"}, headers=headers)
    assert response.code == 200, body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": basic("sk-wrong")},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": basic("")},
        {"Authorization": basic("sk-first", user="") + "x"},
        {"Authorization": "Bearer wrong", "x-api-key": "sk-first"},  # the bearer token counts, as upstream
        {"x-api-key": "SK-FIRST"},
    ],
)
def test_a_missing_or_wrong_key_is_401_with_a_challenge(server, headers):
    response, body = server.fetch("POST", "/v1/chat/completions", json={"model": "m"}, headers=headers)
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate") == ['Basic realm="llama-swap"']
    assert error_message(body) == "unauthorized: invalid or missing API key"
    assert server.service.manager.running_models() == []  # nothing started for it


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/models"),
        ("GET", "/models"),
        ("GET", "/running"),
        ("GET", "/logs"),
        ("GET", "/logs/stream"),
        ("GET", "/api/events"),
        ("GET", "/api/metrics"),
        ("GET", "/api/profiles"),
        ("POST", "/api/models/unload"),
        ("GET", "/unload"),
        ("GET", "/ui/"),
        ("GET", "/ui/app.css"),
        ("GET", "/upstream/m/health"),
        ("GET", "/comfyui/"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/embeddings"),
    ],
)
def test_protected_routes(server, method, path):
    response, _ = server.fetch(method, path, allow_redirects=False)
    assert response.code == 401, path


@pytest.mark.parametrize("path, code", [("/health", 200), ("/wol-health", 200), ("/", 302), ("/upstream", 302)])
def test_open_routes(server, path, code):
    response, _ = server.fetch("GET", path, allow_redirects=False)
    assert response.code == code


def test_unknown_paths_stay_404_and_preflights_need_no_key(server):
    assert server.fetch("GET", "/no/such/thing")[0].code == 404
    response, _ = server.fetch("OPTIONS", "/v1/chat/completions")
    assert response.code == 204


def test_a_browser_logs_in_to_the_ui_with_the_key_as_password(server):
    response, body = server.fetch("GET", "/ui/", headers={"Authorization": basic("sk-second", user="me")})
    assert response.code == 200 and b"<!doctype" in body.lower()


def test_a_reload_changes_the_keys(server, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace('"sk-first"', '"sk-new"'))
    server.service.config_path = str(path)
    assert server.service.reload_config()
    headers = {"Authorization": "Bearer sk-first"}
    assert server.fetch("GET", "/v1/models", headers=headers)[0].code == 401
    assert server.fetch("GET", "/v1/models", headers={"Authorization": "Bearer sk-new"})[0].code == 200


def test_keys_never_reach_the_logs(server):
    server.fetch("POST", "/v1/chat/completions", json={"model": "m"}, headers={"Authorization": "Bearer sk-first"})
    server.fetch("GET", "/v1/models", headers={"Authorization": "Bearer sk-leaked-guess"})
    server.service.backlog.run()
    logs = server.service.logs
    everything = logs.proxy_monitor.history() + logs.upstream.history() + logs.combined.history()
    assert b"Request 127.0.0.1" in everything  # the access log is there...
    assert b"sk-first" not in everything and b"sk-leaked-guess" not in everything  # ...without keys


def test_without_keys_nothing_is_asked(memory):
    server = memory(f"models:\n  m:\n    cmd: {fake('m')}\n")
    assert server.fetch("GET", "/v1/models")[0].code == 200


class FakeRequest:
    def __init__(self, **headers):
        self.headers = {name.lower().encode(): value.encode() for name, value in headers.items()}

    def getHeader(self, name):
        return self.headers.get(name.lower())


def test_which_key_counts_when_several_are_given():
    # upstream's order: the Basic password, then the Bearer token, then x-api-key
    assert presented_key(FakeRequest(Authorization=basic("pw"), **{"x-api-key": "x"})) == b"pw"
    assert presented_key(FakeRequest(Authorization="Bearer tok", **{"x-api-key": "x"})) == b"tok"
    assert presented_key(FakeRequest(**{"x-api-key": "x"})) == b"x"
    assert presented_key(FakeRequest()) == b""
