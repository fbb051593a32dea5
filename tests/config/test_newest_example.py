"""
A configuration written for the newest llama-swap loads and behaves the
same: its own config.example.yaml (tests/data, server commands swapped for
the fake upstream) with, in a --config-dir file, the models the example
refers to without defining them (upstream refuses the example alone for
the same reason: its fifo priorities and selector targets name them).
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
import yaml

from llamaswap.config import ConfigError, load_config
from tests.helpers import fake

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "newest-config.example.yaml"
UNDEFINED = ["A", "B", "C", "D", "qwen-unlisted", "modelA", "modelB", "forever-modelA", "forever-modelB", "forever-modelc"]
ENVIRON = {"HOME": "/home/user", "API_KEY_1": "sk-one", "API_KEY_2": "sk-two", "OPENROUTER_API_KEY": "sk-or"}


def example_text() -> str:
    return EXAMPLE.read_text().replace("PYTHON", sys.executable)


def companion_text() -> str:
    return "models:\n" + "".join(f"  {model}:\n    cmd: {fake(model)}\n" for model in UNDEFINED)


@pytest.fixture
def sources(tmp_path):
    main = tmp_path / "config.yaml"
    main.write_text(example_text())
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "models.yaml").write_text(companion_text())
    return str(main), str(directory)


def test_the_example_alone_is_refused_as_upstream_refuses_it(sources):
    main, _ = sources
    with pytest.raises(ConfigError) as info:
        load_config(main, environ=ENVIRON)
    assert "routing.scheduler.settings.fifo.priority: 'A' is not a model id or alias" in str(info.value)


def test_the_example_loads_with_what_it_refers_to(sources):
    main, directory = sources
    config = load_config(main, config_dir=directory, environ=ENVIRON)
    assert config.health_check_timeout == 500
    assert config.global_ttl == 0 and config.unload_timeout == 10
    assert config.api_keys[-2:] == ("sk-one", "sk-two")
    assert config.upstream_ignore_paths[1] == r"^\/ws$|^\/api\/jobs$"
    assert config.session_id_headers == ("X-Session-ID", "X-Litellm-Session-Id")
    assert config.performance_every == 15
    assert config.router == "group" and config.groups["group2"].swap is False
    assert dict(config.priority) == {"A": 10, "B": 5, "C": 5, "D": 1}

    gpt = config.models["gpt-oss-120b"]
    assert gpt.ttl == 60 and gpt.ignore_websockets and gpt.use_model_name == "openai/gpt-oss-120B"
    assert gpt.check_endpoint == "/custom-endpoint" and gpt.proxy == "http://127.0.0.1:8999"
    assert gpt.cmd.startswith(sys.executable) and "--ctx-size 16384" in gpt.cmd and "--temperature 0.7" in gpt.cmd
    assert gpt.metadata["note"] == f"The gpt-oss-120b is running on port {gpt.port} temp=0.7, context=16384"
    assert gpt.metadata["port"] == gpt.port and gpt.metadata["an_obj"]["c"] == [0.7, False, "model: gpt-oss-120b"]
    assert dict(gpt.filters.params_for("gpt-oss-120b:high"))["chat_template_kwargs"] == {"reasoning_effort": "high"}
    assert config.real_model_name("gpt-oss-120b:low") == "gpt-oss-120b"
    assert (gpt.capabilities.tools, gpt.capabilities.context) == (True, 32000)
    assert (gpt.timeouts.keepalive, gpt.timeouts.response_header) == (0, 60)

    docker = config.models["docker-llama"]
    assert docker.cmd_stop == "kill ${PID}"
    openrouter = config.peers["openrouter"]
    assert openrouter.api_key == "sk-or" and openrouter.filters.strip_params == ("temperature", "top_p")
    assert config.selectors["llama"].spillover == 4
    assert config.profiles["coding"].pins["image-gen"] == ""  # pinned to nothing


def test_the_example_behaves(memory, monkeypatch):
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    tree = yaml.safe_load(example_text())
    tree["models"].update(yaml.safe_load(companion_text())["models"])
    server = memory(yaml.safe_dump(tree, sort_keys=False))
    key = {"Authorization": "Bearer sk-hunter2"}  # the example's apiKeys

    def chat(model: str):
        return server.fetch("POST", "/v1/chat/completions", json={"model": model}, headers=key)

    assert server.chat("llama")[0].code == 401  # no key
    listed = {entry["id"] for entry in json.loads(server.fetch("GET", "/v1/models", headers=key)[1])["data"]}
    assert {"gpt-oss-120b", "docker-llama", "coding-model", "llama-swap-peer/model_a", "openrouter/z-ai/glm-4.7"} <= listed
    assert "unlisted-model" not in listed
    # the spillover selector starts its first target
    response, body = chat("llama")
    assert response.code == 200 and json.loads(body)["responseMessage"] == "docker-llama"
    # models of a swap: false group run together
    assert chat("modelA")[0].code == 200
    assert server.state("docker-llama") == "ready" and server.state("modelA") == "ready"
    # a profile's null pin is a 404
    server.fetch("PUT", "/api/profiles/active", json={"name": "coding"}, headers=key)
    assert chat("image-gen")[0].code == 404
