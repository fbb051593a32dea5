"""
Live reloads (--watch-config) that keep unchanged models and their
requests running.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from llamaswap.config import parse_config
from llamaswap.observe.events import ConfigFileChanged
from llamaswap.service import LlamaswapService
from tests.helpers import (
    Body,
    Running,
    fake,
    free_port_range,
    json_of,
    sleep,
    wait_until,
)


def config_text(ports: int, **models: str) -> str:
    lines = [f"startPort: {ports}", "models:"]
    for model_id, settings in models.items():
        lines.append(f"  {model_id}:")
        lines.extend("    " + line for line in textwrap.dedent(settings).strip().splitlines())
    return "\n".join(lines) + "\n"


@pytest.fixture
def watched(tmp_path):
    services = []

    def start(text: str) -> tuple[Running, object]:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        service = LlamaswapService(
            parse_config(text),
            listen="tcp:0:interface=127.0.0.1",
            reactor=reactor,
            config_path=str(path),
            watch_config=True,
        )
        service.startService()
        services.append(service)
        return Running(service, service.http.port.getHost().port), path

    yield start
    for service in services:
        if service.running:
            pytest_twisted.blockon(service.stopService())


@pytest_twisted.inlineCallbacks
def test_reload_keeps_unchanged_models_and_their_streams(watched):
    ports = free_port_range(10)
    # fixed ports, so that adding a model does not shift everyone's ${PORT}
    keep = f"cmd: {fake('keep').replace('${PORT}', str(ports))}\nproxy: http://127.0.0.1:{ports}"
    edit = f"cmd: {fake('edit').replace('${PORT}', str(ports + 1))}\nproxy: http://127.0.0.1:{ports + 1}"
    edited = edit.replace("--respond edit", "--respond edited")
    added = f"cmd: {fake('added').replace('${PORT}', str(ports + 2))}\nproxy: http://127.0.0.1:{ports + 2}"
    groups = "groups:\n  all:\n    swap: false\n    exclusive: false\n    members: [{}]\n"
    server, path = watched(config_text(ports, keep=keep, edit=edit) + groups.format("keep, edit"))
    changes = []
    server.service.bus.subscribe(changes.append, ConfigFileChanged)
    yield server.chat("keep")
    yield server.chat("edit")
    keep_pid = server.process("keep").pid
    # a long stream from the model that will not change
    body = json.dumps({"model": "keep", "stream": True}).encode()
    import io

    response = yield Agent(reactor).request(
        b"POST",
        (server.url + "/v1/chat/completions?chunks=40&delay=0.1").encode(),
        Headers({}),
        FileBodyProducer(io.BytesIO(body)),
    )
    stream = Body()
    response.deliverBody(stream)

    # 1. add a model and change another
    path.write_text(config_text(ports, keep=keep, edit=edited, added=added) + groups.format("keep, edit, added"))
    yield wait_until(lambda: "added" in server.service.config.models, timeout=5)
    assert server.process("keep").pid == keep_pid
    answer = yield json_of((yield server.chat("edit")))
    assert answer["responseMessage"] == "edited"
    answer = yield json_of((yield server.chat("added")))
    assert answer["responseMessage"] == "added"

    # 2. break the file: the old configuration keeps serving
    path.write_text("models: [this is not, a mapping\n")
    yield wait_until(lambda: "configuration not reloaded" in server.service.logs.proxy_monitor.history().decode())
    assert "added" in server.service.config.models
    assert (yield server.chat("added")).code == 200

    # 3. fix it, removing a model
    path.write_text(config_text(ports, keep=keep, edit=edited) + groups.format("keep, edit"))
    yield wait_until(lambda: "added" not in server.service.config.models, timeout=5)
    yield server.wait_for_state("edit", "ready")
    response = yield server.chat("added")
    assert response.code == 404

    yield stream.done
    events = [line for line in stream.data.decode().split("\n") if line.startswith("data: {")]
    assert len(events) == 42  # 40 chunks, the final chunk and usage: nothing lost
    assert stream.data.rstrip().endswith(b"data: [DONE]")
    assert server.process("keep").pid == keep_pid
    assert [change.state for change in changes].count("start") == 3
    listing = yield json_of((yield server.get("/v1/models")))
    assert [entry["id"] for entry in listing["data"]] == ["edit", "keep"]


@pytest_twisted.inlineCallbacks
def test_automatic_ports_are_sticky_so_unchanged_models_keep_running(watched):
    """
    Add a model whose id sorts first, remove one and rename one while a
    stream from an unchanged model runs: its ${PORT} stays, so it is not
    restarted and the stream completes.
    """
    ports = free_port_range(10)
    models = {name: f"cmd: {fake(name)}" for name in ("keep", "remove", "rename")}
    server, path = watched(config_text(ports, **models) + "groups:\n  all:\n    swap: false\n    members: [keep, remove, rename]\n")
    for name in models:
        assert (yield server.chat(name)).code == 200
    keep_pid = server.process("keep").pid
    keep_port = server.service.config.models["keep"].port
    response = yield server.post("/v1/chat/completions?chunks=30&delay=0.1", json={"model": "keep", "stream": True})
    stream = Body()
    response.deliverBody(stream)
    yield sleep(0.3)

    renamed = {"aaa-first": f"cmd: {fake('aaa-first')}", "keep": models["keep"], "renamed": f"cmd: {fake('renamed')}"}
    path.write_text(config_text(ports, **renamed) + "groups:\n  all:\n    swap: false\n    members: [aaa-first, keep, renamed]\n")
    yield wait_until(lambda: "renamed" in server.service.config.models, timeout=5)
    history = server.service.logs.proxy_monitor.history().decode()
    assert "2 added ['aaa-first', 'renamed'], 0 changed [], 2 removed ['remove', 'rename'], 1 unchanged" in history
    assert server.service.config.models["keep"].port == keep_port
    for name in ("aaa-first", "renamed"):
        answer = yield json_of((yield server.chat(name)))
        assert answer["responseMessage"] == name

    yield stream.done
    events = [line for line in stream.data.decode().split("\n") if line.startswith("data: {")]
    assert len(events) == 32  # 30 chunks, the final chunk and usage: nothing lost
    assert server.process("keep").pid == keep_pid


@pytest_twisted.inlineCallbacks
def test_changed_model_finishes_its_request_before_restarting(watched):
    ports = free_port_range(4)
    server, path = watched(config_text(ports, m=f"cmd: {fake('old')}"))
    yield server.chat("m")
    slow = server.post("/v1/chat/completions?wait=1.5", json={"model": "m"})
    yield sleep(0.2)
    path.write_text(config_text(ports, m=f"cmd: {fake('new')}"))
    yield sleep(1.2)
    # the new definition waits for the old server, which still serves the slow request
    fresh = server.chat("m")
    old_answer = yield json_of((yield slow))
    assert old_answer["responseMessage"] == "old"
    new_answer = yield json_of((yield fresh))
    assert new_answer["responseMessage"] == "new"


@pytest_twisted.inlineCallbacks
def test_events_tell_the_ui_about_reloads(watched):
    ports = free_port_range(4)
    server, path = watched(config_text(ports, m=f"cmd: {fake('m')}"))
    seen = []
    server.service.bus.subscribe(seen.append, ConfigFileChanged)
    path.write_text(config_text(ports, m=f"cmd: {fake('m')}", n=f"cmd: {fake('n')}"))
    yield wait_until(lambda: len(seen) == 2, timeout=5)
    assert [event.state for event in seen] == ["start", "end"]
    statuses = server.service.manager.statuses()
    assert [status["id"] for status in statuses] == ["m", "n"]
