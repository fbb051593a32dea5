"""
What the newest llama-swap's users do, through C{twistd llamaswap} as they
run it: a configuration split over C{-c} and C{--config-dir}, reloaded by
SIGHUP and by the watcher; two llamaswap hosts, one the peer of the other,
used with the OpenAI SDK; WebSockets on real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from llamaswap.testing.websocket import FrameReader, accept_key, encode_frame
from tests.helpers import fake, free_port, free_port_range
from tests.test_twistd import TWISTD, http, model_server_pids


@pytest.fixture
def twistd(tmp_path):
    """
    Start C{twistd -n llamaswap ...}; its output goes to a file (read with
    C{output(process)}) so that a chatty run never blocks on a full pipe.
    """
    started: list[tuple[subprocess.Popen, object]] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"twistd-{len(started)}.log", "w+")
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "llamaswap", *args],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        process.log = log
        started.append((process, log))
        return process

    yield start
    for process, log in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def output(process) -> str:
    process.log.flush()
    with open(process.log.name) as handle:
        return handle.read()


def wait_ready(port: int, process, timeout: float = 20) -> None:
    """
    /health answers; if twistd exits first, fail with what it printed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited with {process.returncode}: {output(process)}")
        try:
            if http(f"http://127.0.0.1:{port}/health", timeout=1) == (200, b"OK"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"llamaswap did not answer /health: {output(process)}")


def eventually(condition, timeout: float = 15, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(message or "condition not met in time")


def model_ids(port: int) -> list[str]:
    return [entry["id"] for entry in json.loads(http(f"http://127.0.0.1:{port}/v1/models")[1])["data"]]


def call(port: int, method: str, path: str, body: bytes | None = None, key: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chat(port: int, model: str, key: str | None = None) -> tuple[int, dict | bytes]:
    status, body = call(port, "POST", "/v1/chat/completions", json.dumps({"model": model}).encode(), key)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def model_yaml(**models: str) -> str:
    lines = ["models:"]
    for model_id, respond in models.items():
        lines += [f"  {model_id}:", f"    cmd: {fake(respond)}"]
    return "\n".join(lines) + "\n"


def test_config_dir_merged_and_reloaded_by_sighup(twistd, tmp_path):
    port = free_port()
    main = tmp_path / "config.yaml"
    main.write_text(f"startPort: {free_port_range(6)}\n" + model_yaml(first="first"))
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "10-second.yaml").write_text(model_yaml(second="second"))
    process = twistd("-c", str(main), "--config-dir", str(directory), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    assert model_ids(port) == ["first", "second"]
    assert chat(port, "first")[1]["responseMessage"] == "first"
    first_pid = model_server_pids(process.pid)

    (directory / "20-third.yml").write_text(model_yaml(third="third"))
    process.send_signal(signal.SIGHUP)
    eventually(lambda: "third" in model_ids(port), message=output(process))
    assert model_server_pids(process.pid) == first_pid  # 'first' did not change: it kept running
    assert chat(port, "third")[1]["responseMessage"] == "third"

    # a broken file: reported with its name, and the last good configuration stays
    broken = directory / "30-broken.yaml"
    broken.write_text(model_yaml(first="again"))
    process.send_signal(signal.SIGHUP)
    eventually(lambda: "configuration not reloaded" in output(process), message=output(process))
    log = output(process)
    assert f"model 'first' is defined in both {main} and {broken}" in log
    assert model_ids(port) == ["first", "second", "third"]
    assert chat(port, "second")[0] == 200


def test_watch_config_follows_the_directory(twistd, tmp_path):
    port = free_port()
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "a.yaml").write_text(f"startPort: {free_port_range(4)}\n" + model_yaml(a="a"))
    process = twistd("--config-dir", str(directory), "--watch-config", "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    assert model_ids(port) == ["a"]
    (directory / "b.yaml").write_text(model_yaml(b="b"))
    eventually(lambda: model_ids(port) == ["a", "b"], message=output(process))
    (directory / "b.yaml").unlink()
    eventually(lambda: model_ids(port) == ["a"], message=output(process))


def test_config_dir_errors_at_start(twistd, tmp_path):
    process = twistd("--config-dir", str(tmp_path / "missing"))
    process.wait(30)
    assert process.returncode != 0
    assert "--config-dir" in output(process) and "not a directory" in output(process)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "env.yaml").write_text("models:\n  m:\n    cmd: srv --port ${PORT} --key ${env.LLAMASWAP_TEST_UNSET}\n")
    process = twistd("--config-dir", str(empty))
    process.wait(30)
    assert process.returncode != 0
    text = output(process)
    assert f"{empty / 'env.yaml'}: line 3 (models.m.cmd): environment variable 'LLAMASWAP_TEST_UNSET' is not set" in text
    assert "Traceback" not in text


@pytest.fixture
def peers(twistd, tmp_path):
    """
    Two llamaswap hosts: 'far' with its own models, 'near' with a model of
    its own and 'far' as a peer (with a key).
    """
    far_port, near_port = free_port(), free_port()
    far = tmp_path / "far.yaml"
    far.write_text(
        f"startPort: {free_port_range(4)}\napiKeys: [sk-far-secret]\n"
        + model_yaml(**{"big-model": "big-model", "shared": "far-shared"})
    )
    near = tmp_path / "near.yaml"
    near.write_text(
        f"startPort: {free_port_range(4)}\n"
        + model_yaml(small="small")
        + textwrap.dedent(
            f"""
            peers:
              far:
                proxy: http://127.0.0.1:{far_port}
                apiKey: ${{env.FAR_KEY}}
                models: [big-model, shared]
            """
        )
    )
    far_process = twistd("-c", str(far), "--listen", f"127.0.0.1:{far_port}")
    near_process = twistd("-c", str(near), "--listen", f"127.0.0.1:{near_port}", env={"FAR_KEY": "sk-far-secret"})
    wait_ready(far_port, far_process)
    wait_ready(near_port, near_process)
    return near_port, far_port


def test_a_peers_models_through_the_openai_sdk(peers):
    openai = pytest.importorskip("openai")
    near_port, far_port = peers
    # the far host wants its key...
    status, body = chat(far_port, "big-model")
    assert status == 401
    # ...which the near one gives it for its clients
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{near_port}/v1", api_key="client-key")
    listed = {model.id for model in client.models.list()}
    assert listed == {"small", "far/big-model", "far/shared"}
    answer = client.chat.completions.create(model="big-model", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("big-model")
    chunks = client.chat.completions.create(
        model="far/shared", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith("far-shared")
    local = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
    assert local.choices[0].message.content.startswith("small")


def test_the_peers_key_replaces_the_clients(peers):
    near_port, _ = peers
    request_headers = {"Authorization": "Bearer client-key", "x-api-key": "client-key"}
    request = urllib.request.Request(
        f"http://127.0.0.1:{near_port}/upstream/far/big-model/echo", headers=request_headers
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        echoed = json.loads(response.read())
    headers = {name.lower(): value for name, value in echoed["headers"].items()}
    assert headers["authorization"] == ["Bearer sk-far-secret"]
    assert headers["x-api-key"] == ["sk-far-secret"]


def test_an_unreachable_peer_is_a_502_naming_it(twistd, tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"peers:\n  away:\n    proxy: http://127.0.0.1:{free_port()}\n    models: [ghost]\n")
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    status, body = chat(port, "ghost")
    assert status == 502 and body["error"]["message"] == "error proxying request to peer away: connection refused"


def test_websocket_on_real_sockets(twistd, tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"startPort: {free_port_range(2)}\n" + model_yaml(comfyui_auto="comfy"))
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    assert http(f"http://127.0.0.1:{port}/comfyui/")[0] == 200  # the front page starts it
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        connection.sendall(
            b"GET /comfyui/ws?clientId=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(4096)
        head, rest = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: " + accept_key(key) in head
        reader = FrameReader()
        frames = reader.feed(rest)
        payload = b"y" * 200_000  # a large frame, in many TCP segments
        connection.sendall(encode_frame(payload, masked=True))
        while not frames:
            frames += reader.feed(connection.recv(65536))
        assert frames[0] == (1, b"comfy: " + payload)


def test_the_newest_example_configuration_through_twistd(twistd, tmp_path):
    from tests.config.test_newest_example import ENVIRON, companion_text, example_text

    port = free_port()
    (tmp_path / "config.yaml").write_text(example_text().replace("startPort: 10001", f"startPort: {free_port_range(14)}"))
    directory = tmp_path / "conf.d"
    directory.mkdir()
    (directory / "models.yaml").write_text(companion_text())
    process = twistd("-c", "config.yaml", "--config-dir", str(directory), "--listen", f"127.0.0.1:{port}", env=ENVIRON)
    wait_ready(port, process, timeout=30)
    key = ENVIRON["API_KEY_1"]  # apiKeys takes it from the environment
    assert call(port, "GET", "/v1/models")[0] == 401
    listing = {entry["id"]: entry for entry in json.loads(call(port, "GET", "/v1/models", key=key)[1])["data"]}
    assert "openrouter/deepseek/deepseek-v3.2" in listing and "coding-model" in listing
    status, answer = chat(port, "llama", key)  # a spillover selector
    assert status == 200 and answer["responseMessage"] == "docker-llama", output(process)
    # upstream.ignorePaths: a stopped model is not started for its assets
    status, body = call(port, "GET", "/upstream/modelB/app.js", key=key)
    assert status == 409 and b"path matches upstream.ignorePaths" in body
    assert call(port, "PUT", "/api/profiles/active", b'{"name": "coding"}', key)[0] == 200
    status, body = chat(port, "image-gen", key)
    assert status == 404


def test_routing_filters_capabilities_and_timeouts_through_twistd(twistd, tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(4)}\n"
        + "globalTTL: 2\n"
        + textwrap.dedent(
            f"""
            models:
              a:
                cmd: {fake("a")}
                filters:
                  setParams: {{seed: 42}}
                capabilities: {{in: [text, image], out: [text], tools: true}}
              b:
                cmd: {fake("b")}
                ttl: 0
                timeouts: {{responseHeader: 1}}
              c:
                cmd: {fake("c")}
                ttl: 0
            routing:
              router:
                use: matrix
                settings:
                  matrix:
                    sets:
                      pair: "a & b"
              scheduler:
                use: fifo
                settings: {{fifo: {{priority: {{c: 5}}}}}}
            """
        )
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)

    def running() -> set[str]:
        return {entry["model"] for entry in json.loads(http(f"http://127.0.0.1:{port}/running")[1])["running"]}

    status, answer = chat(port, "a")
    assert status == 200 and json.loads(answer["request_body"])["seed"] == 42  # setParams
    assert chat(port, "b")[0] == 200
    assert running() == {"a", "b"}  # the matrix lets them run together
    assert chat(port, "c")[0] == 200
    assert running() == {"c"}  # c is in no set: it runs alone
    listing = {entry["id"]: entry for entry in json.loads(http(f"http://127.0.0.1:{port}/v1/models")[1])["data"]}
    assert listing["a"]["architecture"]["modality"] == "text+image->text"
    assert listing["a"]["capabilities"] == {"vision": True, "function_calling": True}
    # b answers nothing for 5 s: the client gets a 504 after its 1 s
    started = time.monotonic()
    status, body = http(
        f"http://127.0.0.1:{port}/v1/chat/completions?wait=5", json.dumps({"model": "b"}).encode(), timeout=20
    )
    assert status == 504 and b"no response headers within 1s" in body
    assert time.monotonic() - started < 4
    # globalTTL: a (no ttl of its own) is unloaded after 2 idle seconds; b (ttl 0) is not
    assert chat(port, "a")[0] == 200
    eventually(lambda: running() == {"b"}, timeout=10, message=output(process))
    # what all that looks like to Prometheus
    from prometheus_client.parser import text_string_to_metric_families

    status, body = call(port, "GET", "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert status == 200 and "llamaswap_memory_total_bytes" in families
    requests = {(s.labels["model"], s.labels["status"]): s.value for s in families["llamaswap_requests"].samples}
    assert requests[("b", "504")] == 1 and requests[("a", "200")] == 2
    swaps = {s.labels["model"]: s.value for s in families["llamaswap_model_swaps"].samples}
    assert swaps["c"] == 1  # stopped for b


def test_the_newest_endpoints_through_twistd(twistd, tmp_path):
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(4)}\napiKeys: [sk-local]\n"
        + model_yaml(chat="chat", art="art")
        + "groups:\n  all: {swap: false, members: [chat, art]}\n"
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-local", max_retries=0, timeout=30)
    assert client.responses.create(model="chat", input="hi").output_text.startswith("chat-0")
    assert client.images.generate(model="art", prompt="a cat").data[0].b64_json
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    claude = anthropic.Anthropic(base_url=base, api_key="sk-local", max_retries=0, timeout=30)  # sent as x-api-key
    message = claude.messages.create(model="chat", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text.startswith("chat-0")
    with claude.messages.stream(model="chat", max_tokens=16, messages=[{"role": "user", "content": "hi"}]) as events:
        assert "".join(events.text_stream).startswith("chat-0")
    assert claude.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
    status, body = call(port, "GET", "/props?model=art", key="sk-local")
    assert status == 200 and json.loads(body)["responder"] == "art"
    for path in ("/api/hardware", "/api/performance", "/api/version"):
        status, body = call(port, "GET", path, key="sk-local")
        assert status == 200 and json.loads(body), path
    from prometheus_client.parser import text_string_to_metric_families

    status, body = call(port, "GET", "/metrics", key="sk-local")
    families = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"llamaswap_requests", "llamaswap_tokens", "llamaswap_cpu_util_percent", "llamaswap_model_state"} <= families
    assert call(port, "GET", "/metrics")[0] == 401


def test_activity_survives_a_restart_and_captures_are_served(twistd, tmp_path):
    port = free_port()
    database = tmp_path / "activity.sqlite"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(2)}\napiKeys: [sk-local]\nstore:\n  path: {database}\n"
        + model_yaml(chat="chat")
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    assert chat(port, "chat", key="sk-local")[0] == 200
    status, _ = call(port, "POST", "/v1/chat/completions?fail=503", json.dumps({"model": "chat"}).encode(), "sk-local")
    assert status == 503

    def listed() -> dict:
        status, body = call(port, "GET", "/api/metrics/activity", key="sk-local")
        assert status == 200, body
        return json.loads(body)

    eventually(lambda: listed()["total"] == 2)
    failed, succeeded = listed()["data"]
    assert (failed["resp_status_code"], failed["error_msg"]) == (503, "fake failure 503")
    assert succeeded["has_capture"] and succeeded["tokens"]["output_tokens"] == 10
    status, body = call(port, "GET", f"/api/captures/{succeeded['id']}", key="sk-local")
    captured = json.loads(body)
    assert status == 200 and captured["req_headers"]["Authorization"] == "[REDACTED]"
    assert b"sk-local" not in body and b"sk-local" not in database.read_bytes()
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == -signal.SIGTERM  # twistd ends as the signal asked
    restarted = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, restarted)
    assert [entry["id"] for entry in listed()["data"]] == [2, 1]  # kept; captures were in memory only
    assert not any(entry["has_capture"] for entry in listed()["data"])
    assert chat(port, "chat", key="sk-local")[0] == 200
    eventually(lambda: listed()["total"] == 3)
    status, body = call(port, "GET", "/api/metrics/stats", key="sk-local")
    assert status == 200 and json.loads(body)["total_requests"] == 3


def test_an_unusable_activity_database_stops_the_start(twistd, tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all " * 100)
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  path: {corrupt}\n" + model_yaml(chat="chat"))
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{free_port()}")
    assert process.wait(30) == 1
    text = output(process)
    assert "error opening the activity database" in text and "corrupt.sqlite cannot be used" in text
    assert "Traceback" not in text
