"""
End to end with a real inference server: llama.cpp's Python server and a
real GGUF model, through `twistd llamaswap`, with the official openai SDK as
the client.  Uses examples/real-llm/config.yaml itself.

Prepare the environment with scripts/prepare-real-llm.sh; without it these
tests are skipped.  Run them alone with `pytest -m real_llm`.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.helpers import free_port, free_port_range, yaml_quote
from tests.test_twistd import TWISTD, wait_for_health

pytestmark = pytest.mark.real_llm

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "real-llm" / "config.yaml"
GGUF = pathlib.Path(os.environ.get("LLAMASWAP_GGUF", ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))

try:
    import llama_cpp  # noqa: F401
except ImportError:
    pytest.skip("llama-cpp-python is not installed: run scripts/prepare-real-llm.sh", allow_module_level=True)
if not GGUF.is_file():
    pytest.skip(f"no model at {GGUF}: run scripts/prepare-real-llm.sh", allow_module_level=True)
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    text = EXAMPLE.read_text()
    text = text.replace("  python: .venv/bin/python", f"  python: {json.dumps(sys.executable)}")
    text = text.replace("  gguf: .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", f"  gguf: {json.dumps(str(GGUF))}")
    assert str(GGUF) in text and sys.executable in text, "the example's macros changed"
    config = tmp_path_factory.mktemp("real-llm") / "config.yaml"
    config.write_text(f"startPort: {free_port_range(4)}\n" + text)
    port = free_port()
    log = open(config.parent / "twistd.log", "w")
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_health(port, process)
    yield f"http://127.0.0.1:{port}"
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def running(server) -> list[str]:
    with urllib.request.urlopen(server + "/running", timeout=10) as answer:
        return [entry["model"] for entry in json.loads(answer.read())["running"]]


def metrics(server) -> list[dict]:
    with urllib.request.urlopen(server + "/api/metrics", timeout=10) as answer:
        return json.loads(answer.read())


def test_chat_and_swap_between_the_two_entries(server, client):
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello in one short sentence."}], max_tokens=24
    )
    text = answer.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert answer.usage.completion_tokens > 0
    assert running(server) == ["smollm2"]
    embeddings = client.embeddings.create(model="smollm2-embed", input="hello world", encoding_format="float")
    vector = embeddings.data[0].embedding
    # this server returns one vector per token: a list of lists of floats
    flat = vector[0] if vector and isinstance(vector[0], list) else vector
    assert len(flat) > 100 and all(isinstance(value, float) for value in flat[:10])
    assert running(server) == ["smollm2-embed"]
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
    )
    assert answer.choices[0].message.content.strip()
    assert running(server) == ["smollm2"]


def test_streamed_chat_arrives_incrementally(server, client):
    before = len(metrics(server))
    arrivals = []
    pieces = []
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from one to twenty in words."}],
        max_tokens=48,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
            pieces.append(chunk.choices[0].delta.content)
    text = "".join(pieces)
    assert len(pieces) >= 10 and text.strip()
    # real generation at tens of tokens per second: the chunks are spread out,
    # each relayed when the model produced it, not in one burst at the end
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert arrivals[-1] - arrivals[0] > 0.1
    assert sorted(gaps)[len(gaps) // 2] > 0.003
    # the client stops at the last event; the answer's end reaches llamaswap
    # a moment later, and only then is the request recorded
    deadline = time.monotonic() + 5
    while len(recorded := metrics(server)[before:]) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(recorded) == 1
    streamed = recorded[0]
    # no usage in this server's streams: generated tokens are counted from the
    # content chunks, the prompt side is unknown
    assert streamed["model"] == "smollm2"
    assert streamed["output_tokens"] == len(pieces)
    assert streamed["input_tokens"] == -1 and streamed["prompt_per_second"] == -1
    assert streamed["tokens_per_second"] > 1
    assert streamed["duration_ms"] > 0


def test_non_streamed_metrics_come_from_usage(server, client):
    before = len(metrics(server))
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say yes."}], max_tokens=6
    )
    recorded = metrics(server)[before:]
    assert len(recorded) == 1
    assert recorded[0]["input_tokens"] == answer.usage.prompt_tokens
    assert recorded[0]["output_tokens"] == answer.usage.completion_tokens
    assert recorded[0]["cache_tokens"] == -1 and recorded[0]["tokens_per_second"] == -1


def test_upstream_log_stream_shows_the_server_output(server, client):
    collected = []

    def tail():
        with urllib.request.urlopen(server + "/logs/stream/upstream?no-history", timeout=60) as stream:
            while len(b"".join(collected)) < 200:
                piece = stream.read1(4096)
                if not piece:
                    return
                collected.append(piece)

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    time.sleep(0.3)
    urllib.request.urlopen(server + "/unload", timeout=30).read()
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    reader.join(30)
    text = b"".join(collected).decode("utf-8", "replace")
    assert "llama" in text.lower() or "uvicorn" in text.lower(), text[:500]


def test_a_wrong_model_path_marks_the_model_failed_with_llama_cpps_reason(tmp_path):
    """
    llama.cpp's server given a model file that does not exist: after
    maxStartFailures the model is failed, and the reason carries
    llama.cpp's own error line.
    """
    command = f"{sys.executable} -m llama_cpp.server --model /nonexistent/model.gguf --host 127.0.0.1 --port ${{PORT}}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(2)}\nmaxStartFailures: 2\nfailureCooldown: 60\n"
        "models:\n"
        "  missing:\n"
        f"    cmd: {yaml_quote(command)}\n"
        "    checkEndpoint: /v1/models\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", str(config), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_health(port, process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
            assert failed.value.status_code == 502
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        assert "Model path does not exist: /nonexistent/model.gguf" in refused.value.message
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/running", timeout=10) as answer:
            [entry] = json.loads(answer.read())["running"]
        assert entry["state"] == "failed"
        assert "ValueError: Model path does not exist: /nonexistent/model.gguf" in entry["reason"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_the_ollama_library_with_the_real_model(server):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=server)
    assert {"smollm2", "smollm2-embed"} <= {model.model for model in client.list().models}
    answer = client.chat(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], options={"num_predict": 8}
    )
    assert answer.message.content.strip() and answer.done and answer.eval_count > 0
    pieces = list(
        client.chat(
            model="smollm2", messages=[{"role": "user", "content": "Count to five."}], options={"num_predict": 16}, stream=True
        )
    )
    assert len(pieces) > 3 and pieces[-1].done and "".join(piece.message.content for piece in pieces).strip()
    generated = client.generate(model="smollm2", prompt="The sky is", options={"num_predict": 8})
    assert generated.response.strip() and generated.done
    assert "smollm2" in [model.model for model in client.ps().models]
    assert client.show("smollm2").capabilities
    embedded = client.embed(model="smollm2-embed", input="hello world")
    assert len(embedded.embeddings) == 1 and len(embedded.embeddings[0]) > 100  # one vector, tokens averaged
    assert len(client.embeddings(model="smollm2-embed", prompt="hello").embedding) > 100
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("smollm2")
    assert refused.value.status_code == 501


def test_the_playground_chats_with_the_real_model(server):
    """
    The web UI's chat, in Chromium, with the real model: the answer streams
    in, is shown, and is recorded with its tokens.
    """
    from tests.browser import launch, missing

    if missing():
        pytest.skip(missing())
    from playwright.sync_api import expect, sync_playwright

    before = len(metrics(server))
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server + "/ui/playground")
            expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
            page.get_by_test_id("playground-model").select_option("smollm2")
            page.get_by_label("Max tokens", exact=True).fill("24")
            page.get_by_label("Message").fill("Name three colours.")
            page.get_by_role("button", name="Send").click()
            expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=10000)
            expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=120000)
            expect(page.get_by_test_id("playground-status")).to_have_text("")
            answer = page.locator('.bubble[data-role="assistant"] .bubble-body').last.inner_text()
            assert answer.strip() and answer.strip() != "(stopped)"
            assert errors == []
        finally:
            browser.close()
    deadline = time.monotonic() + 5
    while len(recorded := metrics(server)[before:]) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [entry["model"] for entry in recorded] == ["smollm2"]
    assert 0 < recorded[0]["output_tokens"] <= 24
